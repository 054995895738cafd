"""Winograd on the CPU (csrc/cpu/winograd.h): F(2x2, 3x3) for the forward pass and the input
gradient, F(3x3, 2x2) for the weight gradient of 3x3 stride-1 float32 layers, forced with
CUCONV_CPU_WINOGRAD=1, against torch over padding, odd and tiny images, channel counts across
the GEMM's depth and blocks of tiles, and thread counts; Inf and NaN operands get the GEMM's
exact answer."""

import random

import pytest
import torch
import torch.nn.functional as F

import cuconv.functional as CF
from test_ops import assert_matches, compare_with_torch


@pytest.fixture
def winograd(monkeypatch):
    monkeypatch.delenv("CUCONV_CPU_DIRECT", raising=False)
    monkeypatch.setenv("CUCONV_CPU_WINOGRAD", "1")


def random_winograd_cases(count, seed):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        ph, pw = rng.randint(0, 2), rng.randint(0, 2)
        cases.append(dict(batch=rng.randint(1, 4), in_channels=rng.choice([1, 3, 8, 17, 64]),
                          out_channels=rng.choice([1, 5, 16, 33]), padding=(ph, pw),
                          size=(rng.randint(3 - 2 * ph if ph < 2 else 1, 14), rng.randint(3 - 2 * pw if pw < 2 else 1, 14)),
                          bias=rng.random() < 0.7))
    return cases


CASES = random_winograd_cases(24, seed=7) + [
    # K past the GEMM's depth (256), output channels past several register tiles, many blocks of tiles
    dict(batch=3, in_channels=300, out_channels=70, padding=(1, 1), size=(7, 6), bias=True),
    dict(batch=40, in_channels=16, out_channels=24, padding=(1, 1), size=(12, 12), bias=False),
    dict(batch=2, in_channels=8, out_channels=8, padding=(0, 0), size=(3, 3), bias=True),  # one 1x1 output
]


def _tensors(case, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case["batch"], case["in_channels"], *case["size"], generator=gen, dtype=dtype)
    w = torch.randn(case["out_channels"], case["in_channels"], 3, 3, generator=gen, dtype=dtype)
    b = torch.randn(case["out_channels"], generator=gen, dtype=dtype) if case["bias"] else None
    return x, w, b


@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{batch}c{in_channels}o{out_channels}p{padding}s{size}".format(**c))
def test_winograd_matches_torch(case, winograd):
    x, w, b = _tensors(case)
    p = case["padding"]
    tensors = [t for t in (x, w, b) if t is not None]
    if b is None:
        compare_with_torch(lambda x, w: CF.conv2d(x, w, None, 1, p), lambda x, w: F.conv2d(x, w, None, 1, p),
                           tensors, torch.float32)
    else:
        compare_with_torch(lambda x, w, b: CF.conv2d(x, w, b, 1, p), lambda x, w, b: F.conv2d(x, w, b, 1, p),
                           tensors, torch.float32)


def _forward_and_grads(x, w, b, padding):
    """y, dx and dw: the three passes."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    y = CF.conv2d(x, w, b, 1, padding)
    dx, dw = torch.autograd.grad(y, (x, w), torch.randn(y.shape, generator=torch.Generator().manual_seed(3)))
    return y.detach(), dx, dw


def test_winograd_is_the_path_that_runs(monkeypatch):
    """Forced on and off, the results round differently (so the switch reaches the kernel) and
    both match float64."""
    x, w, b = _tensors(dict(batch=2, in_channels=32, out_channels=16, padding=1, size=(10, 10), bias=True))
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "0")
    results = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("CUCONV_CPU_WINOGRAD", setting)
        results[setting] = _forward_and_grads(x, w, b, 1)
    expected = _forward_and_grads(x.double(), w.double(), b.double(), 1)
    for on, off, exact in zip(results["1"], results["0"], expected):
        assert_matches(on, exact.float(), torch.float32)
        assert_matches(off, exact.float(), torch.float32)
        assert not torch.equal(on, off)


@pytest.mark.parametrize("special", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("where", ["input", "weight"])
def test_inf_and_nan_get_the_gemm_answer(special, where, monkeypatch):
    """Winograd's transforms subtract inputs (Inf - Inf = NaN where the true sum is Inf): with a
    non-finite operand a pass runs the GEMM instead, so its result is the GEMM's, bitwise (the
    forward pass reads x and w, the input gradient dy and w, the weight gradient x and dy)."""
    x, w, b = _tensors(dict(batch=2, in_channels=4, out_channels=3, padding=1, size=(6, 7), bias=True))
    (x if where == "input" else w)[0, 1, 2, 3 if where == "input" else 1] = special
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "0")
    results = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("CUCONV_CPU_WINOGRAD", setting)
        results[setting] = _forward_and_grads(x, w, b, 1)
    affected = (0, 1) if where == "weight" else (0, 2)  # of y, dx, dw
    for k in affected:
        torch.testing.assert_close(results["1"][k], results["0"][k], rtol=0, atol=0, equal_nan=True)
    assert not torch.isfinite(results["1"][0]).all()


def test_winograd_repeats_bitwise_at_any_thread_count(winograd):
    x, w, b = _tensors(dict(batch=7, in_channels=24, out_channels=40, padding=1, size=(9, 8), bias=True))
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_forward_and_grads(x, w, b, 1))
    finally:
        torch.set_num_threads(saved)
    for other in results[1:]:
        assert all(torch.equal(a, o) for a, o in zip(results[0], other))


def test_a_bad_winograd_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("CUCONV_CPU_WINOGRAD", "yes")
    x, w, b = _tensors(dict(batch=1, in_channels=2, out_channels=2, padding=1, size=(4, 4), bias=True))
    with pytest.raises(ValueError, match="CUCONV_CPU_WINOGRAD to be 0 or 1, but got 'yes'"):
        CF.conv2d(x, w, b, 1, 1)
