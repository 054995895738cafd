"""The emulated CUDA device in the test suite (csrc/emulation/, built with CUCONV_EMULATED_CUDA=1).

The extension cuconv._C_emulated holds csrc/cuda's kernels and host entry points compiled as
host C++, registered for CPU tensors as torch.ops.cuconv_emulated.*. Under `routed()`, cuconv's
own CPU dispatch goes to them: every test written for a device runs on the CUDA kernels, with
CPU tensors, through cuconv.functional, autograd, vmap and opcheck exactly as on a GPU.
"""

import contextlib
import functools
import importlib
import os
import warnings

import torch

# The sanitizer build (cuconv._C_emulated_asan) is chosen by CUCONV_EMULATED_MODULE in a process
# started with AddressSanitizer preloaded (tests/test_emulation.py does that).
MODULE_NAME = os.environ.get("CUCONV_EMULATED_MODULE", "_C_emulated")
try:
    module = importlib.import_module(f"cuconv.{MODULE_NAME}")
except ImportError:
    module = None

AVAILABLE = module is not None

OPS = ["conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias", "max_pool2d",
       "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d",
       "adaptive_avg_pool2d_backward"]


def _call(target, *args):
    return target(*args)


@contextlib.contextmanager
def routed(**settings):
    """cuconv's CPU kernels replaced by the emulated CUDA kernels inside the block, with the
    emulated device configured as asked (module.configure's keywords; restored afterwards)."""
    saved = module.configure()
    module.configure(**settings)
    library = torch.library.Library("cuconv", "IMPL")  # noqa: TOR901
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel.*")
            for name in OPS:
                library.impl(name, functools.partial(_call, getattr(torch.ops.cuconv_emulated, name).default), "CPU")
        yield module
    finally:
        library._destroy()  # the CPU kernels are cuconv's own again
        module.configure(**{k: saved[k] for k in settings})


@contextlib.contextmanager
def configured(**settings):
    """The emulated device configured as asked inside the block (restored afterwards)."""
    saved = module.configure()
    module.configure(**settings)
    try:
        yield module
    finally:
        module.configure(**{k: saved[k] for k in settings})
