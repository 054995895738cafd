"""Builds cuconv's compiled modules with torch.utils.cpp_extension, on the LibTorch stable ABI:

    cuconv._C       the op schemas and the CPU kernels
    cuconv._C_cuda  the CUDA kernels (when torch is a CUDA build and a matching nvcc is found)

Both use only torch's stable C++ ABI (TORCH_TARGET_VERSION 2.10) and Python's limited API
(3.10), so one build runs under every torch >= 2.10 and every Python >= 3.10: a plain
`pip install .` (an isolated build against whatever torch pip fetches for it) works as well as
`pip install --no-build-isolation .` (against the torch already installed). cuconv._C_cuda
loads only where the running torch has CUDA of the same major version (cuconv/__init__.py).

Environment switches:
    CUCONV_CPU_ONLY=1       skip the CUDA sources (fast local iteration)
    CUCONV_REQUIRE_CUDA=1   fail if the CUDA sources cannot be compiled (CI)
    CUCONV_PTXAS_VERBOSE=1  print ptxas register / spill reports for every kernel
    CUCONV_EMULATED_CUDA=1  also build cuconv._C_emulated: the CUDA kernels compiled as host C++
                            for the emulated device the tests run them on (csrc/emulation/);
                            =asan adds cuconv._C_emulated_asan, built with AddressSanitizer and
                            UBSan. Test-only: never part of a normal build.
    CUDA_HOME               the CUDA toolkit (default /usr/local/cuda if it exists)
    TORCH_CUDA_ARCH_LIST    GPU architectures, e.g. "8.0;9.0"; default: the visible GPUs', or, with
                            none visible, DEFAULT_CUDA_ARCHS (A100 and H100 code, plus PTX that
                            newer GPUs compile at load time)
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

# torch guesses CUDA_HOME from `which nvcc`; where nvcc is a wrapper script that
# guess is wrong, so prefer the standard location before torch looks.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - only a wrong install command gets here
    sys.exit("cuconv: torch must be installed before cuconv is built (pyproject.toml asks pip for it)")

# The oldest torch the modules run under: the stable ABI they are compiled against.
TORCH_TARGET_VERSION = "0x020a000000000000"  # 2.10
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _major(version):
    return version.split(".")[0] if version else None


def _nvcc_version():
    nvcc = os.path.join(cpp_extension.CUDA_HOME or "", "bin", "nvcc")
    if not cpp_extension.CUDA_HOME or shutil.which(nvcc) is None:
        return None
    found = re.search(r"release (\d+\.\d+)", subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout)
    return found.group(1) if found else None


def _cuda_build_wanted():
    """True when the CUDA sources are to be compiled; explains itself when not."""
    if _flag("CUCONV_CPU_ONLY"):
        print("cuconv: CUCONV_CPU_ONLY is set: building the CPU kernels only")
        return False
    reasons = []
    if not CUDA_SOURCES:
        reasons.append("there are no CUDA sources in csrc/cuda/")
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    nvcc = _nvcc_version()
    if nvcc is None:
        reasons.append(f"nvcc not found (CUDA_HOME={cpp_extension.CUDA_HOME})")
    elif torch.version.cuda is not None and _major(nvcc) != _major(torch.version.cuda):
        reasons.append(f"nvcc is CUDA {nvcc} but torch {torch.__version__} was built with CUDA {torch.version.cuda} "
                       "(the major versions must match)")
    if not reasons:
        return True
    message = "cuconv: not compiling the CUDA kernels: " + "; ".join(reasons)
    if _flag("CUCONV_REQUIRE_CUDA"):
        sys.exit(message + " (CUCONV_REQUIRE_CUDA is set)")
    print(message)
    return False


class BuildExtension(cpp_extension.BuildExtension):
    """Also writes cuconv/_build_info.py: what the modules were built with and for. Each module
    compiles into a build folder of its own: some sources go into several modules with different
    flags (csrc/tuning in every one, the emulated device's in the sanitizer build too), and a
    shared object file would be rebuilt for each module, or linked into the wrong one."""

    def build_extension(self, ext):
        build_temp = self.build_temp
        self.build_temp = os.path.join(build_temp, ext.name.rsplit(".", 1)[-1])
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = build_temp

    def run(self):
        super().run()
        target = os.path.join(os.path.dirname(self.get_ext_fullpath("cuconv._C")), "_build_info.py")
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
        if WITH_CUDA and not archs:  # torch chose them from the visible GPUs
            archs = " ".join(flag.split("code=")[-1] for flag in cpp_extension._get_cuda_arch_flags())
        with open(target, "w") as f:
            f.write("# Written by setup.py when cuconv's modules were compiled.\n")
            f.write(f"torch_version = {torch.__version__!r}  # built against; runs under any torch >= 2.10\n")
            f.write(f"with_cuda = {WITH_CUDA!r}  # cuconv._C_cuda was built\n")
            f.write(f"cuda_version = {torch.version.cuda if WITH_CUDA else None!r}\n")
            f.write(f"cuda_arch_list = {archs if WITH_CUDA else ''!r}\n")


CUDA_SOURCES = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
TUNING_SOURCES = sorted(glob.glob(os.path.join("csrc", "tuning", "*.cpp")))  # in every module, a table each
WITH_CUDA = _cuda_build_wanted()
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    # torch would look for a GPU to choose the architectures and fail with a bare IndexError.
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    print(f"cuconv: no GPU visible and TORCH_CUDA_ARCH_LIST unset: building the CUDA kernels for "
          f"{DEFAULT_CUDA_ARCHS} (set TORCH_CUDA_ARCH_LIST to choose others)")

# Every module: the stable ABI only (including a non-stable torch header is then an error) and
# Python's limited API.
STABLE = [f"-DTORCH_TARGET_VERSION={TORCH_TARGET_VERSION}"]
LIMITED_API = []  # cpp_extension defines Py_LIMITED_API itself for py_limited_api=True
WARNINGS = ["-Wall", "-Wextra", "-Wno-unused-parameter"]
HIDDEN = ["-fvisibility=hidden"]  # only PyInit_* is exported, as torch's stable headers expect

ext_modules = [
    cpp_extension.CppExtension(
        "cuconv._C",
        sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")) + TUNING_SOURCES),
        # (its CPU tensors go on recycled memory: csrc/cpu/recycled_memory.cpp)
        define_macros=LIMITED_API + [("CUCONV_RECYCLES_CPU_MEMORY", None)],
        extra_compile_args={"cxx": ["-O3", *WARNINGS, *HIDDEN, *STABLE]},
        py_limited_api=True,
    )
]

if WITH_CUDA:
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-Xcompiler=-Wall", *STABLE]
    if _flag("CUCONV_PTXAS_VERBOSE"):
        nvcc_flags.append("-Xptxas=-v")
    ext_modules.append(cpp_extension.CUDAExtension(
        "cuconv._C_cuda",
        CUDA_SOURCES + [os.path.join("csrc", "cuda", "registration.cpp")] + TUNING_SOURCES,
        define_macros=LIMITED_API + [("USE_CUDA", None)],
        extra_compile_args={"cxx": ["-O3", *WARNINGS, *HIDDEN, *STABLE], "nvcc": nvcc_flags + ["-Xcompiler=-fvisibility=hidden"]},
        py_limited_api=True,
    ))


def _emulated_extension(name, sanitize):
    """The CUDA sources as host C++ against the emulated device (csrc/emulation/device.h)."""
    flags = ["-O2", *WARNINGS, "-Wno-unknown-pragmas", *HIDDEN, *STABLE]
    link = []
    if sanitize:
        flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                 "-Wno-unknown-pragmas", *HIDDEN, *STABLE]
        link = ["-fsanitize=address,undefined"]
    return cpp_extension.CppExtension(
        name,
        sorted(glob.glob(os.path.join("csrc", "emulation", "*.cpp"))) + TUNING_SOURCES,
        define_macros=LIMITED_API + [("CUCONV_EMULATED", None), ("CUCONV_EMULATED_MODULE", name.split(".")[-1])],
        extra_compile_args={"cxx": flags},
        extra_link_args=link,
        py_limited_api=True,
    )


_emulated = os.environ.get("CUCONV_EMULATED_CUDA", "").strip().lower()
if _emulated in ("1", "true", "yes", "on", "asan"):
    ext_modules.append(_emulated_extension("cuconv._C_emulated", sanitize=False))
if _emulated == "asan":
    ext_modules.append(_emulated_extension("cuconv._C_emulated_asan", sanitize=True))

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
