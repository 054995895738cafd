"""The machine's float32 FMA peak (benchmarks/fma_peak.c), compiled and loaded on first use.

The report puts the convolutions' GFLOP/s next to it and to the sgemm of torch and of cuconv,
measured in the same run: torch's sgemm alone is no ceiling on a CPU whose BLAS takes a slow
path (on the AMD Zen 5 of RESULTS.md it reached 36-46% of this peak).
"""

import ctypes
import functools
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("fma_peak.c")


@functools.cache
def fma_library():
    """The built library, or None where it cannot be built (no C compiler, not x86-64):
    fma_flops(threads, lanes, iterations) -> FLOP/s, fma_chains() -> FMA chains per thread."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    library = Path(tempfile.mkdtemp(prefix="cuconv-fma-peak-")) / "fma_peak.so"
    built = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-pthread", "-o", str(library), str(SOURCE)],
                           capture_output=True, text=True)
    if built.returncode != 0:
        return None
    loaded = ctypes.CDLL(str(library))
    loaded.fma_flops.restype = ctypes.c_double
    loaded.fma_flops.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
    loaded.fma_chains.restype = ctypes.c_int
    loaded.fma_chains.argtypes = []
    return loaded
