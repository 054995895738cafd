"""Batching rules (torch.func.vmap) for every cuconv op.

A vmapped activation (input, grad_output) is folded into the batch dimension: one
kernel call over B*N images. A vmapped weight (per-sample weights, or the per-sample
weight gradients of DP-SGD) becomes a grouped convolution: B copies of the layer side
by side in the channel dimension,

    x [N, B*C, H, W]  *  w [B*O, C/g, kH, kW]  with groups B*g  ->  y [N, B*O, Ho, Wo],

whose group b*g + j is group j of copy b. Each rule returns its result with the
vmapped dimension first (or second, for the channel-stacked results) and says so.
"""

import torch

from ._ops import ops


def _batch_first(tensor, bdim, size):
    """tensor with its vmapped dimension at 0 (expanded to `size` when it has none)."""
    if bdim is None:
        return tensor.unsqueeze(0).expand(size, *tensor.shape)
    return tensor.movedim(bdim, 0)


def _fold_into_batch(tensor, bdim, size):
    """[..B.., N, C, H, W] -> [B*N, C, H, W]."""
    return _batch_first(tensor, bdim, size).flatten(0, 1)


def _stack_channels(tensor, bdim, size):
    """[..B.., N, C, H, W] -> [N, B*C, H, W] (copy b's channels at b*C .. b*C + C-1)."""
    return _batch_first(tensor, bdim, size).movedim(0, 1).flatten(1, 2)


def _stack_filters(weight, bdim, size):
    """[..B.., O, C/g, kH, kW] -> [B*O, C/g, kH, kW]."""
    return _batch_first(weight, bdim, size).flatten(0, 1)


def _unfold_batch(tensor, size):
    """[B*N, ...] -> [B, N, ...]."""
    return tensor.unflatten(0, (size, -1))


def _unstack_channels(tensor, size):
    """[N, B*C, H, W] -> [N, B, C, H, W]."""
    return tensor.unflatten(1, (size, -1))


def _conv2d_vmap(info, in_dims, input, weight, bias, stride, padding, dilation, groups, allow_tf32=False, benchmark=False):
    B = info.batch_size
    x_dim, w_dim, b_dim = in_dims[:3]
    # (a half type's per-copy bias goes into the kernels, below: added after them, the sum would
    # be rounded twice)
    if w_dim is None and (b_dim is None or input.dtype not in (torch.float16, torch.bfloat16)):
        y = _unfold_batch(ops.conv2d(_fold_into_batch(input, x_dim, B), weight,
                                     bias if b_dim is None else None, stride, padding, dilation, groups, allow_tf32, benchmark), B)
        if b_dim is not None:  # per-copy bias on a shared weight: add it after the shared convolution
            y = y + bias.movedim(b_dim, 0)[:, None, :, None, None]
        return y, 0
    if bias is not None:
        bias = _batch_first(bias, b_dim, B).flatten()
    y = ops.conv2d(_stack_channels(input, x_dim, B), _stack_filters(weight, w_dim, B), bias,
                   stride, padding, dilation, B * groups, allow_tf32, benchmark)
    return _unstack_channels(y, B), 1


def _conv2d_backward_input_vmap(info, in_dims, grad_output, weight, input_size, stride, padding, dilation,
                                groups, allow_tf32=False, benchmark=False):
    B = info.batch_size
    dy_dim, w_dim = in_dims[:2]
    N, C, H, W = input_size
    if w_dim is None:
        dx = ops.conv2d_backward_input(_fold_into_batch(grad_output, dy_dim, B), weight, [B * N, C, H, W],
                                       stride, padding, dilation, groups, allow_tf32, benchmark)
        return _unfold_batch(dx, B), 0
    dx = ops.conv2d_backward_input(_stack_channels(grad_output, dy_dim, B), _stack_filters(weight, w_dim, B),
                                   [N, B * C, H, W], stride, padding, dilation, B * groups, allow_tf32, benchmark)
    return _unstack_channels(dx, B), 1


def _conv2d_backward_weight_vmap(info, in_dims, grad_output, input, weight_size, stride, padding, dilation,
                                 groups, allow_tf32=False, benchmark=False):
    # Per-sample weight gradients: copy b's filters only see copy b's images.
    B = info.batch_size
    dy_dim, x_dim = in_dims[:2]
    O, C_g, kH, kW = weight_size
    dw = ops.conv2d_backward_weight(_stack_channels(grad_output, dy_dim, B), _stack_channels(input, x_dim, B),
                                    [B * O, C_g, kH, kW], stride, padding, dilation, B * groups, allow_tf32, benchmark)
    return _unfold_batch(dw, B), 0


def _conv2d_backward_bias_vmap(info, in_dims, grad_output):
    B = info.batch_size
    return _unfold_batch(ops.conv2d_backward_bias(_stack_channels(grad_output, in_dims[0], B)), B), 0


def _max_pool2d_vmap(info, in_dims, input, *pool_args):
    B = info.batch_size
    y, indices = ops.max_pool2d(_fold_into_batch(input, in_dims[0], B), *pool_args)
    return (_unfold_batch(y, B), _unfold_batch(indices, B)), (0, 0)


def _max_pool2d_backward_vmap(info, in_dims, grad_output, indices, input_size, *pool_args):
    B = info.batch_size
    N, C, H, W = input_size
    dx = ops.max_pool2d_backward(_fold_into_batch(grad_output, in_dims[0], B),
                                 _fold_into_batch(indices, in_dims[1], B), [B * N, C, H, W], *pool_args)
    return _unfold_batch(dx, B), 0


def _avg_pool2d_vmap(info, in_dims, input, *pool_args):
    B = info.batch_size
    return _unfold_batch(ops.avg_pool2d(_fold_into_batch(input, in_dims[0], B), *pool_args), B), 0


def _avg_pool2d_backward_vmap(info, in_dims, grad_output, input_size, *pool_args):
    B = info.batch_size
    N, C, H, W = input_size
    dx = ops.avg_pool2d_backward(_fold_into_batch(grad_output, in_dims[0], B), [B * N, C, H, W], *pool_args)
    return _unfold_batch(dx, B), 0


def _adaptive_avg_pool2d_vmap(info, in_dims, input, output_size):
    B = info.batch_size
    return _unfold_batch(ops.adaptive_avg_pool2d(_fold_into_batch(input, in_dims[0], B), output_size), B), 0


def _adaptive_avg_pool2d_backward_vmap(info, in_dims, grad_output, input_size):
    B = info.batch_size
    N, C, H, W = input_size
    dx = ops.adaptive_avg_pool2d_backward(_fold_into_batch(grad_output, in_dims[0], B), [B * N, C, H, W])
    return _unfold_batch(dx, B), 0


for _name, _rule in {
    "conv2d": _conv2d_vmap,
    "conv2d_backward_input": _conv2d_backward_input_vmap,
    "conv2d_backward_weight": _conv2d_backward_weight_vmap,
    "conv2d_backward_bias": _conv2d_backward_bias_vmap,
    "max_pool2d": _max_pool2d_vmap,
    "max_pool2d_backward": _max_pool2d_backward_vmap,
    "avg_pool2d": _avg_pool2d_vmap,
    "avg_pool2d_backward": _avg_pool2d_backward_vmap,
    "adaptive_avg_pool2d": _adaptive_avg_pool2d_vmap,
    "adaptive_avg_pool2d_backward": _adaptive_avg_pool2d_backward_vmap,
}.items():
    torch.library.register_vmap(f"cuconv::{_name}", _rule)
