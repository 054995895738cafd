"""The CPU memory cuconv recycles (csrc/cpu/recycled_memory.cpp, cuconv.memory): a tensor of 64
KiB up to the limit (half the last-level cache) goes on the buffer most recently freed of
its size; the held buffers stay within the limit, the oldest released first; a live tensor's
buffer is never handed out; tensors freed on other threads come back safely.

Average pooling with a 1 x 1 window makes the tensors: its output is its input, element for
element, and it allocates nothing else."""

import gc
import os
import queue
import subprocess
import sys
import threading

import pytest
import torch

import cuconv
import cuconv.functional as CF

KIB = 1 << 10

# (the tests' tensors take up to 256 KiB: half a 512 KiB last-level cache)
needs_recycling = pytest.mark.skipif(not cuconv.memory.stats()["enabled"] or cuconv.memory.stats()["limit_bytes"] < 256 * KIB,
                                     reason="recycling is off (CUCONV_RECYCLE_CPU_MEMORY=0, or torch < 2.11), "
                                            "or the last-level cache is under 512 KiB")
TORCH_HAS_THE_SHIM = cuconv._torch_version() >= (2, 11)  # (torch_from_blob)


@pytest.fixture(autouse=True)
def nothing_else_freed():
    """Nothing held at the start, and no tensor of an earlier test freed by the cyclic garbage
    collector in the middle of a test (the tests count buffers exactly)."""
    gc.collect()
    cuconv.memory.release()
    gc.disable()
    yield
    gc.enable()


def _made(elements, seed=0):
    """(x, cuconv's copy of x): a float32 tensor of `elements` made by cuconv's kernel."""
    x = torch.randn(1, 1, 1, elements, generator=torch.Generator().manual_seed(seed))
    return x, CF.avg_pool2d(x, 1)


@needs_recycling
def test_a_freed_tensors_buffer_comes_back_for_the_next_tensor_of_its_size():
    _, y = _made(64 * KIB)  # 256 KiB
    first = y.data_ptr()
    del y
    assert cuconv.memory.stats()["held_bytes"] == 256 * KIB
    before = cuconv.memory.stats()
    x, y = _made(64 * KIB, seed=1)
    after = cuconv.memory.stats()
    assert y.data_ptr() == first
    assert (after["reused"], after["fresh"], after["held_bytes"]) == (before["reused"] + 1, before["fresh"], 0)
    assert torch.equal(y, x)
    # two of that size held: the one freed last (the one the caches hold) comes back first
    _, z = _made(64 * KIB, seed=2)
    last = z.data_ptr()
    del y, z
    assert cuconv.memory.stats()["held_buffers"] == 2
    x, y = _made(64 * KIB, seed=3)
    assert y.data_ptr() == last and torch.equal(y, x)


@needs_recycling
def test_a_live_tensors_buffer_is_never_handed_out():
    xa, a = _made(40 * KIB, seed=1)
    xb, b = _made(40 * KIB, seed=2)
    assert a.data_ptr() != b.data_ptr()
    freed = a.data_ptr()
    del a
    xe, e = _made(48 * KIB, seed=5)  # another size, with a's buffer held: never that buffer
    assert cuconv.memory.stats()["held_buffers"] == 1
    xc, c = _made(40 * KIB, seed=3)  # takes a's buffer
    xd, d = _made(40 * KIB, seed=4)  # none left of that size: a new one
    assert c.data_ptr() == freed
    assert len({b.data_ptr(), c.data_ptr(), d.data_ptr(), e.data_ptr()}) == 4
    for x, y in ((xb, b), (xc, c), (xd, d), (xe, e)):
        assert torch.equal(y, x)


@needs_recycling
def test_the_held_buffers_stay_within_the_limit_the_most_recent_kept():
    limit = cuconv.memory.stats()["limit_bytes"]
    if limit < 1 << 20:
        pytest.skip("a last-level cache under 1 MiB")
    # twelve tensors of distinct sizes, each over an eighth of the limit: 1.5x the limit in all
    counts = [limit // 32 + 1024 * k for k in range(12)]
    made = [_made(n)[1] for n in counts]
    while made:  # freed in the order made: the first ones must make room for the last
        made.pop(0)
    held = cuconv.memory.stats()
    assert held["held_bytes"] <= limit
    assert held["held_bytes"] > limit // 2  # (and it holds something: the last ones freed)
    x, y = _made(counts[-1])
    assert cuconv.memory.stats()["reused"] == held["reused"] + 1
    del y
    _made(counts[0])
    assert cuconv.memory.stats()["fresh"] == held["fresh"] + 1  # the first freed was released
    assert cuconv.memory.stats()["held_bytes"] <= limit


@needs_recycling
def test_release_returns_every_held_buffer():
    _made(64 * KIB)
    assert cuconv.memory.stats()["held_buffers"] >= 1
    cuconv.memory.release()
    assert (cuconv.memory.stats()["held_buffers"], cuconv.memory.stats()["held_bytes"]) == (0, 0)
    fresh = cuconv.memory.stats()["fresh"]
    _made(64 * KIB)
    assert cuconv.memory.stats()["fresh"] == fresh + 1


@needs_recycling
def test_tensors_outside_the_policy_come_from_torchs_allocator():
    limit = cuconv.memory.stats()["limit_bytes"]
    # half the last-level cache: a quarter left out global pooling's 2.4 MB gradient on an 8 MiB L3
    assert limit == cuconv._C.cpu_kernels()["last_level_cache_bytes"] // 2
    _, small = _made(1024)  # 4 KiB
    _, large = _made(limit // 4 + 1)  # a few bytes over the limit
    _, recycled = _made(64 * KIB)
    _, largest = _made(limit // 4)  # the limit exactly
    assert small.untyped_storage().resizable() and large.untyped_storage().resizable()
    assert not recycled.untyped_storage().resizable() and not largest.untyped_storage().resizable()


@needs_recycling
def test_a_recycled_tensor_works_as_any_other_but_cannot_grow_in_place():
    x, y = _made(64 * KIB)
    y.mul_(2).add_(1)
    assert torch.equal(y, x * 2 + 1)
    y.resize_(1, 1, 1, 1024)  # fewer elements: the storage as it was
    assert y.shape == (1, 1, 1, 1024)
    with pytest.raises(RuntimeError, match="not resizable"):
        y.resize_(1, 1, 1, 128 * KIB)
    z = _made(64 * KIB)[1]
    z.share_memory_()
    assert z.is_shared()


@needs_recycling
def test_tensors_made_and_freed_on_many_threads_keep_their_values():
    """Each thread makes tensors of three sizes; half go to another thread, which checks and
    frees them (torch calls the deleter on the thread that drops the last reference)."""
    handed = queue.Queue()
    failures = []

    def maker(seed):
        for i in range(60):
            x, y = _made((16 + 8 * (i % 3)) * KIB + seed, seed=seed * 1000 + i)
            if i % 2:
                handed.put((x, y))
            elif not torch.equal(y, x):
                failures.append((seed, i))
        handed.put(None)

    def checker(makers):
        done = 0
        while done < makers:
            item = handed.get()
            if item is None:
                done += 1
            elif not torch.equal(item[1], item[0]):
                failures.append("handed")

    reused = cuconv.memory.stats()["reused"]
    threads = [threading.Thread(target=maker, args=(s,)) for s in range(4)] + [threading.Thread(target=checker, args=(4,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert cuconv.memory.stats()["reused"] > reused + 100  # (240 tensors of three sizes)
    assert cuconv.memory.stats()["held_bytes"] <= cuconv.memory.stats()["limit_bytes"]


_SCRIPT = "import torch, cuconv, cuconv.functional as CF; print(cuconv.memory.stats()['enabled'], " \
          "CF.avg_pool2d(torch.randn(1, 1, 1, 16384), 1).untyped_storage().resizable())"  # (64 KiB)


@pytest.mark.parametrize("setting", ["0", "1", "", "yes"])
def test_the_setting_turns_recycling_off_and_refuses_other_values(setting):
    env = dict(os.environ, CUCONV_RECYCLE_CPU_MEMORY=setting)
    run = dict(env=env, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(cuconv.__file__)))
    result = subprocess.run([sys.executable, "-c", _SCRIPT], **run)
    if setting == "yes":  # refused when cuconv is imported
        assert result.returncode != 0
        assert "ValueError: CUCONV_RECYCLE_CPU_MEMORY: expected 0 or 1, but got 'yes'" in result.stderr
        assert "cuconv/__init__.py" in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-2000:]
        on = setting != "0" and TORCH_HAS_THE_SHIM  # (empty: as unset)
        assert result.stdout.split() == [str(on), str(not on)]
