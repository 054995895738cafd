"""cuconv: hand-written convolution and pooling kernels as PyTorch ops.

    import cuconv
    y = cuconv.functional.conv2d(x, w, b, stride=2, padding=1)
    layer = cuconv.Conv2d(3, 16, 3, padding=1)        # a drop-in torch.nn.Conv2d
    model = cuconv.convert(torchvision.models.resnet18())
"""

import torch as _torch


def _check_build():
    """Fail with a clear message when cuconv._C was built for another torch."""
    try:
        from . import _build_info
    except ImportError as error:
        import os

        package = os.path.dirname(os.path.abspath(__file__))
        if os.path.exists(os.path.join(package, os.pardir, "setup.py")):
            hint = (f"Python imported cuconv from its source folder {package}, which holds no build "
                    "(running `python -m ...` from the repository root does that). Run from another "
                    "folder or use the `cuconv` command, or build in place with\n"
                    "    pip install --no-build-isolation -e .\n")
        else:
            hint = ("Build it against your torch with\n    pip install --no-build-isolation .\n"
                    "from the cuconv source folder (see README.md).")
        raise ImportError("cuconv: the compiled extension cuconv._C is missing. " + hint) from error
    if _build_info.torch_version != _torch.__version__:
        raise ImportError(
            f"cuconv: cuconv._C was built against torch {_build_info.torch_version}, but torch "
            f"{_torch.__version__} is installed. Rebuild cuconv with this torch:\n"
            "    pip install --no-build-isolation --force-reinstall --no-deps .\n"
        )


_check_build()

from . import functional  # noqa: E402
from ._build_info import torch_version as built_with_torch, with_cuda  # noqa: E402
from ._ops import ops  # noqa: E402
from . import _batching  # noqa: E402,F401  (vmap rules)
from .book import corr2d, corr2d_multi_in, corr2d_multi_in_out, corr2d_multi_in_out_1x1, pool2d  # noqa: E402
from .modules import AdaptiveAvgPool2d, AvgPool2d, Conv2d, LazyConv2d, MaxPool2d, convert  # noqa: E402


def _version():
    from importlib import metadata

    try:
        return metadata.version("cuconv")
    except metadata.PackageNotFoundError:  # an in-place build that was never installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "functional", "ops", "Conv2d", "LazyConv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
    "convert", "corr2d", "corr2d_multi_in", "corr2d_multi_in_out", "corr2d_multi_in_out_1x1",
    "pool2d", "with_cuda", "built_with_torch",
]
