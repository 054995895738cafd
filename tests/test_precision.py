"""Half precision (float16, bfloat16), forward and every gradient of every op, as accurate as
torch's own kernels in the same dtype.

The inputs are exactly representable in the half type, so the float64 computation on the same
values is the exact answer. Two bounds hold for every result:
- its error is within twice torch's own error in that dtype plus a quarter of one rounding step
  at the result's scale (a fixed tolerance scaled to the tensor's maximum would accept a
  systematic 1.5% error in bfloat16; this bound does not);
- every element is the exact answer correctly rounded to the dtype, give or take float32's
  accumulation error: cuconv sums in float and rounds once, so a kernel that rounds after every
  tap or every add fails here even where torch's own kernels round that way.
"""

import pytest
import torch
import torch.nn.functional as F

import cuconv
import cuconv.functional as CF
from conftest import DEVICES

HALF_TYPES = [torch.float16, torch.bfloat16]


def _results(fn, inputs, grad_output):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_output.to(out.dtype))]


def _errors(results, exact):
    return [(r.double() - e).abs().max().item() for r, e in zip(results, exact)]


def assert_as_accurate_as_torch(ours, theirs, shapes, dtype, device, scale=1.0, grad_scale=1.0, seed=0):
    """Inputs ~ N(0, scale^2) (scale: one number, or one per input) and the incoming gradient
    ~ N(0, grad_scale^2), all rounded to dtype before anything is computed from them."""
    gen = torch.Generator().manual_seed(seed)
    scales = scale if isinstance(scale, (list, tuple)) else [scale] * len(shapes)
    inputs = [(torch.randn(*s, generator=gen) * k).to(dtype).to(device) for s, k in zip(shapes, scales)]
    exact_out = theirs(*[t.double() for t in inputs])
    grad_output = (torch.randn(exact_out.shape, generator=gen) * grad_scale).to(dtype).to(device)
    exact = _results(theirs, [t.double() for t in inputs], grad_output.double())
    our_results = _results(ours, inputs, grad_output)
    our_errors = _errors(our_results, exact)
    torch_errors = _errors(_results(theirs, inputs, grad_output), exact)
    for name, result, e in zip(["output", *[f"grad {i}" for i in range(len(shapes))]], our_results, exact):
        assert_correctly_rounded(name, result, e, dtype)
    step = torch.finfo(dtype).eps  # one rounding step, relative
    for name, ours_err, torch_err, e in zip(["output", *[f"grad {i}" for i in range(len(shapes))]],
                                            our_errors, torch_errors, exact):
        magnitude = e.abs().max().item()
        bound = (2 * torch_err if torch_err == torch_err and torch_err != float("inf") else 0.0) + 0.25 * step * magnitude
        assert ours_err <= bound, (f"{name}: error {ours_err:.3g} against the float64 answer, torch's {torch_err:.3g}, "
                                   f"allowed {bound:.3g} (values up to {magnitude:.3g})")


def ulp(values, dtype):
    """The spacing of dtype's numbers at each value (at the smallest normal one below it)."""
    info = torch.finfo(dtype)
    exponent = torch.floor(torch.log2(values.abs().clamp(min=info.tiny)))
    return torch.exp2(exponent) * info.eps


def assert_correctly_rounded(name, result, exact, dtype):
    """Each element within half an ulp of the exact value (round to nearest), plus 1e-5 of the
    largest value for float32 accumulation (far below a half-type ulp there). Overflow excepted:
    an exact value past the dtype's range must come out infinite."""
    finite = exact.abs() <= torch.finfo(dtype).max
    error = (result.double() - exact).abs()
    allowed = 0.5 * ulp(exact, dtype).double() + 1e-5 * exact[finite].abs().max().item()
    bad = finite & ~(error <= allowed)
    assert not bad.any(), (f"{name}: {int(bad.sum())} elements are not the exact value rounded once, e.g. "
                           f"{result.double()[bad][0].item():.6g} for {exact[bad][0].item():.6g}")
    assert torch.isinf(result[~finite]).all(), f"{name}: values past the dtype's range must overflow to inf"


CONV_CASES = {
    "3x3-pad1": dict(x=(2, 8, 12, 11), w=(6, 8, 3, 3), args=(1, 1, 1, 1)),
    "7x7-stride1": dict(x=(2, 6, 16, 15), w=(8, 6, 7, 7), args=(1, 3, 1, 1)),
    "stride2-groups2-dilation": dict(x=(3, 8, 13, 14), w=(6, 4, 3, 2), args=(2, (1, 2), (2, 1), 2)),
    "1x1": dict(x=(2, 16, 9, 9), w=(12, 16, 1, 1), args=(1, 0, 1, 1)),
    "depthwise": dict(x=(2, 6, 11, 10), w=(12, 1, 3, 3), args=(1, 1, 1, 6)),
    "many-channels": dict(x=(2, 96, 6, 6), w=(40, 96, 3, 3), args=(1, 1, 1, 1)),
}


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_half_precision(case, dtype, device):
    c = CONV_CASES[case]
    w_scale = 1 / (c["w"][1] * c["w"][2] * c["w"][3]) ** 0.5
    assert_as_accurate_as_torch(
        lambda x, w, b: CF.conv2d(x, w, b, *c["args"]), lambda x, w, b: F.conv2d(x, w, b, *c["args"]),
        [c["x"], c["w"], (c["w"][0],)], dtype, device, scale=[1.0, w_scale, 1.0])


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("half_as_float", ["0", "1"], ids=["packed-gemm", "float32-copies"])
@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_half_precision_either_way_on_the_cpu(case, dtype, half_as_float, channels_last, monkeypatch):
    """The CPU runs a half-type convolution either with its GEMM packing the half type as float, or
    through the float32 kernels on float32 copies (CUCONV_CPU_HALF_AS_FLOAT=0 / 1; unset, measured):
    both as accurate as torch, in either layout."""
    monkeypatch.setenv("CUCONV_CPU_HALF_AS_FLOAT", half_as_float)
    c = CONV_CASES[case]
    w_scale = 1 / (c["w"][1] * c["w"][2] * c["w"][3]) ** 0.5
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert_as_accurate_as_torch(
        lambda x, w, b: CF.conv2d(x.contiguous(memory_format=layout), w, b, *c["args"]),
        lambda x, w, b: F.conv2d(x.contiguous(memory_format=layout), w, b, *c["args"]),
        [c["x"], c["w"], (c["w"][0],)], dtype, "cpu", scale=[1.0, w_scale, 1.0])


# Depths of every product odd (K = 23*3*3 taps, O = 7 output channels, 3 samples of 9x7 pixels):
# the last bfloat16 pair of each holds a zero; K is more than one input-gradient slice of rows.
ODD_DEPTHS = dict(x=(3, 23, 9, 7), w=(7, 23, 3, 3), args=(1, 1, 1, 1))


@pytest.mark.parametrize("isa", ["avx512_bf16", "avx512"], ids=["pairs", "floats"])
@pytest.mark.parametrize("case", [*CONV_CASES, "odd-depths"])
def test_bfloat16_gemm_on_pairs_and_on_floats(case, isa, monkeypatch):
    """bfloat16 through the GEMM: on a CPU with AVX512-BF16 its products run on bfloat16 pairs
    (vdpbf16ps), with CUCONV_CPU_ISA=avx512 on the operands packed as float; both as accurate
    as torch, and the kernel record says which ran."""
    monkeypatch.delenv("CUCONV_CPU_ISA", raising=False)
    if cuconv._C.cpu_kernels()["gemm_bfloat16"] != "avx512_bf16":
        pytest.skip("this CPU has no AVX512-BF16 (or no AVX-512): bfloat16 is packed as float")
    monkeypatch.setenv("CUCONV_CPU_ISA", isa)
    monkeypatch.setenv("CUCONV_CPU_HALF_AS_FLOAT", "0")
    c = ODD_DEPTHS if case == "odd-depths" else CONV_CASES[case]
    w_scale = 1 / (c["w"][1] * c["w"][2] * c["w"][3]) ** 0.5
    assert_as_accurate_as_torch(
        lambda x, w, b: CF.conv2d(x, w, b, *c["args"]), lambda x, w, b: F.conv2d(x, w, b, *c["args"]),
        [c["x"], c["w"], (c["w"][0],)], torch.bfloat16, "cpu", scale=[1.0, w_scale, 1.0])
    if case != "depthwise":  # (depthwise layers have kernels of their own, no GEMM)
        assert cuconv._C.cpu_kernels()["last_gemm"] == isa


# Layers the direct kernels on bfloat16 channel pairs take (groups 1; the input gradient at stride
# 1): odd channel counts (a zero channel in the last pair), both compiled column strides and a
# run-time one, dilation, more padding than the kernel's reach, panels of 1-4 vectors.
PAIR_CASES = {
    "3x3-pad1": CONV_CASES["3x3-pad1"],
    "7x7-stride1": CONV_CASES["7x7-stride1"],
    "1x1": CONV_CASES["1x1"],
    "many-channels": CONV_CASES["many-channels"],
    "odd-depths": ODD_DEPTHS,
    "stride2-dilation": dict(x=(2, 9, 13, 14), w=(33, 9, 3, 2), args=(2, (1, 2), (2, 1), 1)),
    "stride3-odd-channels": dict(x=(2, 5, 14, 13), w=(50, 5, 4, 3), args=(3, 2, 1, 1)),
    "wide-padding": dict(x=(1, 3, 5, 6), w=(64, 3, 2, 2), args=(1, 3, 1, 1)),
    # a strided 1x1 layer without padding (its channels_last input gradient is a forward pass on
    # pairs placed at the stride): odd channels both ways, a last row and column no output reaches
    "1x1-strided": dict(x=(2, 7, 10, 11), w=(13, 7, 1, 1), args=((3, 2), 0, 1, 1)),
}

# Grouped layers: the forward pass (and stride-1 input gradient) on pairs, group by group in place
# (an even number of channels a group, input channels for the forward pass, output channels for
# the input gradient): a vector and a half of output channels a group, strided and dilated with
# three pairs a group, unpadded 1x1 (read in place, a pixel's pairs a group apart), and three
# output channels a group.
GROUPED_PAIR_CASES = {
    "grouped-3x3": dict(x=(2, 32, 9, 8), w=(48, 16, 3, 3), args=(1, 1, 1, 2)),
    "grouped-strided-dilated": dict(x=(3, 24, 11, 10), w=(16, 6, 3, 2), args=((2, 1), (1, 2), (1, 2), 4)),
    "grouped-1x1": dict(x=(2, 20, 6, 7), w=(10, 4, 1, 1), args=(1, 0, 1, 5)),
    "grouped-odd-outputs": dict(x=(2, 12, 7, 9), w=(9, 4, 3, 3), args=(1, 1, 1, 3)),  # (input gradient: no pairs)
}


@pytest.fixture
def pairs_forced(monkeypatch):
    """The direct kernels on bfloat16 pairs wherever they can run (CUCONV_CPU_DIRECT_PAIRS=1), on
    a CPU with AVX512-BF16 (else the test is skipped)."""
    for name in ("CUCONV_CPU_ISA", "CUCONV_CPU_DIRECT"):
        monkeypatch.delenv(name, raising=False)
    if cuconv._C.cpu_kernels()["gemm_bfloat16"] != "avx512_bf16":
        pytest.skip("this CPU has no AVX512-BF16 (or no AVX-512): no bfloat16 pairs")
    monkeypatch.setenv("CUCONV_CPU_DIRECT_PAIRS", "1")


def input_gradient_on_pairs(case, channels_last):
    """Whether the case's input gradient runs on pairs: as a forward pass where the stride is 1 and
    the padding within the kernel's reach, and in channels_last where the layer is 1x1 unpadded."""
    stride, padding, dilation = (v if isinstance(v, tuple) else (v, v) for v in case["args"][:3])
    kernel, groups = case["w"][2:], case["args"][3]
    as_forward = stride == (1, 1) and all(p <= d * (k - 1) for p, d, k in zip(padding, dilation, kernel))
    if groups > 1:  # (as forward passes group by group, where a group's output channels pair up)
        return as_forward and case["w"][0] // groups % 2 == 0
    return as_forward or (channels_last and kernel == (1, 1) and padding == (0, 0))


def note_a_float32_direct_pass(monkeypatch):
    """Runs a float32 convolution on the direct kernels, whose record ("avx512") the bfloat16 pairs'
    ("avx512_bf16") must then replace."""
    with monkeypatch.context() as m:
        m.setenv("CUCONV_CPU_DIRECT", "1")
        CF.conv2d(torch.randn(1, 3, 6, 6), torch.randn(16, 3, 3, 3))
    assert cuconv._C.cpu_kernels()["last_direct"] == "avx512"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", [*PAIR_CASES, *GROUPED_PAIR_CASES])
def test_bfloat16_direct_kernels_on_channel_pairs(case, channels_last, pairs_forced, monkeypatch):
    """bfloat16 forward passes (and stride-1 input gradients of one group) by the direct kernels on
    pairs of channels (vdpbf16ps): as accurate as torch, in the input's layout, and the kernel
    record says they ran."""
    c = {**PAIR_CASES, **GROUPED_PAIR_CASES}[case]
    w_scale = 1 / (c["w"][1] * c["w"][2] * c["w"][3]) ** 0.5
    layout = torch.channels_last if channels_last else torch.contiguous_format
    used = []

    def ours(x, w, b):
        y = CF.conv2d(x.contiguous(memory_format=layout), w, b, *c["args"])
        used.append(cuconv._C.cpu_kernels()["last_direct"])
        assert y.is_contiguous(memory_format=layout)
        return y

    assert_as_accurate_as_torch(
        ours, lambda x, w, b: F.conv2d(x.contiguous(memory_format=layout), w, b, *c["args"]),
        [c["x"], c["w"], (c["w"][0],)], torch.bfloat16, "cpu", scale=[1.0, w_scale, 1.0])
    assert used == ["avx512_bf16"]
    x = torch.randn(c["x"]).bfloat16().contiguous(memory_format=layout).requires_grad_()
    w = (torch.randn(c["w"]) * w_scale).bfloat16()
    y = CF.conv2d(x, w, None, *c["args"])
    dy = torch.randn(y.shape).bfloat16().contiguous(memory_format=layout)
    note_a_float32_direct_pass(monkeypatch)  # (so the record below is the input gradient's)
    dx, = torch.autograd.grad(y, x, dy)
    x64 = x.detach().double().requires_grad_()  # (a float64 leaf: its gradient is not rounded to bfloat16)
    exact, = torch.autograd.grad(F.conv2d(x64, w.double(), None, *c["args"]), x64, dy.double())
    assert_correctly_rounded("grad input", dx, exact, torch.bfloat16)
    if input_gradient_on_pairs(c, channels_last):
        assert cuconv._C.cpu_kernels()["last_direct"] == "avx512_bf16"
        assert dx.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("case", PAIR_CASES)
def test_bfloat16_nchw_passes_on_pixels(case, pairs_forced, monkeypatch):
    """An NCHW bfloat16 forward pass and stride-1 input gradient may also run on NHWC pixels (the
    tuner's direct_pairs_nhwc: NHWC copies in and out): recorded as the choice, every element the
    exact value rounded once, the result NCHW, and the kernel record says the pairs ran."""
    monkeypatch.delenv("CUCONV_CPU_DIRECT_PAIRS")
    c = PAIR_CASES[case]
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(c["x"], generator=gen).bfloat16().requires_grad_()
    w = (torch.randn(c["w"], generator=gen) / (c["w"][1] * c["w"][2] * c["w"][3]) ** 0.5).bfloat16()
    b = torch.randn(c["w"][0], generator=gen).bfloat16()
    y = CF.conv2d(x, w, b, *c["args"])  # (measures, recording the layer's keys)
    dy = torch.randn(y.shape, generator=gen).bfloat16()
    torch.autograd.grad(y, x, dy)
    saved = cuconv.tuning.choices()
    layer = f" N={c['x'][0]} C={c['x'][1]} H={c['x'][2]} W={c['x'][3]} O={c['w'][0]} "
    forced = {key: "direct_pairs_nhwc" for key in saved
              if layer in key and " bfloat16" in key and "channels_last" not in key and "weight" not in key}
    assert forced, saved
    try:
        cuconv._C.cpu_tuning_set(forced)
        note_a_float32_direct_pass(monkeypatch)
        y = CF.conv2d(x, w, b, *c["args"])
        assert cuconv._C.cpu_kernels()["last_direct"] == "avx512_bf16" and y.is_contiguous()
        x64 = x.detach().double().requires_grad_()  # (a float64 leaf: its gradient is not rounded to bfloat16)
        exact = F.conv2d(x64, w.double(), b.double(), *c["args"])
        assert_correctly_rounded("output", y, exact, torch.bfloat16)
        if input_gradient_on_pairs(c, channels_last=False):
            note_a_float32_direct_pass(monkeypatch)
            dx, = torch.autograd.grad(y, x, dy)
            assert cuconv._C.cpu_kernels()["last_direct"] == "avx512_bf16" and dx.is_contiguous()
            exact_dx, = torch.autograd.grad(exact, x64, dy.double())
            assert_correctly_rounded("grad input", dx, exact_dx, torch.bfloat16)
    finally:
        cuconv._C.cpu_tuning_set({key: saved[key] for key in forced})


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", [*PAIR_CASES, *GROUPED_PAIR_CASES])
def test_bfloat16_weight_gradient_on_pixel_pairs(case, channels_last, pairs_forced, monkeypatch):
    """bfloat16 weight gradients by the direct kernels on pairs of output pixels: each element the
    exact sum rounded once, for even and odd output rows (a zero pixel after the last) and every
    column stride, in either layout (channels_last read as it is; a grouped layer's group by group
    in place); the kernel record says they ran."""
    c = {**PAIR_CASES, **GROUPED_PAIR_CASES}[case]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(c["x"], generator=gen).bfloat16().contiguous(memory_format=layout)
    w = torch.randn(c["w"], generator=gen).bfloat16().requires_grad_()
    y = CF.conv2d(x, w, None, *c["args"])
    dy = torch.randn(y.shape, generator=gen).bfloat16().contiguous(memory_format=layout)
    note_a_float32_direct_pass(monkeypatch)  # (so the record below is the weight gradient's)
    dw, = torch.autograd.grad(y, w, dy)
    assert cuconv._C.cpu_kernels()["last_direct"] == "avx512_bf16"
    w64 = w.detach().double().requires_grad_()
    exact, = torch.autograd.grad(F.conv2d(x.double(), w64, None, *c["args"]), w64, dy.double())
    assert_correctly_rounded("grad weight", dw, exact, torch.bfloat16)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("special", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_bfloat16_weight_gradient_on_pixel_pairs_never_meets_a_value_no_window_reads(special, channels_last,
                                                                                     pairs_forced):
    """An odd output row's missing pixel (the pairs' zero) would multiply the input one stride past
    the row's last window: where that value is Inf or NaN another kernel runs, and the gradient is
    torch's (finite here: no window reads it)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 4, 6, 8).bfloat16()
    x[:, :, :, 7] = special  # stride 2, 3 columns a window: outputs 0-2 read columns 0-6 only
    x = x.contiguous(memory_format=layout)
    w = torch.randn(5, 4, 3, 3).bfloat16().requires_grad_()
    y = CF.conv2d(x, w, None, 2, 0)
    assert y.shape[-1] == 3 and torch.isfinite(y).all()
    dw, = torch.autograd.grad(y, w, torch.ones_like(y).contiguous(memory_format=layout))
    w64 = w.detach().double().requires_grad_()
    exact, = torch.autograd.grad(F.conv2d(x.double(), w64, None, 2, 0), w64, torch.ones(y.shape, dtype=torch.float64))
    assert torch.isfinite(exact).all()
    assert_correctly_rounded("grad weight", dw, exact, torch.bfloat16)


@pytest.mark.parametrize("special", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_bfloat16_channels_last_pairs_multiply_the_padding_by_special_weights(special, pairs_forced):
    """In channels_last the pairs skip the kernel rows that fall in the padding, but only where the
    weights are finite: an Inf or NaN weight times the padding's zeros is NaN, as torch's float64
    convolution has it (and an Inf times an input value is infinite)."""
    x = torch.randn(2, 6, 3, 3).bfloat16().contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 6, 3, 3).bfloat16()
    w[1, 2, 0, 1] = special  # kernel row 0: in the padding for output row 0
    y = CF.conv2d(x, w, None, 1, 1)
    expected = F.conv2d(x.double(), w.double(), None, 1, 1)
    assert torch.isnan(expected[:, 1, 0]).all()
    assert torch.equal(torch.isnan(y), torch.isnan(expected))
    assert torch.equal(torch.isinf(y), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert_correctly_rounded("output", y[finite], expected[finite], torch.bfloat16)


POOL_CASES = {
    # the CPU's write-once 2x2 kernels (LeNet's average pooling, VGG's max pooling)
    "max-2x2": (lambda f: lambda t: f.max_pool2d(t, 2), (2, 3, 12, 14)),
    "avg-2x2": (lambda f: lambda t: f.avg_pool2d(t, 2), (2, 3, 12, 14)),
    "max-3s1-overlapping": (lambda f: lambda t: f.max_pool2d(t, 3, 1, 1), (2, 3, 11, 10)),
    "max-3s2-ceil": (lambda f: lambda t: f.max_pool2d(t, 3, 2, 1, ceil_mode=True), (2, 3, 12, 13)),
    "avg-3s1-overlapping": (lambda f: lambda t: f.avg_pool2d(t, 3, 1, 1, count_include_pad=False), (2, 3, 11, 10)),
    "avg-3s2-ceil": (lambda f: lambda t: f.avg_pool2d(t, 3, 2, 1, ceil_mode=True), (2, 3, 12, 13)),
    "avg-divisor": (lambda f: lambda t: f.avg_pool2d(t, (3, 2), 1, 1, divisor_override=5), (2, 3, 9, 8)),
    "adaptive-global": (lambda f: lambda t: f.adaptive_avg_pool2d(t, 1), (2, 5, 7, 9)),
    "adaptive-divisible": (lambda f: lambda t: f.adaptive_avg_pool2d(t, (3, 4)), (2, 3, 9, 8)),
    "adaptive-overlapping": (lambda f: lambda t: f.adaptive_avg_pool2d(t, (5, 7)), (2, 3, 9, 11)),
}


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_half_precision(case, dtype, device):
    make, shape = POOL_CASES[case]
    assert_as_accurate_as_torch(make(CF), make(F), [shape], dtype, device)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_float16_near_its_maximum(case, device):
    """Values up to ~60000 (float16 tops out at 65504): window sums must not overflow in float16
    (the incoming gradients are smaller, so that their exact sums stay finite too)."""
    make, shape = POOL_CASES[case]
    assert_as_accurate_as_torch(make(CF), make(F), [shape], torch.float16, device, scale=15000.0, grad_scale=1000.0)


def _float16_of_every_kind(shape, seed):
    """float16 values over every finite magnitude (subnormals, each exponent, up to 65504) and both
    signs, zeros included."""
    gen = torch.Generator().manual_seed(seed)
    magnitude = torch.randint(0, 0x7C00, shape, generator=gen, dtype=torch.int32)
    sign = torch.randint(0, 2, shape, generator=gen, dtype=torch.int32) * 0x8000
    return (magnitude | sign).to(torch.uint16).view(torch.float16)


def _assert_same_bits(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), nan)
    assert torch.equal(actual[~nan].view(torch.int16), expected[~nan].view(torch.int16))


FLOAT16_BITWISE_CASES = {
    "max-1x1": lambda f, t: f.max_pool2d(t, 1),
    "max-2x2": lambda f, t: f.max_pool2d(t, 2),
    "max-3s2": lambda f, t: f.max_pool2d(t, 3, 2, 1),
    "avg-2x2": lambda f, t: f.avg_pool2d(t, 2),
    "avg-3s1": lambda f, t: f.avg_pool2d(t, 3, 1, 1, count_include_pad=False),
    "avg-sum-overflows": lambda f, t: f.avg_pool2d(t, 2, divisor_override=1),
    "adaptive-global": lambda f, t: f.adaptive_avg_pool2d(t, 1),
    "adaptive-overlapping": lambda f, t: f.adaptive_avg_pool2d(t, (4, 7)),
}


# The CPU's pooling kernels convert float16 to float and back by cuconv's own code where they read
# channels or planes in a row (csrc/cpu/opmath.h, written to vectorise): a float16 result must then
# be the float32 result on the same values rounded as torch rounds it, bit for bit, in either layout,
# forward and backward (the float32 kernels sum in the same order).
# Most float16 pooling runs the float32 kernels on chunks of samples converted to float32
# (pool2d.cpp, via_float): one chunk here, and with CUCONV_CPU_HALF_CHUNK=2 three of a batch of 5.
@pytest.mark.parametrize("chunk", [None, "2"], ids=["one-chunk", "chunks-of-2"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", FLOAT16_BITWISE_CASES)
def test_float16_pooling_is_float32_pooling_rounded(case, layout, chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setenv("CUCONV_CPU_HALF_CHUNK", chunk)
    fn = FLOAT16_BITWISE_CASES[case]
    x = _float16_of_every_kind((5 if chunk else 2, 19, 9, 10), seed=len(case))
    grad_output = _float16_of_every_kind(fn(F, x).shape, seed=1) * 2.0 ** -12  # (scatter sums stay finite)
    x16 = x.clone(memory_format=layout).requires_grad_()
    x32 = x.float().contiguous(memory_format=layout).requires_grad_()
    y16, y32 = fn(CF, x16), fn(CF, x32)
    _assert_same_bits(y16, y32.half())
    grad_output = grad_output.contiguous(memory_format=layout)  # (both through the same layout's kernels)
    y16.backward(grad_output)
    y32.backward(grad_output.float())
    _assert_same_bits(x16.grad, x32.grad.half())


def test_float16_pooling_of_an_empty_batch_and_a_bad_chunk_setting(monkeypatch):
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(0, 3, 8, 8, dtype=torch.float16).contiguous(memory_format=layout).requires_grad_()
        for fn in FLOAT16_BITWISE_CASES.values():
            y, ref = fn(CF, x), fn(F, x)
            assert y.shape == ref.shape and y.dtype == torch.float16
            assert torch.autograd.grad(y, x, torch.zeros_like(y))[0].shape == x.shape
    monkeypatch.setenv("CUCONV_CPU_HALF_CHUNK", "0")
    with pytest.raises(ValueError, match=r"CUCONV_CPU_HALF_CHUNK to be a positive integer, but got '0'"):
        CF.avg_pool2d(torch.randn(2, 3, 8, 8, dtype=torch.float16), 2)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_every_float16_value_passes_max_pooling_unchanged(layout):
    """All 65536 float16 bit patterns through 1x1 max pooling (NaN stays NaN)."""
    x = torch.arange(65536, dtype=torch.int32).to(torch.uint16).view(torch.float16).reshape(1, 16, 64, 64)
    _assert_same_bits(CF.max_pool2d(x.contiguous(memory_format=layout), 1), x)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_conv2d_float16_large_values(device):
    """Large activations times small weights: sums of large terms that cancel."""
    assert_as_accurate_as_torch(lambda x, w: CF.conv2d(x, w, None, 1, 1), lambda x, w: F.conv2d(x, w, None, 1, 1),
                                [(2, 8, 10, 10), (4, 8, 3, 3)], torch.float16, device, scale=[1000.0, 1e-3])


def test_the_bound_catches_a_small_systematic_error():
    """Guards the bound: a bfloat16 result 1.5% too large (a mutant the old tolerance let
    through) fails it."""
    with pytest.raises(AssertionError, match="output: "):
        assert_as_accurate_as_torch(lambda x: CF.avg_pool2d(x, 2) * 1.015, lambda x: F.avg_pool2d(x, 2),
                                    [(2, 3, 12, 14)], torch.bfloat16, "cpu")
