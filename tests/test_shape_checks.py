"""The argument checks exist twice: in C++ for the compiled kernels (csrc/shape.h) and in Python
for the fake kernels that torch.compile traces with (cuconv/_shape.py: the stable ABI cannot
take symbolic sizes). Here the two meet on thousands of random argument sets, most of them
invalid: every op must accept exactly the same ones with the same output shape, and reject the
others with the same exception type and message. (The Python checks raise cuconv's
ArgumentError, a ValueError, where C++ raises ValueError; and for a dtype mismatch DtypeError, a
TypeError, where C++ can only raise RuntimeError.)"""

import random

import pytest
import torch

import cuconv

ops = torch.ops.cuconv


def _outcome(call):
    try:
        out = call()
    except (ValueError, IndexError, TypeError, RuntimeError) as error:
        kind = type(error)
        if kind in (cuconv.ArgumentError, cuconv.DtypeError):
            kind = kind.__mro__[1]  # (ValueError, TypeError: the built-in type it is first)
        return kind.__name__, str(error)
    outs = out if isinstance(out, tuple) else (out,)
    return "ok", [(tuple(o.shape), o.dtype) for o in outs]


def assert_same_outcome(make_call):
    """make_call(device) -> a zero-argument call of the op on tensors of that device."""
    cpu, meta = _outcome(make_call("cpu")), _outcome(make_call("meta"))
    if cpu[0] == "RuntimeError" and meta[0] == "TypeError":
        assert cpu[1] == meta[1]  # a dtype mismatch: the same message, the type each side can raise
        return
    assert cpu == meta


def _size(rng, dims=4, low=0, high=7):
    return [rng.randint(low, high) for _ in range(dims)]


def _pair(rng, low, high):
    """Mostly a valid pair in [low, high]; one time in 20 of the wrong length or below low."""
    roll = rng.random()
    if roll < 0.03:
        return [rng.randint(low, high) for _ in range(rng.choice([1, 3]))]
    if roll < 0.06:
        return [low - 1, rng.randint(low, high)]
    return [rng.randint(low, high), rng.randint(low, high)]


def _tensor(size, device, dtype=torch.float32):
    return torch.rand(size, device=device).to(dtype) if device == "cpu" else torch.empty(size, device=device, dtype=dtype)


def _conv_case(rng):
    groups = rng.choice([1, 1, 1, 2, 3] * 6 + [0])
    per_group = rng.randint(1, 3)
    in_channels = per_group * max(groups, 1) + (1 if rng.random() < 0.05 else 0)
    input_size = [rng.randint(0, 2), in_channels, rng.randint(1, 9), rng.randint(1, 9)]
    if rng.random() < 0.03:
        input_size = input_size[:3]
    out_channels = max(groups, 1) * rng.randint(1, 2) + (1 if rng.random() < 0.05 else 0)
    weight_size = [out_channels, per_group, rng.randint(0 if rng.random() < 0.03 else 1, 4), rng.randint(1, 4)]
    bias = rng.choice([None, out_channels, out_channels, out_channels + (rng.random() < 0.1)])
    dtypes = (torch.float32, torch.float64 if rng.random() < 0.05 else torch.float32)
    return input_size, weight_size, bias, _pair(rng, 1, 3), _pair(rng, 0, 3), _pair(rng, 1, 3), groups, dtypes


CONV_CASES = [_conv_case(random.Random(seed)) for seed in range(600)]


@pytest.mark.parametrize("index", range(0, 600, 50))
def test_conv2d_forward_and_backward_checks_agree(index):
    for input_size, weight_size, bias, stride, padding, dilation, groups, dtypes in CONV_CASES[index:index + 50]:
        def forward(device):
            x, w = _tensor(input_size, device, dtypes[0]), _tensor(weight_size, device, dtypes[1])
            b = _tensor([bias], device) if bias is not None else None
            return lambda: ops.conv2d(x, w, b, stride, padding, dilation, groups)

        assert_same_outcome(forward)
        # grad_output of the right shape where the forward pass works, else of any shape
        shape = _outcome(forward("cpu"))
        grad_size = list(shape[1][0][0]) if shape[0] == "ok" else [1, 2, 3, 4]

        def backward_input(device):
            dy, w = _tensor(grad_size, device, dtypes[0]), _tensor(weight_size, device, dtypes[1])
            return lambda: ops.conv2d_backward_input(dy, w, input_size, stride, padding, dilation, groups)

        def backward_weight(device):
            dy, x = _tensor(grad_size, device, dtypes[0]), _tensor(input_size, device, dtypes[1])
            return lambda: ops.conv2d_backward_weight(dy, x, weight_size, stride, padding, dilation, groups)

        assert_same_outcome(backward_input)
        assert_same_outcome(backward_weight)
        assert_same_outcome(lambda device: lambda: ops.conv2d_backward_bias(_tensor(input_size, device)))


def _pool_case(rng):
    input_size = [rng.randint(0, 2), rng.randint(0 if rng.random() < 0.05 else 1, 3), rng.randint(1, 9),
                  rng.randint(1, 9)]
    if rng.random() < 0.03:
        input_size = input_size[1:]
    kernel = _pair(rng, 1, 4)
    padding = _pair(rng, 0, 2)
    return (input_size, kernel, _pair(rng, 1, 3), padding, _pair(rng, 1, 3), rng.random() < 0.5, rng.random() < 0.5,
            rng.choice([None] * 8 + [0, 3]))


POOL_CASES = [_pool_case(random.Random(1000 + seed)) for seed in range(600)]


@pytest.mark.parametrize("index", range(0, 600, 50))
def test_pooling_forward_and_backward_checks_agree(index):
    for input_size, kernel, stride, padding, dilation, ceil_mode, count_include_pad, divisor in POOL_CASES[index:index + 50]:
        assert_same_outcome(lambda device: lambda: ops.max_pool2d(_tensor(input_size, device), kernel, stride, padding,
                                                                  dilation, ceil_mode))
        assert_same_outcome(lambda device: lambda: ops.avg_pool2d(_tensor(input_size, device), kernel, stride, padding,
                                                                  ceil_mode, count_include_pad, divisor))
        # grad_output of the right shape where the forward pass works, else of any shape
        forward = _outcome(lambda: ops.max_pool2d(_tensor(input_size, "cpu"), kernel, stride, padding, dilation, ceil_mode))
        grad_size = list(forward[1][0][0]) if forward[0] == "ok" else [1, 1, 2, 3]

        def max_backward(device):
            dy = _tensor(grad_size, device)
            indices = torch.zeros(grad_size, dtype=torch.int64, device=device)
            return lambda: ops.max_pool2d_backward(dy, indices, input_size, kernel, stride, padding, dilation, ceil_mode)

        assert_same_outcome(max_backward)
        assert_same_outcome(lambda device: lambda: ops.avg_pool2d_backward(
            _tensor(grad_size, device), input_size, kernel, stride, padding, ceil_mode, count_include_pad, divisor))
        output_size = [kernel[0] - 1, stride[0]] if len(kernel) == 2 else kernel
        assert_same_outcome(lambda device: lambda: ops.adaptive_avg_pool2d(_tensor(input_size, device), output_size))
        assert_same_outcome(lambda device: lambda: ops.adaptive_avg_pool2d_backward(_tensor(grad_size, device),
                                                                                     input_size))


def test_the_comparison_can_fail():
    """Guards the helper: different messages are a difference."""
    with pytest.raises(AssertionError):
        assert_same_outcome(lambda device: (lambda: ops.conv2d(_tensor([1, 2, 4, 4], "cpu"), _tensor([1, 2, 3, 3], "cpu"),
                                                               None, [1, 1], [0, 0], [1, 1], 1)) if device == "cpu"
                            else (lambda: ops.conv2d(_tensor([1, 2, 4, 4], device), _tensor([1, 2, 3, 3], device),
                                                     None, [2, 1], [0, 0], [1, 1], 1)))
