"""Depthwise convolution on the CPU (csrc/cpu/depthwise.cpp): one input channel per group, any
channel multiplier, every dtype and both layouts, against torch.nn.functional.conv2d.

The kernels take channels as the vector axis: channel counts around the vector widths (4, 8,
16 lanes) reach the part-filled last vector; NCHW tensors, float16 and multipliers > 1 go through
staged rows, channels_last float32/float64 tensors are read in place, and channels_last bfloat16
ones too (multiplier 1); images wide and tall enough split into bands of rows and (weight
gradient) into parts of pixels."""

import random

import pytest
import torch
import torch.nn.functional as F

import cuconv
import cuconv.functional as CF
from test_cpu_dispatch import _batch_past_last_level_cache
from test_ops import assert_matches, forward_and_grads

ISAS = ("generic", "avx2", "avx512")


def _random_cases(count, seed):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        k = (rng.randint(1, 5), rng.randint(1, 5))
        d = (rng.choice([1, 1, 2]), rng.choice([1, 1, 3]))
        p = (rng.randint(0, 3), rng.randint(0, 3))
        h, w = rng.randint(1, 17), rng.randint(1, 17)
        if h + 2 * p[0] < d[0] * (k[0] - 1) + 1 or w + 2 * p[1] < d[1] * (k[1] - 1) + 1:
            continue
        cases.append(dict(batch=rng.randint(1, 3), channels=rng.choice([2, 3, 7, 8, 9, 16, 17, 33, 40]),
                          multiplier=rng.choice([1, 1, 1, 2, 3]), size=(h, w), kernel=k,
                          stride=(rng.randint(1, 3), rng.randint(1, 3)), padding=p, dilation=d,
                          bias=rng.random() < 0.5))
    return cases


# MobileNet's layers: 3x3 taps, a stride of 1 along rows (the forward rows and the input
# gradient's gather form as three triples of adjacent taps, depthwise_tile.h), with images whose
# rows end in tiles of 4, 2 and 1 pixels, a channel count of whole vector groups and one past them;
# its stride-2 layer (adjacent taps too, but not adjacent outputs); and a 1x9 row (three triples
# too). The random cases above reach none of them with channels enough for whole vector groups.
CASES = _random_cases(40, seed=13) + [
    dict(batch=2, channels=channels, multiplier=multiplier, size=size, kernel=(3, 3), stride=(stride, 1),
         padding=(1, 1), dilation=(1, 1), bias=bias)
    for channels, multiplier, size, stride, bias in [(32, 1, (6, 9), 1, True), (33, 1, (7, 12), 1, False),
                                                     (16, 2, (5, 11), 2, True), (40, 1, (3, 14), 1, False)]
] + [
    dict(batch=2, channels=32, multiplier=1, size=(9, 13), kernel=(3, 3), stride=(2, 2), padding=(1, 1),
         dilation=(1, 1), bias=False)
] + [dict(batch=1, channels=32, multiplier=1, size=(3, 15), kernel=(1, 9), stride=(1, 1), padding=(0, 2),
          dilation=(1, 1), bias=True)]


def _tensors(case, dtype, channels_last):
    c, m = case["channels"], case["multiplier"]
    x = torch.randn(case["batch"], c, *case["size"], dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    tensors = [x, torch.randn(c * m, 1, *case["kernel"], dtype=dtype)]
    if case["bias"]:
        tensors.append(torch.randn(c * m, dtype=dtype))
    return tensors


def _conv_args(case):
    """stride, padding, dilation, groups: the arguments after (input, weight[, bias])."""
    return case["stride"], case["padding"], case["dilation"], case["channels"]


def _conv(module, case):
    return lambda x, w, b=None: module.conv2d(x, w, b, *_conv_args(case))


def _check(case, dtype, channels_last):
    tensors = _tensors(case, dtype, channels_last)
    out, grads = forward_and_grads(_conv(CF, case), tensors)
    ref, ref_grads = forward_and_grads(_conv(F, case), tensors)
    assert cuconv._C.cpu_kernels()["last_depthwise"] is not None
    assert_matches(out, ref, dtype)
    # channels_last in, channels_last out, as torch
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last or out.shape[1] == 1
    for g, r in zip(grads, ref_grads):
        assert_matches(g, r, dtype)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "c{channels}m{multiplier}k{kernel}s{stride}p{padding}d{dilation}".format(**c))
def test_depthwise_matches_torch(case, dtype, channels_last):
    _check(case, dtype, channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES[:8], ids=lambda c: "c{channels}m{multiplier}k{kernel}s{stride}".format(**c))
def test_depthwise_half_types_match_torch(case, dtype, channels_last):
    _check(case, dtype, channels_last)


# Wide pixels: channels_last rows read in place take every channel of a pixel, and the row
# kernels run each pixel tile over every group of 4 (AVX-512; 2 with AVX2) vectors before the
# next tile; 200 channels are 3 such groups, 8 channels and (AVX-512) a part-filled vector.
WIDE_CASES = [
    dict(batch=2, channels=200, multiplier=1, size=(7, 9), kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), bias=True),
    dict(batch=1, channels=136, multiplier=1, size=(6, 11), kernel=(3, 5), stride=(2, 2), padding=(1, 2),
         dilation=(1, 1), bias=False),
    dict(batch=2, channels=72, multiplier=2, size=(5, 8), kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 2), bias=True),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", WIDE_CASES, ids=lambda c: "c{channels}m{multiplier}k{kernel}s{stride}".format(**c))
def test_depthwise_wide_pixels_match_torch(case, dtype, channels_last):
    _check(case, dtype, channels_last)


# Large enough to split: a batch of one splits its rows into bands (one per thread at least), and
# the weight gradient's pixels into parts of 1024; 70 channels are 4 vectors and a part-filled one
# of AVX-512 (2 blocks of 64 in place, 3 of 32 staged; the first case's weight gradient in place
# takes whole pixels where its 4 parts give every thread work: up to 2 threads).
SPLIT_CASES = [
    dict(batch=1, channels=70, multiplier=1, size=(61, 59), kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), bias=True),
    dict(batch=2, channels=24, multiplier=2, size=(45, 50), kernel=(5, 3), stride=(2, 1), padding=(2, 0),
         dilation=(1, 2), bias=False),
    dict(batch=1, channels=9, multiplier=1, size=(80, 37), kernel=(3, 3), stride=(3, 2), padding=(1, 1),
         dilation=(2, 1), bias=True),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: "n{batch}c{channels}m{multiplier}s{stride}".format(**c))
def test_depthwise_splits_match_torch_and_repeat_bitwise(case, channels_last, threads):
    tensors = _tensors(case, torch.float32, channels_last)
    out, grads = forward_and_grads(_conv(CF, case), tensors)
    ref, ref_grads = forward_and_grads(_conv(F, case), tensors)
    assert_matches(out, ref, torch.float32)
    for g, r in zip(grads, ref_grads):
        assert_matches(g, r, torch.float32)
    again, again_grads = forward_and_grads(_conv(CF, case), tensors)
    assert torch.equal(again, out) and all(torch.equal(a, g) for a, g in zip(again_grads, grads))


def test_depthwise_weight_gradient_is_the_same_at_any_thread_count():
    """The weight gradient's parts are fixed by the shape, not by the thread count."""
    case = SPLIT_CASES[0]
    tensors = _tensors(case, torch.float32, True)
    saved = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 5):
            torch.set_num_threads(threads)
            results.append(forward_and_grads(_conv(CF, case), tensors)[1])
    finally:
        torch.set_num_threads(saved)
    for grads in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0]))


@pytest.mark.parametrize("requested", ISAS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_depthwise_on_every_isa(requested, channels_last, monkeypatch):
    """Each instruction set's kernels run when asked for (the kernels' own record says which) and
    match torch; AVX2 and AVX-512 do the same operations in the same order: bitwise equal.
    (bfloat16: channels_last rows of its bits in place, widened and rounded in each ISA's code.)"""
    best = cuconv._C.cpu_kernels()["isa"]
    if ISAS.index(requested) > ISAS.index(best):
        pytest.skip(f"this CPU has no {requested}")
    monkeypatch.setenv("CUCONV_CPU_ISA", requested)
    results = []
    for case in CASES[:12] + SPLIT_CASES[:1]:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            tensors = _tensors(case, dtype, channels_last)
            out, grads = forward_and_grads(_conv(CF, case), tensors)
            assert cuconv._C.cpu_kernels()["last_depthwise"] == requested
            ref, ref_grads = forward_and_grads(_conv(F, case), tensors)
            assert_matches(out, ref, dtype)
            for g, r in zip(grads, ref_grads):
                assert_matches(g, r, dtype)
            results.append((case, tensors, out, grads))
    if requested == "avx512":
        monkeypatch.setenv("CUCONV_CPU_ISA", "avx2")
        for case, tensors, out, grads in results:
            again, again_grads = forward_and_grads(_conv(CF, case), tensors)
            assert torch.equal(again, out) and all(torch.equal(a, b) for a, b in zip(again_grads, grads))


# The rows fetched ahead: two samples of wide pixels (the fetches run on into the next sample),
# a strided layer (two new input rows an output row) and a batch of one split into bands.
FETCH_CASES = WIDE_CASES[:2] + SPLIT_CASES[:1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", FETCH_CASES, ids=lambda c: "n{batch}c{channels}k{kernel}s{stride}".format(**c))
def test_channels_last_rows_fetched_or_not_give_the_same_bits(case, dtype, monkeypatch, capfd):
    """Where a depthwise pass reads its rows in place (channels_last, multiplier 1, not float16),
    the forward pass and the input gradient measure the rows brought into cache by the hardware
    alone (`depthwise`) and by software prefetches too (`depthwise_fetched`); recorded, each way
    runs as named (cpu_kernels' last_depthwise_rows) and gives the same bits, torch's values."""
    for name in ("CUCONV_CPU_TUNE", "CUCONV_TUNE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUCONV_LOG", "1")
    saved = cuconv.tuning.choices()
    cuconv.tuning.clear()
    try:
        tensors = _tensors(case, dtype, channels_last=True)
        forward_and_grads(_conv(CF, case), tensors)
        tuned = [line for line in capfd.readouterr().err.splitlines()
                 if line.startswith("cuconv: tuned") and "channels_last depthwise" in line]
        assert {line.split()[2] for line in tuned} == {"conv2d_forward", "conv2d_backward_input"}, tuned
        assert all("depthwise " in line and "depthwise_fetched " in line for line in tuned), tuned
        keys = list(cuconv.tuning.choices())
        results = {}
        for way, rows in (("depthwise", "hardware"), ("depthwise_fetched", "fetched")):
            cuconv._C.cpu_tuning_set({key: way for key in keys})
            out = _conv(CF, case)(*tensors)
            assert cuconv._C.cpu_kernels()["last_depthwise_rows"] == rows
            dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            dy = dy.contiguous(memory_format=torch.channels_last)
            dx = torch.ops.cuconv.conv2d_backward_input(dy, tensors[1], list(tensors[0].shape), *_conv_args(case))
            assert cuconv._C.cpu_kernels()["last_depthwise_rows"] == rows
            results[way] = (out, dx, dy)
            assert cuconv.tuning.choices() == {key: way for key in keys}
    finally:
        cuconv.tuning.clear()
        cuconv._C.cpu_tuning_set(saved)
    (out, dx, dy), (out_f, dx_f, _) = results["depthwise"], results["depthwise_fetched"]
    assert torch.equal(out, out_f) and torch.equal(dx, dx_f)
    assert_matches(out, _conv(F, case)(*tensors), dtype)
    dx_ref = torch.nn.grad.conv2d_input(tensors[0].shape, tensors[1].double(), dy.double(), *_conv_args(case))
    assert_matches(dx, dx_ref.to(dtype), dtype)


@pytest.mark.parametrize("case, dtype, channels_last", [
    (WIDE_CASES[0], torch.float32, False),  # NCHW rows are staged
    (WIDE_CASES[2], torch.float32, True),  # multiplier 2: the input staged, its channels repeated
    (WIDE_CASES[0], torch.float16, True),  # float16 rows are staged as float
], ids=["nchw", "multiplier2", "float16"])
def test_staged_rows_measure_nothing(case, dtype, channels_last, monkeypatch, capfd):
    """Passes whose rows are staged have nothing to fetch in place: no choice is measured, and
    their rows are left to the hardware."""
    for name in ("CUCONV_CPU_TUNE", "CUCONV_TUNE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUCONV_LOG", "1")
    tensors = _tensors(case, dtype, channels_last)
    out = _conv(CF, case)(*tensors)
    assert cuconv._C.cpu_kernels()["last_depthwise_rows"] == "hardware"
    torch.ops.cuconv.conv2d_backward_input(torch.randn_like(out), tensors[1], list(tensors[0].shape), *_conv_args(case))
    assert cuconv._C.cpu_kernels()["last_depthwise_rows"] == "hardware"
    assert "depthwise" not in capfd.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_depthwise_gradient_layouts_are_torchs(dtype):
    """A channels_last layer's gradients, from a grad_output in the output's layout, come back in
    torch's layouts: the input's gradient channels_last, the weight's contiguous."""
    x = torch.randn(2, 24, 10, 9, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(48, 1, 3, 3, dtype=dtype, requires_grad=True)
    for fn in (CF.conv2d, F.conv2d):
        y = fn(x, w, None, 1, 1, 1, 24)
        assert y.is_contiguous(memory_format=torch.channels_last)
        dx, dw = torch.autograd.grad(y, (x, w), torch.randn_like(y))
        assert dx.is_contiguous(memory_format=torch.channels_last) and dw.is_contiguous()


def test_depthwise_gradcheck():
    x = torch.randn(2, 6, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: CF.conv2d(x, w, b, (2, 1), (1, 1), (1, 2), 6), (x, w, b))
    xl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: CF.conv2d(x, w, b, 1, 1, 1, 6), (xl, w, b))


def test_depthwise_special_values_propagate_as_torch():
    """Inf and NaN inputs give torch's Inf and NaN (no transform or zero-padding trick hides them)."""
    x = torch.randn(2, 16, 9, 9)
    x[0, 3, 4, 4] = float("inf")
    x[1, 5, 0, 0] = float("nan")
    w = torch.randn(16, 1, 3, 3)
    for layout in (torch.contiguous_format, torch.channels_last):
        xs = x.contiguous(memory_format=layout)
        torch.testing.assert_close(CF.conv2d(xs, w, None, 1, 1, 1, 16), F.conv2d(xs, w, None, 1, 1, 1, 16),
                                   equal_nan=True, rtol=1e-5, atol=1e-5)


# Half-type staging (depthwise.cpp, staged_rows and write_back): runs of a pixel's block of
# channels (NHWC; 70 channels are blocks of 32 with AVX-512, 16 with AVX2, so a block is less
# than a pixel), bands of planes widened then transposed (NCHW), value by value where the
# multiplier is > 1; and channels_last bfloat16 with multiplier 1 in place (depthwise_tile.h: each
# vector widened as it is loaded and rounded as it is stored; 70 channels end in a part-filled
# vector). The float32 kernels do the arithmetic either way, so the half types' results are
# float32's results rounded, bit for bit, NaN and Inf included.
HALF_STAGING_CASES = [
    dict(batch=2, channels=70, multiplier=1, size=(9, 11), kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), bias=True),
    dict(batch=1, channels=16, multiplier=1, size=(13, 7), kernel=(3, 2), stride=(2, 1), padding=(1, 0),
         dilation=(1, 1), bias=False),
    dict(batch=2, channels=7, multiplier=1, size=(6, 5), kernel=(1, 1), stride=(1, 1), padding=(0, 0),
         dilation=(1, 1), bias=True),
    dict(batch=1, channels=9, multiplier=2, size=(8, 8), kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), bias=True),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", HALF_STAGING_CASES, ids=lambda c: "c{channels}m{multiplier}k{kernel}".format(**c))
def test_depthwise_half_types_are_float32_rounded_bitwise(case, dtype, channels_last):
    tensors = _tensors(case, dtype, channels_last)
    tensors[0][0, :6, 0, 0] = torch.tensor([float("inf"), float("-inf"), float("nan"), 3e38, -3e38, 1e-40])
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = _conv(CF, case)(*leaves)
    assert cuconv._C.cpu_kernels()["last_depthwise"] is not None
    ref_leaves = [t.detach().float().requires_grad_() for t in tensors]  # (.float() keeps the layout)
    ref = _conv(CF, case)(*ref_leaves)  # float32's result, rounded below
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last or out.shape[1] == 1
    grad_output = torch.randn(out.shape, dtype=dtype)
    grads = torch.autograd.grad(out, leaves, grad_output)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_output.float())
    for ours, theirs in zip((out, *grads), (ref, *ref_grads)):
        torch.testing.assert_close(ours, theirs.to(dtype), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype, step", [(torch.bfloat16, 2.0**-7), (torch.float16, 2.0**-10)], ids=str)
def test_depthwise_half_types_round_ties_to_even(dtype, step, channels_last):
    """Every output halfway between two values of dtype: x a multiple of the last place in [1, 2),
    times a weight of 1, plus half a last place; rounded to the even neighbour as torch rounds."""
    x = (1 + step * torch.randint(0, int(1 / step), (2, 40, 5, 6))).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.ones(40, 1, 1, 1, dtype=dtype)
    bias = torch.full((40,), step / 2, dtype=dtype)
    expected = (x.float() + step / 2).to(dtype)
    assert (expected != x).any() and (expected == x).any()  # (ties round up and down)
    torch.testing.assert_close(CF.conv2d(x, w, bias, 1, 0, 1, 40), expected, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_depthwise_taps_are_added_in_order(channels_last):
    """The forward row kernels add a row's taps left to right (three at a time where their source
    pixels are adjacent): products 1e8, -1e8 and 1 give 1 in that order, 0 in the reverse one."""
    x = torch.ones(2, 40, 5, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.tensor([1e8, -1e8, 1.0]).repeat(40, 1, 1, 1)
    assert torch.equal(CF.conv2d(x, w, None, 1, 0, 1, 40), torch.ones(2, 40, 5, 7))


# Outputs larger than the last-level cache, channels_last rows written in place: 16 channels (a
# pixel's vectors whole and aligned: streamed by AVX2's kernels) and 10 (a part-filled vector a
# pixel in float32 and float64 alike: never streamed).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("channels", [16, 10])
def test_a_channels_last_output_larger_than_the_last_level_cache_is_streamed(channels, dtype, monkeypatch):
    """The forward pass and the stride-1 input gradient write such an output's interior tiles past
    the caches (AVX2's non-temporal stores, where every vector of a pixel is aligned; cpu_kernels'
    last_depthwise_rows ends in ", streamed"): torch's values all the same. (AVX2's kernels are
    asked for on an AVX-512 CPU too, whose own keep ordinary stores.)"""
    if ISAS.index(cuconv._C.cpu_kernels()["isa"]) < ISAS.index("avx2"):
        pytest.skip("no AVX2 on this CPU (or CUCONV_CPU_ISA=generic): nothing streams")
    monkeypatch.setenv("CUCONV_CPU_ISA", "avx2")
    size = 28
    batch = _batch_past_last_level_cache(channels * size * size * dtype.itemsize)
    gen = torch.Generator().manual_seed(channels)
    x = torch.randn(batch, channels, size, size, generator=gen, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, 1, 3, 3, generator=gen, dtype=dtype)
    b = torch.randn(channels, generator=gen, dtype=dtype)
    streams = channels % (32 // dtype.itemsize) == 0
    out = CF.conv2d(x, w, b, padding=1, groups=channels)
    kernels = cuconv._C.cpu_kernels()
    assert kernels["last_depthwise"] == "avx2" and kernels["last_depthwise_rows"].endswith(", streamed") == streams
    assert_matches(out, F.conv2d(x, w, b, padding=1, groups=channels), dtype)
    del out
    dy = torch.randn(x.shape, generator=gen, dtype=dtype).contiguous(memory_format=torch.channels_last)
    dx = torch.ops.cuconv.conv2d_backward_input(dy, w, list(x.shape), [1, 1], [1, 1], [1, 1], channels)
    assert cuconv._C.cpu_kernels()["last_depthwise_rows"].endswith(", streamed") == streams
    assert_matches(dx, torch.nn.grad.conv2d_input(x.shape, w, dy, padding=1, groups=channels), dtype)
