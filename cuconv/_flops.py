"""cuconv's convolutions in torch.utils.flop_counter.FlopCounterMode, counted as torch counts its
own (conv_flop_count: two flops per multiply-add of the convolution, bias and pooling not
counted): the forward pass and each gradient one convolution's worth, a transposed convolution's
forward pass (cuconv's input gradient) counted over its input's pixels."""

import torch
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

_ops = torch.ops.cuconv


@register_flop_formula(_ops.conv2d)
def _conv2d_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs):
    return conv_flop_count(input_shape, weight_shape, out_shape)


@register_flop_formula(_ops.conv2d_backward_input)
def _input_gradient_flops(grad_output_shape, weight_shape, input_size, *args, out_shape=None, **kwargs):
    # (a convolution transposed: grad_output in the input's role, one product per pixel of it and tap)
    return conv_flop_count(grad_output_shape, weight_shape, input_size, transposed=True)


@register_flop_formula(_ops.conv2d_backward_weight)
def _weight_gradient_flops(grad_output_shape, input_shape, weight_size, *args, out_shape=None, **kwargs):
    return conv_flop_count(input_shape, weight_size, grad_output_shape)
