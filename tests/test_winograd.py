"""Winograd on the CPU (csrc/cpu/winograd.h): F(2x2, 3x3) for the forward pass and the input
gradient, F(3x3, 2x2) for the weight gradient of 3x3 stride-1 float32 layers, forced with
CUCONV_CPU_WINOGRAD=1, against torch over padding, odd and tiny images, channel counts across
the GEMM's depth and blocks of tiles, and thread counts; Inf and NaN operands get the GEMM's
exact answer. The same for channels_last tensors, whose forward pass and input gradient run the
NHWC Winograd on every instruction set (winograd_forward.cpp runs both layouts)."""

import random

import pytest
import torch
import torch.nn.functional as F

import cuconv
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


LAYOUTS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{batch}c{in_channels}o{out_channels}p{padding}s{size}".format(**c))
def test_winograd_matches_torch(case, layout, winograd):
    x, w, b = _tensors(case)
    x = x.to(memory_format=layout)
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


def _nhwc_forward_and_grads(x, w, b, padding):
    """y, dx and dw of a channels_last layer (y and dx channels_last too)."""
    x = x.to(memory_format=torch.channels_last).detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = CF.conv2d(x, w, b, 1, padding)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.dtype)  # (the same values in float64)
    dx, dw = torch.autograd.grad(y, (x, w), dy.to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last) and dx.is_contiguous(memory_format=torch.channels_last)
    return y.detach(), dx, dw


# channels spanning whole vectors of each instruction set (16, 8, 4 floats) and a tail, output
# channels in the 6 x 64 tile and in a 48-wide one with a tail; odd image sizes clip output tiles
NHWC_CASES = [dict(batch=3, in_channels=21, out_channels=37, padding=(1, 2), size=(9, 7), bias=True),
              dict(batch=2, in_channels=64, out_channels=64, padding=(1, 1), size=(8, 11), bias=False)]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("case", NHWC_CASES, ids=["tails", "wide-tile"])
def test_channels_last_winograd_on_every_isa_matches_float64_and_is_the_path_that_runs(case, isa, monkeypatch):
    """The NHWC Winograd's transforms are compiled per instruction set (winograd_tile.h):
    CUCONV_CPU_ISA asks for each (on a CPU without one the best it has runs). Forced, its results
    (all three passes) match float64 and differ in rounding from the NHWC kernels'
    (CUCONV_CPU_TUNE=0)."""
    monkeypatch.setenv("CUCONV_CPU_ISA", isa)
    monkeypatch.delenv("CUCONV_CPU_DIRECT", raising=False)
    x, w, b = _tensors(case)
    p = case["padding"]
    monkeypatch.setenv("CUCONV_CPU_WINOGRAD", "1")
    on = _nhwc_forward_and_grads(x, w, b, p)
    kernels = cuconv._C.cpu_kernels()
    assert kernels["last_gemm"] == kernels["isa"]  # the asked-for ISA's kernels ran
    monkeypatch.setenv("CUCONV_CPU_WINOGRAD", "0")
    monkeypatch.setenv("CUCONV_CPU_TUNE", "0")
    off = _nhwc_forward_and_grads(x, w, b, p)
    exact = _nhwc_forward_and_grads(x.double(), w.double(), None if b is None else b.double(), p)
    for a, o, e in zip(on, off, exact):
        assert_matches(a, e.float(), torch.float32)
        assert_matches(o, e.float(), torch.float32)
        assert not torch.equal(a, o)


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


@pytest.mark.parametrize("special", [float("inf"), float("nan")])
@pytest.mark.parametrize("where", ["input", "weight"])
def test_channels_last_inf_and_nan_get_the_nhwc_answer(special, where, monkeypatch):
    """The same for the NHWC Winograd: with a non-finite operand its passes run the NHWC kernels
    (CUCONV_CPU_TUNE=0's path), bitwise (x feeds the forward pass and the weight gradient, w the
    forward pass and the input gradient)."""
    x, w, b = _tensors(dict(batch=2, in_channels=4, out_channels=3, padding=1, size=(6, 7), bias=True))
    (x if where == "input" else w)[0, 1, 2, 3 if where == "input" else 1] = special
    monkeypatch.delenv("CUCONV_CPU_DIRECT", raising=False)
    monkeypatch.setenv("CUCONV_CPU_WINOGRAD", "1")
    on = _nhwc_forward_and_grads(x, w, b, 1)
    monkeypatch.setenv("CUCONV_CPU_WINOGRAD", "0")
    monkeypatch.setenv("CUCONV_CPU_TUNE", "0")
    off = _nhwc_forward_and_grads(x, w, b, 1)
    for k in (0, 1) if where == "weight" else (0, 2):
        torch.testing.assert_close(on[k], off[k], rtol=0, atol=0, equal_nan=True)
    assert not torch.isfinite(on[0]).all()


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("where", ["input", "weight", "both", "neither"])
def test_operands_large_enough_to_overflow_the_transforms_get_the_other_answer(where, layout, monkeypatch):
    """Finite operands so large that Winograd's transforms or sums could overflow float32 (here
    values up to 1.8e38, which its input transform adds four of, its weight transform 2.25 times;
    or "both" up to 1.5e18, whose products' sums could pass float32's largest value) run the other
    kernels instead (the GEMM NCHW, the NHWC kernels channels_last), bitwise, so a forward pass
    whose exact answer is finite gives it, as torch's does; operands of everyday magnitude
    ("neither": 1e6 and 1e3) still run Winograd."""
    x, w, b = _tensors(dict(batch=2, in_channels=4, out_channels=3, padding=1, size=(6, 7), bias=True))
    if where == "input":  # (the other operand so small that only the transform itself overflows)
        x, w = x.clamp(-3, 3) * 6e37, w * 1e-12
    elif where == "weight":
        x, w = x * 1e-12, w.clamp(-3, 3) * 6e37
    elif where == "both":
        x, w = x.clamp(-3, 3) * 5e17, w.clamp(-3, 3) * 5e17
    else:
        x, w = x * 1e6, w * 1e3
    monkeypatch.delenv("CUCONV_CPU_DIRECT", raising=False)
    passes = _forward_and_grads if layout == torch.contiguous_format else _nhwc_forward_and_grads
    if layout == torch.contiguous_format:
        monkeypatch.setenv("CUCONV_CPU_DIRECT", "0")
    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("CUCONV_CPU_WINOGRAD", setting)
        if setting == "0" and layout == torch.channels_last:
            monkeypatch.setenv("CUCONV_CPU_TUNE", "0")
        results[setting] = passes(x, w, b, 1)
    y = results["1"][0]
    assert torch.isfinite(y).all()
    expected = F.conv2d(x.double(), w.double(), b.double(), 1, 1)
    assert_matches(y, expected.float(), torch.float32)
    if where == "neither":
        assert not torch.equal(y, results["0"][0])  # (Winograd's rounding)
    else:
        # of y, dx, dw: those the large operand feeds ("both": y alone; dy is small)
        for k in {"input": (0, 2), "weight": (0, 1), "both": (0,)}[where]:
            torch.testing.assert_close(results["1"][k], results["0"][k], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_winograd_at_any_thread_count_matches_float64_and_repeats_bitwise(layout, winograd):
    """Threads split blocks of tiles (batch 7 of 20 tiles: blocks cross samples and tile rows).
    Every tile's output is summed alone, so y and dx are bitwise the same at any thread count; the
    weight gradient adds one partial sum per thread in a fixed order, so it repeats bitwise at a
    given thread count."""
    x, w, b = _tensors(dict(batch=7, in_channels=24, out_channels=40, padding=1, size=(9, 8), bias=True))
    x = x.to(memory_format=layout)
    exact = _forward_and_grads(x.double(), w.double(), b.double(), 1)
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_forward_and_grads(x, w, b, 1))
            again = _forward_and_grads(x, w, b, 1)
            assert all(torch.equal(a, r) for a, r in zip(again, results[-1]))
    finally:
        torch.set_num_threads(saved)
    for result in results:
        for got, expected in zip(result, exact):
            assert_matches(got, expected.float(), torch.float32)
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0]) and torch.equal(results[0][1], other[1])


def test_a_bad_winograd_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("CUCONV_CPU_WINOGRAD", "yes")
    x, w, b = _tensors(dict(batch=1, in_channels=2, out_channels=2, padding=1, size=(4, 4), bias=True))
    with pytest.raises(ValueError, match="CUCONV_CPU_WINOGRAD to be 0 or 1, but got 'yes'"):
        CF.conv2d(x, w, b, 1, 1)
