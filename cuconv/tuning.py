"""The kernel choices cuconv measures (csrc/tuning/measured_choice.h): the CPU's, with their
on-disk cache, and the CUDA kernels'.

The first call of each float32 convolution shape and pass times the kernels that can run it
(the direct and the im2col + GEMM kernels, Winograd on 3x3 stride-1 layers, the per-pixel
products on small images; NHWC against NCHW for channels_last layers) on the call's own tensors
and keeps the fastest for the rest of the process; that first call costs two calls of the layer
per candidate and one more.

- ``CUCONV_CPU_TUNE=0``: no measuring; fixed rules decide (reproducible across runs).
- ``CUCONV_LOG=1``: every decision is printed to stderr with the candidates' times.
- ``CUCONV_TUNE_CACHE=path``: the choices are loaded from that JSON file when cuconv is
  imported and saved to it at exit, under the CPU model, cuconv version and set of kernels that
  made them (a different CPU, version or kernel set measures again). ``load`` / ``save`` do the
  same by hand.

On a GPU the kernel family is chosen by rule unless ``torch.backends.cudnn.benchmark`` is on (off
by default: the same kernels and bits in every run; ``CUCONV_CUDA_TUNE=1`` / ``0``, where set,
overrides the flag). Measuring, the first call of
each convolution shape and pass times the families that can run it (float32 with TF32 allowed:
the tensor cores' and the FP32 units'; one input channel a group: the direct kernels and the
float32 GEMM), waiting for the stream before and after each run, and keeps the fastest for the
process (``cuda_choices``). Calls made while a CUDA graph is being captured measure nothing (a
recorded choice or the rule decides). Not kept on disk: measuring costs a few calls of each
layer, once.
"""

import atexit
import contextlib
import json
import os
import tempfile

__all__ = ["choices", "cuda_choices", "clear", "load", "save", "machine", "unsettled"]


def _cpuinfo_fields():
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's fields
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        pass
    return fields


def machine():
    """The key the cache files its choices under: CPU model (with family and model numbers,
    which tell apart CPUs a VM names alike), cuconv version, and the kernels a choice may name
    (a build with a new candidate must measure it, whatever the version says)."""
    import platform

    import cuconv
    from cuconv import _C

    fields = _cpuinfo_fields()
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        cpu += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return f"{cpu} / cuconv {cuconv.__version__} / kernels {_C.cpu_tuning_kernels()}"


def choices():
    """The choices made so far in this process: {key: the winning kernel's name}."""
    from cuconv import _C

    return _C.cpu_tuning()


def _cuda_module():
    import cuconv

    if not cuconv.with_cuda:
        return None
    from cuconv import _C_cuda

    return _C_cuda


def cuda_choices():
    """The CUDA kernel families chosen by measurement so far in this process: {key: family}
    (empty without cuconv's CUDA kernels)."""
    module = _cuda_module()
    return module.cuda_tuning() if module is not None else {}


def unsettled():
    """How many choices are still being checked, the CPU's and the CUDA kernels': after
    measuring, a choice's winner is timed on its next few calls, the last of which measures the
    other kernels once more (a second look; csrc/tuning/measured_choice.h). A benchmark of
    steady speed runs its shapes until this is 0."""
    from cuconv import _C

    module = _cuda_module()
    return _C.cpu_tuning_unsettled() + (module.cuda_tuning_unsettled() if module is not None else 0)


def clear():
    """Forgets every choice, the CPU's and the CUDA kernels' (the next call of each shape
    measures again)."""
    from cuconv import _C

    _C.cpu_tuning_set(None)
    module = _cuda_module()
    if module is not None:
        module.cuda_tuning_set(None)


def _read(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ValueError(f"cuconv.tuning: cannot read the tuning cache {path!r}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"cuconv.tuning: expected the tuning cache {path!r} to hold a JSON object, "
                         f"but got {type(data).__name__}")
    return data


def load(path):
    """Takes the choices that ``path`` holds for this machine (see ``machine``); returns how many."""
    from cuconv import _C

    saved = _read(path).get(machine(), {})
    if not isinstance(saved, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in saved.items()):
        raise ValueError(f"cuconv.tuning: expected {path!r} to map each machine to {{key: winner}}")
    _C.cpu_tuning_set(saved)
    return len(saved)


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on ``path``.lock (POSIX flock) for the block: processes, and threads of
    one process (each opens the file anew), saving to one cache take turns, so that none reads
    the file before another's write and drops its choices."""
    try:
        import fcntl
    except ImportError:  # (no flock: saves may then lose each other's updates)
        yield
        return
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save(path):
    """Adds this process's choices to ``path`` under this machine (other machines' are kept)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with _locked(path):
        data = _read(path)
        entry = data.get(machine(), {})
        if not isinstance(entry, dict):
            raise ValueError(f"cuconv.tuning: expected {path!r} to map each machine to {{key: winner}}")
        entry.update(choices())
        data[machine()] = entry
        # a temporary file of this call's own, replacing the cache whole: a reader never sees half
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.chmod(temporary, 0o666 & ~_umask())  # (mkstemp's file is private: 0600, whatever the umask)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise


def _umask():
    """The process's umask, read without changing it where Linux shows it (os.umask sets it, for
    a moment, for every thread of the process)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _use_cache_from_environment():
    """CUCONV_TUNE_CACHE: its choices taken at import, this process's added at exit. A file that
    is not a cache cuconv can read (a mistyped path to another file, a folder) is reported in one
    warning and left as it is, not fatal: the choices are measured afresh and not saved."""
    path = os.environ.get("CUCONV_TUNE_CACHE")
    if path:
        try:
            load(path)
        except ValueError as error:
            import warnings

            warnings.warn(f"{error}; measuring afresh, and leaving the file as it is (not saving to it)",
                          RuntimeWarning, stacklevel=3)
            return
        atexit.register(_save_at_exit, path)


def _save_at_exit(path):
    """save(path), where a place cuconv cannot write (a read-only folder, /proc) is reported in one
    warning, not a traceback at the end of the program."""
    try:
        save(path)
    except (OSError, ValueError) as error:
        import warnings

        warnings.warn(f"cuconv.tuning: cannot save the tuning cache {path!r} (CUCONV_TUNE_CACHE): {error}",
                      RuntimeWarning, stacklevel=2)
