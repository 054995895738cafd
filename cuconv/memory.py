"""The CPU memory cuconv recycles (csrc/cpu/recycled_memory.cpp).

A CPU tensor that cuconv's kernels make, of 64 KiB up to half the last-level cache (the limit),
goes on the buffer most recently freed of exactly its size, which the caches still hold, rather
than wherever malloc puts it (seldom the same place twice in a training loop, so every store
would first read its line from memory). Freed buffers are held for the next tensors, at
most the limit in all, the oldest returned to malloc first.

- ``CUCONV_RECYCLE_CPU_MEMORY=0`` (read when cuconv is imported; ``1`` or unset: on, any other
  value raises ValueError there): no recycling, every tensor from torch's allocator.
- Needs torch >= 2.11 (the stable ABI's ``torch_from_blob``); under 2.10 it is off.
- Such a tensor's storage cannot be resized, as a numpy array's tensor's cannot:
  ``Tensor.resize_`` to more elements and ``untyped_storage().resize_()`` raise
  (``Tensor.resize_`` to as many or fewer elements works). README "CPU memory" has the rest.
"""

__all__ = ["stats", "release"]


def stats():
    """{"enabled", "smallest_bytes", "limit_bytes", "held_bytes", "held_buffers", "reused",
    "fresh"}: whether recycling is on, its policy (tensors of smallest_bytes to limit_bytes;
    held buffers total at most limit_bytes), the buffers held now, and how many tensors were made
    on a held buffer (reused) or a new one (fresh) since the process started."""
    from cuconv import _C

    return _C.cpu_memory()


def release():
    """Returns every held buffer to malloc (tensors alive keep theirs); recycling goes on."""
    from cuconv import _C

    _C.cpu_memory_release()
