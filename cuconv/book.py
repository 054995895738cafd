"""The d2l book's helpers (chapter 7), on cuconv's ops.

Same semantics as the book: 2-D tensors in, 2-D (or channel-stacked 3-D)
tensors out, stride 1 and no padding; integer tensors compute in the default
float dtype, as the book's torch.zeros does. Complex tensors correlate as
complex numbers (cuconv.functional.conv2d's complex convolution), where the
book's float result would keep each sum's real part; pooling takes real
tensors only. Bad shapes raise cuconv.ArgumentError naming the helper.
"""

import torch

from ._ops import differentiable
from ._shape import ArgumentError, DtypeError

__all__ = ["corr2d", "corr2d_multi_in", "corr2d_multi_in_out", "corr2d_multi_in_out_1x1", "pool2d"]

_ONE = (1, 1)
_ZERO = (0, 0)


def _floating(*tensors):
    dtype = torch.result_type(*tensors) if len(tensors) > 1 else tensors[0].dtype
    if not (dtype.is_floating_point or dtype.is_complex):
        dtype = torch.get_default_dtype()
    return [t.to(dtype) for t in tensors]


def _expect_dims(name, fn, tensor, dims, layout):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"cuconv.{fn}: expected {name} to be a torch.Tensor, but got {type(tensor).__name__}")
    if tensor.dim() != dims:
        raise ArgumentError(f"cuconv.{fn}: expected {name} to be {dims}-D {layout}, but got "
                            f"{tensor.dim()}-D with shape {tuple(tensor.shape)}")


def _expect_fit(fn, X, K, channels=False):
    """K's window within X's plane (and, with `channels`, K's input channels X's)."""
    if channels and K.shape[-3] != X.shape[-3]:
        raise ArgumentError(f"cuconv.{fn}: expected K to have X's {X.shape[-3]} input channels, but got "
                            f"{K.shape[-3]} (X {tuple(X.shape)}, K {tuple(K.shape)})")
    if K.shape[-2] > X.shape[-2] or K.shape[-1] > X.shape[-1]:
        raise ArgumentError(f"cuconv.{fn}: expected a kernel no larger than X's {X.shape[-2]} x {X.shape[-1]} plane, "
                            f"but got {K.shape[-2]} x {K.shape[-1]}")


def _correlate(X, K):
    """X (1, c_i, h, w) with K (c_o, c_i, kh, kw), stride 1, no padding: complex tensors through
    cuconv.functional's complex convolution, the rest on the op itself."""
    if X.is_complex():
        from .functional import conv2d

        return conv2d(X, K)
    return differentiable.conv2d(X, K, None, _ONE, _ZERO, _ONE, 1)


def corr2d(X, K):
    """2-D cross-correlation of X (h, w) with kernel K (kh, kw)."""
    _expect_dims("X", "corr2d", X, 2, "(height, width)")
    _expect_dims("K", "corr2d", K, 2, "(kh, kw)")
    _expect_fit("corr2d", X, K)
    X, K = _floating(X, K)
    return _correlate(X[None, None], K[None, None])[0, 0]


def corr2d_multi_in(X, K):
    """Sum over input channels: X (c_i, h, w), K (c_i, kh, kw) -> (h', w')."""
    _expect_dims("X", "corr2d_multi_in", X, 3, "(c_i, height, width)")
    _expect_dims("K", "corr2d_multi_in", K, 3, "(c_i, kh, kw)")
    _expect_fit("corr2d_multi_in", X, K, channels=True)
    X, K = _floating(X, K)
    return _correlate(X[None], K[None])[0, 0]


def corr2d_multi_in_out(X, K):
    """One output channel per kernel: X (c_i, h, w), K (c_o, c_i, kh, kw) -> (c_o, h', w')."""
    _expect_dims("X", "corr2d_multi_in_out", X, 3, "(c_i, height, width)")
    _expect_dims("K", "corr2d_multi_in_out", K, 4, "(c_o, c_i, kh, kw)")
    _expect_fit("corr2d_multi_in_out", X, K, channels=True)
    X, K = _floating(X, K)
    return _correlate(X[None], K)[0]


def corr2d_multi_in_out_1x1(X, K):
    """1x1 convolution as a matrix product: X (c_i, h, w), K (c_o, c_i, 1, 1) -> (c_o, h, w).
    cuconv's kernels take their matrix-product path for 1x1 kernels (no im2col)."""
    _expect_dims("X", "corr2d_multi_in_out_1x1", X, 3, "(c_i, height, width)")
    _expect_dims("K", "corr2d_multi_in_out_1x1", K, 4, "(c_o, c_i, 1, 1)")
    if tuple(K.shape[2:]) != (1, 1):
        raise ArgumentError(f"cuconv.corr2d_multi_in_out_1x1: expected K of shape (c_o, c_i, 1, 1), but got "
                            f"{tuple(K.shape)}")
    _expect_fit("corr2d_multi_in_out_1x1", X, K, channels=True)
    X, K = _floating(X, K)
    return _correlate(X[None], K)[0]


def pool2d(X, pool_size, mode="max"):
    """Max or average pooling of X (h, w) over pool_size windows, stride 1, no padding."""
    _expect_dims("X", "pool2d", X, 2, "(height, width)")
    if mode not in ("max", "avg"):
        raise ArgumentError(f"cuconv.pool2d: expected mode to be 'max' or 'avg', but got {mode!r}")
    if X.is_complex():
        raise DtypeError(f"cuconv.pool2d: expected a real tensor X, but got {X.dtype}")
    from .functional import _pair

    size = _pair("cuconv.pool2d", "pool_size", pool_size)
    if min(size) < 1:
        raise ArgumentError(f"cuconv.pool2d: expected pool_size to be positive, but got {tuple(size)}")
    if size[0] > X.shape[0] or size[1] > X.shape[1]:
        raise ArgumentError(f"cuconv.pool2d: expected a window no larger than X's {X.shape[0]} x {X.shape[1]} plane, "
                            f"but got {size[0]} x {size[1]}")
    (X,) = _floating(X)
    if mode == "max":
        return differentiable.max_pool2d(X[None, None], size, _ONE, _ZERO, _ONE, False)[0][0, 0]
    return differentiable.avg_pool2d(X[None, None], size, _ONE, _ZERO, False, True, None)[0, 0]
