"""cuconv.functional: torch.nn.functional's convolution and pooling, on cuconv's kernels.

Same signatures and defaults as torch.nn.functional. This module turns the Python arguments
into the ops' canonical form (pairs of ints, 4-D input) and checks dtypes (DtypeError: a
TypeError and a RuntimeError); every check that depends on shapes lives with the kernels
(csrc/shape.h, and cuconv/_shape.py for traced calls), and raises ArgumentError (a ValueError
and a RuntimeError): torch raises RuntimeError for both, Python's convention is the other.
"""

import functools
import numbers

import torch
import torch.nn.functional as F

from . import _autocast, _shape
from ._ops import batched_by_vmap, differentiable

__all__ = ["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]


def _public_op(function):
    """The op as the module exports it:
    - under torch.fx.symbolic_trace, whose Proxy its checks cannot read, an input that is a
      Proxy makes it one call_function node of the graph, as torch.nn.functional's ops are;
    - its C++ checks' ValueError (the one error type the stable ABI has for them) is raised as an
      ArgumentError, as the Python checks raise them."""
    @functools.wraps(function)
    def op(*args, **kwargs):
        first = args[0] if args else kwargs.get("input")
        if isinstance(first, torch.fx.Proxy):
            return first.tracer.create_proxy("call_function", op, args, kwargs)
        try:
            return function(*args, **kwargs)
        except ValueError as error:
            if isinstance(error, _shape.ArgumentError):
                raise
            raise _shape.ArgumentError(*error.args) from None
    return op


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_int(value):
    """value as an int where torch's argument parser takes it as one: an int (not a bool), a numpy
    int, or a one-element tensor of an integer or bool dtype (`stride=torch.tensor(2)`); else None.
    A symbolic int (torch.export and compile trace sizes as SymInt) stays as it is: int() would
    make the tracer specialise it."""
    if _is_int(value):
        return int(value)
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not (value.is_floating_point() or value.is_complex()):
        return int(value.item())
    return None


def _int(op, name, value, or_none=False):
    """An int argument (groups, divisor_override) as torch's parser takes it, else a TypeError."""
    as_int = _as_int(value)
    if as_int is None:
        expected = "an int or None" if or_none else "an int"
        raise TypeError(f"{op}: expected {name} to be {expected}, but got {type(value).__name__} {value!r}")
    return as_int


def _bool(op, name, value):
    """A bool flag: torch's parser takes a Python bool only (ceil_mode=1 is a TypeError there too)."""
    if not isinstance(value, bool):
        raise TypeError(f"{op}: expected {name} to be a bool, but got {type(value).__name__} {value!r}")
    return value


def _pair(op, name, value, allow_single=False):
    """An int or a sequence of two ints (or one, where torch allows it) as a tuple of two ints; ints
    as _as_int takes them, and a 1-D tensor as the sequence of its values."""
    if type(value) is int:  # the common cases first, without the slower ABC checks below (~1 us each)
        return (value, value)
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value
    single = _as_int(value)
    if single is not None:
        return (single, single)
    if isinstance(value, (tuple, list, torch.Size)) or (isinstance(value, torch.Tensor) and value.dim() == 1):
        values = [_as_int(v) for v in value]
        if all(v is not None for v in values):
            if len(values) == 2:
                return (values[0], values[1])
            if len(values) == 1 and allow_single:
                return (values[0], values[0])
            expected = "an int or a sequence of 1 or 2 ints" if allow_single else "an int or a pair of ints"
            raise _shape.ArgumentError(f"{op}: expected {name} to be {expected}, but got {name}={tuple(values)!r} "
                                       f"({len(values)} values)")
    raise TypeError(f"{op}: expected {name} to be an int or a pair of ints, but got "
                    f"{type(value).__name__} {value!r}")


def _check_tensor(op, name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: expected {name} to be a torch.Tensor, but got {type(value).__name__}")


def _batched(op, input, check_dtype=_shape.check_floating, channels_may_be_zero=False):
    """(input as 4-D, whether it came unbatched): torch's ops accept (C, H, W) too. The input's
    dtype is checked by check_dtype (None: by the caller); unless told otherwise, every op wants a
    floating-point input. An unbatched input's sizes are checked here, so that a message names the
    shape the caller gave (the op's own checks see it with a batch of 1)."""
    _check_tensor(op, "input", input)
    if check_dtype is not None:
        check_dtype(op, "input", input)
    if input.dim() == 4:
        return input, False
    if input.dim() == 3:
        channels, height, width = input.shape
        if height == 0 or width == 0 or (channels == 0 and not channels_may_be_zero):
            expected = "non-zero height and width" if channels_may_be_zero else "non-zero channels, height and width"
            raise _shape.ArgumentError(f"{op}: expected an unbatched input (C, H, W) to have {expected}, but got shape "
                             f"{tuple(input.shape)}")
        if not batched_by_vmap(input):
            # a 3-D tensor has no channels_last: torch lays out the result and the gradient of one
            # strided as a channels_last batch's sample (HWC) as it does a contiguous one's
            input = input.contiguous()
        return input.unsqueeze(0), True
    raise _shape.ArgumentError(f"{op}: expected input to be 3-D (C, H, W) or 4-D (N, C, H, W), but got "
                     f"{input.dim()}-D with shape {tuple(input.shape)}")


@torch.compiler.assume_constant_result  # read when a graph is traced, as torch's convolution reads it
def _cuda_conv_allows_tf32():
    """Whether torch's own float32 convolutions on CUDA may use TF32: torch.backends.cudnn.conv.fp32_precision,
    or where that is "none" the settings it inherits from (torch.backends.cudnn.fp32_precision, then
    torch.backends.fp32_precision); torch.backends.cudnn.allow_tf32 sets the same flag the legacy way."""
    precision_of = getattr(torch._C, "_get_fp32_precision_getter", None)
    if precision_of is None:  # a torch before the fp32_precision settings
        return bool(torch.backends.cudnn.allow_tf32)
    for backend, op in (("cuda", "conv"), ("cuda", "all"), ("generic", "all")):
        precision = precision_of(backend, op)
        if precision != "none":
            return precision == "tf32"
    return False


@torch.compiler.assume_constant_result
def _cuda_conv_benchmarks():
    """Whether torch's own convolutions on CUDA choose their algorithm by measurement
    (torch.backends.cudnn.benchmark): cuconv's then choose their kernel family so."""
    return bool(torch.backends.cudnn.benchmark)


def _same_padding(input, weight, dilation):
    """Symmetric padding for padding='same', and input padded on the bottom/right when the
    total padding d*(k-1) is odd (as torch does)."""
    if weight.dim() != 4:
        return input, (0, 0)  # the op reports the malformed weight
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    padding = (total[0] // 2, total[1] // 2)
    extra_h, extra_w = total[0] - 2 * padding[0], total[1] - 2 * padding[1]
    if extra_h or extra_w:
        input = F.pad(input, (0, extra_w, 0, extra_h))
    return input, padding


def _convolution_tensors(op, input, weight, bias, channels_may_be_zero=False):
    """(input as 4-D, whether it came unbatched), with weight and bias checked to be tensors (their
    dtypes are checked with the input's, after autocast's casts)."""
    x, unbatched = _batched(op, input, check_dtype=None, channels_may_be_zero=channels_may_be_zero)
    _check_tensor(op, "weight", weight)
    if bias is not None:
        _check_tensor(op, "bias", bias)
    return x, unbatched


def _convolution_input(x, weight):
    """The input as the kernels take it, and the CUDA settings (allow_tf32, benchmark) of a
    convolution or transposed convolution. A channels_last weight makes the result channels_last,
    as torch's: the kernels follow their input's layout (and the weight gradient too, _ops.py), so
    the input is given in it (a clone: `contiguous` keeps a tensor that is also NCHW-contiguous,
    such as one channel, as it is). On CUDA, float32 follows torch's TF32 setting for
    convolutions (README "TF32"), and the kernel family is measured where torch's cudnn.benchmark
    is on (README "Kernel choice by measurement")."""
    if _shape.convolution_prefers_channels_last(x, weight) and not _shape.is_channels_last(x):
        x = x.clone(memory_format=torch.channels_last)
    return x, (x.is_cuda and _cuda_conv_allows_tf32(), x.is_cuda and _cuda_conv_benchmarks())


@_public_op
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as torch.nn.functional.conv2d (padding may be 'same' or 'valid')."""
    op = "cuconv.conv2d"
    x, unbatched = _convolution_tensors(op, input, weight, bias, channels_may_be_zero=True)
    if x.is_complex():
        y = _complex_convolution(op, conv2d, x, weight, bias, stride, padding, dilation, groups)
        return y.squeeze(0) if unbatched else y
    _shape.check_conv2d_dtype(op, "input", x, complex_allowed=True)
    # The dtypes the kernel will see: under torch.autocast, the convolution's casts first.
    cast_x, cast_weight, cast_bias = _autocast.cast_args((x, weight, bias))
    _shape.check_same_dtype_device(op, "input", cast_x, "weight", cast_weight)
    if bias is not None:
        _shape.check_same_dtype_device(op, "input", cast_x, "bias", cast_bias)
    stride = _pair(op, "stride", stride, allow_single=True)
    dilation = _pair(op, "dilation", dilation, allow_single=True)
    groups = _int(op, "groups", groups)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise _shape.ArgumentError(f"{op}: padding='same' is not supported for strided convolutions, "
                                 f"but got stride={stride}")
            x, padding = _same_padding(x, weight, dilation)
        else:
            raise _shape.ArgumentError(f"{op}: expected padding to be 'valid', 'same', an int or a pair of ints, "
                             f"but got {padding!r}")
    else:
        padding = _pair(op, "padding", padding, allow_single=True)
    if x.shape[1] == 0:
        y = _convolution_of_no_channels(op, cast_x, cast_weight, cast_bias, stride, padding, dilation, groups)
        return y.squeeze(0) if unbatched else y
    x, cuda_settings = _convolution_input(x, weight)
    y = differentiable.conv2d(x, weight, bias, stride, padding, dilation, groups, *cuda_settings)
    return y.squeeze(0) if unbatched else y


def _convolution_of_no_channels(op, x, weight, bias, stride, padding, dilation, groups):
    """A convolution of an input with zero channels: each output value is a sum of no products, so
    the bias (or zero), as torch's documented formula has it (torch 2.14 itself returns zero output
    channels there). The kernels take at least one channel, so it is computed here. x and weight
    enter the result as their sums (0) so that their gradients come back, empty, as torch's do."""
    shape = _shape.conv2d_shape(op, x.shape, weight.shape, stride, padding, dilation, groups,
                                channels_may_be_zero=True)
    _shape.check_conv2d_bias(op, bias, shape[1])
    layout = torch.channels_last if _shape.convolution_prefers_channels_last(x, weight) else torch.contiguous_format
    y = torch.zeros(shape, dtype=x.dtype, device=x.device).contiguous(memory_format=layout) + (x.sum() + weight.sum())
    return y if bias is None else y + bias.view(1, -1, 1, 1)


@_public_op
def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The transposed convolution, as torch.nn.functional.conv_transpose2d (weight of shape
    (in_channels, out_channels / groups, kH, kW)): the gradient of the convolution that maps an
    output of this op's size to an input of `input`'s size, with respect to that convolution's
    input; cuconv's conv2d_backward_input kernels compute it, `input` in the role of the
    incoming gradient, and the bias is added after (in float32 for the half types)."""
    op = "cuconv.conv_transpose2d"
    x, unbatched = _convolution_tensors(op, input, weight, bias)
    if x.is_complex():
        y = _complex_convolution(op, conv_transpose2d, x, weight, bias, stride, padding, output_padding, groups,
                                 dilation)
        return y.squeeze(0) if unbatched else y
    _shape.check_floating_or_complex(op, "input", x)
    x, weight, bias = _autocast.cast_args((x, weight, bias))  # (torch's autocast casts it as a convolution)
    _shape.check_same_dtype_device(op, "input", x, "weight", weight)
    if bias is not None:
        _shape.check_same_dtype_device(op, "input", x, "bias", bias)
    result_dtype = x.dtype
    if bias is not None and result_dtype in (torch.float16, torch.bfloat16):
        # The bias is added after the kernels: in a half type the sum would be rounded twice (the
        # kernels' result, then the sum; a third of bfloat16's outputs off by one last place). In
        # float32 and rounded once, as conv2d's kernels add their bias.
        x, weight, bias = x.float(), weight.float(), bias.float()
    stride = _pair(op, "stride", stride, allow_single=True)
    padding = _pair(op, "padding", padding, allow_single=True)
    output_padding = _pair(op, "output_padding", output_padding, allow_single=True)
    dilation = _pair(op, "dilation", dilation, allow_single=True)
    groups = _int(op, "groups", groups)
    size = _shape.conv_transpose2d_shape(op, x.shape, weight.shape, stride, padding, output_padding, dilation,
                                         groups)
    _shape.check_conv2d_bias(op, bias, size[1])
    if torch.jit.is_tracing():
        # torch.jit.trace sees sizes as tensors, and its tracer cannot record them in an op's list
        # of sizes: the trace keeps this input's output size (another input size raises there).
        size = [int(s) for s in size]
    x, cuda_settings = _convolution_input(x, weight)
    if output_padding[0] < stride[0] and output_padding[1] < stride[1] and size[2] > 0 and size[3] > 0:
        # The convolution with these arguments maps an output of this size back to the input's.
        y = differentiable.conv2d_backward_input(x, weight, size, stride, padding, dilation, groups,
                                                 *cuda_settings)
        if tuple(x.shape[1:]) == (1, 1, 1) and _shape.convolution_prefers_channels_last(x, weight):
            # (no strides of one value a sample read as channels_last, and the kernels follow x's)
            y = y.clone(memory_format=torch.channels_last)
    else:
        # Output padding of at least the stride (torch allows it below the dilation), or an empty
        # output: no convolution maps this size back to the input's. The whole transposed convolution,
        # unpadded (the first (in - 1) * stride + reach rows and columns of any padding's), is
        # cropped by the padding at the top and left, and zeros fill what it does not reach.
        reach = [dilation[i] * (weight.shape[2 + i] - 1) + 1 for i in (0, 1)]
        whole = [int((x.shape[2 + i] - 1) * stride[i] + reach[i]) for i in (0, 1)]
        y = differentiable.conv2d_backward_input(x, weight, (size[0], size[1], *whole), stride, (0, 0), dilation,
                                                 groups, *cuda_settings)
        y = y[:, :, padding[0]:padding[0] + size[2], padding[1]:padding[1] + size[3]]
        y = F.pad(y, (0, size[3] - y.shape[3], 0, size[2] - y.shape[2]))
        if _shape.is_channels_last(x) and not _shape.is_channels_last(y):
            y = y.clone(memory_format=torch.channels_last)  # (padding cropped it all: F.pad made it NCHW)
    if bias is not None:
        y = (y + bias.view(1, -1, 1, 1)).to(result_dtype)
    return y.squeeze(0) if unbatched else y


def _real_and_imaginary(t):
    """The real and imaginary parts of a complex tensor, as dense tensors in its layout (the parts
    are strided views, which would lose a channels_last layout). (A conjugate's imaginary part is a
    lazily negated view: torch's dispatcher negates it before a kernel reads it.)"""
    layout = torch.channels_last if _shape.suggests_channels_last(t) else torch.contiguous_format
    return tuple(part.contiguous(memory_format=layout) for part in (t.real, t.imag))


def _complex_convolution(op, conv, x, weight, bias, *conv_args):
    """A complex convolution (conv: conv2d or conv_transpose2d) as three real ones (Gauss's trick,
    as torch computes it): with x = a + ib, weight = c + id and bias = e + if, and conv linear in
    the input and the weight,
        real part       = conv(a, c) + e - conv(b, d)
        imaginary part  = conv(a + b, c + d) + e + f - (conv(a, c) + e) - conv(b, d).
    Autograd differentiates through the parts (torch's complex gradient convention). Autocast
    leaves complex tensors alone, as torch's convolution: the real ones run in the parts' dtype."""
    _shape.check_same_dtype_device(op, "input", x, "weight", weight)
    if bias is not None:
        _shape.check_same_dtype_device(op, "input", x, "bias", bias)
    (a, b), (c, d) = _real_and_imaginary(x), _real_and_imaginary(weight)
    e, f = _real_and_imaginary(bias) if bias is not None else (None, None)
    with _autocast.disabled(x.device.type):
        ac = conv(a, c, e, *conv_args)
        bd = conv(b, d, None, *conv_args)
        cross = conv(a + b, c + d, e + f if bias is not None else None, *conv_args)
    return torch.complex(ac - bd, cross - ac - bd)


def _pool_args(op, kernel_size, stride, padding):
    kernel_size = _pair(op, "kernel_size", kernel_size, allow_single=True)
    # torch treats stride=None and stride=[] as "stride = kernel_size".
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel_size
    return kernel_size, _pair(op, "stride", stride, allow_single=True), _pair(
        op, "padding", padding, allow_single=True)


def _pooling_input(x):
    """The input as the pooling kernels take it: torch's pooling returns channels_last where the
    input suggests it (_shape.py), strided or not, and the kernels run NHWC on dense channels_last
    tensors, so a strided one that suggests it (a crop of a channels_last tensor) is given as a
    dense copy in that layout. (Not under vmap, which copies into no layout but its own. A dense
    NCHW tensor, the common case, is settled by one call into torch.)"""
    if x.is_contiguous() or batched_by_vmap(x) or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous(memory_format=torch.channels_last) if _shape.suggests_channels_last(x) else x


@_public_op
def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling, as torch.nn.functional.max_pool2d (integer tensors too, as torch's CPU
    max pooling; on the CPU and CUDA)."""
    op = "cuconv.max_pool2d"
    x, unbatched = _batched(op, input, check_dtype=_shape.check_floating_or_integer)
    kernel_size, stride, padding = _pool_args(op, kernel_size, stride, padding)
    dilation = _pair(op, "dilation", dilation, allow_single=True)
    y, indices = differentiable.max_pool2d(_pooling_input(x), kernel_size, stride, padding, dilation,
                                           _bool(op, "ceil_mode", ceil_mode))
    if unbatched:
        y, indices = y.squeeze(0), indices.squeeze(0)
    return (y, indices) if return_indices else y


@_public_op
def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling, as torch.nn.functional.avg_pool2d (int64 tensors too on the CPU, as torch's:
    each window's sum divided by its divisor, rounding toward zero)."""
    op = "cuconv.avg_pool2d"
    x, unbatched = _batched(op, input, check_dtype=_shape.check_avg_pool2d_dtype)
    kernel_size, stride, padding = _pool_args(op, kernel_size, stride, padding)
    if divisor_override is not None:
        divisor_override = _int(op, "divisor_override", divisor_override, or_none=True)
    y = differentiable.avg_pool2d(_pooling_input(x), kernel_size, stride, padding, _bool(op, "ceil_mode", ceil_mode),
                                  _bool(op, "count_include_pad", count_include_pad), divisor_override)
    return y.squeeze(0) if unbatched else y


@_public_op
def adaptive_avg_pool2d(input, output_size):
    """2-D adaptive average pooling, as torch.nn.functional.adaptive_avg_pool2d.
    output_size: an int, or (H, W) where None keeps the input's size."""
    op = "cuconv.adaptive_avg_pool2d"
    x, unbatched = _batched(op, input, check_dtype=_shape.check_floating_or_complex, channels_may_be_zero=True)
    x = _pooling_input(x)
    if isinstance(output_size, (tuple, list, torch.Size)) and len(output_size) == 2 and None in output_size:
        output_size = tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(output_size))
    output_size = _pair(op, "output_size", output_size)
    if x.is_complex():  # (a mean: of the real and the imaginary parts apart)
        real, imaginary = _real_and_imaginary(x)
        y = torch.complex(differentiable.adaptive_avg_pool2d(real, output_size),
                          differentiable.adaptive_avg_pool2d(imaginary, output_size))
    else:
        y = differentiable.adaptive_avg_pool2d(x, output_size)
    return y.squeeze(0) if unbatched else y
