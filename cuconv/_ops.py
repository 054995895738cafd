"""The compiled ops (torch.ops.cuconv.*) with autograd attached.

Each forward op has a backward op of its own (CPU, CUDA and meta kernels in
csrc/); here torch.library.register_autograd wires them together. Tensors are
saved for backward only when the gradient that needs them is requested.
"""

import torch

from . import _C  # noqa: F401  (loading the extension registers torch.ops.cuconv)

ops = torch.ops.cuconv


# conv2d -----------------------------------------------------------------------

def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.input_shape = input.shape
    ctx.weight_shape = weight.shape
    ctx.has_bias = bias is not None
    ctx.save_for_backward(
        input if ctx.needs_input_grad[1] else None,
        weight if ctx.needs_input_grad[0] else None,
    )


def _conv2d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = ops.conv2d_backward_input(grad_output, weight, ctx.input_shape, *ctx.conv_args)
    if ctx.needs_input_grad[1]:
        grad_weight = ops.conv2d_backward_weight(grad_output, input, ctx.weight_shape, *ctx.conv_args)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = ops.conv2d_backward_bias(grad_output)
    return grad_input, grad_weight, grad_bias, None, None, None, None


torch.library.register_autograd("cuconv::conv2d", _conv2d_backward, setup_context=_conv2d_setup_context)


# max_pool2d ---------------------------------------------------------------------

def _max_pool2d_setup_context(ctx, inputs, output):
    input, *pool_args = inputs
    ctx.pool_args = pool_args
    ctx.input_shape = input.shape
    ctx.save_for_backward(output[1])


def _max_pool2d_backward(ctx, grad_output, _grad_indices):
    (indices,) = ctx.saved_tensors
    grad_input = ops.max_pool2d_backward(grad_output, indices, ctx.input_shape, *ctx.pool_args)
    return grad_input, None, None, None, None, None


torch.library.register_autograd(
    "cuconv::max_pool2d", _max_pool2d_backward, setup_context=_max_pool2d_setup_context
)


# avg_pool2d ---------------------------------------------------------------------

def _avg_pool2d_setup_context(ctx, inputs, output):
    input, *pool_args = inputs
    ctx.pool_args = pool_args
    ctx.input_shape = input.shape


def _avg_pool2d_backward(ctx, grad_output):
    grad_input = ops.avg_pool2d_backward(grad_output, ctx.input_shape, *ctx.pool_args)
    return (grad_input,) + (None,) * len(ctx.pool_args)


torch.library.register_autograd(
    "cuconv::avg_pool2d", _avg_pool2d_backward, setup_context=_avg_pool2d_setup_context
)


# adaptive_avg_pool2d --------------------------------------------------------------

def _adaptive_avg_pool2d_setup_context(ctx, inputs, output):
    ctx.input_shape = inputs[0].shape


def _adaptive_avg_pool2d_backward(ctx, grad_output):
    return ops.adaptive_avg_pool2d_backward(grad_output, ctx.input_shape), None


torch.library.register_autograd(
    "cuconv::adaptive_avg_pool2d",
    _adaptive_avg_pool2d_backward,
    setup_context=_adaptive_avg_pool2d_setup_context,
)
