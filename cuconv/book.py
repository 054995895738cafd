"""The d2l book's helpers (chapter 7), on cuconv's ops.

Same semantics as the book: 2-D tensors in, 2-D (or channel-stacked 3-D)
tensors out, stride 1 and no padding; integer tensors compute in the default
float dtype, as the book's torch.zeros does.
"""

import torch

from ._ops import differentiable

__all__ = ["corr2d", "corr2d_multi_in", "corr2d_multi_in_out", "corr2d_multi_in_out_1x1", "pool2d"]

_ONE = (1, 1)
_ZERO = (0, 0)


def _floating(*tensors):
    dtype = torch.result_type(*tensors) if len(tensors) > 1 else tensors[0].dtype
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return [t.to(dtype) for t in tensors]


def _expect_dims(name, fn, tensor, dims, layout):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"cuconv.{fn}: expected {name} to be a torch.Tensor, but got {type(tensor).__name__}")
    if tensor.dim() != dims:
        raise ValueError(f"cuconv.{fn}: expected {name} to be {dims}-D {layout}, but got "
                         f"{tensor.dim()}-D with shape {tuple(tensor.shape)}")


def corr2d(X, K):
    """2-D cross-correlation of X (h, w) with kernel K (kh, kw)."""
    _expect_dims("X", "corr2d", X, 2, "(height, width)")
    _expect_dims("K", "corr2d", K, 2, "(kh, kw)")
    X, K = _floating(X, K)
    return differentiable.conv2d(X[None, None], K[None, None], None, _ONE, _ZERO, _ONE, 1)[0, 0]


def corr2d_multi_in(X, K):
    """Sum over input channels: X (c_i, h, w), K (c_i, kh, kw) -> (h', w')."""
    _expect_dims("X", "corr2d_multi_in", X, 3, "(c_i, height, width)")
    _expect_dims("K", "corr2d_multi_in", K, 3, "(c_i, kh, kw)")
    X, K = _floating(X, K)
    return differentiable.conv2d(X[None], K[None], None, _ONE, _ZERO, _ONE, 1)[0, 0]


def corr2d_multi_in_out(X, K):
    """One output channel per kernel: X (c_i, h, w), K (c_o, c_i, kh, kw) -> (c_o, h', w')."""
    _expect_dims("X", "corr2d_multi_in_out", X, 3, "(c_i, height, width)")
    _expect_dims("K", "corr2d_multi_in_out", K, 4, "(c_o, c_i, kh, kw)")
    X, K = _floating(X, K)
    return differentiable.conv2d(X[None], K, None, _ONE, _ZERO, _ONE, 1)[0]


def corr2d_multi_in_out_1x1(X, K):
    """1x1 convolution as a matrix product: X (c_i, h, w), K (c_o, c_i, 1, 1) -> (c_o, h, w).
    cuconv's kernels take their matrix-product path for 1x1 kernels (no im2col)."""
    _expect_dims("X", "corr2d_multi_in_out_1x1", X, 3, "(c_i, height, width)")
    _expect_dims("K", "corr2d_multi_in_out_1x1", K, 4, "(c_o, c_i, 1, 1)")
    if tuple(K.shape[2:]) != (1, 1):
        raise ValueError(f"cuconv.corr2d_multi_in_out_1x1: expected K of shape (c_o, c_i, 1, 1), but got "
                         f"{tuple(K.shape)}")
    X, K = _floating(X, K)
    return differentiable.conv2d(X[None], K, None, _ONE, _ZERO, _ONE, 1)[0]


def pool2d(X, pool_size, mode="max"):
    """Max or average pooling of X (h, w) over pool_size windows, stride 1, no padding."""
    _expect_dims("X", "pool2d", X, 2, "(height, width)")
    if mode not in ("max", "avg"):
        raise ValueError(f"cuconv.pool2d: expected mode to be 'max' or 'avg', but got {mode!r}")
    from .functional import _pair

    size = _pair("cuconv.pool2d", "pool_size", pool_size)
    (X,) = _floating(X)
    if mode == "max":
        return differentiable.max_pool2d(X[None, None], size, _ONE, _ZERO, _ONE, False)[0][0, 0]
    return differentiable.avg_pool2d(X[None, None], size, _ONE, _ZERO, False, True, None)[0, 0]
