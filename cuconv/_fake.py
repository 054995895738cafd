"""Fake (meta) kernels of cuconv's ops: output shapes and dtypes without data, for
torch.compile, torch.export and opcheck. They run the checks of the compiled kernels
(_shape.py mirrors csrc/shape.h) on sizes that may be symbolic, so a traced graph rejects
what eager rejects, and dynamic batch sizes need no recompilation."""

import torch

from . import _shape


def _fake(name):
    return torch.library.register_fake(f"cuconv::{name}")


def _new_in_layout_of(model, shape, dtype=None):
    """An empty tensor of `shape` like `model` (of `dtype` if given), channels_last where `model`
    is (the kernels' rule)."""
    dtype = dtype or model.dtype
    if _shape.is_channels_last(model):
        return torch.empty(shape, dtype=dtype, device=model.device, memory_format=torch.channels_last)
    return model.new_empty(shape, dtype=dtype)


@_fake("conv2d")
def _conv2d(input, weight, bias, stride, padding, dilation, groups, allow_tf32=False, benchmark=False):
    shape = _shape.check_conv2d("cuconv.conv2d", input, weight, bias, stride, padding, dilation, groups)
    return _new_in_layout_of(input, shape)


@_fake("conv2d_backward_input")
def _conv2d_backward_input(grad_output, weight, input_size, stride, padding, dilation, groups, allow_tf32=False, benchmark=False):
    _shape.check_conv2d_backward_input("cuconv.conv2d_backward_input", grad_output, weight, input_size, stride,
                                       padding, dilation, groups)
    return _new_in_layout_of(grad_output, input_size)


@_fake("conv2d_backward_weight")
def _conv2d_backward_weight(grad_output, input, weight_size, stride, padding, dilation, groups, allow_tf32=False, benchmark=False):
    _shape.check_conv2d_backward_weight("cuconv.conv2d_backward_weight", grad_output, input, weight_size, stride,
                                        padding, dilation, groups)
    return grad_output.new_empty(weight_size)


@_fake("conv2d_backward_bias")
def _conv2d_backward_bias(grad_output):
    _shape.check_image_batch("cuconv.conv2d_backward_bias", "grad_output", grad_output.shape)
    return grad_output.new_empty((grad_output.shape[1],))


@_fake("max_pool2d")
def _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _shape.check_max_pool2d("cuconv.max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)
    return _new_in_layout_of(input, shape), _new_in_layout_of(input, shape, torch.int64)


@_fake("max_pool2d_backward")
def _max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride, padding, dilation, ceil_mode):
    _shape.check_max_pool2d_backward("cuconv.max_pool2d_backward", grad_output, indices, input_size, kernel_size,
                                     stride, padding, dilation, ceil_mode)
    return _new_in_layout_of(grad_output, input_size)


@_fake("avg_pool2d")
def _avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    shape = _shape.check_avg_pool2d("cuconv.avg_pool2d", input, kernel_size, stride, padding, ceil_mode,
                                    divisor_override)
    return _new_in_layout_of(input, shape)


@_fake("avg_pool2d_backward")
def _avg_pool2d_backward(grad_output, input_size, kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override):
    _shape.check_avg_pool2d_backward("cuconv.avg_pool2d_backward", grad_output, input_size, kernel_size, stride,
                                     padding, ceil_mode, divisor_override)
    return _new_in_layout_of(grad_output, input_size)


@_fake("adaptive_avg_pool2d")
def _adaptive_avg_pool2d(input, output_size):
    _shape.check_adaptive_avg_pool2d("cuconv.adaptive_avg_pool2d", input, output_size)
    return _new_in_layout_of(input, (input.shape[0], input.shape[1], output_size[0], output_size[1]))


@_fake("adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward(grad_output, input_size):
    _shape.check_adaptive_backward("cuconv.adaptive_avg_pool2d_backward", grad_output.shape, input_size)
    return _new_in_layout_of(grad_output, input_size)
