"""Autocast (torch.autocast) for cuconv's convolution, with torch.nn's casting policy.

torch runs conv2d in the autocast dtype on every device that has autocast (CPU: the
lower-precision list, CUDA: the float16 list) and leaves pooling alone (it runs in the
dtype of its input). cuconv's conv2d does the same: in an enabled autocast region its
floating-point arguments, except float64 ones, are cast to torch.get_autocast_dtype(device)
before the kernel runs. Pooling needs nothing: the autocast keys fall through to it.

The cast happens in two places, for the two ways in (_ops.py): in differentiable.conv2d,
before its autograd.Function, so that the casts are recorded by autograd and the backward
pass sees the dtypes the forward used; and in the op's Autocast kernels, for code that calls
torch.ops.cuconv.conv2d directly. torch.library.register_autocast would cast to one dtype
fixed at registration; torch's autocast dtype is chosen per region, hence these kernels.
"""

import contextlib

import torch

DEVICES = ("cpu", "cuda")


def _cast(value, device_type, dtype):
    if (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64
            and value.device.type == device_type):
        return value.to(dtype)
    return value


def cast_args(args):
    """args with their tensors cast as torch's autocast casts a convolution's (unchanged outside autocast)."""
    device_type = args[0].device.type
    if device_type not in DEVICES or not torch.is_autocast_enabled(device_type):
        return args
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(_cast(arg, device_type, dtype) for arg in args)


def disabled(device_type):
    """A region where autocast is off for device_type (no-op where it is not on)."""
    if device_type in DEVICES and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def register_kernels(lib, name, op):
    """Autocast kernels of cuconv::name for every autocast device: cast, then run the op below autocast."""
    for device_type in DEVICES:
        key = getattr(torch._C.DispatchKey, "Autocast" + torch._C._dispatch_key_for_device(device_type))

        def autocast_kernel(*args, key=key):
            args = cast_args(args)  # before the guard: autocast reads as disabled under it
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
                return op(*args)

        # The same kernel for the C++ dispatcher (eager) and torch's Python dispatcher (tracing).
        op.py_impl(key)(autocast_kernel)
        lib.impl(name, lambda _keyset, *args, kernel=autocast_kernel: kernel(*args), key.name, with_keyset=True)
