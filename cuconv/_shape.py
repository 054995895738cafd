"""cuconv's argument checks and output sizes, for the fake (meta) kernels of _fake.py.

The compiled kernels check their arguments in C++ (csrc/shape.h); torch.compile and
torch.export run the ops on fake tensors whose sizes may be symbolic (SymInt), which the
stable ABI cannot pass to C++, so the same checks run here in Python, with the same
messages: each function below mirrors the C++ function of the same name, line for line.
tests/test_shape_checks.py holds the two to each other on random arguments, valid and not.

The dtype and device checks raise DtypeError / RuntimeError here, before any kernel sees the
tensors; cuconv.functional runs them for eager calls too. Bad shapes and values raise
ArgumentError (the C++ checks' ValueError becomes one in cuconv.functional).
"""

import torch


class ArgumentError(ValueError, RuntimeError):
    """A bad shape or argument value: a ValueError, and a RuntimeError as well, which torch raises
    for the same calls, so that code written for either (or for torch.nn) catches it."""


class DtypeError(TypeError, RuntimeError):
    """A tensor of a dtype the op does not take, or operands of different dtypes: a TypeError, and
    a RuntimeError as well, as torch raises there."""


def _sizes(values):
    """Sizes printed as C++ prints them: [2, 3, 8, 8]."""
    return "[" + ", ".join(str(v) for v in values) + "]"


def _value_error(condition, *parts):
    if not condition:
        raise ArgumentError("".join(str(p) for p in parts))


def check_pair(op, name, values, min_value):
    _value_error(len(values) == 2, op, ": expected ", name, " to be a pair of ints (height, width), but got ",
                 len(values), " values ", _sizes(values))
    _value_error(values[0] >= min_value and values[1] >= min_value, op, ": expected every ", name,
                 " value to be >= ", min_value, ", but got ", name, "=", _sizes(values))


def check_image_batch(op, name, size):
    _value_error(len(size) == 4, op, ": expected ", name, " to be 4-D (batch, channels, height, width), but got ",
                 len(size), "-D with shape ", _sizes(size))
    _value_error(size[1] > 0 and size[2] > 0 and size[3] > 0, op, ": expected ", name,
                 " to have non-zero channels, height and width (only the batch may be 0), but got shape ",
                 _sizes(size))


def check_same_dtype_device(op, name_a, a, name_b, b):
    if a.dtype != b.dtype:
        raise DtypeError(f"{op}: expected {name_b} to have the dtype of {name_a} ({_dtype_name(a.dtype)}), but got "
                        f"{_dtype_name(b.dtype)}")
    if a.device != b.device:
        raise RuntimeError(f"{op}: expected {name_b} to be on the device of {name_a} ({a.device}), but got {b.device}")


def check_floating(op, name, t):
    if not t.is_floating_point():
        raise DtypeError(f"{op}: expected {name} to be a floating-point tensor, but got {_dtype_name(t.dtype)}")


# The integer dtypes an op takes besides the floating-point ones (csrc/shape.h's Integers): torch's
# CPU convolution takes every integer type, its CPU average pooling int64 and its CPU max pooling
# every integer type; their CUDA twins take none, nor do cuconv's CUDA kernels but max pooling's.
# Through cuconv.functional, convolution and adaptive average pooling also take complex tensors
# (computed from the real and imaginary parts).
ALL_INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_floating_or(op, name, t, integers, complex_allowed=False, integers_on_cpu=False):
    """A floating-point tensor, one of `integers`, or a complex one where allowed; integers_on_cpu:
    the op takes integer tensors on the CPU (the message says so for one on another device)."""
    if t.is_floating_point() or t.dtype in integers or (complex_allowed and t.is_complex()):
        return
    kinds = (["floating-point"] + (["integer"] if integers == ALL_INTEGERS else [str(d).removeprefix("torch.") for d in integers])
             + (["complex"] if complex_allowed else []))  # (int64: as csrc/shape.h names it)
    expected = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]
    note = " (integer tensors: on the CPU only, as torch's)" if integers_on_cpu and t.dtype in ALL_INTEGERS else ""
    raise DtypeError(f"{op}: expected {name} to be a {expected} tensor, but got {_dtype_name(t.dtype)}{note}")


def check_floating_or_integer(op, name, t):  # (max pooling, on the CPU and CUDA)
    check_floating_or(op, name, t, ALL_INTEGERS)


def check_floating_or_complex(op, name, t):
    check_floating_or(op, name, t, (), complex_allowed=True)


def _takes_cpu_dtypes(t):
    """The CPU's dtypes: on the CPU, and on the meta device (shapes only; torch's meta kernels take
    integer tensors for these ops too)."""
    return t.device.type in ("cpu", "meta")


def check_conv2d_dtype(op, name, t, complex_allowed=False):
    if t.is_floating_point():  # (the common case first: reading the device costs ~2 us on a slow VM)
        return
    on_cpu = _takes_cpu_dtypes(t)
    check_floating_or(op, name, t, ALL_INTEGERS if on_cpu else (), complex_allowed, integers_on_cpu=not on_cpu)


def check_avg_pool2d_dtype(op, name, t):
    if t.is_floating_point():  # (as check_conv2d_dtype)
        return
    on_cpu = _takes_cpu_dtypes(t)
    check_floating_or(op, name, t, (torch.int64,) if on_cpu else (), integers_on_cpu=not on_cpu)


# --- convolution -------------------------------------------------------------------------------

def suggests_channels_last(t):
    """Whether torch reads a 4-D tensor as channels_last (Tensor.suggest_memory_format(), which
    torch's convolutions follow): by the order of its strides, C innermost, then W, H, N; where
    size-1 dimensions leave both orders possible, NCHW (csrc/stable.h reads strides the same way).
    From the strides alone: inside torch.func.vmap, is_contiguous takes no memory format."""
    if t.dim() != 4:
        return False
    sizes, strides = t.shape, t.stride()  # (read once: each call into torch costs ~0.3 us)
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * max(sizes[d], 1)
    return True


def is_channels_last(t):
    """csrc/stable.h's is_channels_last, the kernels' rule for a channels_last input (and result):
    torch reads it as channels_last, and it is dense in that order."""
    return suggests_channels_last(t) and _dense_in_order(t, (0, 2, 3, 1))


def _dense_in_order(t, dims):
    """Dense with dims from outermost to innermost, size-1 dims ignored, as torch's is_contiguous
    reads it ((0, 2, 3, 1): channels_last)."""
    sizes, strides = t.shape, t.stride()
    expected = 1
    for d in reversed(dims):
        if sizes[d] != 1:
            if strides[d] != expected:
                return False
            expected *= sizes[d]
    return True


def convolution_prefers_channels_last(input, weight):
    """torch's CPU and cuDNN convolutions return channels_last results, gradients included, when
    the input or the weight suggests it (cuDNN not in float64, which it has no NHWC kernels for)."""
    if input.is_cuda and torch.float64 in (input.dtype, weight.dtype):
        return False
    return suggests_channels_last(input) or suggests_channels_last(weight)


def conv2d_shape(op, input_size, weight_size, stride, padding, dilation, groups, channels_may_be_zero=False):
    """(batch, out_channels, out_h, out_w) after every check of csrc/shape.h's conv2d_shape
    (channels_may_be_zero: all but the first, for cuconv.functional's convolution of no channels)."""
    check_pair(op, "stride", stride, 1)
    check_pair(op, "padding", padding, 0)
    check_pair(op, "dilation", dilation, 1)
    _value_error(groups >= 1, op, ": expected groups >= 1, but got groups=", groups)
    _value_error(len(input_size) == 4, op, ": expected input to be 4-D (batch, channels, height, width), but got ",
                 len(input_size), "-D with shape ", _sizes(input_size))
    _value_error(len(weight_size) == 4, op,
                 ": expected weight to be 4-D (out_channels, in_channels/groups, kH, kW), but got ",
                 len(weight_size), "-D with shape ", _sizes(weight_size))
    batch, in_channels, in_h, in_w = input_size
    out_channels, kernel_h, kernel_w = weight_size[0], weight_size[2], weight_size[3]
    _value_error(kernel_h > 0 and kernel_w > 0, op, ": expected a kernel of at least 1x1, but got weight of shape ",
                 _sizes(weight_size))
    _value_error(in_channels > 0 or channels_may_be_zero, op, ": expected input to have at least one channel, but got shape ",
                 _sizes(input_size))
    _value_error(in_h > 0 and in_w > 0, op, ": expected input to have a height and width of at least 1, but got shape ",
                 _sizes(input_size))
    _value_error(out_channels >= groups, op, ": expected weight to have at least groups=", groups,
                 " output channels, but got weight of shape ", _sizes(weight_size))
    _value_error(out_channels % groups == 0, op, ": expected out_channels (weight.shape[0]=", out_channels,
                 ") to be divisible by groups=", groups)
    _value_error(in_channels == weight_size[1] * groups, op, ": given groups=", groups, " and weight of shape ",
                 _sizes(weight_size), ", expected input of shape ", _sizes(input_size), " to have ",
                 weight_size[1] * groups, " channels, but got ", in_channels)
    padded_h, padded_w = in_h + 2 * padding[0], in_w + 2 * padding[1]
    reach_h, reach_w = dilation[0] * (kernel_h - 1) + 1, dilation[1] * (kernel_w - 1) + 1
    _value_error(padded_h >= reach_h and padded_w >= reach_w, op, ": expected the dilated kernel (", reach_h, " x ",
                 reach_w, ") to fit in the padded input (", padded_h, " x ", padded_w,
                 "), but it is larger (weight shape ", _sizes(weight_size), ", input shape ", _sizes(input_size),
                 ", padding ", _sizes(padding), ", dilation ", _sizes(dilation), ")")
    return (batch, out_channels, (padded_h - reach_h) // stride[0] + 1, (padded_w - reach_w) // stride[1] + 1)


def conv_transpose2d_shape(op, input_size, weight_size, stride, padding, output_padding, dilation, groups):
    """The transposed convolution's output size (batch, out_channels, out_h, out_w), after torch's
    checks. Python only (no C++ twin): cuconv.functional composes the op from
    conv2d_backward_input, whose own checks then hold. It runs on every call, torch.compile's
    traces of cuconv.functional included, where sizes may be symbolic: so each message is built
    only to be raised."""
    for name, values, low in (("stride", stride, 1), ("padding", padding, 0), ("output_padding", output_padding, 0),
                              ("dilation", dilation, 1)):  # (pairs: cuconv.functional's _pair made them)
        if not (values[0] >= low and values[1] >= low):
            raise ArgumentError(f"{op}: expected every {name} value to be >= {low}, but got {name}={_sizes(values)}")
    if groups < 1:
        raise ArgumentError(f"{op}: expected groups >= 1, but got groups={groups}")
    if len(input_size) != 4:
        raise ArgumentError(f"{op}: expected input to be 4-D (batch, channels, height, width), but got "
                         f"{len(input_size)}-D with shape {_sizes(input_size)}")
    if len(weight_size) != 4:
        raise ArgumentError(f"{op}: expected weight to be 4-D (in_channels, out_channels/groups, kH, kW), but got "
                         f"{len(weight_size)}-D with shape {_sizes(weight_size)}")
    batch, in_channels, in_h, in_w = input_size
    if not (weight_size[1] > 0 and weight_size[2] > 0 and weight_size[3] > 0):
        raise ArgumentError(f"{op}: expected weight to have at least one output channel per group and a kernel of at "
                         f"least 1x1, but got weight of shape {_sizes(weight_size)}")
    if not (in_channels > 0 and in_h > 0 and in_w > 0):
        raise ArgumentError(f"{op}: expected input to have non-zero channels, height and width (only the batch may "
                         f"be 0), but got shape {_sizes(input_size)}")
    if in_channels % groups != 0:
        raise ArgumentError(f"{op}: expected in_channels (input.shape[1]={in_channels}) to be divisible by "
                         f"groups={groups}")
    if weight_size[0] != in_channels:
        raise ArgumentError(f"{op}: expected weight of shape [in_channels, out_channels/groups, kH, kW] with "
                         f"in_channels={in_channels} (the input's channels), but got weight of shape "
                         f"{_sizes(weight_size)}")
    if not all(output_padding[i] < max(stride[i], dilation[i]) for i in (0, 1)):
        raise ArgumentError(f"{op}: expected output_padding to be smaller than the stride or the dilation, but got "
                         f"output_padding={_sizes(output_padding)}, stride={_sizes(stride)}, "
                         f"dilation={_sizes(dilation)}")
    out = [(size - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight_size[2 + i] - 1) + 1 + output_padding[i]
           for i, size in enumerate((in_h, in_w))]
    if not (out[0] >= 0 and out[1] >= 0):  # (an empty output, 0 high or wide, is torch's result too)
        raise ArgumentError(f"{op}: input of shape {_sizes(input_size)} with weight of shape {_sizes(weight_size)}, "
                         f"stride={_sizes(stride)}, padding={_sizes(padding)}, output_padding="
                         f"{_sizes(output_padding)} and dilation={_sizes(dilation)} gives an output of {out[0]} x "
                         f"{out[1]}: expected no negative size")
    return (batch, weight_size[1] * groups, out[0], out[1])


def check_conv2d_bias(op, bias, out_channels):
    if bias is None:
        return
    _value_error(bias.dim() == 1 and bias.shape[0] == out_channels, op, ": expected bias of shape [", out_channels,
                 "] (one value per output channel), but got shape ", _sizes(bias.shape))


def check_conv2d(op, input, weight, bias, stride, padding, dilation, groups):
    check_conv2d_dtype(op, "input", input)
    check_same_dtype_device(op, "input", input, "weight", weight)
    if bias is not None:
        check_same_dtype_device(op, "input", input, "bias", bias)
    shape = conv2d_shape(op, input.shape, weight.shape, stride, padding, dilation, groups)
    check_conv2d_bias(op, bias, shape[1])
    return shape


def check_grad_output(op, grad_size, expected):
    _value_error(list(grad_size) == list(expected), op, ": expected grad_output of shape ", _sizes(expected),
                 ", but got ", _sizes(grad_size))


def check_conv2d_backward_input(op, grad_output, weight, input_size, stride, padding, dilation, groups):
    check_same_dtype_device(op, "grad_output", grad_output, "weight", weight)
    shape = conv2d_shape(op, input_size, weight.shape, stride, padding, dilation, groups)
    check_grad_output(op, grad_output.shape, shape)


def check_conv2d_backward_weight(op, grad_output, input, weight_size, stride, padding, dilation, groups):
    check_same_dtype_device(op, "grad_output", grad_output, "input", input)
    shape = conv2d_shape(op, input.shape, weight_size, stride, padding, dilation, groups)
    check_grad_output(op, grad_output.shape, shape)


# --- pooling -----------------------------------------------------------------------------------

def pool_output_size(size, kernel, stride, pad, dilation, ceil_mode):
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1  # Python's // rounds toward -inf, as the C++ does by hand
    if ceil_mode and (out - 1) * stride >= size + pad:
        out = out - 1
    return out


def check_windows_reach_input(op, axis, size, out, stride, pad, dilation):
    o = 0
    while o * stride < pad and o < out:
        start = o * stride - pad
        first_inside = start + (-start + dilation - 1) // dilation * dilation
        _value_error(first_inside < size, op, ": the pooling window of output ", axis, " index ", o,
                     " lies entirely in the padding (input ", axis, " ", size, ", padding ", pad, ", dilation ",
                     dilation, ", stride ", stride,
                     "): use less padding or dilation so that every window covers the input")
        o += 1


def pool2d_shape(op, input_size, kernel_size, stride, padding, dilation, ceil_mode):
    """(batch, channels, out_h, out_w) after every check of csrc/shape.h's pool2d_shape."""
    check_pair(op, "kernel_size", kernel_size, 1)
    check_pair(op, "stride", stride, 1)
    check_pair(op, "padding", padding, 0)
    check_pair(op, "dilation", dilation, 1)
    _value_error(padding[0] <= kernel_size[0] // 2 and padding[1] <= kernel_size[1] // 2, op,
                 ": expected padding to be at most half of kernel_size ", _sizes(kernel_size), ", but got padding=",
                 _sizes(padding))
    check_image_batch(op, "input", input_size)
    batch, channels, in_h, in_w = input_size
    out_h = pool_output_size(in_h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    out_w = pool_output_size(in_w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    _value_error(out_h >= 1 and out_w >= 1, op, ": input of shape ", _sizes(input_size), " is too small for kernel_size=",
                 _sizes(kernel_size), ", stride=", _sizes(stride), ", padding=", _sizes(padding), ", dilation=",
                 _sizes(dilation), ": the output would be ", out_h, " x ", out_w)
    check_windows_reach_input(op, "height", in_h, out_h, stride[0], padding[0], dilation[0])
    check_windows_reach_input(op, "width", in_w, out_w, stride[1], padding[1], dilation[1])
    return (batch, channels, out_h, out_w)


def check_divisor_override(op, divisor_override):
    _value_error(divisor_override is None or divisor_override != 0, op,
                 ": expected divisor_override to be a non-zero int or None, but got 0")


def check_adaptive_input(op, name, input_size):
    _value_error(len(input_size) == 4 and input_size[2] > 0 and input_size[3] > 0, op, ": expected ", name,
                 " to be 4-D (batch, channels, height, width) with non-zero height and width, but got ",
                 len(input_size), "-D with shape ", _sizes(input_size))


def check_adaptive_avg_pool2d(op, input, output_size):
    check_floating(op, "input", input)
    check_pair(op, "output_size", output_size, 0)
    check_adaptive_input(op, "input", input.shape)


def check_adaptive_backward(op, grad_size, input_size):
    check_adaptive_input(op, "input_size", input_size)
    _value_error(len(grad_size) == 4 and grad_size[0] == input_size[0] and grad_size[1] == input_size[1], op,
                 ": expected grad_output's batch and channels to match input_size ", _sizes(input_size),
                 ", but got grad_output of shape ", _sizes(grad_size))


def check_max_pool2d(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    check_floating_or_integer(op, "input", input)
    return pool2d_shape(op, input.shape, kernel_size, stride, padding, dilation, ceil_mode)


def check_max_pool2d_backward(op, grad_output, indices, input_size, kernel_size, stride, padding, dilation,
                              ceil_mode):
    shape = pool2d_shape(op, input_size, kernel_size, stride, padding, dilation, ceil_mode)
    check_grad_output(op, grad_output.shape, shape)
    _value_error(list(indices.shape) == list(shape) and indices.dtype == torch.int64, op,
                 ": expected int64 indices of shape ", _sizes(shape), ", but got ", _dtype_name(indices.dtype),
                 " of shape ", _sizes(indices.shape))
    if indices.device != grad_output.device:
        raise RuntimeError(f"{op}: expected indices on {grad_output.device} (the device of grad_output), but got "
                           f"{indices.device}")


def check_avg_pool2d(op, input, kernel_size, stride, padding, ceil_mode, divisor_override):
    check_avg_pool2d_dtype(op, "input", input)
    check_divisor_override(op, divisor_override)
    return pool2d_shape(op, input.shape, kernel_size, stride, padding, (1, 1), ceil_mode)


def check_avg_pool2d_backward(op, grad_output, input_size, kernel_size, stride, padding, ceil_mode, divisor_override):
    check_divisor_override(op, divisor_override)
    shape = pool2d_shape(op, input_size, kernel_size, stride, padding, (1, 1), ceil_mode)
    check_grad_output(op, grad_output.shape, shape)


# C++ prints a ScalarType by its c10 name (Float, Long, BFloat16...).
_C10_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
              torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
              torch.bool: "Bool"}


def _dtype_name(dtype):
    return _C10_NAMES.get(dtype, str(dtype))
