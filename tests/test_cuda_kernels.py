"""The fast CUDA convolution kernels (csrc/cuda/gemm_tensor_core.cu, ...) against torch in float64
and against the simple kernels they fall back to, on the emulated CUDA device (and on a GPU
when there is one). Each case also asserts which kernel family ran (last_kernels()), so that a
kernel that silently refused its arguments cannot pass for one that worked.

Tolerances: half types and TF32 round their operands, and every kernel sums in float32, in a
different order. A case passes when the fast kernel's largest error against float64 is within
twice the simple kernel's plus one rounding of the result, and, where the rounded operands are
known (TF32), when it matches float64 on those operands to float32's accuracy."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import emulated_cuda

TARGETS = []
if emulated_cuda.AVAILABLE:
    TARGETS.append("emulated")
if torch.cuda.is_available():
    TARGETS.append("cuda")

pytestmark = pytest.mark.skipif(not TARGETS, reason="neither the emulated device nor a GPU")


class Target:
    """The ops and kernel settings of the emulated device or of the GPU."""

    def __init__(self, name):
        self.name = name
        if name == "emulated":
            self.ops, self.module, self.device = torch.ops.cuconv_emulated, emulated_cuda.module, "cpu"
        else:
            import cuconv

            self.ops, self.module, self.device = torch.ops.cuconv, cuconv._C_cuda, "cuda"

    def run(self, name, *args, kernels="fastest"):
        saved = self.module.kernels()
        self.module.kernels(kernels)
        try:
            out = getattr(self.ops, name)(*args)
            return out, self.module.last_kernels()[name.replace("conv2d_", "").replace("conv2d", "forward")]
        finally:
            self.module.kernels(saved)


@pytest.fixture(params=TARGETS)
def target(request):
    return Target(request.param)


def _tf32(t):
    """float32 rounded to TF32 as cvt.rna.tf32.f32 does (to nearest, ties away from zero)."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _random(shape, dtype, device, generator):
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


# (batch, C_in, H, W), (C_out, C_g, kH, kW), stride, padding, dilation, groups: tile edges in M
# (N*Ho*Wo not a multiple of 128) and in N (O_g not a multiple of 128 or of 8), several K steps
# with a partial last one, taps crossing the K steps, groups, strides, dilation, asymmetric kernels.
CASES = [
    ((2, 16, 9, 11), (24, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((3, 8, 12, 10), (12, 8, 1, 1), (1, 1), (0, 0), (1, 1), 1),
    ((2, 32, 10, 9), (136, 32, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 24, 13, 13), (10, 24, 5, 3), (1, 2), (2, 1), (1, 1), 1),
    ((2, 32, 11, 12), (16, 16, 3, 3), (1, 1), (2, 2), (2, 2), 2),
    ((1, 48, 8, 8), (36, 16, 3, 1), (1, 1), (1, 0), (1, 1), 3),
    ((4, 8, 7, 7), (8, 8, 7, 7), (1, 1), (3, 3), (1, 1), 1),
]
IDS = [f"x{c[0]}-w{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}" for c in CASES]


def _reference_error(out, ref):
    return (out.double() - ref).abs().max().item()


def _check_against_simple(target, name, args, ref, dtype, expect_kernel):
    fast, ran = target.run(name, *args)
    assert ran == expect_kernel
    simple, ran_simple = target.run(name, *args, kernels="simple")
    assert ran_simple in ("simple", "depthwise")
    scale = ref.abs().max().item()
    ulp = torch.finfo(dtype).eps * scale
    err_fast, err_simple = _reference_error(fast.cpu(), ref), _reference_error(simple.cpu(), ref)
    assert err_fast <= 2 * err_simple + ulp, (err_fast, err_simple, ulp)
    return fast


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tensor_core_forward_half_types(target, case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(1)
    x, w = _random(x_shape, dtype, target.device, g), _random(w_shape, dtype, target.device, g)
    b = _random(w_shape[:1], dtype, target.device, g)
    ref = F.conv2d(x.cpu().double(), w.cpu().double(), b.cpu().double(), stride, padding, dilation, groups)
    _check_against_simple(target, "conv2d", (x, w, b, stride, padding, dilation, groups), ref, dtype, "tensor_core")


# Input-gradient cases by stride phase: strides 2 and 3, dilation sharing a factor with the stride
# (gcd 2: every other tap per phase), kernels smaller than the stride (phases without taps write
# zeros), padding beyond the kernel's reach, groups, rows that are not a multiple of the stride.
PHASE_CASES = [
    ((2, 8, 11, 9), (8, 8, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 16, 13, 10), (16, 8, 3, 2), (3, 2), (1, 0), (2, 1), 2),
    ((2, 8, 12, 12), (8, 8, 5, 5), (2, 2), (2, 2), (2, 2), 1),
    ((2, 16, 9, 8), (8, 16, 1, 1), (3, 3), (0, 0), (1, 1), 1),
    ((1, 8, 7, 7), (16, 8, 2, 2), (3, 3), (2, 1), (1, 1), 1),
    ((2, 8, 10, 10), (8, 8, 3, 3), (1, 1), (3, 3), (1, 1), 1),
]
PHASE_IDS = [f"x{c[0]}-w{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}" for c in PHASE_CASES]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES + PHASE_CASES, ids=IDS + PHASE_IDS)
def test_tensor_core_input_gradient_half_types(target, case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(2)
    w = _random(w_shape, dtype, target.device, g)
    y_shape = F.conv2d(torch.empty(x_shape, device="meta"), torch.empty(w_shape, device="meta"), None, stride,
                       padding, dilation, groups).shape
    dy = _random(y_shape, dtype, target.device, g)
    ref = torch.nn.grad.conv2d_input(x_shape, w.cpu().double(), dy.cpu().double(), stride, padding, dilation, groups)
    # O_g must fill 16-byte chunks (8 halves) for the tensor cores: else the simple kernel.
    expect = "tensor_core" if (w_shape[0] // groups) % 8 == 0 else "simple"
    _check_against_simple(target, "conv2d_backward_input", (dy, w, list(x_shape), stride, padding, dilation, groups),
                          ref, dtype, expect)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tensor_core_weight_gradient_half_types(target, case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(9)
    x = _random(x_shape, dtype, target.device, g)
    y_shape = F.conv2d(torch.empty(x_shape, device="meta"), torch.empty(w_shape, device="meta"), None, stride,
                       padding, dilation, groups).shape
    dy = _random(y_shape, dtype, target.device, g)
    ref = torch.nn.grad.conv2d_weight(x.cpu().double(), w_shape, dy.cpu().double(), stride, padding, dilation, groups)
    expect = "tensor_core" if (w_shape[0] // groups) % 8 == 0 else "simple"  # O_g must fill 16-byte chunks
    _check_against_simple(target, "conv2d_backward_weight", (dy, x, list(w_shape), stride, padding, dilation, groups),
                          ref, dtype, expect)


def test_tensor_core_weight_gradient_splits_k_by_the_multiprocessor_count():
    """More multiprocessors, more K slices; the same gradient (up to the order of float32 sums)."""
    if not emulated_cuda.AVAILABLE:
        pytest.skip("needs the emulated device")
    g = torch.Generator().manual_seed(10)
    x, dy = _random((4, 16, 20, 20), torch.bfloat16, "cpu", g), _random((4, 16, 20, 20), torch.bfloat16, "cpu", g)
    ref = torch.nn.grad.conv2d_weight(x.double(), (16, 16, 3, 3), dy.double(), 1, 1)
    blocks = {}
    for sm_count in (1, 132):
        before = emulated_cuda.module.stats()["blocks"]
        with emulated_cuda.configured(multiprocessor_count=sm_count):
            dw = torch.ops.cuconv_emulated.conv2d_backward_weight(dy, x, [16, 16, 3, 3], (1, 1), (1, 1), (1, 1), 1)
            assert emulated_cuda.module.last_kernels()["backward_weight"] == "tensor_core"
        blocks[sm_count] = emulated_cuda.module.stats()["blocks"] - before
        torch.testing.assert_close(dw.double(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    assert blocks[132] > blocks[1]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tf32_forward_rounds_the_operands_and_sums_in_float32(target, case):
    x_shape, w_shape, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(3)
    x, w = _random(x_shape, torch.float32, target.device, g), _random(w_shape, torch.float32, target.device, g)
    args = (x, w, None, stride, padding, dilation, groups)
    # allow_tf32: the tensor cores, on operands rounded to TF32 (10-bit mantissas) ...
    out, ran = target.run("conv2d", *args, True)
    assert ran == "tensor_core"
    ref_tf32 = F.conv2d(_tf32(x.cpu()).double(), _tf32(w.cpu()).double(), None, stride, padding, dilation, groups)
    torch.testing.assert_close(out.cpu().double(), ref_tf32, rtol=1e-5, atol=1e-5 * ref_tf32.abs().max().item())
    # ... which differ from float32's by about 2^-11 of the terms: visibly, on these sizes
    ref = F.conv2d(x.cpu().double(), w.cpu().double(), None, stride, padding, dilation, groups)
    assert _reference_error(out.cpu(), ref) > 10 * _reference_error(F.conv2d(x.cpu(), w.cpu(), None, stride, padding,
                                                                             dilation, groups), ref)
    # without allow_tf32, float32 is float32 (no tensor cores)
    out, ran = target.run("conv2d", *args, False)
    assert ran != "tensor_core"
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tf32_weight_gradient(target, case, layout):
    x_shape, w_shape, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(17)
    x = _random(x_shape, torch.float32, target.device, g)
    y_shape = F.conv2d(torch.empty(x_shape, device="meta"), torch.empty(w_shape, device="meta"), None, stride,
                       padding, dilation, groups).shape
    dy = _random(y_shape, torch.float32, target.device, g)
    if layout == "channels_last":
        x, dy = x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)
    args = (dy, x, list(w_shape), stride, padding, dilation, groups)
    dw, ran = target.run("conv2d_backward_weight", *args, True)
    fills_chunks = (w_shape[0] // groups) % 4 == 0 and w_shape[1] % 4 == 0  # 16 bytes of float32 channels
    assert ran == ("tensor_core" if fills_chunks else "simt")
    if not fills_chunks:
        return
    ref = torch.nn.grad.conv2d_weight(_tf32(x.cpu()).double(), w_shape, _tf32(dy.cpu()).double(), stride, padding,
                                      dilation, groups)
    torch.testing.assert_close(dw.cpu().double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    _, ran = target.run("conv2d_backward_weight", *args, False)
    assert ran == "simt"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES[:1] + PHASE_CASES, ids=IDS[:1] + PHASE_IDS)
def test_tf32_input_gradient(target, case, layout):
    x_shape, w_shape, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(4)
    w = _random(w_shape, torch.float32, target.device, g)
    y_shape = F.conv2d(torch.empty(x_shape, device="meta"), torch.empty(w_shape, device="meta"), None, stride,
                       padding, dilation, groups).shape
    dy = _random(y_shape, torch.float32, target.device, g)
    if layout == "channels_last":
        dy = dy.to(memory_format=torch.channels_last)
    dx, ran = target.run("conv2d_backward_input", dy, w, list(x_shape), stride, padding, dilation, groups, True)
    assert ran == "tensor_core"
    assert dx.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    ref = torch.nn.grad.conv2d_input(x_shape, _tf32(w.cpu()).double(), _tf32(dy.cpu()).double(), stride, padding,
                                     dilation, groups)
    torch.testing.assert_close(dx.cpu().double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("why,x_shape,w_shape,dtype,groups", [
    ("C_g of 3 does not fill a 16-byte chunk", (2, 3, 8, 8), (8, 3, 3, 3), torch.float16, 1),
    ("C_g of 4 halves is half a chunk", (2, 8, 8, 8), (8, 4, 3, 3), torch.bfloat16, 2),
    ("float64 has no tensor-core path here", (2, 8, 8, 8), (8, 8, 3, 3), torch.float64, 1),
])
def test_what_the_tensor_cores_refuse_falls_back_to_the_simple_kernel(target, why, x_shape, w_shape, dtype, groups):
    g = torch.Generator().manual_seed(5)
    x, w = _random(x_shape, dtype, target.device, g), _random(w_shape, dtype, target.device, g)
    out, ran = target.run("conv2d", x, w, None, (1, 1), (1, 1), (1, 1), groups, True)
    assert ran == "simple", why
    ref = F.conv2d(x.cpu().double(), w.cpu().double(), None, 1, 1, 1, groups)
    assert _reference_error(out.cpu(), ref) <= 4 * torch.finfo(dtype).eps * ref.abs().max().item() * 8


@pytest.mark.parametrize("dtype,kernel", [(torch.bfloat16, "tensor_core"), (torch.float32, "simt")], ids=str)
def test_results_do_not_depend_on_the_thread_schedule(dtype, kernel):
    """No shared-memory race in the pipelined kernels: forward, reverse and random thread orders
    between barriers give bitwise the same results."""
    if not emulated_cuda.AVAILABLE:
        pytest.skip("needs the emulated device")
    g = torch.Generator().manual_seed(7)
    x, w = _random((2, 16, 9, 11), dtype, "cpu", g), _random((24, 16, 3, 3), dtype, "cpu", g)
    dy = _random((2, 24, 9, 11), dtype, "cpu", g)
    results = []
    for schedule in ("forward", "reverse", "random"):
        with emulated_cuda.configured(schedule=schedule, seed=3):
            y = torch.ops.cuconv_emulated.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1)
            dx = torch.ops.cuconv_emulated.conv2d_backward_input(dy, w, [2, 16, 9, 11], (1, 1), (1, 1), (1, 1), 1)
            last = emulated_cuda.module.last_kernels()
            assert last["forward"] == last["backward_input"] == kernel
            results.append((y, dx))
    assert all(torch.equal(y, results[0][0]) and torch.equal(dx, results[0][1]) for y, dx in results[1:])


# --- float32 on the CUDA cores (gemm_simt.cu) ----------------------------------------------------

SIMT_CASES = CASES + PHASE_CASES + [
    ((2, 6, 11, 9), (8, 6, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 4, 13, 10), (6, 2, 3, 2), (3, 2), (1, 0), (2, 1), 2),
    ((2, 3, 12, 12), (5, 3, 5, 5), (2, 2), (2, 2), (2, 2), 1),
    ((2, 5, 9, 8), (7, 5, 1, 1), (3, 3), (0, 0), (1, 1), 1),
    ((3, 3, 28, 28), (6, 3, 5, 5), (1, 1), (2, 2), (1, 1), 1),
    ((2, 1, 10, 10), (4, 1, 3, 3), (2, 1), (1, 1), (1, 2), 1),
]
SIMT_IDS = [f"x{c[0]}-w{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}" for c in SIMT_CASES]


@pytest.mark.parametrize("case", SIMT_CASES, ids=SIMT_IDS)
def test_simt_float32_all_passes(target, case):
    x_shape, w_shape, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(8)
    x, w = _random(x_shape, torch.float32, target.device, g), _random(w_shape, torch.float32, target.device, g)
    b = _random(w_shape[:1], torch.float32, target.device, g)
    expect = "depthwise" if x_shape[1] // groups == 1 else "simt"  # one input channel a group: direct kernels
    y, ran = target.run("conv2d", x, w, b, stride, padding, dilation, groups)
    assert ran == expect
    ref = F.conv2d(x.cpu().double(), w.cpu().double(), b.cpu().double(), stride, padding, dilation, groups)
    torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    dy = _random(ref.shape, torch.float32, target.device, g)
    dx, ran = target.run("conv2d_backward_input", dy, w, list(x_shape), stride, padding, dilation, groups)
    assert ran == expect
    ref = torch.nn.grad.conv2d_input(x_shape, w.cpu().double(), dy.cpu().double(), stride, padding, dilation, groups)
    torch.testing.assert_close(dx.cpu().double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    dw, ran = target.run("conv2d_backward_weight", dy, x, list(w_shape), stride, padding, dilation, groups)
    assert ran == expect
    ref = torch.nn.grad.conv2d_weight(x.cpu().double(), w_shape, dy.cpu().double(), stride, padding, dilation, groups)
    torch.testing.assert_close(dw.cpu().double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


# --- channels_last ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_channels_last_runs_nhwc_in_place_and_stays_channels_last(target, dtype):
    """A channels_last input is read as it lies (no transposed copy: one launch fewer than for NCHW),
    and the output and the input gradient come back channels_last, as torch's do."""
    g = torch.Generator().manual_seed(11)
    x = _random((2, 16, 9, 11), dtype, target.device, g).to(memory_format=torch.channels_last)
    w, b = _random((24, 16, 3, 3), dtype, target.device, g), _random((24,), dtype, target.device, g)
    allow_tf32 = dtype == torch.float32
    launches = {}
    for name, tensor in (("nchw", x.contiguous()), ("channels_last", x)):
        before = emulated_cuda.module.stats()["launches"] if target.name == "emulated" else 0
        y, ran = target.run("conv2d", tensor, w, b, (1, 1), (1, 1), (1, 1), 1, allow_tf32)
        launches[name] = (emulated_cuda.module.stats()["launches"] if target.name == "emulated" else 0) - before
        assert ran == "tensor_core"
        assert y.is_contiguous(memory_format=torch.channels_last) == (name == "channels_last")
        x64, w64 = (_tf32(tensor.cpu()), _tf32(w.cpu())) if allow_tf32 else (tensor.cpu(), w.cpu())
        ref = F.conv2d(x64.double(), w64.double(), b.cpu().double(), 1, 1)
        tolerance = 1e-5 if allow_tf32 else 1e-2
        torch.testing.assert_close(y.cpu().double(), ref, rtol=tolerance, atol=tolerance * ref.abs().max().item())
    if target.name == "emulated":
        assert launches["channels_last"] == launches["nchw"] - 1
    dy = _random((2, 24, 9, 11), dtype, target.device, g).to(memory_format=torch.channels_last)
    dx, ran = target.run("conv2d_backward_input", dy, w, [2, 16, 9, 11], (1, 1), (1, 1), (1, 1), 1, allow_tf32)
    assert ran == "tensor_core" and dx.is_contiguous(memory_format=torch.channels_last)
    ref = torch.nn.grad.conv2d_input((2, 16, 9, 11), w.cpu().double(), dy.cpu().double(), 1, 1)
    tolerance = 2e-3 if allow_tf32 else 1e-2
    torch.testing.assert_close(dx.cpu().double(), ref, rtol=tolerance, atol=tolerance * ref.abs().max().item())
    if dtype != torch.float32:  # the weight gradient's tensor-core kernel takes 16-bit types
        dw, ran = target.run("conv2d_backward_weight", dy, x, [24, 16, 3, 3], (1, 1), (1, 1), (1, 1), 1)
        assert ran == "tensor_core" and dw.is_contiguous()
        ref = torch.nn.grad.conv2d_weight(x.cpu().double(), (24, 16, 3, 3), dy.cpu().double(), 1, 1)
        torch.testing.assert_close(dw.cpu().double(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


@pytest.mark.parametrize("kernels", ["fastest", "simple"])
def test_channels_last_through_every_family_matches_torch(target, kernels):
    """The families that compute NCHW copy a channels_last result into place."""
    g = torch.Generator().manual_seed(12)
    for x_shape, w_shape, groups in (((2, 6, 8, 7), (8, 3, 3, 3), 2), ((2, 4, 8, 7), (8, 1, 3, 3), 4)):
        x = _random(x_shape, torch.float64, target.device, g).to(memory_format=torch.channels_last)
        w = _random(w_shape, torch.float64, target.device, g)
        y, _ = target.run("conv2d", x, w, None, (1, 1), (1, 1), (1, 1), groups, kernels=kernels)
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        torch.testing.assert_close(y.cpu(), F.conv2d(x.cpu(), w.cpu(), None, 1, 1, 1, groups))


# --- one input channel a group (depthwise.cu) ------------------------------------------------------

@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (7, 7), (3, 2)], ids=str)
@pytest.mark.parametrize("layer", ["first-layer", "depthwise-x2"])
def test_one_input_channel_weight_gradient(target, kernel, layer):
    """The book's first layers (one input channel, no groups) and depthwise layers: every tap of a
    channel accumulated in one block for 3x3, 5x5 and 7x7 kernels, one block a tap otherwise;
    split over the positions as the multiprocessor count asks."""
    g = torch.Generator().manual_seed(13)
    x_shape, w_shape, groups = ((3, 1, 15, 13), (6, 1, *kernel), 1) if layer == "first-layer" else \
        ((2, 4, 12, 11), (8, 1, *kernel), 4)
    x = _random(x_shape, torch.float64, target.device, g)
    for stride, padding, dilation in (((1, 1), (2, 1), (1, 1)), ((2, 1), (0, 3), (1, 2))):
        y_shape = F.conv2d(x.cpu(), torch.empty(w_shape, dtype=torch.float64), None, stride, padding, dilation,
                           groups).shape
        dy = _random(y_shape, torch.float64, target.device, g)
        ref = torch.nn.grad.conv2d_weight(x.cpu(), w_shape, dy.cpu(), stride, padding, dilation, groups)
        for sm_count in ((1, 132) if target.name == "emulated" else (None,)):
            settings = {"multiprocessor_count": sm_count} if sm_count else {}
            with emulated_cuda.configured(**settings) if sm_count else contextlib.nullcontext():
                dw, ran = target.run("conv2d_backward_weight", dy, x, list(w_shape), stride, padding, dilation, groups)
            assert ran == "depthwise"
            torch.testing.assert_close(dw.cpu(), ref)



@pytest.mark.parametrize("kernel", [3, 5, 7, 2], ids=str)
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), ((2, 1), 1), ((1, 2), 1), (1, 2), (3, 1)], ids=str)
def test_one_input_channel_forward(target, kernel, stride, dilation):
    """Register-blocked strips of 4 outputs (square 3, 5, 7 kernels, no dilation, column stride 1 or 2)
    and the one-thread-an-output kernel for the rest; widths that do not fill the last strip."""
    g = torch.Generator().manual_seed(16)
    for x_shape, w_shape, groups in (((2, 1, 15, 13), (6, 1, kernel, kernel), 1), ((2, 4, 12, 11), (8, 1, kernel, kernel), 4)):
        x, w = _random(x_shape, torch.float64, target.device, g), _random(w_shape, torch.float64, target.device, g)
        b = _random(w_shape[:1], torch.float64, target.device, g)
        padding = kernel // 2
        y, ran = target.run("conv2d", x, w, b, _pair(stride), (padding, padding), _pair(dilation), groups)
        assert ran == "depthwise"
        torch.testing.assert_close(y.cpu(), F.conv2d(x.cpu(), w.cpu(), b.cpu(), stride, padding, dilation, groups))


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("kernel", [(3, 3), (7, 7), (2, 5)], ids=str)
@pytest.mark.parametrize("stride,padding,dilation", [(1, (1, 2), 1), (2, (3, 1), 1), ((2, 3), (0, 2), (2, 1)),
                                                     (3, (2, 2), 2), ((1, 2), (1, 0), (1, 3))], ids=str)
@pytest.mark.parametrize("layer", ["first-layer", "depthwise-x2", "wide-first-layer"])
def test_one_input_channel_input_gradient(target, kernel, stride, padding, dilation, layer):
    """A gather that walks only the taps of each input pixel's stride phase: strides that leave
    phases with no tap, stride and dilation with a common divisor (the taps step by stride / gcd),
    paddings beyond the kernel's reach, several output channels a group (reduced innermost)."""
    g = torch.Generator().manual_seed(17)
    x_shape, w_shape, groups = {"first-layer": ((2, 1, 21, 23), (6, 1, *kernel), 1),
                                "depthwise-x2": ((2, 4, 20, 21), (8, 1, *kernel), 4),
                                "wide-first-layer": ((1, 1, 20, 22), (40, 1, *kernel), 1)}[layer]
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    y_shape = F.conv2d(torch.empty(x_shape, dtype=torch.float64), torch.empty(w_shape, dtype=torch.float64), None,
                       stride, padding, dilation, groups).shape
    w, dy = _random(w_shape, torch.float64, target.device, g), _random(y_shape, torch.float64, target.device, g)
    dx, ran = target.run("conv2d_backward_input", dy, w, list(x_shape), stride, padding, dilation, groups)
    assert ran == "depthwise"
    ref = torch.nn.grad.conv2d_input(x_shape, w.cpu(), dy.cpu(), stride, padding, dilation, groups)
    torch.testing.assert_close(dx.cpu(), ref)


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,groups", [
    ((2, 1, 20, 18), (64, 1, 7, 7), 2, 3, 1),   # ResNet's stem, smaller
    ((1, 1, 13, 11), (32, 1, 5, 5), 1, 2, 1),
    ((2, 2, 12, 12), (64, 1, 4, 4), 1, 1, 2),   # 32 output channels a group
], ids=["stem", "5x5", "groups"])
def test_one_input_channel_forward_with_many_channels_and_taps_runs_on_the_float32_gemm(target, x_shape, w_shape,
                                                                                     stride, padding, groups):
    """At least 32 output channels a group and 16 taps in float32: the forward pass on the float32
    GEMM (its tiles filled); the gradients on the depthwise kernels (as GEMMs: one tile of few
    columns for the weight, one column for the input)."""
    g = torch.Generator().manual_seed(18)
    x, w = _random(x_shape, torch.float32, target.device, g), _random(w_shape, torch.float32, target.device, g)
    b = _random(w_shape[:1], torch.float32, target.device, g)
    conv = ((stride, stride), (padding, padding), (1, 1), groups)
    y, ran = target.run("conv2d", x, w, b, *conv)
    assert ran == "simt"
    ref = F.conv2d(x.cpu().double(), w.cpu().double(), b.cpu().double(), stride, padding, 1, groups)
    torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    dy = _random(ref.shape, torch.float32, target.device, g)
    dw, ran = target.run("conv2d_backward_weight", dy, x, list(w_shape), *conv)
    assert ran == "depthwise"
    ref = torch.nn.grad.conv2d_weight(x.cpu().double(), w_shape, dy.cpu().double(), stride, padding, 1, groups)
    torch.testing.assert_close(dw.cpu().double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    dx, ran = target.run("conv2d_backward_input", dy, w, list(x_shape), *conv)
    assert ran == "depthwise"
    ref = torch.nn.grad.conv2d_input(x_shape, w.cpu().double(), dy.cpu().double(), stride, padding, 1, groups)
    torch.testing.assert_close(dx.cpu().double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("w_shape,groups,dtype", [
    ((31, 1, 7, 7), 1, torch.float32),     # 31 output channels
    ((64, 1, 3, 5), 1, torch.float32),     # 15 taps
    ((62, 1, 4, 4), 2, torch.float32),     # 31 a group
    ((64, 1, 7, 7), 1, torch.float64),
    ((64, 1, 7, 7), 1, torch.bfloat16),
], ids=["31-channels", "15-taps", "31-a-group", "float64", "bfloat16"])
def test_one_input_channel_forward_below_the_gemm_thresholds_stays_on_the_depthwise_kernels(target, w_shape, groups,
                                                                                         dtype):
    g = torch.Generator().manual_seed(19)
    x = _random((2, groups, 11, 10), dtype, target.device, g)
    w = _random(w_shape, dtype, target.device, g)
    y, ran = target.run("conv2d", x, w, None, (1, 1), (2, 2), (1, 1), groups)
    assert ran == "depthwise"
    ref = F.conv2d(x.cpu().double(), w.cpu().double(), None, 1, 2, 1, groups)
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(y.cpu().double(), ref, rtol=tolerance, atol=tolerance * ref.abs().max().item())


# --- scheduling -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,kernel", [(torch.bfloat16, "tensor_core"), (torch.float32, "simt")], ids=str)
def test_forward_and_input_gradient_split_k_when_the_tiles_fill_less_than_two_waves(dtype, kernel):
    """On 1 multiprocessor this layer's output tiles make two waves and K stays whole; on 132 they
    would not, so K is split into slices (more blocks) summed in order: the same results up to the
    order of the float32 sums."""
    if not emulated_cuda.AVAILABLE:
        pytest.skip("needs the emulated device")
    g = torch.Generator().manual_seed(14)
    x, w = _random((2, 32, 16, 16), dtype, "cpu", g), _random((136, 32, 3, 3), dtype, "cpu", g)
    b, dy = _random((136,), dtype, "cpu", g), _random((2, 136, 16, 16), dtype, "cpu", g)
    ref_y = F.conv2d(x.double(), w.double(), b.double(), 1, 1)
    ref_dx = torch.nn.grad.conv2d_input(x.shape, w.double(), dy.double(), 1, 1)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    blocks = {}
    for sm_count in (1, 132):
        before = emulated_cuda.module.stats()["blocks"]
        with emulated_cuda.configured(multiprocessor_count=sm_count):
            y = torch.ops.cuconv_emulated.conv2d(x, w, b, (1, 1), (1, 1), (1, 1), 1)
            dx = torch.ops.cuconv_emulated.conv2d_backward_input(dy, w, list(x.shape), (1, 1), (1, 1), (1, 1), 1)
            last = emulated_cuda.module.last_kernels()
        assert last["forward"] == last["backward_input"] == kernel
        blocks[sm_count] = emulated_cuda.module.stats()["blocks"] - before
        for out, ref in ((y, ref_y), (dx, ref_dx)):
            torch.testing.assert_close(out.double(), ref, rtol=tolerance, atol=tolerance * ref.abs().max().item())
    assert blocks[132] > blocks[1] + 4, blocks


@pytest.mark.parametrize("dtype,kernel,launches", [(torch.float32, "simt", 2), (torch.bfloat16, "tensor_core", 3)],
                         ids=str)
def test_a_1x1_stride_2_input_gradient_launches_only_its_one_phase_with_taps(dtype, kernel, launches):
    """Three of the four stride phases of a 1x1 stride-2 layer's input gradient get no tap: their
    pixels are zeros, filled once, and only the fourth phase is launched (SIMT: the weight packing
    and one gather; tensor cores: dy to NHWC, the packing, one gather), not a launch each."""
    if not emulated_cuda.AVAILABLE:
        pytest.skip("needs the emulated device")
    g = torch.Generator().manual_seed(18)
    w, dy = _random((32, 16, 1, 1), dtype, "cpu", g), _random((2, 32, 6, 6), dtype, "cpu", g)
    before = emulated_cuda.module.stats()["launches"]
    dx = torch.ops.cuconv_emulated.conv2d_backward_input(dy, w, [2, 16, 12, 12], (2, 2), (0, 0), (1, 1), 1)
    assert emulated_cuda.module.stats()["launches"] - before == launches
    assert emulated_cuda.module.last_kernels()["backward_input"] == kernel
    assert torch.equal(dx[:, :, 1::2], torch.zeros_like(dx[:, :, 1::2]))
    assert torch.equal(dx[:, :, :, 1::2], torch.zeros_like(dx[:, :, :, 1::2]))
    ref = torch.nn.grad.conv2d_input([2, 16, 12, 12], w.double(), dy.double(), 2)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(dx.double(), ref, rtol=tolerance, atol=tolerance * ref.abs().max().item())


@pytest.mark.parametrize("dtype,family", [(torch.float32, "simt"), (torch.bfloat16, "tensor_core")], ids=str)
@pytest.mark.parametrize("kernel,padding", [(3, 1), (1, 0), (2, 0)], ids=["3x3", "1x1", "2x2"])
def test_strided_input_gradient_splits_k_across_its_phases(kernel, padding, dtype, family):
    """A stride-2 input gradient runs one gather a stride phase, each writing a quarter of dx. Its
    tiles make two waves on 1 multiprocessor; on 132 they would not, so every phase splits K into
    the same zeroed slices, summed once: the same results to the dtype's accuracy, no pixel left
    unwritten (the emulator's outputs start as NaN), the tapless phases zero."""
    if not emulated_cuda.AVAILABLE:
        pytest.skip("needs the emulated device")
    g = torch.Generator().manual_seed(19)
    out = (64 + 2 * padding - kernel) // 2 + 1
    w, dy = _random((256, 8, kernel, kernel), dtype, "cpu", g), _random((2, 256, out, out), dtype, "cpu", g)
    ref = torch.nn.grad.conv2d_input([2, 8, 64, 64], w.double(), dy.double(), 2, padding)
    splits = {}
    for sm_count in (1, 132):
        with emulated_cuda.configured(multiprocessor_count=sm_count):
            dx = torch.ops.cuconv_emulated.conv2d_backward_input(dy, w, [2, 8, 64, 64], (2, 2), (padding, padding),
                                                                 (1, 1), 1)
        last = emulated_cuda.module.last_kernels()
        assert last["backward_input"] == family
        splits[sm_count] = last["splits"]
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(dx.double(), ref, rtol=tolerance, atol=tolerance * ref.abs().max().item())
    assert splits[1] == 1 and splits[132] > 1, splits


@pytest.mark.parametrize("out_channels,tile", [(24, "64x128"), (64, "64x128"), (65, "128x128"), (136, "128x128")])
def test_simt_weight_gradient_tile_follows_the_output_channels(out_channels, tile):
    """Layers of at most 64 output channels a group take 64 x 128 tiles (a 128-row tile would
    multiply zero rows for half its products or more), the rest 128 x 128; both against float64,
    with K split and a partial last tile in each direction (144 columns (c, i, j))."""
    if not emulated_cuda.AVAILABLE:
        pytest.skip("needs the emulated device")
    g = torch.Generator().manual_seed(17)
    x, dy = _random((2, 16, 11, 13), torch.float32, "cpu", g), _random((2, out_channels, 11, 13), torch.float32, "cpu", g)
    with emulated_cuda.configured(multiprocessor_count=132):
        dw, ran = Target("emulated").run("conv2d_backward_weight", dy, x, [out_channels, 16, 3, 3], (1, 1), (1, 1),
                                         (1, 1), 1, False)
        last = emulated_cuda.module.last_kernels()
    assert (ran, last["tile"]) == ("simt", tile) and last["splits"] > 1
    ref = torch.nn.grad.conv2d_weight(x.double(), [out_channels, 16, 3, 3], dy.double(), 1, 1)
    torch.testing.assert_close(dw.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_a_one_tile_weight_gradient_fills_the_gpu_with_up_to_256_slices():
    """A reduction of one tile (16 x 36 here) is split for about 4 blocks an SM, up to 256 slices
    (64 until the slices' final sum was shared by a block's warps); each slice at least 8 K steps."""
    if not emulated_cuda.AVAILABLE:
        pytest.skip("needs the emulated device")
    g = torch.Generator().manual_seed(20)
    x, dy = _random((8, 4, 64, 64), torch.float32, "cpu", g), _random((8, 16, 64, 64), torch.float32, "cpu", g)
    with emulated_cuda.configured(multiprocessor_count=132):
        dw, ran = Target("emulated").run("conv2d_backward_weight", dy, x, [16, 4, 3, 3], (1, 1), (1, 1), (1, 1), 1,
                                         False)
        last = emulated_cuda.module.last_kernels()
    assert ran == "simt" and last["splits"] == 256  # 2,048 K steps: 256 slices of 8
    ref = torch.nn.grad.conv2d_weight(x.double(), [16, 4, 3, 3], dy.double(), 1, 1)
    torch.testing.assert_close(dw.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("dtype,channels,kernels,family", [
    (torch.float32, 2, "simple", "simple"), (torch.float32, 2, "fastest", "simt"),
    (torch.bfloat16, 16, "fastest", "tensor_core")], ids=str)
def test_long_weight_gradient_sums_are_cut_into_chains_of_4096(dtype, channels, kernels, family):
    """A weight gradient sums N*Ho*Wo products per value, in slices summed in order. On one
    multiprocessor 4 slices would fill the GPU, but each slice's sum is one chain of float32
    additions whose error grows with its length: 65,536 products take 16 slices of 4,096 (on an
    H200, 6.4 million products erred by 5.3e-6 of the largest value in 64 slices, by 1.9e-6 in
    455: benchmarks/gpu_long_sums.py, 2026-12-04)."""
    if not emulated_cuda.AVAILABLE:
        pytest.skip("needs the emulated device")
    g = torch.Generator().manual_seed(16)
    x, dy = _random((2, channels, 128, 256), dtype, "cpu", g), _random((2, channels, 128, 256), dtype, "cpu", g)
    with emulated_cuda.configured(multiprocessor_count=1):
        dw, ran = Target("emulated").run("conv2d_backward_weight", dy, x, [channels, channels, 1, 1], (1, 1), (0, 0),
                                         (1, 1), 1, False, kernels=kernels)
        splits = emulated_cuda.module.last_kernels()["splits"]
    assert (ran, splits) == (family, 16)
    ref = torch.nn.grad.conv2d_weight(x.double(), [channels, channels, 1, 1], dy.double())
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(dw.double(), ref, rtol=tolerance, atol=tolerance * ref.abs().max().item())


@pytest.mark.parametrize("out_channels,sm_count,tensor_core_tile,simt_tile", [
    (136, 132, "128x128", "128x128"),
    (48, 1, "128x64", "128x64"),     # few channels, tiles enough for the GPU: 64 columns
    (48, 132, "64x64", "128x64"),    # few channels and few tiles: the tensor cores' 64 x 64
    (24, 132, "64x64", "128x32"),
])
def test_tile_configuration_follows_the_table(out_channels, sm_count, tensor_core_tile, simt_tile):
    """choose_tile's table (gemm_tensor_core.cu) and launch_gather's (gemm_simt.cu), each configuration
    computing the same convolution."""
    if not emulated_cuda.AVAILABLE:
        pytest.skip("needs the emulated device")
    g = torch.Generator().manual_seed(15)
    for dtype, tile in ((torch.bfloat16, tensor_core_tile), (torch.float32, simt_tile)):
        x, w = _random((2, 16, 20, 20), dtype, "cpu", g), _random((out_channels, 16, 3, 3), dtype, "cpu", g)
        with emulated_cuda.configured(multiprocessor_count=sm_count):
            y = torch.ops.cuconv_emulated.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1)
            assert emulated_cuda.module.last_kernels()["tile"] == tile
        ref = F.conv2d(x.double(), w.double(), None, 1, 1)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(y.double(), ref, rtol=tolerance, atol=tolerance * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_a_misaligned_channels_last_input_is_copied_not_read_in_place(target, dtype):
    """cp.async copies 16 bytes from 16-byte aligned addresses: a channels_last view that starts
    mid-chunk (a storage offset of one element) is not read in place."""
    g = torch.Generator().manual_seed(18)
    base = _random((2 * 9 * 11 * 16 + 1,), dtype, target.device, g)
    x = base[1:].view(2, 9, 11, 16).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16 != 0
    w = _random((24, 16, 3, 3), dtype, target.device, g)
    dy = base[1:].view(2, 9, 11, 16).permute(0, 3, 1, 2)[:, :16]
    y, ran = target.run("conv2d", x, w, None, (1, 1), (1, 1), (1, 1), 1, True)
    assert ran == "tensor_core" and y.is_contiguous(memory_format=torch.channels_last)
    x64, w64 = (_tf32(x.cpu()), _tf32(w.cpu())) if dtype == torch.float32 else (x.cpu(), w.cpu())
    ref = F.conv2d(x64.double(), w64.double(), None, 1, 1)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y.cpu().double(), ref, rtol=tolerance, atol=tolerance * ref.abs().max().item())
    dw, ran = target.run("conv2d_backward_weight", _random((2, 24, 9, 11), dtype, target.device, g)
                         .to(memory_format=torch.channels_last), x, [24, 16, 3, 3], (1, 1), (1, 1), (1, 1), 1, True)
    assert ran == "tensor_core"
    dx, ran = target.run("conv2d_backward_input", dy, _random((16, 16, 3, 3), dtype, target.device, g), [2, 16, 9, 11],
                         (1, 1), (1, 1), (1, 1), 1, True)
    assert ran == "tensor_core"


@pytest.mark.parametrize("plane", [(7, 7), (6, 6), (3, 5)], ids=str)
@pytest.mark.parametrize("sm_count", [1, 132])
def test_float32_epilogue_stores_any_plane(plane, sm_count):
    """The staged epilogue: 16-byte stores aligned to the addresses whatever the plane size (7x7: a
    tile's 128 positions span several samples, at every alignment), with and without split-K slices
    (whose starts need not be 16-byte aligned), bias added once."""
    if not emulated_cuda.AVAILABLE:
        pytest.skip("needs the emulated device")
    g = torch.Generator().manual_seed(19)
    for out_channels in (136, 40, 12):
        x, w = _random((5, 16, *plane), torch.float32, "cpu", g), _random((out_channels, 16, 3, 3), torch.float32, "cpu", g)
        b = _random((out_channels,), torch.float32, "cpu", g)
        with emulated_cuda.configured(multiprocessor_count=sm_count):
            y = torch.ops.cuconv_emulated.conv2d(x, w, b, (1, 1), (1, 1), (1, 1), 1)
            assert emulated_cuda.module.last_kernels()["forward"] == "simt"
        ref = F.conv2d(x.double(), w.double(), b.double(), 1, 1)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
