"""cuconv: hand-written convolution and pooling kernels as PyTorch ops.

    import cuconv
    y = cuconv.functional.conv2d(x, w, b, stride=2, padding=1)
    layer = cuconv.Conv2d(3, 16, 3, padding=1)        # a drop-in torch.nn.Conv2d
    model = cuconv.convert(torchvision.models.resnet18())
"""

import torch as _torch

# The oldest torch whose stable ABI cuconv's modules are built on (setup.py TORCH_TARGET_VERSION).
MIN_TORCH = (2, 10)


def _torch_version():
    return tuple(int(part) for part in _torch.__version__.split("+")[0].split(".")[:2])


def _check_build():
    """Fail with a clear message when the compiled modules are missing or torch is too old."""
    if _torch_version() < MIN_TORCH:
        raise ImportError(f"cuconv: needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (its stable C++ ABI), but torch "
                          f"{_torch.__version__} is installed")
    try:
        from . import _build_info  # noqa: F401
    except ImportError as error:
        import os

        package = os.path.dirname(os.path.abspath(__file__))
        if os.path.exists(os.path.join(package, os.pardir, "setup.py")):
            hint = (f"Python imported cuconv from its source folder {package}, which holds no build "
                    "(running `python -m ...` from the repository root does that). Run from another "
                    "folder or use the `cuconv` command, or build in place with\n"
                    "    pip install --no-build-isolation -e .\n")
        else:
            hint = "Install it with\n    pip install .\nfrom the cuconv source folder (see README.md)."
        raise ImportError("cuconv: the compiled extension cuconv._C is missing. " + hint) from error


def _load_cuda_kernels():
    """Import cuconv._C_cuda (binding the CUDA kernels) where it was built and can run: the
    running torch must have CUDA of the major version it was built with. Otherwise one warning
    says why and how to rebuild; the CPU kernels work either way. Returns whether it loaded."""
    from . import _build_info

    if not _build_info.with_cuda:
        return False
    built = _build_info.cuda_version
    major = built.split(".")[0]
    if _torch.version.cuda is None:
        reason = (f"torch {_torch.__version__} is a CPU-only build; install a CUDA {major} build of torch for "
                  "them")
    elif _torch.version.cuda.split(".")[0] != major:
        reason = (f"torch {_torch.__version__} uses CUDA {_torch.version.cuda}; rebuild cuconv against it "
                  "(pip install --force-reinstall --no-deps .)")
    else:
        try:
            from . import _C_cuda  # noqa: F401
            return True
        except ImportError as error:
            reason = f"cuconv._C_cuda does not load ({error}); rebuild cuconv (pip install --force-reinstall --no-deps .)"
    import warnings

    warnings.warn(f"cuconv: the CUDA kernels (built for CUDA {built}) are not loaded: {reason}. The CPU kernels "
                  "work.", RuntimeWarning, stacklevel=3)
    return False


_check_build()

from . import functional  # noqa: E402
from ._build_info import torch_version as built_with_torch  # noqa: E402
from ._ops import ops  # noqa: E402
from ._shape import ArgumentError, DtypeError  # noqa: E402
from . import _batching, _fake, _flops  # noqa: E402,F401  (vmap rules, fake kernels, FLOP counts)
from .book import corr2d, corr2d_multi_in, corr2d_multi_in_out, corr2d_multi_in_out_1x1, pool2d  # noqa: E402
from .modules import (AdaptiveAvgPool2d, AvgPool2d, Conv2d, ConvTranspose2d, LazyConv2d,  # noqa: E402
                      LazyConvTranspose2d, MaxPool2d, convert)

with_cuda = _load_cuda_kernels()  # cuconv's CUDA kernels are registered for CUDA tensors

from . import _C  # noqa: E402

_C.cpu_memory()  # a bad CUCONV_RECYCLE_CPU_MEMORY raises ValueError here, not inside a kernel (cuconv.memory)


def _version():
    from importlib import metadata

    try:
        return metadata.version("cuconv")
    except metadata.PackageNotFoundError:  # an in-place build that was never installed
        return "0+unknown"


__version__ = _version()

from . import tuning  # noqa: E402  (the measured CPU kernel choices)

tuning._use_cache_from_environment()

# Submodules imported on first use, so that `import cuconv` stays light (PEP 562):
# cuconv.data, .info, .memory, .models, .onnx and .train work after a plain `import cuconv`.
_LAZY_SUBMODULES = ("data", "info", "memory", "models", "onnx", "train")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    "functional", "ops", "Conv2d", "LazyConv2d", "ConvTranspose2d", "LazyConvTranspose2d", "MaxPool2d", "AvgPool2d",
    "AdaptiveAvgPool2d",
    "convert", "corr2d", "corr2d_multi_in", "corr2d_multi_in_out", "corr2d_multi_in_out_1x1",
    "pool2d", "with_cuda", "built_with_torch", "tuning", "ArgumentError", "DtypeError",
]
