"""Builds cuconv._C, the compiled kernels, with torch.utils.cpp_extension.

The extension compiles against the torch installed in the *current* environment,
so install with build isolation off (see README):

    pip install --no-build-isolation .

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
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# torch guesses CUDA_HOME from `which nvcc`; where nvcc is a wrapper script that
# guess is wrong, so prefer the standard location before torch looks.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - only a wrong install command gets here
    sys.exit(
        "cuconv: torch must be installed before cuconv is built, and the build must see it.\n"
        "Install torch first, then: pip install --no-build-isolation ."
    )


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
    if cpp_extension.CUDA_HOME is None or shutil.which(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")) is None:
        reasons.append(f"nvcc not found (CUDA_HOME={cpp_extension.CUDA_HOME})")
    if not reasons:
        return True
    message = "cuconv: not compiling the CUDA kernels: " + "; ".join(reasons)
    if _flag("CUCONV_REQUIRE_CUDA"):
        sys.exit(message + " (CUCONV_REQUIRE_CUDA is set)")
    print(message)
    return False


class BuildExtension(cpp_extension.BuildExtension):
    """Also writes cuconv/_build_info.py: the torch the extension was built against."""

    def run(self):
        super().run()
        target = os.path.join(os.path.dirname(self.get_ext_fullpath("cuconv._C")), "_build_info.py")
        with open(target, "w") as f:
            f.write("# Written by setup.py when cuconv._C was compiled.\n")
            f.write(f"torch_version = {torch.__version__!r}\n")
            f.write(f"with_cuda = {WITH_CUDA!r}\n")
            archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
            if WITH_CUDA and not archs:  # torch chose them from the visible GPUs
                archs = " ".join(flag.split("code=")[-1] for flag in cpp_extension._get_cuda_arch_flags())
            f.write(f"cuda_arch_list = {archs!r}\n")


CUDA_SOURCES = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
WITH_CUDA = _cuda_build_wanted()
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    # torch would look for a GPU to choose the architectures and fail with a bare IndexError.
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    print(f"cuconv: no GPU visible and TORCH_CUDA_ARCH_LIST unset: building the CUDA kernels for "
          f"{DEFAULT_CUDA_ARCHS} (set TORCH_CUDA_ARCH_LIST to choose others)")
sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
define_macros = [("CUCONV_TORCH_VERSION", f'"{torch.__version__}"')]
# -fopenmp: at::parallel_for is a header template that this torch build implements with
# `#pragma omp parallel`; without the flag our loops would silently run on one thread.
extra_compile_args = {"cxx": ["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fopenmp"]}
extra_link_args = ["-fopenmp"]
if WITH_CUDA:
    sources += CUDA_SOURCES
    define_macros.append(("CUCONV_WITH_CUDA", None))
    extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-Xcompiler=-Wall"]
    if _flag("CUCONV_PTXAS_VERBOSE"):
        extra_compile_args["nvcc"].append("-Xptxas=-v")
    Extension = cpp_extension.CUDAExtension
else:
    Extension = cpp_extension.CppExtension

ext_modules = [
    Extension(
        "cuconv._C",
        sources,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )
]


def _emulated_extension(name, sanitize):
    """The CUDA sources as host C++ against the emulated device (csrc/emulation/device.h)."""
    flags = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-unknown-pragmas", "-fvisibility=hidden"]
    link = []
    if sanitize:
        flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                 "-Wno-unknown-pragmas"]
        link = ["-fsanitize=address,undefined"]
    return cpp_extension.CppExtension(
        name,
        sorted(glob.glob(os.path.join("csrc", "emulation", "*.cpp"))),
        define_macros=[("CUCONV_EMULATED", None), ("CUCONV_EMULATED_MODULE", name.split(".")[-1])],
        extra_compile_args={"cxx": flags},
        extra_link_args=link,
    )


_emulated = os.environ.get("CUCONV_EMULATED_CUDA", "").strip().lower()
if _emulated in ("1", "true", "yes", "on", "asan"):
    ext_modules.append(_emulated_extension("cuconv._C_emulated", sanitize=False))
if _emulated == "asan":
    ext_modules.append(_emulated_extension("cuconv._C_emulated_asan", sanitize=True))

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExtension})
