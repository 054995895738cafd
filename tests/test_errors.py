"""Invalid calls fail with a clear Python exception, and odd-but-valid inputs behave as in torch.

Every rejected call is checked for its exception type (cuconv.ArgumentError, a ValueError and a
RuntimeError, from the shape and argument checks; cuconv.DtypeError, a TypeError and a
RuntimeError, from dtype checks; TypeError for non-int arguments, as torch; IndexError for
indices out of range) and for a message that names the argument, what was expected and what
came. The raw ops (torch.ops.cuconv.*) are the compiled kernels on the stable ABI, which raise
ValueError for bad shapes and values and RuntimeError for dtypes: their cases expect that
(cuconv.functional checks dtypes first, and raises the C++ checks' ValueError as an
ArgumentError). The same call is also rejected by
torch.nn.functional where there is an equivalent, so cuconv is never stricter than torch.
Then: NaN and Inf propagate exactly as in torch, and an empty batch (N=0) works forward and
backward through every op and module.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cuconv
import cuconv.functional as CF
from cuconv import ArgumentError, DtypeError

ops = torch.ops.cuconv

# torch's own warning for padding='same' with an even kernel, from the reference calls.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


def x4(*shape, dtype=torch.float32):
    """A random input; (2, 4, 8, 8) unless told otherwise."""
    return torch.randn(*(shape or (2, 4, 8, 8)), dtype=dtype)


def w4(*shape, dtype=torch.float32):
    """A random weight; (6, 4, 3, 3) unless told otherwise."""
    return torch.randn(*(shape or (6, 4, 3, 3)), dtype=dtype)


# Each case: (id, call, exception type, regex for the message, equivalent torch call or None).
# The tensors are made inside the calls, after conftest's autouse fixture has seeded torch.

CONV_CASES = [
    # --- number of dimensions
    ("input-2d", lambda f: f(x4(4, 8), w4()), ArgumentError,
     r"input to be 3-D .* or 4-D .*but got 2-D with shape \(4, 8\)"),
    ("input-5d", lambda f: f(x4(1, 2, 4, 8, 8), w4()), ArgumentError,
     r"input to be 3-D .* or 4-D .*but got 5-D with shape \(1, 2, 4, 8, 8\)"),
    ("input-1d", lambda f: f(x4(8), w4()), ArgumentError, r"input to be 3-D .*but got 1-D with shape \(8,\)"),
    ("input-unbatched-empty-height", lambda f: f(x4(4, 0, 8), w4()), ArgumentError,
     r"unbatched input \(C, H, W\) to have non-zero height and width, but got shape \(4, 0, 8\)"),
    ("weight-3d", lambda f: f(x4(), w4(6, 4, 3)), ArgumentError,
     r"weight to be 4-D .*but got 3-D with shape \[6, 4, 3\]"),
    ("weight-5d", lambda f: f(x4(), w4(6, 4, 3, 3, 1)), ArgumentError,
     r"weight to be 4-D .*but got 5-D with shape \[6, 4, 3, 3, 1\]"),
    ("weight-2d", lambda f: f(x4(), w4(6, 4)), ArgumentError, r"weight to be 4-D .*but got 2-D with shape \[6, 4\]"),
    # --- channels and groups
    ("channel-mismatch", lambda f: f(x4(), w4(6, 3, 3, 3)), ArgumentError,
     r"weight of shape \[6, 3, 3, 3\].*input of shape \[2, 4, 8, 8\] to have 3 channels, but got 4"),
    ("channel-mismatch-unbatched", lambda f: f(x4(5, 8, 8), w4()), ArgumentError,
     r"input of shape \[1, 5, 8, 8\] to have 4 channels, but got 5"),
    ("groups-not-dividing-in", lambda f: f(x4(2, 5, 8, 8), w4(6, 2, 3, 3), groups=2), ArgumentError,
     r"groups=2 .*to have 4 channels, but got 5"),
    ("groups-not-dividing-out", lambda f: f(x4(), w4(5, 2, 3, 3), groups=2), ArgumentError,
     r"out_channels \(weight\.shape\[0\]=5\) to be divisible by groups=2"),
    ("groups-too-many", lambda f: f(x4(), w4(6, 1, 3, 3), groups=6), ArgumentError,
     r"groups=6 .*to have 6 channels, but got 4"),
    # torch raises too (a RuntimeError); the depthwise kernels divided by the zero multiplier
    ("no-output-channels-grouped", lambda f: f(x4(), w4(0, 1, 3, 3), groups=4), ArgumentError,
     r"weight to have at least groups=4 output channels, but got weight of shape \[0, 1, 3, 3\]"),
    ("no-output-channels", lambda f: f(x4(), w4(0, 4, 3, 3)), ArgumentError,
     r"weight to have at least groups=1 output channels, but got weight of shape \[0, 4, 3, 3\]"),
    ("empty-height-padded", lambda f: f(x4(1, 4, 0, 5), w4(4, 1, 1, 1), padding=1, groups=4), ArgumentError,
     r"input to have a height and width of at least 1, but got shape \[1, 4, 0, 5\]"),
    ("groups-0", lambda f: f(x4(), w4(), groups=0), ArgumentError, r"groups >= 1, but got groups=0"),
    ("groups--1", lambda f: f(x4(), w4(), groups=-1), ArgumentError, r"groups >= 1, but got groups=-1"),
    # --- kernel does not fit
    ("kernel-larger-than-input", lambda f: f(x4(), w4(6, 4, 9, 3)), ArgumentError,
     r"kernel \(9 x 3\) to fit in the padded input \(8 x 8\)"),
    ("kernel-larger-than-padded-input", lambda f: f(x4(1, 4, 4, 4), w4(6, 4, 3, 7), padding=1), ArgumentError,
     r"kernel \(3 x 7\) to fit in the padded input \(6 x 6\)"),
    ("dilated-kernel-larger", lambda f: f(x4(), w4(), dilation=(1, 4)), ArgumentError,
     r"kernel \(3 x 9\) to fit in the padded input \(8 x 8\).*dilation \[1, 4\]"),
    ("kernel-0", lambda f: f(x4(), w4(6, 4, 0, 3)), ArgumentError, r"kernel of at least 1x1.*\[6, 4, 0, 3\]"),
    # --- stride, dilation, padding values
    ("stride-0", lambda f: f(x4(), w4(), stride=0), ArgumentError, r"stride value to be >= 1, but got stride=\[0, 0\]"),
    ("stride-negative", lambda f: f(x4(), w4(), stride=(1, -1)), ArgumentError,
     r"stride value to be >= 1, but got stride=\[1, -1\]"),
    ("stride-negative-h", lambda f: f(x4(), w4(), stride=(-2, 1)), ArgumentError,
     r"stride value to be >= 1, but got stride=\[-2, 1\]"),
    ("dilation-0", lambda f: f(x4(), w4(), dilation=0), ArgumentError,
     r"dilation value to be >= 1, but got dilation=\[0, 0\]"),
    ("dilation-0-w", lambda f: f(x4(), w4(), dilation=(2, 0)), ArgumentError,
     r"dilation value to be >= 1, but got dilation=\[2, 0\]"),
    ("padding-negative", lambda f: f(x4(), w4(), padding=-1), ArgumentError,
     r"padding value to be >= 0, but got padding=\[-1, -1\]"),
    ("padding-negative-w", lambda f: f(x4(), w4(), padding=(0, -2)), ArgumentError,
     r"padding value to be >= 0, but got padding=\[0, -2\]"),
    # --- dtypes
    ("dtype-f32-f64", lambda f: f(x4(), w4(dtype=torch.float64)), DtypeError,
     r"weight to have the dtype of input \(Float\), but got Double"),
    ("dtype-f64-f32", lambda f: f(x4(dtype=torch.float64), w4()), DtypeError,
     r"weight to have the dtype of input \(Double\), but got Float"),
    ("bias-dtype", lambda f: f(x4(), w4(), torch.randn(6, dtype=torch.float64)), DtypeError,
     r"bias to have the dtype of input \(Float\), but got Double"),
    # (integer tensors are valid on the CPU, complex ones through cuconv.functional: test_dtypes.py)
    ("integer-input-float-weight", lambda f: f(x4().long(), w4()), DtypeError,
     r"weight to have the dtype of input \(Long\), but got Float"),
    ("bool-input", lambda f: f(x4() > 0, w4() > 0), DtypeError,
     r"input to be a floating-point(, integer or complex| or integer) tensor, but got Bool"),
    # --- bias shape
    ("bias-wrong-size", lambda f: f(x4(), w4(), torch.randn(5)), ArgumentError,
     r"bias of shape \[6\].*but got shape \[5\]"),
    ("bias-2d", lambda f: f(x4(), w4(), torch.randn(6, 1)), ArgumentError, r"bias of shape \[6\].*but got shape \[6, 1\]"),
    ("bias-0d", lambda f: f(x4(), w4(), torch.tensor(1.0)), ArgumentError, r"bias of shape \[6\].*but got shape \[\]"),
]

# Cases that only the Python functional API can see (strings, Python types, tuple lengths).
CONV_FUNCTIONAL_ONLY = [
    ("same-stride-2", lambda f: f(x4(), w4(), padding="same", stride=2), ArgumentError,
     r"padding='same'.*strided.*stride=\(2, 2\)"),
    ("same-stride-1-2", lambda f: f(x4(), w4(), padding="same", stride=(1, 2)), ArgumentError,
     r"padding='same'.*strided.*stride=\(1, 2\)"),
    ("padding-unknown-string", lambda f: f(x4(), w4(), padding="full"), ArgumentError,
     r"padding to be 'valid', 'same'.*but got 'full'"),
    ("padding-wrong-case", lambda f: f(x4(), w4(), padding="SAME"), ArgumentError,
     r"padding to be 'valid', 'same'.*but got 'SAME'"),
    ("stride-3-values", lambda f: f(x4(), w4(), stride=(1, 2, 3)), ArgumentError,
     r"stride to be an int or a sequence of 1 or 2 ints, but got stride=\(1, 2, 3\)"),
    ("padding-4-values", lambda f: f(x4(), w4(), padding=(1, 1, 1, 1)), ArgumentError,
     r"padding to be an int or a sequence of 1 or 2 ints, but got padding=\(1, 1, 1, 1\)"),
    ("dilation-3-values", lambda f: f(x4(), w4(), dilation=[1, 2, 3]), ArgumentError,
     r"dilation to be an int or a sequence of 1 or 2 ints, but got dilation=\(1, 2, 3\)"),
    ("stride-float", lambda f: f(x4(), w4(), stride=1.5), TypeError, r"stride to be an int.*float 1\.5"),
    ("stride-float-in-pair", lambda f: f(x4(), w4(), stride=(1, 1.5)), TypeError, r"stride to be an int.*\(1, 1\.5\)"),
    ("padding-float", lambda f: f(x4(), w4(), padding=0.5), TypeError, r"padding.*float 0\.5"),
    ("dilation-float-in-pair", lambda f: f(x4(), w4(), dilation=(1, 2.0)), TypeError, r"dilation to be an int.*\(1, 2\.0\)"),
    ("stride-string", lambda f: f(x4(), w4(), stride="2"), TypeError, r"stride to be an int.*str '2'"),
    ("stride-none", lambda f: f(x4(), w4(), stride=None), TypeError, r"stride to be an int.*NoneType None"),
    ("groups-float", lambda f: f(x4(), w4(), groups=1.5), TypeError, r"groups to be an int, but got float 1\.5"),
    ("groups-bool", lambda f: f(x4(), w4(), groups=True), TypeError, r"groups to be an int, but got bool True"),
    ("groups-float-tensor", lambda f: f(x4(), w4(), groups=torch.tensor(1.0)), TypeError,
     r"groups to be an int, but got Tensor tensor\(1\.\)"),
    ("stride-float-tensor", lambda f: f(x4(), w4(), stride=torch.tensor(2.0)), TypeError,
     r"stride to be an int or a pair of ints, but got Tensor tensor\(2\.\)"),
    ("input-not-tensor", lambda f: f([[1.0, 2.0]], w4()), TypeError, r"input to be a torch\.Tensor, but got list"),
    ("weight-not-tensor", lambda f: f(x4(), 3), TypeError, r"weight to be a torch\.Tensor, but got int"),
    ("bias-not-tensor", lambda f: f(x4(), w4(), [0.0] * 6), TypeError, r"bias to be a torch\.Tensor, but got list"),
]


def _raw_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.ops.cuconv.conv2d with the functional API's int shorthands expanded (the raw op
    takes pairs; a 3-D input reaches it as it is)."""
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return ops.conv2d(input, weight, bias, pair(stride), pair(padding), pair(dilation), groups)


# Cases where torch raises another error or none (integer and complex tensors that some of these
# ops take and others refuse: tested as valid where they are, test_dtypes.py).
STRICTER_THAN_TORCH = {"integer-input", "uint8-input", "bool-input", "complex-input"}
# Adaptive pooling accepts zero channels, as torch does (every other pooling op rejects them
# in both), and complex tensors: those cases are tested as valid in test_ops.py and
# test_dtypes.py instead; it refuses the others with a message of its own.
VALID_FOR_ADAPTIVE = {"empty-channels", "unbatched-empty-channels", "complex-input"}
ADAPTIVE_DTYPE_MESSAGES = {case: rf"input to be a floating-point or complex tensor, but got {name}"
                           for case, name in [("integer-input", "Long"), ("uint8-input", "Byte"), ("bool-input", "Bool")]}
# Max pooling takes integer tensors, as torch's CPU max pooling (tested in test_ops.py); it refuses
# bool and complex ones, with a message of its own.
VALID_FOR_MAX = {"integer-input", "uint8-input"}
# Average pooling takes int64 tensors on the CPU, as torch's (tested in test_dtypes.py); it refuses
# other integer types, with a message of its own.
VALID_FOR_AVG = {"integer-input"}
AVG_DTYPE_MESSAGES = {case: rf"input to be a floating-point or int64 tensor, but got {name}"
                      for case, name in [("uint8-input", "Byte"), ("bool-input", "Bool"), ("complex-input", r"torch\.complex64")]}
MAX_DTYPE_MESSAGES = {"bool-input": r"input to be a floating-point or integer tensor, but got Bool",
                      "complex-input": r"input to be a floating-point or integer tensor, but got torch\.complex64"}


def _raw(exc):
    """The exception a raw op (C++ on the stable ABI) raises where the Python layer raises exc."""
    return {ArgumentError: ValueError, DtypeError: RuntimeError, TypeError: RuntimeError}.get(exc, exc)


def _cases(table, call, reference, raw=False):
    params = []
    for case_id, make, exc, pattern in table:
        exc = _raw(exc) if raw else exc
        if case_id in STRICTER_THAN_TORCH:
            reference_here = None
        else:
            reference_here = reference
        ref = (lambda make=make, reference=reference_here: make(reference)) if reference_here is not None else None
        params.append(pytest.param(lambda make=make: make(call), exc, pattern, ref, id=case_id))
    return params


# The raw op takes 4-D input only: the functional API's 3-D/2-D/5-D messages differ there.
_RAW_CONV_TABLE = [c for c in CONV_CASES if not c[0].startswith(("input-", "channel-mismatch-unbatched"))] + [
    ("raw-input-3d", lambda f: f(x4(4, 8, 8), w4()), ValueError,
     r"input to be 4-D \(batch, channels, height, width\), but got 3-D with shape \[4, 8, 8\]"),
    ("raw-input-5d", lambda f: f(x4(1, 2, 4, 8, 8), w4()), ValueError,
     r"input to be 4-D .*but got 5-D with shape \[1, 2, 4, 8, 8\]"),
    ("raw-stride-3-values", lambda f: f(x4(), w4(), stride=[1, 2, 3]), ValueError,
     r"stride to be a pair of ints \(height, width\), but got 3 values \[1, 2, 3\]"),
    ("raw-padding-1-value", lambda f: f(x4(), w4(), padding=[1]), ValueError,
     r"padding to be a pair of ints \(height, width\), but got 1 values \[1\]"),
    ("raw-dilation-3-values", lambda f: f(x4(), w4(), dilation=[1, 1, 1]), ValueError,
     r"dilation to be a pair of ints \(height, width\), but got 3 values \[1, 1, 1\]"),
]


POOL_INPUT_CASES = [
    ("input-2d", lambda f, **k: f(x4(4, 8), **k), ArgumentError, r"input to be 3-D .* or 4-D .*but got 2-D with shape \(4, 8\)"),
    ("input-5d", lambda f, **k: f(x4(1, 1, 4, 8, 8), **k), ArgumentError,
     r"input to be 3-D .* or 4-D .*but got 5-D with shape \(1, 1, 4, 8, 8\)"),
    ("integer-input", lambda f, **k: f(x4().long(), **k), DtypeError, r"input to be a floating-point tensor, but got Long"),
    ("uint8-input", lambda f, **k: f(x4().to(torch.uint8), **k), DtypeError,
     r"input to be a floating-point tensor, but got Byte"),
    ("bool-input", lambda f, **k: f(x4() > 0, **k), DtypeError, r"input to be a floating-point tensor, but got Bool"),
    ("complex-input", lambda f, **k: f(x4().to(torch.complex64), **k), DtypeError,
     r"input to be a floating-point tensor, but got torch\.complex64"),
    ("empty-height", lambda f, **k: f(x4(2, 3, 0, 4), **k), ArgumentError,
     r"non-zero .*height and width.*\[2, 3, 0, 4\]"),
    ("empty-channels", lambda f, **k: f(x4(2, 0, 4, 4), **k), ArgumentError,
     r"input to have non-zero channels, height and width .*but got shape \[2, 0, 4, 4\]"),
    ("input-not-tensor", lambda f, **k: f([[1.0]], **k), TypeError, r"input to be a torch\.Tensor, but got list"),
    # an unbatched input's message names its own shape, not the batch of one the op sees
    ("unbatched-empty-height", lambda f, **k: f(x4(3, 0, 4), **k), ArgumentError,
     r"unbatched input \(C, H, W\) to have non-zero (channels, )?height and width, but got shape \(3, 0, 4\)"),
    ("unbatched-empty-channels", lambda f, **k: f(x4(0, 4, 4), **k), ArgumentError,
     r"unbatched input \(C, H, W\) to have non-zero channels, height and width, but got shape \(0, 4, 4\)"),
]

# Window arguments shared by max_pool2d and avg_pool2d (pool(input, **kwargs)).
WINDOW_CASES = [
    ("kernel-0", dict(kernel_size=0), ArgumentError, r"kernel_size value to be >= 1, but got kernel_size=\[0, 0\]"),
    ("kernel-negative", dict(kernel_size=(2, -1)), ArgumentError,
     r"kernel_size value to be >= 1, but got kernel_size=\[2, -1\]"),
    ("stride-0", dict(kernel_size=2, stride=0), ArgumentError, r"stride value to be >= 1, but got stride=\[0, 0\]"),
    ("stride-negative", dict(kernel_size=2, stride=(-1, 1)), ArgumentError,
     r"stride value to be >= 1, but got stride=\[-1, 1\]"),
    ("padding-negative", dict(kernel_size=2, padding=-1), ArgumentError,
     r"padding value to be >= 0, but got padding=\[-1, -1\]"),
    ("padding-above-half", dict(kernel_size=2, padding=2), ArgumentError,
     r"padding to be at most half of kernel_size \[2, 2\], but got padding=\[2, 2\]"),
    ("padding-above-half-w", dict(kernel_size=(3, 2), padding=(1, 2)), ArgumentError,
     r"padding to be at most half of kernel_size \[3, 2\], but got padding=\[1, 2\]"),
    ("padding-above-half-k1", dict(kernel_size=(1, 3), padding=(1, 0)), ArgumentError,
     r"padding to be at most half of kernel_size \[1, 3\], but got padding=\[1, 0\]"),
    ("output-too-small", dict(kernel_size=9), ArgumentError,
     r"input of shape \[2, 4, 8, 8\] is too small for kernel_size=\[9, 9\].*output would be 0 x 0"),
    ("output-too-small-h", dict(kernel_size=(9, 2)), ArgumentError,
     r"input of shape \[2, 4, 8, 8\] is too small for kernel_size=\[9, 2\].*output would be 0 x 4"),
    ("kernel-3-values", dict(kernel_size=(2, 2, 2)), ArgumentError,
     r"kernel_size to be an int or a sequence of 1 or 2 ints, but got kernel_size=\(2, 2, 2\)"),
    ("stride-3-values", dict(kernel_size=2, stride=(1, 2, 3)), ArgumentError,
     r"stride to be an int or a sequence of 1 or 2 ints, but got stride=\(1, 2, 3\)"),
    ("padding-3-values", dict(kernel_size=2, padding=[0, 0, 0]), ArgumentError,
     r"padding to be an int or a sequence of 1 or 2 ints, but got padding=\(0, 0, 0\)"),
    ("kernel-float", dict(kernel_size=1.5), TypeError, r"kernel_size to be an int.*float 1\.5"),
    ("stride-float", dict(kernel_size=2, stride=2.5), TypeError, r"stride to be an int.*float 2\.5"),
    ("padding-string", dict(kernel_size=3, padding="same"), TypeError, r"padding to be an int.*str 'same'"),
    ("kernel-float-in-pair", dict(kernel_size=(2, 2.0)), TypeError, r"kernel_size to be an int.*\(2, 2\.0\)"),
    # torch's parser takes a Python bool for these flags and nothing else
    ("ceil-mode-int", dict(kernel_size=2, ceil_mode=1), TypeError, r"ceil_mode to be a bool, but got int 1"),
    ("ceil-mode-none", dict(kernel_size=2, ceil_mode=None), TypeError, r"ceil_mode to be a bool, but got NoneType None"),
    ("ceil-mode-tensor", dict(kernel_size=2, ceil_mode=torch.tensor(True)), TypeError,
     r"ceil_mode to be a bool, but got Tensor tensor\(True\)"),
]

MAX_ONLY_CASES = [
    ("dilation-0", dict(kernel_size=2, dilation=0), ArgumentError, r"dilation value to be >= 1, but got dilation=\[0, 0\]"),
    ("dilation-0-w", dict(kernel_size=2, dilation=(1, 0)), ArgumentError,
     r"dilation value to be >= 1, but got dilation=\[1, 0\]"),
    ("dilated-output-too-small", dict(kernel_size=3, dilation=4), ArgumentError,
     r"too small for kernel_size=\[3, 3\].*dilation=\[4, 4\].*output would be -?\d+ x -?\d+"),
    ("dilation-float", dict(kernel_size=2, dilation=1.5), TypeError, r"dilation to be an int.*float 1\.5"),
]

AVG_ONLY_CASES = [
    ("divisor-override-0", dict(kernel_size=2, divisor_override=0), ArgumentError,
     r"divisor_override to be a non-zero int or None, but got 0"),
    ("divisor-override-float", dict(kernel_size=2, divisor_override=1.5), TypeError,
     r"divisor_override to be an int or None, but got float 1\.5"),
    ("divisor-override-bool", dict(kernel_size=2, divisor_override=True), TypeError,
     r"divisor_override to be an int or None, but got bool True"),
    ("count-include-pad-int", dict(kernel_size=2, count_include_pad=0), TypeError,
     r"count_include_pad to be a bool, but got int 0"),
]

ADAPTIVE_CASES = [
    ("output-size--1", dict(output_size=-1), ArgumentError, r"output_size value to be >= 0, but got output_size=\[-1, -1\]"),
    ("output-size-negative-w", dict(output_size=(2, -3)), ArgumentError,
     r"output_size value to be >= 0, but got output_size=\[2, -3\]"),
    ("output-size-3-values", dict(output_size=(1, 2, 3)), ArgumentError, r"output_size.*\(1, 2, 3\)"),
    ("output-size-1-value", dict(output_size=(4,)), ArgumentError, r"output_size.*\(4,\)"),
    ("output-size-float", dict(output_size=1.5), TypeError, r"output_size to be an int.*float 1\.5"),
    ("output-size-float-in-pair", dict(output_size=(2.0, 2)), TypeError, r"output_size to be an int.*\(2\.0, 2\)"),
    ("output-size-none", dict(output_size=None), TypeError, r"output_size to be an int.*NoneType None"),
]


def _pool_cases(table, call, reference, raw=False):
    params = []
    for case_id, kwargs, exc, pattern in table:
        exc = _raw(exc) if raw else exc
        ref = (lambda kwargs=kwargs: reference(x4(), **kwargs)) if reference is not None else None
        params.append(pytest.param(lambda kwargs=kwargs: call(x4(), **kwargs), exc, pattern, ref, id=case_id))
    return params


def _pool_input_cases(call, reference, **kwargs):
    params = []
    is_max, is_avg = call in (CF.max_pool2d, F.max_pool2d), call in (CF.avg_pool2d, F.avg_pool2d)
    for case_id, make, exc, pattern in POOL_INPUT_CASES:
        if ("output_size" in kwargs and case_id in VALID_FOR_ADAPTIVE or is_max and case_id in VALID_FOR_MAX
                or is_avg and case_id in VALID_FOR_AVG):
            continue
        if is_max:
            pattern = MAX_DTYPE_MESSAGES.get(case_id, pattern)
        if is_avg:
            pattern = AVG_DTYPE_MESSAGES.get(case_id, pattern)
        if "output_size" in kwargs:
            pattern = ADAPTIVE_DTYPE_MESSAGES.get(case_id, pattern)
        ref = (lambda make=make: make(reference, **kwargs)) if reference is not None and case_id not in STRICTER_THAN_TORCH else None
        params.append(pytest.param(lambda make=make: make(call, **kwargs), exc, pattern, ref, id=case_id))
    return params


def _raw_max(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return ops.max_pool2d(input, pair(kernel_size), pair(kernel_size if stride is None else stride),
                          pair(padding), pair(dilation), ceil_mode)


def _raw_avg(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None):
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return ops.avg_pool2d(input, pair(kernel_size), pair(kernel_size if stride is None else stride),
                          pair(padding), ceil_mode, count_include_pad, divisor_override)


# Window cases whose arguments the raw ops can take at all (ints, two values).
# (the Python argument checks: the raw ops take pairs and flags as torch's dispatcher parses them)
_RAW_WINDOW = [c for c in WINDOW_CASES
               if not any(word in c[0] for word in ("float", "string", "3-values", "ceil-mode"))]

BOOK_CASES = [
    ("corr2d-X-3d", lambda: cuconv.corr2d(x4(2, 3, 3), x4(2, 2)), ArgumentError,
     r"corr2d: expected X to be 2-D .*but got 3-D with shape \(2, 3, 3\)"),
    ("corr2d-X-1d", lambda: cuconv.corr2d(x4(3), x4(2, 2)), ArgumentError,
     r"expected X to be 2-D .*but got 1-D with shape \(3,\)"),
    ("corr2d-K-1d", lambda: cuconv.corr2d(x4(3, 3), x4(2)), ArgumentError,
     r"expected K to be 2-D .*but got 1-D with shape \(2,\)"),
    ("corr2d-K-4d", lambda: cuconv.corr2d(x4(3, 3), x4(1, 1, 2, 2)), ArgumentError,
     r"expected K to be 2-D .*but got 4-D with shape \(1, 1, 2, 2\)"),
    ("corr2d-X-list", lambda: cuconv.corr2d([[1.0, 2.0]], x4(1, 1)), TypeError,
     r"expected X to be a torch\.Tensor, but got list"),
    ("corr2d-K-larger", lambda: cuconv.corr2d(x4(3, 3), x4(4, 2)), ArgumentError,
     r"corr2d: expected a kernel no larger than X's 3 x 3 plane, but got 4 x 2"),
    ("corr2d_multi_in-X-2d", lambda: cuconv.corr2d_multi_in(x4(3, 3), x4(2, 2)), ArgumentError,
     r"corr2d_multi_in: expected X to be 3-D .*but got 2-D with shape \(3, 3\)"),
    ("corr2d_multi_in-K-4d", lambda: cuconv.corr2d_multi_in(x4(2, 3, 3), x4(1, 2, 2, 2)), ArgumentError,
     r"corr2d_multi_in: expected K to be 3-D .*but got 4-D with shape \(1, 2, 2, 2\)"),
    ("corr2d_multi_in-channels", lambda: cuconv.corr2d_multi_in(x4(2, 3, 3), x4(3, 2, 2)), ArgumentError,
     r"corr2d_multi_in: expected K to have X's 2 input channels, but got 3"),
    ("corr2d_multi_in_out-X-4d", lambda: cuconv.corr2d_multi_in_out(x4(1, 2, 3, 3), x4(3, 2, 2, 2)), ArgumentError,
     r"corr2d_multi_in_out: expected X to be 3-D .*but got 4-D with shape \(1, 2, 3, 3\)"),
    ("corr2d_multi_in_out-K-3d", lambda: cuconv.corr2d_multi_in_out(x4(2, 3, 3), x4(2, 2, 2)), ArgumentError,
     r"corr2d_multi_in_out: expected K to be 4-D .*but got 3-D with shape \(2, 2, 2\)"),
    ("corr2d_multi_in_out_1x1-K-not-1x1", lambda: cuconv.corr2d_multi_in_out_1x1(x4(2, 3, 3), x4(3, 2, 2, 2)),
     ArgumentError, r"expected K of shape \(c_o, c_i, 1, 1\), but got \(3, 2, 2, 2\)"),
    ("corr2d_multi_in_out_1x1-K-3d", lambda: cuconv.corr2d_multi_in_out_1x1(x4(2, 3, 3), x4(3, 2, 1)), ArgumentError,
     r"corr2d_multi_in_out_1x1: expected K to be 4-D .*but got 3-D with shape \(3, 2, 1\)"),
    ("corr2d_multi_in_out_1x1-X-2d", lambda: cuconv.corr2d_multi_in_out_1x1(x4(3, 3), x4(3, 2, 1, 1)), ArgumentError,
     r"corr2d_multi_in_out_1x1: expected X to be 3-D .*but got 2-D with shape \(3, 3\)"),
    ("pool2d-bad-mode", lambda: cuconv.pool2d(x4(3, 3), (2, 2), "min"), ArgumentError,
     r"pool2d: expected mode to be 'max' or 'avg', but got 'min'"),
    ("pool2d-mode-case", lambda: cuconv.pool2d(x4(3, 3), (2, 2), mode="MAX"), ArgumentError,
     r"mode to be 'max' or 'avg', but got 'MAX'"),
    ("pool2d-mode-none", lambda: cuconv.pool2d(x4(3, 3), (2, 2), mode=None), ArgumentError,
     r"mode to be 'max' or 'avg', but got None"),
    ("pool2d-X-3d", lambda: cuconv.pool2d(x4(1, 3, 3), (2, 2)), ArgumentError,
     r"pool2d: expected X to be 2-D .*but got 3-D with shape \(1, 3, 3\)"),
    ("pool2d-size-3-values", lambda: cuconv.pool2d(x4(3, 3), (2, 2, 2)), ArgumentError, r"pool_size.*\(2, 2, 2\)"),
    ("pool2d-size-float", lambda: cuconv.pool2d(x4(3, 3), 1.5), TypeError, r"pool_size.*float 1\.5"),
    ("pool2d-size-0", lambda: cuconv.pool2d(x4(3, 3), (0, 2)), ArgumentError,
     r"pool2d: expected pool_size to be positive, but got \(0, 2\)"),
    ("pool2d-larger-than-X", lambda: cuconv.pool2d(x4(3, 3), (4, 4), "avg"), ArgumentError,
     r"pool2d: expected a window no larger than X's 3 x 3 plane, but got 4 x 4"),
]

MODULE_CASES = [
    ("Conv2d-channel-mismatch", lambda: cuconv.Conv2d(3, 6, 3)(x4()), ArgumentError,
     r"weight of shape \[6, 3, 3, 3\].*to have 3 channels, but got 4"),
    ("Conv2d-input-2d", lambda: cuconv.Conv2d(4, 6, 3)(x4(8, 8)), ArgumentError, r"input to be 3-D .*but got 2-D"),
    ("Conv2d-input-5d", lambda: cuconv.Conv2d(4, 6, 3)(x4(1, 2, 4, 8, 8)), ArgumentError, r"input to be 3-D .*but got 5-D"),
    ("Conv2d-dtype", lambda: cuconv.Conv2d(4, 6, 3).double()(x4()), DtypeError,
     r"weight to have the dtype of input \(Float\), but got Double"),
    ("Conv2d-integer-input", lambda: cuconv.Conv2d(4, 6, 3)(x4().long()), DtypeError,
     r"weight to have the dtype of input \(Long\), but got Float"),
    ("Conv2d-kernel-too-large", lambda: cuconv.Conv2d(4, 6, 9)(x4()), ArgumentError,
     r"kernel \(9 x 9\) to fit in the padded input \(8 x 8\)"),
    ("Conv2d-stride-0", lambda: cuconv.Conv2d(4, 6, 3, stride=0)(x4()), ArgumentError, r"stride=\[0, 0\]"),
    ("Conv2d-dilation-0", lambda: cuconv.Conv2d(4, 6, 3, dilation=(1, 0))(x4()), ArgumentError, r"dilation=\[1, 0\]"),
    ("Conv2d-padding-negative", lambda: cuconv.Conv2d(4, 6, 3, padding=-1)(x4()), ArgumentError, r"padding=\[-1, -1\]"),
    ("Conv2d-stride-3-values", lambda: cuconv.Conv2d(4, 6, 3, stride=(1, 2, 3))(x4()), ArgumentError,
     r"stride.*\(1, 2, 3\)"),
    ("Conv2d-reflect-channel-mismatch", lambda: cuconv.Conv2d(3, 6, 3, padding=1, padding_mode="reflect")(x4()),
     ArgumentError, r"to have 3 channels, but got 4"),
    # torch.nn.Conv2d's own constructor checks, inherited unchanged
    ("Conv2d-padding-mode", lambda: cuconv.Conv2d(4, 6, 3, padding_mode="mirror"), ValueError,
     r"padding_mode.*'mirror'"),
    ("Conv2d-groups-in", lambda: cuconv.Conv2d(3, 6, 3, groups=2), ValueError, r"in_channels must be divisible by groups"),
    ("Conv2d-groups-out", lambda: cuconv.Conv2d(4, 6, 3, groups=4), ValueError, r"out_channels must be divisible by groups"),
    ("Conv2d-groups-0", lambda: cuconv.Conv2d(4, 6, 3, groups=0), ValueError, r"groups must be a positive integer"),
    ("Conv2d-same-strided", lambda: cuconv.Conv2d(4, 6, 3, padding="same", stride=2), ValueError,
     r"padding='same' is not supported for strided convolutions"),
    ("Conv2d-padding-string", lambda: cuconv.Conv2d(4, 6, 3, padding="full"), ValueError,
     r"Invalid padding string 'full'"),
    # torch.nn.LazyConv2d's own check while it infers in_channels (a RuntimeError in torch)
    ("LazyConv2d-input-2d", lambda: cuconv.LazyConv2d(6, 3)(x4(8, 8)), RuntimeError,
     r"3D \(unbatched\) or 4D \(batched\) input to LazyConv2d, but got input of size: torch\.Size\(\[8, 8\]\)"),
    ("LazyConv2d-integer-input", lambda: cuconv.LazyConv2d(6, 3)(x4().long()), DtypeError,
     r"weight to have the dtype of input \(Long\), but got Float"),
    ("MaxPool2d-padding-above-half", lambda: cuconv.MaxPool2d(2, padding=2)(x4()), ArgumentError,
     r"padding to be at most half of kernel_size \[2, 2\], but got padding=\[2, 2\]"),
    ("MaxPool2d-too-small", lambda: cuconv.MaxPool2d(3)(x4(1, 1, 2, 2)), ArgumentError,
     r"input of shape \[1, 1, 2, 2\] is too small for kernel_size=\[3, 3\]"),
    ("MaxPool2d-kernel-0", lambda: cuconv.MaxPool2d(0)(x4()), ArgumentError, r"kernel_size=\[0, 0\]"),
    ("MaxPool2d-input-2d", lambda: cuconv.MaxPool2d(2)(x4(8, 8)), ArgumentError, r"input to be 3-D .*but got 2-D"),
    ("MaxPool2d-indices-input-5d", lambda: cuconv.MaxPool2d(2, return_indices=True)(x4(1, 1, 1, 8, 8)), ArgumentError,
     r"input to be 3-D .*but got 5-D"),
    ("AvgPool2d-divisor-0", lambda: cuconv.AvgPool2d(2, divisor_override=0)(x4()), ArgumentError,
     r"divisor_override to be a non-zero int or None, but got 0"),
    ("AvgPool2d-padding-above-half", lambda: cuconv.AvgPool2d(3, padding=2)(x4()), ArgumentError,
     r"at most half of kernel_size \[3, 3\], but got padding=\[2, 2\]"),
    ("AvgPool2d-stride-0", lambda: cuconv.AvgPool2d(2, stride=0)(x4()), ArgumentError, r"stride=\[0, 0\]"),
    ("AvgPool2d-integer-input", lambda: cuconv.AvgPool2d(2)(x4().int()), DtypeError,
     r"input to be a floating-point or int64 tensor, but got Int"),
    ("AdaptiveAvgPool2d-negative", lambda: cuconv.AdaptiveAvgPool2d(-1)(x4()), ArgumentError,
     r"output_size value to be >= 0, but got output_size=\[-1, -1\]"),
    ("AdaptiveAvgPool2d-negative-w", lambda: cuconv.AdaptiveAvgPool2d((None, -2))(x4()), ArgumentError,
     r"output_size value to be >= 0, but got output_size=\[8, -2\]"),
    ("AdaptiveAvgPool2d-3-values", lambda: cuconv.AdaptiveAvgPool2d((1, 2, 3))(x4()), ArgumentError,
     r"output_size.*\(1, 2, 3\)"),
    ("AdaptiveAvgPool2d-input-2d", lambda: cuconv.AdaptiveAvgPool2d(2)(x4(8, 8)), ArgumentError,
     r"input to be 3-D .*but got 2-D"),
    ("convert-int", lambda: cuconv.convert(3), TypeError,
     r"convert: expected model to be a torch\.nn\.Module, but got int"),
    ("convert-tensor", lambda: cuconv.convert(x4()), TypeError,
     r"expected model to be a torch\.nn\.Module, but got Tensor"),
    ("convert-class", lambda: cuconv.convert(nn.Conv2d), TypeError,
     r"expected model to be a torch\.nn\.Module, but got type"),
    ("convert-list", lambda: cuconv.convert([nn.Conv2d(1, 1, 1)], inplace=True), TypeError,
     r"expected model to be a torch\.nn\.Module, but got list"),
]

# The raw backward ops check what autograd hands them.
RAW_BACKWARD_CASES = [
    ("conv2d_backward_input-grad-shape",
     lambda: ops.conv2d_backward_input(x4(2, 6, 5, 6), w4(), [2, 4, 8, 8], [1, 1], [0, 0], [1, 1], 1), ValueError,
     r"grad_output of shape \[2, 6, 6, 6\], but got \[2, 6, 5, 6\]"),
    ("conv2d_backward_input-dtype",
     lambda: ops.conv2d_backward_input(x4(2, 6, 6, 6, dtype=torch.float64), w4(), [2, 4, 8, 8], [1, 1], [0, 0], [1, 1], 1),
     RuntimeError, r"weight to have the dtype of grad_output \(Double\), but got Float"),
    ("conv2d_backward_weight-grad-shape",
     lambda: ops.conv2d_backward_weight(x4(2, 6, 6, 7), x4(), [6, 4, 3, 3], [1, 1], [0, 0], [1, 1], 1), ValueError,
     r"grad_output of shape \[2, 6, 6, 6\], but got \[2, 6, 6, 7\]"),
    ("conv2d_backward_weight-dtype",
     lambda: ops.conv2d_backward_weight(x4(2, 6, 6, 6), x4(dtype=torch.float64), [6, 4, 3, 3], [1, 1], [0, 0], [1, 1], 1),
     RuntimeError, r"input to have the dtype of grad_output \(Float\), but got Double"),
    ("conv2d_backward_bias-3d", lambda: ops.conv2d_backward_bias(x4(6, 6, 6)), ValueError,
     r"grad_output to be 4-D .*but got 3-D with shape \[6, 6, 6\]"),
    ("max_pool2d_backward-grad-shape",
     lambda: ops.max_pool2d_backward(x4(2, 4, 3, 4), torch.zeros(2, 4, 4, 4, dtype=torch.long), [2, 4, 8, 8],
                                     [2, 2], [2, 2], [0, 0], [1, 1], False), ValueError,
     r"grad_output of shape \[2, 4, 4, 4\], but got \[2, 4, 3, 4\]"),
    ("max_pool2d_backward-indices-dtype",
     lambda: ops.max_pool2d_backward(x4(2, 4, 4, 4), torch.zeros(2, 4, 4, 4, dtype=torch.int32), [2, 4, 8, 8],
                                     [2, 2], [2, 2], [0, 0], [1, 1], False), ValueError,
     r"int64 indices of shape \[2, 4, 4, 4\], but got Int of shape \[2, 4, 4, 4\]"),
    ("max_pool2d_backward-indices-out-of-range",
     lambda: ops.max_pool2d_backward(x4(1, 1, 2, 2), torch.tensor([[[[0, 1], [2, 64]]]]), [1, 1, 4, 4],
                                     [2, 2], [2, 2], [0, 0], [1, 1], False), IndexError, r"index 64"),
    ("avg_pool2d_backward-grad-shape",
     lambda: ops.avg_pool2d_backward(x4(2, 4, 4, 5), [2, 4, 8, 8], [2, 2], [2, 2], [0, 0], False, True, None),
     ValueError, r"grad_output of shape \[2, 4, 4, 4\], but got \[2, 4, 4, 5\]"),
    ("avg_pool2d_backward-divisor-0",
     lambda: ops.avg_pool2d_backward(x4(2, 4, 4, 4), [2, 4, 8, 8], [2, 2], [2, 2], [0, 0], False, True, 0),
     ValueError, r"divisor_override to be a non-zero int or None, but got 0"),
    ("adaptive_avg_pool2d_backward-channels",
     lambda: ops.adaptive_avg_pool2d_backward(x4(2, 3, 2, 2), [2, 4, 8, 8]), ValueError,
     r"grad_output's batch and channels to match input_size \[2, 4, 8, 8\], but got grad_output of shape \[2, 3, 2, 2\]"),
]

ERROR_CASES = (
    _cases(CONV_CASES + CONV_FUNCTIONAL_ONLY, CF.conv2d, F.conv2d)
    + [pytest.param(*p.values, id="raw-" + p.id) for p in _cases(_RAW_CONV_TABLE, _raw_conv, None, raw=True)]
    + [pytest.param(*p.values, id="max_pool2d-" + p.id)
       for p in _pool_input_cases(CF.max_pool2d, F.max_pool2d, kernel_size=2)
       + _pool_cases(WINDOW_CASES + MAX_ONLY_CASES, CF.max_pool2d, F.max_pool2d)]
    + [pytest.param(*p.values, id="avg_pool2d-" + p.id)
       for p in _pool_input_cases(CF.avg_pool2d, F.avg_pool2d, kernel_size=2)
       + _pool_cases(WINDOW_CASES + AVG_ONLY_CASES, CF.avg_pool2d, F.avg_pool2d)]
    + [pytest.param(*p.values, id="adaptive_avg_pool2d-" + p.id)
       for p in _pool_input_cases(CF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, output_size=2)
       + _pool_cases(ADAPTIVE_CASES, CF.adaptive_avg_pool2d, F.adaptive_avg_pool2d)]
    + [pytest.param(*p.values, id="raw-max_pool2d-" + p.id)
       for p in _pool_cases(_RAW_WINDOW + MAX_ONLY_CASES[:3], _raw_max, None, raw=True)]
    + [pytest.param(*p.values, id="raw-avg_pool2d-" + p.id)
       for p in _pool_cases(_RAW_WINDOW + AVG_ONLY_CASES[:1], _raw_avg, None, raw=True)]
    + [
        pytest.param(lambda: ops.max_pool2d(x4(4, 8, 8), [2, 2], [2, 2], [0, 0], [1, 1], False), ValueError,
                     r"input to be 4-D .*but got 3-D with shape \[4, 8, 8\]", None, id="raw-max_pool2d-input-3d"),
        pytest.param(lambda: ops.max_pool2d(x4() > 0, [2, 2], [2, 2], [0, 0], [1, 1], False), RuntimeError,
                     r"input to be a floating-point or integer tensor, but got Bool", None, id="raw-max_pool2d-bool"),
        pytest.param(lambda: ops.max_pool2d(x4(), [2, 2, 2], [2, 2], [0, 0], [1, 1], False), ValueError,
                     r"kernel_size to be a pair of ints \(height, width\), but got 3 values \[2, 2, 2\]", None,
                     id="raw-max_pool2d-kernel-3-values"),
        pytest.param(lambda: ops.avg_pool2d(x4(4, 8, 8), [2, 2], [2, 2], [0, 0], False, True, None), ValueError,
                     r"input to be 4-D .*but got 3-D with shape \[4, 8, 8\]", None, id="raw-avg_pool2d-input-3d"),
        pytest.param(lambda: ops.avg_pool2d(x4().int(), [2, 2], [2, 2], [0, 0], False, True, None), RuntimeError,
                     r"input to be a floating-point or int64 tensor, but got Int", None, id="raw-avg_pool2d-integer"),
        pytest.param(lambda: ops.adaptive_avg_pool2d(x4(), [-1, 2]), ValueError,
                     r"output_size value to be >= 0, but got output_size=\[-1, 2\]", None,
                     id="raw-adaptive_avg_pool2d-negative"),
        pytest.param(lambda: ops.adaptive_avg_pool2d(x4(), [1, 2, 3]), ValueError,
                     r"output_size to be a pair of ints \(height, width\), but got 3 values \[1, 2, 3\]", None,
                     id="raw-adaptive_avg_pool2d-3-values"),
        pytest.param(lambda: ops.adaptive_avg_pool2d(x4(4, 8, 8), [2, 2]), ValueError,
                     r"input to be 4-D .*but got 3-D with shape \[4, 8, 8\]", None,
                     id="raw-adaptive_avg_pool2d-input-3d"),
        pytest.param(lambda: ops.adaptive_avg_pool2d(x4().long(), [2, 2]), RuntimeError,
                     r"input to be a floating-point tensor, but got Long", None,
                     id="raw-adaptive_avg_pool2d-integer"),
        pytest.param(lambda: ops.adaptive_avg_pool2d(x4().to(torch.complex64), [2, 2]), RuntimeError,
                     r"input to be a floating-point tensor, but got ComplexFloat", None,
                     id="raw-adaptive_avg_pool2d-complex"),  # (cuconv.functional pools the parts)
    ]
    + [pytest.param(fn, exc, pattern, None, id=case_id) for case_id, fn, exc, pattern in BOOK_CASES]
    + [pytest.param(fn, exc, pattern, None, id=case_id) for case_id, fn, exc, pattern in MODULE_CASES]
    + [pytest.param(fn, exc, pattern, None, id=case_id) for case_id, fn, exc, pattern in RAW_BACKWARD_CASES]
)


@pytest.mark.parametrize("call, exc, pattern, reference", ERROR_CASES)
def test_invalid_call_raises(call, exc, pattern, reference):
    with pytest.raises(exc, match=pattern) as info:
        call()
    # The exact type, not merely a subclass of it.
    assert info.type is exc, f"expected {exc.__name__}, got {info.type.__name__}: {info.value}"


@pytest.mark.parametrize(
    "call, exc, pattern, reference", [p for p in ERROR_CASES if p.values[3] is not None])
def test_torch_rejects_it_too(call, exc, pattern, reference):
    """cuconv is never stricter than torch.nn.functional: each call it rejects torch rejects too
    (with one of the errors torch raises for bad arguments, not e.g. a NameError in the test;
    torch's adaptive pooling reads list.size(), hence AttributeError)."""
    with pytest.raises((RuntimeError, ValueError, TypeError, IndexError, AttributeError)):
        reference()


@pytest.mark.parametrize(
    "call, exc, pattern, reference", [p for p in ERROR_CASES if p.values[3] is not None])
def test_caught_as_torch_s_error_is(call, exc, pattern, reference):
    """Code written for torch.nn catches cuconv's error too: where torch raises RuntimeError (bad
    shapes, values and dtypes) cuconv's ArgumentError and DtypeError are RuntimeErrors as well."""
    with pytest.raises(Exception) as theirs:
        reference()
    with pytest.raises(Exception) as ours:
        call()
    # (not torch's incidental errors: its adaptive pooling reads list.size(), its average pooling
    # of a 2-D input indexes a dimension it lacks)
    if theirs.type not in (AttributeError, IndexError):
        assert isinstance(ours.value, theirs.type), f"torch: {theirs.type.__name__}, cuconv: {ours.type.__name__}"


# Calls at the edge of what torch accepts: cuconv must accept them too, with torch's result.
VALID_EDGE_CASES = [
    ("conv2d-stride-1-tuple", lambda f: f.conv2d(x4(), w4(), stride=(2,))),
    ("conv2d-padding-1-list", lambda f: f.conv2d(x4(), w4(), padding=[1])),
    ("conv2d-dilation-1-tuple", lambda f: f.conv2d(x4(), w4(), dilation=(2,))),
    ("conv2d-numpy-ints", lambda f: f.conv2d(x4(), w4(), stride=np.int64(2), padding=(np.int32(1), 0))),
    ("conv2d-torch-size", lambda f: f.conv2d(x4(), w4(), stride=torch.Size([1, 2]))),
    ("conv2d-padding-larger-than-kernel", lambda f: f.conv2d(x4(), w4(), padding=5)),
    ("conv2d-input-smaller-than-kernel-but-padded", lambda f: f.conv2d(x4(1, 4, 2, 2), w4(), padding=1)),
    ("conv2d-same-stride-1-tuple", lambda f: f.conv2d(x4(), w4(), padding="same", stride=(1, 1))),
    ("conv2d-same-even-dilated", lambda f: f.conv2d(x4(), w4(6, 4, 4, 2), padding="same", dilation=(1, 3))),
    ("conv2d-valid-strided", lambda f: f.conv2d(x4(), w4(), padding="valid", stride=3)),
    ("conv2d-kernel-equals-input", lambda f: f.conv2d(x4(), w4(6, 4, 8, 8))),
    ("max_pool2d-kernel-1-tuple", lambda f: f.max_pool2d(x4(), (2,), stride=(1,))),
    ("max_pool2d-stride-empty-list", lambda f: f.max_pool2d(x4(), [3], stride=[])),
    ("max_pool2d-stride-none", lambda f: f.max_pool2d(x4(), 3, stride=None)),
    ("max_pool2d-padding-half", lambda f: f.max_pool2d(x4(), (3, 2), padding=(1, 1))),
    ("max_pool2d-kernel-equals-input", lambda f: f.max_pool2d(x4(), 8)),
    ("max_pool2d-kernel-above-input-padded", lambda f: f.max_pool2d(x4(), 10, padding=1)),
    ("max_pool2d-ceil-last-window-in-padding", lambda f: f.max_pool2d(x4(), 2, stride=2, padding=1, ceil_mode=True)),
    ("max_pool2d-ceil-partial", lambda f: f.max_pool2d(x4(), 4, stride=3, padding=2, ceil_mode=True)),
    ("max_pool2d-unbatched", lambda f: f.max_pool2d(x4(4, 8, 8), 2)),
    ("max_pool2d-int64", lambda f: f.max_pool2d((x4() * 100).long(), 3, stride=2, padding=1)),
    ("max_pool2d-uint8-unbatched", lambda f: f.max_pool2d((x4(4, 8, 8) * 50 + 100).to(torch.uint8), 2)),
    ("avg_pool2d-divisor-negative", lambda f: f.avg_pool2d(x4(), 2, divisor_override=-2)),
    ("avg_pool2d-ceil-count-exclude", lambda f: f.avg_pool2d(x4(), 4, 3, 2, ceil_mode=True, count_include_pad=False)),
    ("avg_pool2d-ceil-count-include", lambda f: f.avg_pool2d(x4(), 4, 3, 2, ceil_mode=True)),
    ("adaptive-0", lambda f: f.adaptive_avg_pool2d(x4(), 0)),
    ("adaptive-none-0", lambda f: f.adaptive_avg_pool2d(x4(), (None, 0))),
    ("adaptive-none-none", lambda f: f.adaptive_avg_pool2d(x4(), (None, None))),
    ("adaptive-larger-than-input", lambda f: f.adaptive_avg_pool2d(x4(), (20, 9))),
    ("adaptive-torch-size", lambda f: f.adaptive_avg_pool2d(x4(), torch.Size([3, 5]))),
    ("adaptive-list", lambda f: f.adaptive_avg_pool2d(x4(), [3, None])),
    ("adaptive-unbatched-no-channels", lambda f: f.adaptive_avg_pool2d(x4(0, 4, 4), 2)),
    # ints as torch's argument parser takes them: one-element tensors of an integer or bool dtype
    ("conv2d-tensor-ints", lambda f: f.conv2d(x4(), w4(), stride=torch.tensor(2), padding=torch.tensor([1]),
                                              dilation=torch.tensor(True), groups=torch.tensor(1))),
    ("conv2d-pair-of-tensors", lambda f: f.conv2d(x4(), w4(), stride=(torch.tensor(2, dtype=torch.uint8),
                                                                    torch.tensor([[1]])))),
    ("conv_transpose2d-tensor-ints", lambda f: f.conv_transpose2d(
        x4(), w4(4, 6, 3, 3), stride=torch.tensor(2), padding=torch.tensor(1), output_padding=torch.tensor(1),
        groups=torch.tensor(2, dtype=torch.int32), dilation=(1, torch.tensor(2)))),
    ("max_pool2d-tensor-ints", lambda f: f.max_pool2d(x4(), torch.tensor(3), torch.tensor([2]), (torch.tensor(1), 0))),
    ("avg_pool2d-tensor-ints", lambda f: f.avg_pool2d(x4(), torch.tensor([3]), padding=torch.tensor(1),
                                                      divisor_override=torch.tensor(5))),
    ("adaptive-tensor-pair", lambda f: f.adaptive_avg_pool2d(x4(), torch.tensor([3, 5]))),
]


@pytest.mark.parametrize("call", [c[1] for c in VALID_EDGE_CASES], ids=[c[0] for c in VALID_EDGE_CASES])
def test_accepts_what_torch_accepts(call):
    torch.manual_seed(0)
    expected = call(F)
    torch.manual_seed(0)
    actual = call(CF)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_messages_name_the_op():
    """Every check's message starts with the op it comes from."""
    for call, prefix in [
        (lambda: CF.conv2d(x4(), w4(), stride=0), "cuconv.conv2d: "),
        (lambda: ops.conv2d(x4(), w4(), None, [1, 1], [0, 0], [0, 1], 1), "cuconv.conv2d: "),
        (lambda: CF.max_pool2d(x4(), 2, padding=2), "cuconv.max_pool2d: "),
        (lambda: CF.avg_pool2d(x4(), 2, divisor_override=0), "cuconv.avg_pool2d: "),
        (lambda: CF.adaptive_avg_pool2d(x4(), -1), "cuconv.adaptive_avg_pool2d: "),
        (lambda: cuconv.pool2d(x4(3, 3), 2, "min"), "cuconv.pool2d: "),
        (lambda: cuconv.corr2d(x4(3), x4(2, 2)), "cuconv.corr2d: "),
    ]:
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        assert str(info.value).startswith(prefix), str(info.value)


def test_failed_call_leaves_no_state_behind():
    """A rejected call does not poison later valid calls (e.g. a half-initialised LazyConv2d)."""
    x, w = x4(), w4()
    with pytest.raises(ValueError):
        CF.conv2d(x, w, stride=0)
    torch.testing.assert_close(CF.conv2d(x, w), F.conv2d(x, w), rtol=1e-5, atol=1e-5)
    lazy = cuconv.LazyConv2d(6, 3)
    with pytest.raises(TypeError):
        lazy(x.long())
    y = lazy(x)
    assert type(lazy) is cuconv.Conv2d and y.shape == (2, 6, 6, 6)


# --- NaN and Inf -----------------------------------------------------------------------------

def _sprinkle(t, seed):
    """t with NaN, +Inf and -Inf at random positions (about 5% each)."""
    gen = torch.Generator().manual_seed(seed)
    t = t.clone()
    flat = t.view(-1)
    for value in (float("nan"), float("inf"), float("-inf")):
        mask = torch.rand(flat.shape, generator=gen) < 0.05
        flat[mask] = value
    return t


def _tolerance(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)


def _forward_backward(fn, tensors, grad_seed=7):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    indices = None
    if isinstance(out, tuple):
        out, indices = out
    gen = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, grad) if out.numel() else [torch.zeros_like(t) for t in leaves]
    return out.detach(), indices, grads


def _compare(ours, theirs, tensors, dtype):
    out, idx, grads = _forward_backward(ours, tensors)
    ref_out, ref_idx, ref_grads = _forward_backward(theirs, tensors)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    # NaN where torch has NaN, +-Inf where torch has +-Inf, the same numbers elsewhere.
    torch.testing.assert_close(out, ref_out, equal_nan=True, **_tolerance(dtype))
    if ref_idx is not None:
        assert torch.equal(idx, ref_idx)
    for g, ref_g in zip(grads, ref_grads):
        assert g.shape == ref_g.shape
        torch.testing.assert_close(g, ref_g, equal_nan=True, **_tolerance(dtype))


CONV_CONFIGS = [
    dict(),
    dict(padding=1),
    dict(stride=2, padding=(1, 2)),
    dict(dilation=2, padding=2),
    dict(padding="same"),
    dict(groups=2, padding=1),
]

# Which of (input, weight, bias) carries the NaN/Inf.
WHERE = ["input", "weight", "bias"]


def _padded_reference(config):
    """torch's conv2d on an explicitly zero-padded input. For NaN/Inf *weights* this is the
    reference: 0 * NaN and 0 * Inf are NaN, so a special tap over the zero padding gives NaN.
    torch's own float32 CPU conv (oneDNN) skips the padding taps for multi-channel inputs and
    can return +-Inf there instead, while its float64 conv and its explicitly padded input give
    NaN; the padded form is the one well-defined answer."""
    padding = config.get("padding", 0)
    if padding == "same":  # 3x3 kernel, dilation 1 in these configs
        padding = 1
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    rest = {k: v for k, v in config.items() if k != "padding"}
    return lambda x, w, b: F.conv2d(F.pad(x, (pw, pw, ph, ph)), w, b, **rest)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONV_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
@pytest.mark.parametrize("where", WHERE)
def test_conv2d_nan_inf_like_torch(config, where, dtype):
    groups = config.get("groups", 1)
    x = torch.randn(2, 4, 7, 9, dtype=dtype)
    w = torch.randn(6, 4 // groups, 3, 3, dtype=dtype)
    b = torch.randn(6, dtype=dtype)
    tensors = dict(input=x, weight=w, bias=b)
    tensors[where] = _sprinkle(tensors[where], seed=WHERE.index(where) + 1)
    if where == "weight":
        tensors["weight"].view(-1)[0] = float("nan")  # a NaN tap that meets zero padding
        reference = _padded_reference(config)
    else:
        reference = lambda x, w, b: F.conv2d(x, w, b, **config)  # noqa: E731
    _compare(lambda x, w, b: CF.conv2d(x, w, b, **config), reference,
             [tensors["input"], tensors["weight"], tensors["bias"]], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("way", [{"CUCONV_CPU_TUNE": "0"}, {"CUCONV_CPU_DIRECT": "0"}, {"CUCONV_CPU_DIRECT": "1"}, {},
                                 {"CUCONV_CPU_BY_GROUP": "1"}, {"CUCONV_CPU_DIRECT_PAIRS": "1"}],
                         ids=["fixed-rules", "no-direct", "direct", "measured", "by-group", "bfloat16-pairs"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_input_gradient_of_special_weights(layout, groups, way, dtype, monkeypatch):
    """The input gradient sums only products that exist: an Inf weight makes Inf (or NaN where
    Inf and -Inf meet), never the NaN of Inf times a padding zero. The stride-1 forms over
    grad_output's zero-padded border (the NHWC kernels', the direct kernels', the bfloat16 pairs')
    run with finite weights only; the reference is torch's float64 NCHW gradient (of the bfloat16
    values, rounded once to bfloat16: cuconv's sums are float)."""
    for name, value in way.items():
        monkeypatch.setenv(name, value)
    torch.manual_seed(3)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 4, 6, 5, dtype=dtype).contiguous(memory_format=memory_format).requires_grad_()
    w = torch.randn(8, 4 // groups, 3, 3, dtype=dtype)  # (an even 4 outputs a group: grouped bfloat16 pairs run)
    w[1, 0, 0, 0] = float("inf")
    dy = torch.randn(2, 8, 6, 5, dtype=dtype).contiguous(memory_format=memory_format)
    dx, = torch.autograd.grad(CF.conv2d(x, w, None, 1, 1, 1, groups), x, dy)
    x64 = x.detach().double().contiguous().requires_grad_()
    expected, = torch.autograd.grad(F.conv2d(x64, w.double(), None, 1, 1, 1, groups), x64, dy.double().contiguous())
    assert torch.isinf(expected).any() and torch.isfinite(expected).any()
    assert dx.is_contiguous(memory_format=memory_format)
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(dx.double(), expected.to(dtype).double(), equal_nan=True, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_conv2d_single_special_weight_tap_over_zero_padding(value, dtype):
    """0 * NaN and 0 * Inf are NaN: a special weight tap that lands on zero padding makes the
    border outputs NaN (torch agrees on this single-channel case in both dtypes)."""
    x = torch.randn(1, 1, 4, 4, dtype=dtype)
    w = torch.randn(1, 1, 3, 3, dtype=dtype)
    w[0, 0, 0, 0] = value
    ours = CF.conv2d(x, w, padding=1)
    torch.testing.assert_close(ours, F.conv2d(x, w, padding=1), equal_nan=True, **_tolerance(dtype))
    torch.testing.assert_close(ours, F.conv2d(F.pad(x, (1, 1, 1, 1)), w), equal_nan=True, **_tolerance(dtype))
    assert ours[0, 0, 0].isnan().all() and ours[0, 0, :, 0].isnan().all()


MAX_CONFIGS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1)),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", MAX_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_max_pool2d_nan_inf_like_torch(config, dtype):
    x = _sprinkle(torch.randn(2, 3, 9, 8, dtype=dtype), seed=3)
    _compare(lambda x: CF.max_pool2d(x, return_indices=True, **config),
             lambda x: F.max_pool2d(x, return_indices=True, **config), [x], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [5, 6])  # even: the stride-2 kernel of 3x3 windows (pool2d.cpp)
def test_max_pool2d_all_minus_inf_and_all_nan_like_torch(dtype, width):
    for fill in (float("-inf"), float("nan")):
        x = torch.full((1, 2, 5, width), fill, dtype=dtype)
        x[0, 1, 2, 3] = torch.randn(())  # one finite value in the second plane
        for config in MAX_CONFIGS:
            _compare(lambda x: CF.max_pool2d(x, return_indices=True, **config),
                     lambda x: F.max_pool2d(x, return_indices=True, **config), [x], dtype)


AVG_CONFIGS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(3, 2), divisor_override=3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", AVG_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_avg_pool2d_nan_inf_like_torch(config, dtype):
    x = _sprinkle(torch.randn(2, 3, 9, 8, dtype=dtype), seed=4)
    _compare(lambda x: CF.avg_pool2d(x, **config), lambda x: F.avg_pool2d(x, **config), [x], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("output_size", [1, (3, 2), (None, 5), (11, 13)], ids=str)
def test_adaptive_avg_pool2d_nan_inf_like_torch(output_size, dtype):
    x = _sprinkle(torch.randn(2, 3, 9, 8, dtype=dtype), seed=5)
    _compare(lambda x: CF.adaptive_avg_pool2d(x, output_size),
             lambda x: F.adaptive_avg_pool2d(x, output_size), [x], dtype)


def test_book_helpers_nan_inf():
    X = _sprinkle(torch.randn(6, 7), seed=6)
    K = torch.randn(2, 3)
    torch.testing.assert_close(cuconv.corr2d(X, K), F.conv2d(X[None, None], K[None, None])[0, 0], equal_nan=True)
    torch.testing.assert_close(cuconv.pool2d(X, (2, 3)), F.max_pool2d(X[None], (2, 3), 1)[0], equal_nan=True)
    torch.testing.assert_close(cuconv.pool2d(X, (2, 3), "avg"), F.avg_pool2d(X[None], (2, 3), 1)[0], equal_nan=True)


# --- empty batch (N = 0) ---------------------------------------------------------------------

EMPTY_CASES = [
    ("conv2d", lambda x, f, p: f.conv2d(x, p["w"], p["b"])),
    ("conv2d-padding-stride", lambda x, f, p: f.conv2d(x, p["w"], p["b"], stride=2, padding=(1, 2))),
    ("conv2d-same-even-kernel", lambda x, f, p: f.conv2d(x, p["w_even"], None, padding="same", dilation=(1, 2))),
    ("conv2d-depthwise", lambda x, f, p: f.conv2d(x, p["w_depthwise"], None, padding=1, groups=4)),
    ("conv2d-1x1", lambda x, f, p: f.conv2d(x, p["w_1x1"], p["b"])),
    ("conv2d-unused-params", lambda x, f, p: f.conv2d(x, p["w"], None, dilation=2)),
    ("max_pool2d", lambda x, f, p: f.max_pool2d(x, 3, 2, 1)),
    ("max_pool2d-ceil", lambda x, f, p: f.max_pool2d(x, 2, ceil_mode=True)),
    ("max_pool2d-indices", lambda x, f, p: f.max_pool2d(x, 2, return_indices=True)),
    ("avg_pool2d", lambda x, f, p: f.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    ("avg_pool2d-divisor", lambda x, f, p: f.avg_pool2d(x, 2, divisor_override=3)),
    ("adaptive_avg_pool2d", lambda x, f, p: f.adaptive_avg_pool2d(x, (2, 3))),
    ("adaptive_avg_pool2d-none", lambda x, f, p: f.adaptive_avg_pool2d(x, (None, 3))),
]


@pytest.mark.parametrize("fn", [c[1] for c in EMPTY_CASES], ids=[c[0] for c in EMPTY_CASES])
def test_empty_batch_functional(fn):
    x = torch.randn(0, 4, 7, 9, dtype=torch.float64)
    params = dict(w=torch.randn(6, 4, 3, 3), w_even=torch.randn(6, 4, 2, 4), w_depthwise=torch.randn(8, 1, 3, 3),
                  w_1x1=torch.randn(6, 4, 1, 1), b=torch.randn(6))
    params = {k: v.double() for k, v in params.items()}

    def run(f):
        leaf = x.clone().requires_grad_()
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        out = fn(leaf, f, leaves)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        return out, leaf.grad, {k: v.grad for k, v in leaves.items()}

    out, grad_x, grad_p = run(CF)
    ref, ref_grad_x, ref_grad_p = run(F)
    if isinstance(ref, tuple):
        assert out[1].shape == ref[1].shape and out[1].dtype == ref[1].dtype
        out, ref = out[0], ref[0]
    assert out.shape == ref.shape and out.numel() == 0 and out.dtype == ref.dtype
    assert grad_x is not None and grad_x.shape == x.shape
    for name, ref_g in ref_grad_p.items():
        if ref_g is None:
            assert grad_p[name] is None, name
        else:
            # An empty batch contributes nothing: zero gradients of the parameter's shape.
            assert grad_p[name] is not None, name
            torch.testing.assert_close(grad_p[name], ref_g)


@pytest.mark.parametrize("make", [
    lambda: (cuconv.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)),
    lambda: (cuconv.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
             nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")),
    lambda: (cuconv.Conv2d(4, 6, (2, 3), padding="same", padding_mode="circular"),
             nn.Conv2d(4, 6, (2, 3), padding="same", padding_mode="circular")),
    lambda: (cuconv.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
    lambda: (cuconv.AvgPool2d(2, divisor_override=3), nn.AvgPool2d(2, divisor_override=3)),
    lambda: (cuconv.AdaptiveAvgPool2d((None, 3)), nn.AdaptiveAvgPool2d((None, 3))),
], ids=["Conv2d", "Conv2d-reflect", "Conv2d-same-circular", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"])
def test_empty_batch_modules(make):
    ours, theirs = make()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(0, 4, 6, 7)
    results = []
    for module in (ours, theirs):
        module.zero_grad()
        leaf = x.clone().requires_grad_()
        out = module(leaf)
        out.sum().backward()
        results.append((out, leaf.grad, [p.grad for p in module.parameters()]))
    (out, gx, gp), (ref, ref_gx, ref_gp) = results
    assert out.shape == ref.shape and out.numel() == 0
    assert gx.shape == ref_gx.shape
    for g, ref_g in zip(gp, ref_gp):
        torch.testing.assert_close(g, ref_g)


def test_empty_batch_lazy_conv():
    lazy = cuconv.LazyConv2d(6, 3, padding=1)
    out = lazy(torch.randn(0, 5, 4, 4))
    assert out.shape == (0, 6, 4, 4)
    assert type(lazy) is cuconv.Conv2d and lazy.in_channels == 5 and lazy.weight.shape == (6, 5, 3, 3)


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation", [
    ((1, 1, 7, 1), (1, 2), (4, 1), (0, 1), (1, 2)),
    ((1, 1, 2, 5), (2, 1), 1, (1, 0), (3, 1)),
])
def test_max_pool2d_rejects_windows_that_miss_the_input(shape, kernel, stride, padding, dilation):
    """With dilation a window can start in the padding and step over the whole input; torch gives
    it an index outside the window (and its backward corrupts memory), cuconv rejects it."""
    with pytest.raises(ValueError, match=r"pooling window of output (height|width) index 0 lies entirely in the padding"):
        CF.max_pool2d(torch.randn(shape), kernel, stride, padding, dilation)
