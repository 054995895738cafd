"""The per-pixel products on the CPU (csrc/cpu/pixel_gemm.h): small-image float32 layers as one
GEMM per pixel over the batch, skipping the kernel taps in the padding, forced with
CUCONV_CPU_PIXEL_GEMM=1, against torch in float64 over strides, padding (past the kernel's
reach too: pixels with no taps at all), dilation, batches across the register tile's columns and
the column blocks, channels across the GEMM's depth, and thread counts; Inf and NaN operands get
the GEMM's exact answer."""

import random

import pytest
import torch
import torch.nn.functional as F

import cuconv.functional as CF
from test_ops import assert_matches


@pytest.fixture
def pixel_gemm(monkeypatch):
    monkeypatch.delenv("CUCONV_CPU_DIRECT", raising=False)
    monkeypatch.delenv("CUCONV_CPU_WINOGRAD", raising=False)
    monkeypatch.setenv("CUCONV_CPU_PIXEL_GEMM", "1")


def random_cases(count, seed):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        kernel = (rng.randint(1, 4), rng.randint(1, 4))
        dilation = (rng.randint(1, 2), rng.randint(1, 2))
        padding = (rng.randint(0, 3), rng.randint(0, 3))
        stride = (rng.randint(1, 3), rng.randint(1, 3))
        size = (rng.randint(1, 9), rng.randint(1, 9))
        out = [(size[d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in (0, 1)]
        if min(out) < 1 or out[0] * out[1] > 64:
            continue
        cases.append(dict(batch=rng.choice([32, 49, 64, 100]), in_channels=rng.choice([1, 3, 17, 64]),
                          out_channels=rng.choice([1, 5, 16, 33]), kernel=kernel, stride=stride, padding=padding,
                          dilation=dilation, size=size, bias=rng.random() < 0.7))
    return cases


CASES = random_cases(20, seed=11) + [
    # ResNet-18's last layer in small: 3x3 image, padding 1 (32 of 81 taps in the padding)
    dict(batch=40, in_channels=24, out_channels=20, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
         size=(3, 3), bias=True),
    # channels past the GEMM's depth (256) and output channels past several register tiles
    dict(batch=33, in_channels=300, out_channels=70, kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1),
         size=(6, 6), bias=True),
    # a batch past one block of columns (384 with a 1 MiB L2)
    dict(batch=420, in_channels=6, out_channels=9, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
         size=(2, 3), bias=True),
    # padding past the kernel's reach: the border outputs have no taps, only the bias
    dict(batch=32, in_channels=5, out_channels=7, kernel=(1, 1), stride=(1, 1), padding=(2, 1), dilation=(1, 1),
         size=(3, 4), bias=True),
]


def _tensors(case, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case["batch"], case["in_channels"], *case["size"], generator=gen, dtype=dtype)
    w = torch.randn(case["out_channels"], case["in_channels"], *case["kernel"], generator=gen, dtype=dtype)
    b = torch.randn(case["out_channels"], generator=gen, dtype=dtype) if case["bias"] else None
    return x, w, b


def _forward_and_grads(conv, x, w, b, config, grad_seed=3):
    """y, dx, dw (and db): every pass."""
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    y = conv(*leaves[:2], leaves[2] if b is not None else None, **config)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64).to(y.dtype)
    return (y.detach(), *torch.autograd.grad(y, leaves, dy))


def _config(case):
    return {k: case[k] for k in ("stride", "padding", "dilation")}


@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{batch}c{in_channels}o{out_channels}k{kernel}s{stride}p{padding}"
                         "d{dilation}i{size}".format(**c).replace(" ", ""))
def test_pixel_gemm_matches_torch(case, pixel_gemm):
    x, w, b = _tensors(case)
    expected = _forward_and_grads(F.conv2d, x, w, b, _config(case))
    ours = _forward_and_grads(CF.conv2d, x.float(), w.float(), None if b is None else b.float(), _config(case))
    for name, got, want in zip(("y", "dx", "dw", "db"), ours, expected):
        assert_matches(got, want.float(), torch.float32), name


def test_pixel_gemm_is_the_path_that_runs(monkeypatch):
    """Forced on and off (the GEMM then), the sums round differently, so the switch reaches the
    kernel, and both match float64."""
    case = dict(batch=48, in_channels=40, out_channels=24, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                dilation=(1, 1), size=(3, 3), bias=True)
    x, w, b = _tensors(case)
    expected = _forward_and_grads(F.conv2d, x, w, b, _config(case))
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "0")
    monkeypatch.setenv("CUCONV_CPU_WINOGRAD", "0")
    results = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("CUCONV_CPU_PIXEL_GEMM", setting)
        results[setting] = _forward_and_grads(CF.conv2d, x.float(), w.float(), b.float(), _config(case))
    for k in range(3):  # y, dx, dw (db is torch's sum on both)
        assert_matches(results["1"][k], expected[k].float(), torch.float32)
        assert_matches(results["0"][k], expected[k].float(), torch.float32)
        assert not torch.equal(results["1"][k], results["0"][k])


@pytest.mark.parametrize("special", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("where", ["weight", "grad_output"])
def test_inf_and_nan_get_the_gemm_answer(special, where, monkeypatch):
    """The GEMM (like torch's float64) multiplies the padding's zeros by the weights in the forward pass and by
    grad_output in the weight gradient, and 0 * Inf is NaN; the per-pixel products skip those
    terms, so with such an operand the pass runs the GEMM, and its result is the GEMM's, bitwise."""
    case = dict(batch=32, in_channels=4, out_channels=3, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                dilation=(1, 1), size=(3, 3), bias=True)
    x, w, b = (t.float() for t in _tensors(case))
    dy = torch.randn(32, 3, 3, 3, generator=torch.Generator().manual_seed(5))
    if where == "weight":
        w[1, 2, 0, 0] = special
    else:
        dy[3, 1, 0, 0] = special
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "0")
    monkeypatch.setenv("CUCONV_CPU_WINOGRAD", "0")
    results = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("CUCONV_CPU_PIXEL_GEMM", setting)
        xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = CF.conv2d(xl, wl, b, padding=1)
        results[setting] = (y.detach(), *torch.autograd.grad(y, (xl, wl), dy))
    affected = 0 if where == "weight" else 2  # y, or dw
    torch.testing.assert_close(results["1"][affected], results["0"][affected], rtol=0, atol=0, equal_nan=True)
    assert results["1"][affected].isnan().any()  # the padding's 0 * Inf (or the NaN itself)


def test_pixel_gemm_repeats_bitwise_at_any_thread_count(pixel_gemm):
    case = dict(batch=40, in_channels=24, out_channels=40, kernel=(3, 3), stride=(2, 1), padding=(1, 1),
                dilation=(1, 1), size=(7, 6), bias=True)
    x, w, b = (t.float() for t in _tensors(case))
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_forward_and_grads(CF.conv2d, x, w, b, _config(case)))
    finally:
        torch.set_num_threads(saved)
    for other in results[1:]:
        assert all(torch.equal(a, o) for a, o in zip(results[0], other))


def test_a_bad_pixel_gemm_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("CUCONV_CPU_PIXEL_GEMM", "on")
    x = torch.randn(32, 2, 3, 3)
    w = torch.randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match="CUCONV_CPU_PIXEL_GEMM to be 0 or 1, but got 'on'"):
        CF.conv2d(x, w, None, 1, 1)
