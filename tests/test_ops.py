"""Every cuconv op against torch.nn.functional: random sweeps over the parameter
space (forward and every gradient), layouts, dtypes, gradcheck, opcheck and
torch.compile."""

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cuconv
import cuconv.functional as CF
from conftest import DEVICES, TOLERANCES

ops = torch.ops.cuconv


def assert_matches(actual, expected, dtype):
    """Close to torch within the dtype's tolerance, relative to the tensor's scale."""
    tol = TOLERANCES[dtype]
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               check_dtype=True, equal_nan=True)


def forward_and_grads(fn, tensors, seed=1):
    """fn(*tensors) and the gradients of a random projection of it w.r.t. every tensor (of a
    complex output: the projection's real part, a real loss)."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point() or t.is_complex()) for t in tensors]
    out = fn(*leaves)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    weights = torch.randn(out.shape, generator=gen, dtype=torch.complex128 if out.is_complex() else torch.float64)
    loss = (out * weights.to(out)).sum()
    grads = torch.autograd.grad(loss.real if loss.is_complex() else loss, [t for t in leaves if t.requires_grad])
    return out.detach(), grads


def compare_with_torch(ours, theirs, tensors, dtype, reference_dtype=None):
    """ours against theirs (torch) on the same tensors, forward and every gradient. With
    reference_dtype, torch computes in that dtype (float64: our own error alone, not the sum of
    ours and torch's; cuDNN's float32 weight gradients on long sums err by up to 3e-4 of the
    largest value on an H200, 2026-12-04)."""
    out, grads = forward_and_grads(ours, tensors)
    if reference_dtype is not None:
        tensors = [t.to(reference_dtype) if t.is_floating_point() else t for t in tensors]
    ref_out, ref_grads = forward_and_grads(theirs, tensors)
    ref_out, ref_grads = ref_out.to(out.dtype), [r.to(g.dtype) for r, g in zip(ref_grads, grads)]
    assert out.shape == ref_out.shape
    assert_matches(out, ref_out, dtype)
    for g, ref_g in zip(grads, ref_grads):
        assert_matches(g, ref_g, dtype)


# --- random parameter sweeps --------------------------------------------------------------

def random_conv_cases(count, seed):
    """Convolutions over the whole parameter space: groups, kernels, stride, padding,
    dilation, bias, non-square everything. Input sizes are drawn so the kernel fits."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        groups = rng.choice([1, 1, 1, 2, 3])
        kh, kw = rng.randint(1, 5), rng.randint(1, 5)
        dh, dw = rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2])
        ph, pw = rng.randint(0, 3), rng.randint(0, 3)
        h_min, w_min = max(1, dh * (kh - 1) + 1 - 2 * ph), max(1, dw * (kw - 1) + 1 - 2 * pw)
        cases.append(dict(
            batch=rng.choice([1, 2, 3]), in_channels=groups * rng.randint(1, 3),
            out_channels=groups * rng.randint(1, 3), groups=groups, kernel=(kh, kw),
            stride=(rng.randint(1, 3), rng.randint(1, 3)), padding=(ph, pw), dilation=(dh, dw),
            size=(h_min + rng.randint(0, 7), w_min + rng.randint(0, 7)), bias=rng.random() < 0.7))
    return cases


def conv_tensors(case, dtype, device):
    x = torch.randn(case["batch"], case["in_channels"], *case["size"], dtype=dtype, device=device)
    w = torch.randn(case["out_channels"], case["in_channels"] // case["groups"], *case["kernel"],
                    dtype=dtype, device=device)
    b = torch.randn(case["out_channels"], dtype=dtype, device=device) if case["bias"] else None
    return x, w, b


def conv_fns(case, has_bias):
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    if has_bias:
        return (lambda x, w, b: CF.conv2d(x, w, b, *args)), (lambda x, w, b: F.conv2d(x, w, b, *args))
    return (lambda x, w: CF.conv2d(x, w, None, *args)), (lambda x, w: F.conv2d(x, w, None, *args))


CONV_CASES = random_conv_cases(40, seed=2024)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "g{groups}k{kernel}s{stride}p{padding}d{dilation}".format(**c))
def test_conv2d_matches_torch(case, dtype, device):
    x, w, b = conv_tensors(case, dtype, device)
    ours, theirs = conv_fns(case, b is not None)
    compare_with_torch(ours, theirs, [t for t in (x, w, b) if t is not None], dtype)


def random_direct_conv_cases(count, seed):
    """float32, groups 1: the CPU's direct (im2col-free) kernels, over output channels
    that fill several channel panels or part of a vector, stride, padding, dilation,
    rows that leave a short last register tile, and kernel rows that fall wholly in the
    padding."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        kh, kw = rng.randint(1, 5), rng.randint(1, 5)
        dh, dw = rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2])
        ph, pw = rng.randint(0, 4), rng.randint(0, 3)
        h_min, w_min = max(1, dh * (kh - 1) + 1 - 2 * ph), max(1, dw * (kw - 1) + 1 - 2 * pw)
        stride = rng.choice([(1, 1), (1, 1), (rng.randint(1, 3), rng.randint(1, 3))])
        cases.append(dict(
            batch=rng.choice([1, 2, 5]), in_channels=rng.randint(1, 9), out_channels=rng.choice([1, 3, 6, 16, 17, 40, 70]),
            groups=1, kernel=(kh, kw), stride=stride, padding=(ph, pw),
            dilation=(dh, dw), size=(h_min + rng.randint(0, 9), w_min + rng.randint(0, 30)),
            bias=rng.random() < 0.7))
    return cases


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct", "im2col"])
@pytest.mark.parametrize("case", random_direct_conv_cases(30, seed=99),
                         ids=lambda c: "o{out_channels}k{kernel}s{stride}p{padding}d{dilation}".format(**c))
def test_conv2d_cpu_direct_and_im2col_paths_match_torch(case, direct, isa, monkeypatch):
    """CUCONV_CPU_DIRECT=1 runs every pass the direct kernels can take through them (the
    input gradient where the stride is 1), =0 none; both must match torch, with the
    AVX-512 and the AVX2 register tiles (a CPU without one runs the best it has)."""
    monkeypatch.setenv("CUCONV_CPU_DIRECT", direct)
    monkeypatch.setenv("CUCONV_CPU_ISA", isa)
    x, w, b = conv_tensors(case, torch.float32, "cpu")
    ours, theirs = conv_fns(case, b is not None)
    compare_with_torch(ours, theirs, [t for t in (x, w, b) if t is not None], torch.float32)


def test_conv2d_cpu_direct_setting_is_checked(monkeypatch):
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "yes")
    x, w = torch.randn(1, 3, 8, 8), torch.randn(20, 3, 3, 3)
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX"):
        pytest.skip("no direct kernels on this CPU, so the setting is not read")
    with pytest.raises(ValueError, match=r"CUCONV_CPU_DIRECT to be 0 or 1, but got 'yes'"):
        CF.conv2d(x, w)


def test_conv2d_cpu_direct_switch_changes_the_path(monkeypatch):
    """Guards the test above: the two paths sum in different orders, so float32 results
    differ in the last bits, for every pass (if the switch did nothing, the test above
    would cover one path twice). K = 360 taps, more than one GEMM depth slice (with one
    slice both forward passes would sum in the same order)."""
    torch.manual_seed(3)
    x, w, b = torch.randn(4, 40, 12, 12), torch.randn(20, 40, 3, 3), torch.randn(20)
    dy = torch.randn(4, 20, 12, 12)
    results = {}
    for direct in ("1", "0"):
        monkeypatch.setenv("CUCONV_CPU_DIRECT", direct)
        results[direct] = (CF.conv2d(x, w, b, padding=1),
                           ops.conv2d_backward_weight(dy, x, list(w.shape), [1, 1], [1, 1], [1, 1], 1),
                           ops.conv2d_backward_input(dy, w, list(x.shape), [1, 1], [1, 1], [1, 1], 1))
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX"):
        pytest.skip("no direct kernels on this CPU")
    for on, off in zip(results["1"], results["0"]):
        assert_matches(on, off, torch.float32)
        assert not torch.equal(on, off)


# Layers large enough to cross every blocking boundary of the CPU GEMM path (csrc/cpu/conv2d.cpp,
# gemm.h): K = C_g*kH*kW over one K slice (256) and over the input-gradient row and
# weight-gradient tap chunks (192), output channels that are no multiple of any register
# tile's MR (8, 6, 4) and more than one K slice of them, blocks of many samples (3x3
# outputs) and samples of many blocks, groups, stride, dilation and padding.
GEMM_BLOCKING_CASES = [
    dict(batch=3, in_channels=40, out_channels=70, groups=1, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), size=(30, 29), bias=True),
    dict(batch=37, in_channels=33, out_channels=20, groups=1, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
         dilation=(1, 1), size=(6, 6), bias=True),
    dict(batch=2, in_channels=60, out_channels=18, groups=2, kernel=(3, 3), stride=(2, 1), padding=(2, 0),
         dilation=(2, 1), size=(25, 40), bias=False),
    dict(batch=4, in_channels=12, out_channels=33, groups=1, kernel=(5, 5), stride=(1, 2), padding=(2, 1),
         dilation=(1, 1), size=(20, 21), bias=True),
    dict(batch=2, in_channels=3, out_channels=300, groups=1, kernel=(1, 1), stride=(1, 1), padding=(0, 0),
         dilation=(1, 1), size=(9, 11), bias=True),
    dict(batch=5, in_channels=64, out_channels=24, groups=1, kernel=(1, 1), stride=(2, 2), padding=(0, 0),
         dilation=(1, 1), size=(13, 13), bias=False),
    # 96 output pixels, whole panels of every tile: the forward takes one sample per block, in place
    dict(batch=4, in_channels=20, out_channels=36, groups=1, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), size=(12, 8), bias=True),
]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("dtype,direct", [(torch.float64, "0"), (torch.float32, "0"), (torch.float32, "1")],
                         ids=["float64", "float32-gemm", "float32-direct"])
@pytest.mark.parametrize("case", GEMM_BLOCKING_CASES,
                         ids=lambda c: "n{batch}c{in_channels}o{out_channels}g{groups}k{kernel}s{stride}".format(**c))
def test_conv2d_cpu_gemm_blocking_matches_torch(case, dtype, direct, isa, monkeypatch):
    """Every microkernel (CUCONV_CPU_ISA asks for a lesser one than the CPU has; on a CPU
    without it the best one it has runs) against torch, across the blocking boundaries:
    the GEMM path (CUCONV_CPU_DIRECT=0), and for float32 also the direct kernels on the
    same large layers (=1: several channel panels, hundreds of taps)."""
    if isa == "generic" and direct == "1":
        pytest.skip("the direct kernels are vector code: CUCONV_CPU_ISA=generic turns them off")
    monkeypatch.setenv("CUCONV_CPU_ISA", isa)
    monkeypatch.setenv("CUCONV_CPU_DIRECT", direct)
    x, w, b = conv_tensors(case, dtype, "cpu")
    ours, theirs = conv_fns(case, b is not None)
    compare_with_torch(ours, theirs, [t for t in (x, w, b) if t is not None], dtype)


# The direct forward pass in blocks of taps (csrc/cpu/direct_conv.cpp, forward_blocking): a
# block's weights fill half of L1 (a 64-channel AVX-512 panel: 96 taps with a 48 KiB L1, a
# 16-channel AVX2 one: 384), so these layers' 1000-1200 taps take several blocks with either
# ISA, the last one shorter; channel panels of two widths (70 = 64 + 6, 130 = 2 x 64 + 2); groups
# of rows (8 tiles) that leave a short last group in a sample (7 rows in groups of 4) or take a
# whole sample (6 rows of one tile); the input gradient (stride 1) is the same pass, transposed.
DIRECT_BLOCK_CASES = [
    dict(batch=3, in_channels=120, out_channels=70, groups=1, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), size=(7, 9), bias=True),
    dict(batch=5, in_channels=130, out_channels=130, groups=1, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
         dilation=(1, 1), size=(11, 11), bias=False),
    dict(batch=2, in_channels=40, out_channels=17, groups=1, kernel=(5, 5), stride=(1, 2), padding=(2, 1),
         dilation=(1, 1), size=(13, 30), bias=True),
]


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("case", DIRECT_BLOCK_CASES,
                         ids=lambda c: "c{in_channels}o{out_channels}k{kernel}s{stride}".format(**c))
def test_direct_forward_in_blocks_of_taps_matches_torch_at_any_thread_count(case, isa, monkeypatch):
    """Several blocks of taps, each adding to the sums the last left, give torch's values; and
    the same bits whatever the threads' chunks of rows cut (the output and the input gradient:
    each value is one sum in one order; the weight gradient's split follows the thread count)."""
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "1")
    monkeypatch.setenv("CUCONV_CPU_ISA", isa)
    kernels = cuconv._C.cpu_kernels()
    if kernels["isa"] not in ("avx512", "avx2"):
        pytest.skip("no direct kernels on this CPU")
    panel = {"avx512": 4 * 16, "avx2": 2 * 8}[kernels["isa"]]  # a panel's channels at most
    taps = case["in_channels"] * case["kernel"][0] * case["kernel"][1]
    assert taps > 2 * (kernels["l1_data_cache_bytes"] // 2 // (panel * 4)), "no longer several blocks on this CPU"
    x, w, b = conv_tensors(case, torch.float32, "cpu")
    ours, theirs = conv_fns(case, b is not None)
    tensors = [t for t in (x, w, b) if t is not None]
    compare_with_torch(ours, theirs, tensors, torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            out, grads = forward_and_grads(ours, tensors)
            results.append((out, grads[0]))
    finally:
        torch.set_num_threads(threads)
    for out, grad_x in results[1:]:
        assert torch.equal(out, results[0][0])
        assert torch.equal(grad_x, results[0][1])


def test_conv2d_cpu_isa_switch_changes_the_kernel(monkeypatch):
    """Guards the test above: the portable microkernel rounds a*b and the sum apart where
    the vector ones fuse them, so float32 results differ in the last bits (if the switch
    did nothing, the test above would run one kernel three times)."""
    case = GEMM_BLOCKING_CASES[0]
    x, w, _ = conv_tensors(case, torch.float32, "cpu")
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "0")  # the GEMM's microkernels, not the direct kernels
    results = {}
    for isa in ("avx512", "generic"):
        monkeypatch.setenv("CUCONV_CPU_ISA", isa)
        results[isa] = CF.conv2d(x, w, None, 1, 1)
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX"):
        pytest.skip("this CPU has no vector microkernel to compare the portable one with")
    assert_matches(results["avx512"], results["generic"], torch.float32)
    assert not torch.equal(results["avx512"], results["generic"])


def test_conv2d_cpu_isa_setting_is_checked(monkeypatch):
    monkeypatch.setenv("CUCONV_CPU_ISA", "sse9")
    x, w = torch.randn(1, 3, 8, 8), torch.randn(20, 3, 3, 3)
    with pytest.raises(ValueError, match=r"CUCONV_CPU_ISA to be avx512_bf16, avx512, avx2 or generic, but got 'sse9'"):
        CF.conv2d(x, w)


def random_pool_cases(count, seed, with_dilation):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        kh, kw = rng.randint(1, 4), rng.randint(1, 4)
        dh, dw = (rng.choice([1, 2]), rng.choice([1, 2])) if with_dilation else (1, 1)
        cases.append(dict(
            kernel=(kh, kw), stride=(rng.randint(1, 3), rng.randint(1, 3)),
            padding=(rng.randint(0, kh // 2), rng.randint(0, kw // 2)), dilation=(dh, dw),
            ceil_mode=rng.random() < 0.5, size=(dh * (kh - 1) + 1 + rng.randint(0, 8), dw * (kw - 1) + 1 + rng.randint(0, 8)),
            batch=rng.choice([1, 2]), channels=rng.choice([1, 3])))
    return cases


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", random_pool_cases(30, seed=7, with_dilation=True),
                         ids=lambda c: "k{kernel}s{stride}p{padding}d{dilation}c{ceil_mode}".format(**c))
def test_max_pool2d_matches_torch(case, dtype, device):
    x = torch.randn(case["batch"], case["channels"], *case["size"], dtype=dtype, device=device)
    args = (case["kernel"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"])
    compare_with_torch(lambda t: CF.max_pool2d(t, *args), lambda t: F.max_pool2d(t, *args), [x], dtype)
    _, idx = CF.max_pool2d(x, *args, return_indices=True)
    _, ref_idx = F.max_pool2d(x, *args, return_indices=True)
    assert torch.equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor_override", [None, 3])
@pytest.mark.parametrize("case", random_pool_cases(12, seed=11, with_dilation=False),
                         ids=lambda c: "k{kernel}s{stride}p{padding}c{ceil_mode}".format(**c))
def test_avg_pool2d_matches_torch(case, divisor_override, count_include_pad, dtype, device):
    x = torch.randn(case["batch"], case["channels"], *case["size"], dtype=dtype, device=device)
    args = (case["kernel"], case["stride"], case["padding"], case["ceil_mode"], count_include_pad, divisor_override)
    compare_with_torch(lambda t: CF.avg_pool2d(t, *args), lambda t: F.avg_pool2d(t, *args), [x], dtype)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("in_size,out_size", [
    ((7, 9), (3, 4)), ((8, 8), (1, 1)), ((5, 6), (5, 6)), ((4, 5), (7, 9)), ((13, 3), (4, None)),
    ((6, 6), 2), ((1, 1), (3, 2)), ((12, 10), (6, 5)), ((9, 6), (3, 2)), ((3, 3), 1),
])
def test_adaptive_avg_pool2d_matches_torch(in_size, out_size, dtype, device):
    x = torch.randn(2, 3, *in_size, dtype=dtype, device=device)
    compare_with_torch(lambda t: CF.adaptive_avg_pool2d(t, out_size),
                       lambda t: F.adaptive_avg_pool2d(t, out_size), [x], dtype)


# The CPU pools 2x2 windows with stride 2 inside the input by a kernel of their own
# (csrc/cpu/pool2d.cpp, tiled_2x2); these configs run it (even and odd sizes, ceil_mode
# that does or does not add a window) next to the general kernel.
TIE_CONFIGS = [
    dict(kernel_size=2), dict(kernel_size=2, ceil_mode=True), dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 3), stride=(1, 2)),
]


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("size", [(8, 10), (9, 7)])
@pytest.mark.parametrize("config", TIE_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_max_pool2d_ties_take_torch_s_index(config, size, device):
    """Windows full of equal values: the first maximum in (row, column) order wins."""
    x = torch.randint(0, 3, (2, 3, *size), device=device).double()
    out, idx = CF.max_pool2d(x, return_indices=True, **config)
    ref_out, ref_idx = F.max_pool2d(x, return_indices=True, **config)
    assert torch.equal(out, ref_out) and torch.equal(idx, ref_idx)


# NCHW max pooling has kernels of its own on the CPU (csrc/cpu/pool2d.cpp) for 2x2 windows of
# stride 2 (forward, and a backward that writes each window's four pixels once) and for windows
# three columns wide with column stride 2 and padding 1 on even widths (separable forward); these
# shapes run them: short and long rows, vector tails, odd edges outside every window.
@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("size", [(8, 10), (9, 7), (7, 12), (6, 40), (5, 34)])
@pytest.mark.parametrize("config", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=(2, 3), stride=2, padding=(1, 1))],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_max_pool2d_cpu_special_kernels_match_torch(config, size, dtype, device):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)), dtype=dtype).to(device)
    compare_with_torch(lambda t: CF.max_pool2d(t, **config), lambda t: F.max_pool2d(t, **config), [x], dtype)
    _, idx = CF.max_pool2d(x, return_indices=True, **config)
    _, ref_idx = F.max_pool2d(x, return_indices=True, **config)
    assert torch.equal(idx, ref_idx)


@pytest.mark.parametrize("config", [dict(kernel_size=(1, 1500), stride=(1, 7), padding=(0, 3)),
                                    dict(kernel_size=(2, 1100), stride=(2, 300), padding=(1, 0), ceil_mode=True),
                                    dict(kernel_size=(1, 1100), stride=1, padding=(0, 500))],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pooling_windows_wider_than_the_column_table(pool, config):
    """The generic kernels table each kernel column's outputs for the first 1,024 columns and work
    the rest out where used (a 50-million-column kernel's table took 800 MB): windows past the
    table, values and gradients against torch."""
    x = torch.randn(2, 3, 3, 1700, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    ours, theirs = {"max": (CF.max_pool2d, F.max_pool2d), "avg": (CF.avg_pool2d, F.avg_pool2d)}[pool]
    compare_with_torch(lambda t: ours(t, **config), lambda t: theirs(t, **config), [x], torch.float64)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("size", [(8, 10), (9, 7)])
@pytest.mark.parametrize("config", TIE_CONFIGS + [dict(kernel_size=2, stride=2, dilation=(2, 1)),
                                                  dict(kernel_size=3, padding=1, dilation=2)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_max_pool2d_backward_follows_any_index_in_the_plane(config, size, layout, device):
    """max_pool2d_backward adds each gradient at its index, as torch does, also where an
    index is not a pixel of its own window (the 2x2 kernels' write-once passes, NCHW and NHWC,
    must then give way to the general scatter; with dilation, an index inside a window's span
    but off its grid is such a stray, once): compared with scatter_add."""
    x = torch.randn(2, 3, *size, dtype=torch.float64, device=device).to(memory_format=layout)
    out, idx = CF.max_pool2d(x, return_indices=True, **config)
    gen = torch.Generator().manual_seed(5)
    moved = torch.zeros(idx.shape, dtype=torch.bool)
    moved.view(-1)[::3] = True
    elsewhere = torch.randint(0, size[0] * size[1], idx.shape, generator=gen)
    idx = torch.where(moved.to(device), elsewhere.to(device), idx).to(memory_format=layout)
    dy = torch.randn(out.shape, dtype=torch.float64, device=device).to(memory_format=layout)
    full = dict(dict(stride=None, padding=0, dilation=1, ceil_mode=False), **config)
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    kernel = pair(full["kernel_size"])
    grad = ops.max_pool2d_backward(dy, idx, list(x.shape), kernel, pair(full["stride"] or full["kernel_size"]),
                                   pair(full["padding"]), pair(full["dilation"]), full["ceil_mode"])
    expected = torch.zeros_like(x).flatten(2).scatter_add_(2, idx.flatten(2), dy.flatten(2)).view_as(x)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("channels,output_size", [(3, (0, 3)), (0, (2, 3))])
def test_adaptive_avg_pool2d_empty_cases(channels, output_size, device):
    """output_size 0 and zero channels are allowed, as in torch: an empty result and a zero
    gradient (torch's own backward rejects both, so only the forward is compared)."""
    x = torch.randn(2, channels, 10, 7, device=device, requires_grad=True)
    out = CF.adaptive_avg_pool2d(x, output_size)
    assert out.shape == F.adaptive_avg_pool2d(x, output_size).shape
    assert out.numel() == 0
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias,groups,unbatched", [(True, 1, False), (False, 1, False), (True, 3, False),
                                                   (True, 1, True)])
def test_conv2d_of_no_channels_is_the_bias(bias, groups, unbatched, dtype, device):
    """Each output of a convolution over zero input channels is a sum of no products: the bias, or
    zero (torch.nn.Conv2d's formula; torch 2.14's own op returns zero output channels there). The
    bias gradient sums grad_output as always; input and weight get empty gradients of their shapes."""
    make = lambda *shape: torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)  # noqa: E731
    x = make(0, 7, 5) if unbatched else make(2, 0, 7, 5)
    w, b = make(6, 0, 3, 2), (make(6) if bias else None)
    out = CF.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), groups=groups)
    batch_shape = (6, 4, 4) if unbatched else (2, 6, 4, 4)
    expected = torch.zeros(batch_shape, device=device, dtype=dtype)
    if bias:
        expected += b.detach().view(6, 1, 1)
    assert out.dtype == dtype and out.device == x.device
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn(batch_shape, device=device, dtype=dtype)
    out.backward(grad)
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    if bias:
        torch.testing.assert_close(b.grad, grad.sum(dim=(-1, -2) if unbatched else (0, 2, 3)))
    # the module: in_channels=0 (torch's initialisation warns that an empty weight is left as it is)
    with pytest.warns(UserWarning, match="zero-element"):
        module = cuconv.Conv2d(0, 4, 3, padding=1, bias=bias).to(device=device, dtype=dtype)
    assert module(x.detach()).shape == ((4, 7, 5) if unbatched else (2, 4, 7, 5))


def test_conv2d_of_no_channels_checks_its_arguments():
    x = torch.randn(2, 0, 5, 5)
    with pytest.raises(ValueError, match=r"the dilated kernel \(7 x 7\) to fit in the padded input \(5 x 5\)"):
        CF.conv2d(x, torch.randn(3, 0, 7, 7))
    with pytest.raises(ValueError, match=r"expected bias of shape \[3\]"):
        CF.conv2d(x, torch.randn(3, 0, 3, 3), torch.randn(4))
    with pytest.raises(ValueError, match=r"to be divisible by groups=2"):
        CF.conv2d(x, torch.randn(3, 0, 3, 3), groups=2)
    with pytest.raises(ValueError, match=r"at least one channel"):  # (the raw op takes at least one)
        ops.conv2d(x, torch.randn(3, 0, 3, 3), None, [1, 1], [0, 0], [1, 1], 1)


# --- layouts, batch sizes and dtypes ------------------------------------------------------

LAYOUTS = {
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.to(memory_format=torch.channels_last),
    "transposed_hw": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
    "sliced": lambda t: torch.cat([t, t], dim=3)[..., ::2],
}


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_layout_gives_torch_results(layout, device):
    to_layout = LAYOUTS[layout]
    x = to_layout(torch.randn(2, 4, 9, 11, dtype=torch.float64, device=device))
    w = to_layout(torch.randn(6, 2, 3, 3, dtype=torch.float64, device=device))
    b = torch.randn(6, dtype=torch.float64, device=device)
    assert layout == "contiguous" or not x.is_contiguous()
    compare_with_torch(lambda x, w, b: CF.conv2d(x, w, b, 2, 1, 1, 2),
                       lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 2), [x, w, b], torch.float64)
    # the convolution's output keeps a channels_last input's layout, as torch's does (in float32:
    # on CUDA torch returns float64 as NCHW, cuDNN having no NHWC float64 kernels; cuconv keeps it)
    x32, w32, b32 = x.float(), w.float(), b.float()
    ours, theirs = CF.conv2d(x32, w32, b32, 2, 1, 1, 2), F.conv2d(x32, w32, b32, 2, 1, 1, 2)
    assert ours.is_contiguous(memory_format=torch.channels_last) == theirs.is_contiguous(memory_format=torch.channels_last)
    assert ours.is_contiguous() == theirs.is_contiguous()
    compare_with_torch(lambda t: CF.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1), [x], torch.float64)
    compare_with_torch(lambda t: CF.avg_pool2d(t, 2), lambda t: F.avg_pool2d(t, 2), [x], torch.float64)
    compare_with_torch(lambda t: CF.adaptive_avg_pool2d(t, 3), lambda t: F.adaptive_avg_pool2d(t, 3), [x], torch.float64)


def _strides_that_matter(t):
    """A tensor's strides but of its size-1 dimensions (any stride reads the same there)."""
    return tuple(s for s, n in zip(t.stride(), t.shape) if n != 1)


CONV_LAYOUT_SHAPES = {
    "groups1": ((2, 8, 10, 10), (16, 8, 3, 3), 1),
    "groups2": ((2, 8, 10, 10), (8, 4, 3, 3), 2),
    "depthwise": ((2, 8, 10, 10), (8, 1, 3, 3), 8),
    "one-channel": ((2, 1, 10, 10), (4, 1, 3, 3), 1),
    "one-pixel": ((2, 8, 1, 1), (4, 8, 1, 1), 1),
}


@pytest.mark.parametrize("shape", CONV_LAYOUT_SHAPES)
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("input_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_conv2d_result_and_gradients_are_laid_out_as_torchs(dtype, input_layout, weight_layout, shape):
    """The output, the input gradient and the weight gradient have torch's strides on the CPU:
    channels_last where the input or the weight is (model.to(memory_format=torch.channels_last)
    with NCHW images gives channels_last results), NCHW otherwise."""
    x_size, w_size, groups = CONV_LAYOUT_SHAPES[shape]
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    results = []
    for conv in (CF.conv2d, F.conv2d):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(x_size, generator=gen).to(dtype).contiguous(memory_format=layouts[input_layout])
        w = torch.randn(w_size, generator=gen).to(dtype).contiguous(memory_format=layouts[weight_layout])
        x.requires_grad_(), w.requires_grad_()
        y = conv(x, w, None, 1, 1, 1, groups)
        grads = torch.autograd.grad(y, (x, w), torch.ones_like(y))
        results.append([_strides_that_matter(t) for t in (y, *grads)])
    assert results[0] == results[1], f"cuconv (output, grad input, grad weight) {results[0]}, torch {results[1]}"


POOLS_CHANNELS_LAST = {
    "max-2x2": (lambda t: CF.max_pool2d(t, 2), lambda t: F.max_pool2d(t, 2)),
    "max-3s2p1-ceil": (lambda t: CF.max_pool2d(t, 3, 2, 1, ceil_mode=True),
                       lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True)),
    "max-dilated": (lambda t: CF.max_pool2d(t, (2, 3), (1, 2), (1, 0), (2, 1)),
                    lambda t: F.max_pool2d(t, (2, 3), (1, 2), (1, 0), (2, 1))),
    "avg-2x2": (lambda t: CF.avg_pool2d(t, 2), lambda t: F.avg_pool2d(t, 2)),
    "avg-3s2p1-ceil-no-pad": (lambda t: CF.avg_pool2d(t, 3, 2, 1, True, False),
                              lambda t: F.avg_pool2d(t, 3, 2, 1, True, False)),
    # windows apart from one another (rows and columns in no window: their gradient is 0)
    "avg-2s3p1": (lambda t: CF.avg_pool2d(t, 2, 3, 1), lambda t: F.avg_pool2d(t, 2, 3, 1)),
    "avg-divisor": (lambda t: CF.avg_pool2d(t, (3, 2), 1, (1, 0), divisor_override=5),
                    lambda t: F.avg_pool2d(t, (3, 2), 1, (1, 0), divisor_override=5)),
    "adaptive-global": (lambda t: CF.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1)),
    "adaptive-uneven": (lambda t: CF.adaptive_avg_pool2d(t, (4, 3)), lambda t: F.adaptive_avg_pool2d(t, (4, 3))),
    "adaptive-divides": (lambda t: CF.adaptive_avg_pool2d(t, (3, 5)), lambda t: F.adaptive_avg_pool2d(t, (3, 5))),
}


# Pooling's vector kernels of each instruction set, and the AVX-512 ones' code compiled for AVX2
# with their 16 lanes (CUCONV_CPU_POOL_LANES=16), which runs on any AVX2 CPU. (A CPU without an
# instruction set runs the best it has.)
POOL_ISAS = ["avx512", "avx2", "avx2_16_lanes", "generic"]


def use_pool_isa(monkeypatch, isa):
    """Sets CUCONV_CPU_ISA and CUCONV_CPU_POOL_LANES for `isa`, one of POOL_ISAS."""
    monkeypatch.setenv("CUCONV_CPU_ISA", "avx2" if isa == "avx2_16_lanes" else isa)
    monkeypatch.setenv("CUCONV_CPU_POOL_LANES", "16" if isa == "avx2_16_lanes" else "")


@pytest.mark.parametrize("isa", POOL_ISAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", POOLS_CHANNELS_LAST)
def test_pooling_channels_last_matches_torch_and_stays_channels_last(case, dtype, isa, monkeypatch):
    """channels_last pooling runs NHWC kernels (channels innermost) on the CPU: values, argmax
    indices and gradients as torch's, results channels_last like torch's. (float32 max pooling
    runs a vector kernel of each ISA on 16 channels at a time, 8 with AVX2, and float32 and
    float64 average pooling sums blocks of 64 and 32 channels in registers; here 83 channels:
    whole vectors and blocks, and a tail; CUCONV_CPU_ISA asks for a lesser ISA than the CPU has,
    POOL_ISAS.)"""
    use_pool_isa(monkeypatch, isa)
    ours, theirs = POOLS_CHANNELS_LAST[case]
    gen = torch.Generator().manual_seed(len(case))
    x = torch.randn(3, 83, 9, 15, generator=gen, dtype=dtype).to(memory_format=torch.channels_last)
    if case.startswith("max"):  # ties, -inf and NaN follow torch's rule too
        x[0, :, 1:4, 1:4] = 0.5
        x[1, 2] = float("-inf")
        x[2, 3, 2, 2] = float("nan")
    x.requires_grad_(True)
    out, ref = ours(x), theirs(x)
    assert out.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(memory_format=torch.channels_last)
    assert out.stride() == ref.stride()
    dy = torch.randn(out.shape, generator=gen, dtype=dtype).to(memory_format=torch.channels_last)
    (dx,), (ref_dx,) = torch.autograd.grad(out, x, dy), torch.autograd.grad(ref, x, dy)
    # torch computes global average pooling as a mean, whose gradient comes out NCHW (and is
    # copied into x's layout when it accumulates into x.grad); cuconv's is in x's layout, as
    # every other pooling gradient of both
    assert dx.stride() == (x.stride() if case == "adaptive-global" else ref_dx.stride())
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(dx, ref_dx, rtol=tol, atol=tol, equal_nan=True)
    if case.startswith("max"):
        _, idx = CF.max_pool2d(x, *_MAX_ARGS[case], return_indices=True)
        _, ref_idx = F.max_pool2d(x, *_MAX_ARGS[case], return_indices=True)
        assert torch.equal(idx, ref_idx) and idx.stride() == ref_idx.stride()


def _dense_as_strided(shape, order, rng):
    """A dense tensor of `shape` with dims in `order` from outermost to innermost; its size-1 dims
    get any of a few strides (torch ignores them for contiguity, not for its layout choice)."""
    strides, size = [0] * 4, 1
    for d in reversed(order):
        strides[d], size = size, size * shape[d]
    for d in range(4):
        if shape[d] == 1:
            strides[d] = rng.choice([1, strides[d], 7, size])
    return torch.randn(size).as_strided(shape, strides)  # (float32: torch's float64 backward refuses some)


@pytest.mark.parametrize("x_shape", [(2, 1, 5, 6), (1, 3, 5, 6), (2, 3, 1, 6), (2, 3, 5, 1), (2, 3, 5, 6), (2, 1, 1, 1)],
                         ids=str)
def test_conv2d_layouts_of_any_strides_are_torchs(x_shape):
    """torch lays out a convolution's result and input gradient as Tensor.suggest_memory_format()
    reads the input and the weight (channels_last if either, by stride order, size-1 dims
    included); cuconv the same, with the same strides, for dense tensors in every dim order and
    odd strides of size-1 dims. The weight gradient: the same layout."""
    rng = random.Random(sum(x_shape))
    compared = 0
    for w_shape in [(4, x_shape[1], 3, 1), (4, x_shape[1], 1, 1), (1, x_shape[1], 3, 3)]:
        if w_shape[2] > x_shape[2] or w_shape[3] > x_shape[3]:
            continue
        for x_order in [(0, 1, 2, 3), (0, 2, 3, 1), (0, 1, 3, 2), (0, 3, 1, 2)]:
            for w_order in [(0, 1, 2, 3), (0, 2, 3, 1)]:
                x = _dense_as_strided(x_shape, x_order, rng).requires_grad_()
                w = _dense_as_strided(w_shape, w_order, rng).requires_grad_()
                ours, theirs = CF.conv2d(x, w), F.conv2d(x, w)
                assert ours.stride() == theirs.stride(), (x.stride(), w.stride())
                assert_matches(ours, theirs, torch.float32)
                (dx, dw), (ref_dx, ref_dw) = (torch.autograd.grad(y.sum(), [x, w]) for y in (ours, theirs))
                assert dx.stride() == ref_dx.stride(), (x.stride(), w.stride())
                for layout in (torch.contiguous_format, torch.channels_last):
                    assert dw.is_contiguous(memory_format=layout) == ref_dw.is_contiguous(memory_format=layout)
                compared += 1
    assert compared >= 8


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_conv2d_of_sliced_inputs_is_laid_out_as_torchs(layout):
    """Inputs that are not dense (channels sliced off) keep the layout they read as:
    a sliced channels_last input gives a channels_last result and input gradient, as torch's."""
    gen = torch.Generator().manual_seed(8)
    base = torch.randn(2, 6, 7, 9, generator=gen).contiguous(memory_format=layout)
    x = base[:, 1:5].detach().requires_grad_()
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    for weight_layout in (torch.contiguous_format, torch.channels_last):
        w = torch.randn(3, 4, 3, 2, generator=gen).contiguous(memory_format=weight_layout).requires_grad_()
        ours, theirs = CF.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)
        assert ours.stride() == theirs.stride()
        assert_matches(ours, theirs, torch.float32)
        dx, ref_dx = (torch.autograd.grad(y.sum(), x)[0] for y in (ours, theirs))
        assert dx.stride() == ref_dx.stride()


@pytest.mark.parametrize("conv_layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_conv2d_gradients_follow_the_convolution_not_grad_output(conv_layout):
    """The gradients are laid out as the convolution is, whatever the layout of the gradient that
    arrives: torch's rule (second derivatives: the values; torch lays out the weight's in an
    order of its own, (9, 36, 3, 1) here)."""
    gen = torch.Generator().manual_seed(9)
    x0 = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64).contiguous(memory_format=conv_layout)
    w0 = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    other = torch.contiguous_format if conv_layout == torch.channels_last else torch.channels_last
    results = []
    for conv in (CF.conv2d, F.conv2d):
        x, w = x0.clone(memory_format=torch.preserve_format).requires_grad_(), w0.clone().requires_grad_()
        y = conv(x, w, None, 1, 1)
        grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        dx, dw = torch.autograd.grad(y, (x, w), grad.contiguous(memory_format=other), create_graph=True)
        ddx = torch.randn(dx.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        results.append((y, dx, dw, *torch.autograd.grad(dx, (w,), ddx.contiguous(memory_format=other))))
    for index, (ours, theirs) in enumerate(zip(*results)):
        assert index == 3 or ours.stride() == theirs.stride()
        assert_matches(ours, theirs, torch.float64)


@pytest.mark.parametrize("grad_layout", ["nchw", "channels_last", "flattened"])
@pytest.mark.parametrize("input_layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_pooling_gradients_follow_the_input_not_grad_output(input_layout, grad_layout):
    """A pooling's input gradient is laid out as its input is, whatever the strides of the gradient
    that arrives, also where that gradient is one pixel a plane and so dense in both layouts (one
    that comes back through flatten: (C, 1, 1, 1)): torch's strides and values. (Global average
    pooling: torch takes a mean, whose gradient is NCHW either way; cuconv's is in x's layout, as
    every other pooling gradient of both: test_pooling_channels_last_matches_torch_and_stays_channels_last.)"""
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(2, 16, 5, 4, generator=gen, dtype=torch.float64).contiguous(memory_format=input_layout)
    layers = {"max": lambda f, x: f.max_pool2d(x, (5, 4)), "max_2x2": lambda f, x: f.max_pool2d(x, 2),
              "avg": lambda f, x: f.avg_pool2d(x, (5, 4)), "global": lambda f, x: f.adaptive_avg_pool2d(x, 1),
              "adaptive": lambda f, x: f.adaptive_avg_pool2d(x, (2, 3))}
    for name, layer in layers.items():
        shape = layer(F, x0).shape
        grad = torch.randn(shape, generator=gen, dtype=torch.float64)
        if grad_layout == "channels_last":
            grad = grad.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        elif grad_layout == "flattened" and shape[2:] == (1, 1):
            grad = grad.flatten(1).view(shape)
        results = []
        for f in (CF, F):
            x = x0.clone(memory_format=torch.preserve_format).requires_grad_()
            results.append(torch.autograd.grad(layer(f, x), x, grad)[0])
        ours, theirs = results
        assert ours.stride() == (x0.stride() if name == "global" else theirs.stride()), name
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("strides", [(4, 1, 1, 1), (4, 1, 4, 4), (1, 1, 1, 1)], ids=str)
def test_ambiguous_layout_reads_as_torch_reads_it(strides):
    """A (2, 4, 1, 1) tensor is NCHW- and channels_last-contiguous at once; torch decides by the
    strides of its size-1 dimensions (suggest_memory_format), and so do cuconv's kernels and fake
    kernels: (4, 1, 4, 4), what global pooling of a channels_last input returns, reads as
    channels_last, so its gradient comes out channels_last, as the input was."""
    gen = torch.Generator().manual_seed(3)
    dy = torch.randn(2, 4, 1, 1, generator=gen).as_strided((2, 4, 1, 1), strides)
    # torch's reading: its CPU pooling lays out its output as suggest_memory_format(input) says
    channels_last = F.max_pool2d(dy, 1).stride() == (4, 1, 4, 4)
    assert channels_last == (strides == (4, 1, 4, 4))
    w = torch.randn(3, 4, 1, 1, generator=gen)
    for got in (ops.adaptive_avg_pool2d_backward(dy, [2, 4, 5, 6]), ops.avg_pool2d_backward(dy, [2, 4, 3, 3], [3, 3],
                [3, 3], [0, 0], False, True, None), CF.conv2d(dy, w), CF.adaptive_avg_pool2d(dy, 1)):
        assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if got.shape[2:] != (1, 1):
            assert got.is_contiguous() != channels_last
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = ops.adaptive_avg_pool2d_backward(mode.from_tensor(dy), [2, 4, 5, 6])
    assert fake.stride() == ops.adaptive_avg_pool2d_backward(dy, [2, 4, 5, 6]).stride()


@pytest.mark.parametrize("op", ["max", "avg", "global", "adaptive"])
def test_one_channel_channels_last_pooling_keeps_torch_layout(op):
    """(N, 1, H, W) channels_last is NCHW in memory too; torch reads it as channels_last, and cuconv
    runs its plane kernels on it and lays the results out as torch does."""
    x = torch.randn(3, 1, 9, 10, generator=torch.Generator().manual_seed(11)).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    call = {"max": lambda f: f.max_pool2d(x, 3, 2, 1), "avg": lambda f: f.avg_pool2d(x, 2),
            "global": lambda f: f.adaptive_avg_pool2d(x, 1), "adaptive": lambda f: f.adaptive_avg_pool2d(x, (4, 3))}[op]
    out, ref = call(CF), call(F)
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(12)).to(memory_format=torch.channels_last)
    (dx,), (ref_dx,) = torch.autograd.grad(out, x, dy), torch.autograd.grad(ref, x, dy)
    assert out.stride() == ref.stride()
    assert dx.stride() == ref_dx.stride()  # (global: a (3, 1, 1, 1) gradient reads as NCHW, in both)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(dx, ref_dx)


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("strides", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", ["one_pixel", "one_channel", "whole_plane_window"])
def test_pooling_where_the_layout_is_read_from_the_strides_follows_torch(op, shape, strides):
    """The eager path settles an NCHW input's layout from its sizes, and an NCHW gradient's from
    its strides, without the general checks (cuconv/_ops.py, _pooling_layout and
    _in_pooling_layout): their limits. An input of one pixel or one channel is dense in both
    layouts, so torch (and cuconv) read its strides; and a window covering the whole plane makes
    the gradient one pixel, dense in both, where a gradient with channels_last strides must not
    set the layout of an NCHW input's. (Adaptive average pooling shares both functions; its global
    gradient's layout differs from torch's by design: README, Limitations.)"""
    gen = torch.Generator().manual_seed(23)
    sizes = {"one_pixel": (3, 4, 1, 1), "one_channel": (3, 1, 5, 6), "whole_plane_window": (3, 4, 5, 6)}[shape]
    x = torch.randn(sizes, generator=gen, dtype=torch.float64)
    if strides == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    window = sizes[2:] if shape == "whole_plane_window" else 1
    call = {"max": lambda f: f.max_pool2d(x, window), "avg": lambda f: f.avg_pool2d(x, window)}[op]
    out, ref = call(CF), call(F)
    assert out.stride() == ref.stride()
    n, c, h, w = out.shape
    # NCHW strides, and channels_last ones by a permute (`contiguous(memory_format=...)` gives a
    # one-pixel tensor NCHW strides): (c, 1, c, c) where the gradient is one pixel
    nhwc = torch.randn(n, h, w, c, generator=gen, dtype=torch.float64)
    for layout, dy in (("nchw", torch.randn(out.shape, generator=gen, dtype=torch.float64)),
                       ("channels_last", nhwc.permute(0, 3, 1, 2))):
        (dx,) = torch.autograd.grad(out, x, dy, retain_graph=True)
        (ref_dx,) = torch.autograd.grad(ref, x, dy, retain_graph=True)
        assert dx.stride() == ref_dx.stride(), layout
        torch.testing.assert_close(dx, ref_dx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", ["max", "avg", "conv", "conv_transpose"])
def test_one_value_a_sample_keeps_the_input_layout(layer):
    """A grad_output (or transposed convolution input) of one value a sample, (N, 1, 1, 1), has no
    strides that read as channels_last, and the kernels follow its layout; the result is still laid
    out as torch lays it: channels_last where the input (or weight) is. One-channel pooling and a
    convolution of one output channel to a 1x1 output; a one-channel 1x1 transposed input with a
    channels_last weight. (Global average pooling: README, Limitations.)"""
    gen = torch.Generator().manual_seed(17)
    one_channel = torch.randn(3, 2, 3, 1, generator=gen, dtype=torch.float64).permute(0, 3, 1, 2)  # (3, 1, 2, 3)
    four_channels = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64).to(memory_format=torch.channels_last)
    weight = torch.randn(1, 4, 3, 3, generator=gen, dtype=torch.float64)
    transposed_weight = torch.randn(1, 3, 2, 2, generator=gen, dtype=torch.float64).to(memory_format=torch.channels_last)
    x, call = {"max": (one_channel, lambda f, x: f.max_pool2d(x, (2, 3))),
               "avg": (one_channel, lambda f, x: f.avg_pool2d(x, (1, 3), (3, 4), (0, 1))),
               "conv": (four_channels, lambda f, x: f.conv2d(x, weight)),
               "conv_transpose": (torch.randn(2, 1, 1, 1, generator=gen, dtype=torch.float64),
                                  lambda f, x: f.conv_transpose2d(x, transposed_weight))}[layer]
    results = []
    for f in (CF, F):
        leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        out = call(f, leaf)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        results.append((out, torch.autograd.grad(out, leaf, grad)[0]))
    (ours, ours_dx), (theirs, theirs_dx) = results
    assert ours.stride() == theirs.stride() and ours_dx.stride() == theirs_dx.stride()
    # (the case itself: torch's result reads as channels_last)
    assert torch._prims_common.suggest_memory_format(theirs_dx if layer != "conv_transpose" else theirs) \
        == torch.channels_last
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_dx, theirs_dx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in POOLS_CHANNELS_LAST if c != "adaptive-global"])
def test_pooling_layouts_follow_the_input_as_torch_s(case):
    """torch lays pooling's result and input gradient out as the input suggests: a crop of a
    channels_last tensor (strided, not dense) gives channels_last results, and an NCHW gradient
    arriving at a channels_last input (as torch.autograd.grad with a plain tensor gives it) gives
    a channels_last input gradient; and an NCHW input takes a channels_last gradient to NCHW.
    Compiled (fullgraph) too. (Global pooling's gradient: README, Limitations.)"""
    ours, theirs = POOLS_CHANNELS_LAST[case]
    gen = torch.Generator().manual_seed(len(case))
    whole = torch.randn(3, 6, 10, 17, generator=gen, dtype=torch.float64).to(memory_format=torch.channels_last)
    for x in (whole[:, :, 1:, 2:], whole, whole.contiguous()):
        x = x.detach().requires_grad_(True)
        out, ref = ours(x), theirs(x)
        assert out.stride() == ref.stride()
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        compiled = torch.compile(ours, fullgraph=True)(x)
        assert compiled.stride() == ref.stride()
        torch.testing.assert_close(compiled, ref, rtol=1e-12, atol=1e-12)
        for layout in (torch.contiguous_format, torch.channels_last):
            dy = torch.randn(out.shape, generator=gen, dtype=torch.float64).contiguous(memory_format=layout)
            (dx,) = torch.autograd.grad(out, x, dy, retain_graph=True)
            (ref_dx,) = torch.autograd.grad(ref, x, dy, retain_graph=True)
            assert dx.stride() == ref_dx.stride(), layout
            torch.testing.assert_close(dx, ref_dx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", list(POOLS_CHANNELS_LAST))
def test_pooling_of_an_unbatched_channels_last_sample_is_laid_out_as_torch_s(case):
    """A sample of a channels_last batch, unbatched (strides HWC): a 3-D tensor has no
    channels_last, and torch lays out its result and input gradient contiguous."""
    ours, theirs = POOLS_CHANNELS_LAST[case]
    gen = torch.Generator().manual_seed(len(case))
    whole = torch.randn(2, 6, 10, 17, generator=gen, dtype=torch.float64).to(memory_format=torch.channels_last)
    x = whole[1].detach().requires_grad_(True)
    out, ref = ours(x), theirs(x)
    assert out.stride() == ref.stride()
    dy = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (dx,), (ref_dx,) = torch.autograd.grad(out, x, dy), torch.autograd.grad(ref, x, dy)
    assert dx.stride() == ref_dx.stride()
    torch.testing.assert_close(dx, ref_dx, rtol=1e-12, atol=1e-12)


_MAX_ARGS = {"max-2x2": (2,), "max-3s2p1-ceil": (3, 2, 1, 1, True), "max-dilated": ((2, 3), (1, 2), (1, 0), (2, 1))}


def test_max_pool_backward_channels_last_rejects_an_index_outside_the_plane():
    x = torch.randn(2, 5, 6, 6).to(memory_format=torch.channels_last)
    out, idx = ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    idx = idx.clone()
    idx[1, 3, 2, 1] = 36
    with pytest.raises(IndexError, match="index 36 in indices is outside the input plane of 36 pixels"):
        ops.max_pool2d_backward(torch.randn_like(out), idx, list(x.shape), [2, 2], [2, 2], [0, 0], [1, 1], False)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_max_pool_backward_fills_no_zeros_for_the_indices(layout):
    """The indices take no gradient: autograd must not fill a zero tensor of their size (int64)
    on every backward, as it does for a Function's outputs unless told not to (2.2 ms a step of
    ResNet's stem pooling, more than its whole gradient kernel)."""
    x = torch.randn(4, 8, 12, 12).to(memory_format=layout).requires_grad_()
    out = CF.max_pool2d(x, 3, 2, 1)
    grad = torch.randn_like(out)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out.backward(grad)
    names = {event.name for event in prof.events()}
    assert "cuconv::max_pool2d_backward" in names
    assert not names & {"aten::zeros", "aten::zero_", "aten::fill_", "aten::zeros_like"}, sorted(names)
    torch.testing.assert_close(x.grad, torch.autograd.grad(F.max_pool2d(x, 3, 2, 1), x, grad)[0])


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_empty_batch_gives_empty_results(device):
    x = torch.randn(0, 3, 8, 8, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    outs = [CF.conv2d(x, w, b, padding=1), CF.max_pool2d(x, 2), CF.avg_pool2d(x, 2), CF.adaptive_avg_pool2d(x, 3)]
    refs = [F.conv2d(x, w, b, padding=1), F.max_pool2d(x, 2), F.avg_pool2d(x, 2), F.adaptive_avg_pool2d(x, 3)]
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape and out.numel() == 0
    sum(o.sum() for o in outs).backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


EMPTY_BATCH_OPS = {  # cuconv's op, torch's, the input's layout
    "conv2d": (lambda x, w: CF.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1)),
    "max_pool2d": (lambda x, w: CF.max_pool2d(x, 2), lambda x, w: F.max_pool2d(x, 2)),
    "max_pool2d-indices": (lambda x, w: CF.max_pool2d(x, 3, 1, 1, return_indices=True)[0],
                           lambda x, w: F.max_pool2d(x, 3, 1, 1, return_indices=True)[0]),
    "avg_pool2d": (lambda x, w: CF.avg_pool2d(x, 2), lambda x, w: F.avg_pool2d(x, 2)),
    "adaptive_avg_pool2d": (lambda x, w: CF.adaptive_avg_pool2d(x, 3), lambda x, w: F.adaptive_avg_pool2d(x, 3)),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("op", EMPTY_BATCH_OPS)
def test_empty_batch_second_and_forward_mode_derivatives(op, channels_last):
    """A batch of 0 through double backward and torch.func's jvp, as torch takes it (max pooling's
    gather reshaped its planes with -1, which a batch of 0 leaves ambiguous)."""
    ours, theirs = EMPTY_BATCH_OPS[op]
    x = torch.randn(0, 3, 8, 8, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    for f in (ours, theirs):
        xr = x.clone().requires_grad_()
        y = f(xr, w)
        g = torch.randn(y.shape, dtype=torch.float64, requires_grad=True)
        (gx,) = torch.autograd.grad(y, xr, g, create_graph=True)
        (gg,) = torch.autograd.grad(gx.sum(), g, allow_unused=True, materialize_grads=True)
        out, tangent = torch.func.jvp(lambda t: f(t, w), (x,), (torch.randn_like(x),))
        assert gx.shape == x.shape and gg.shape == y.shape and out.shape == tangent.shape == y.shape


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_conv2d_large_layer_spans_several_workspace_blocks(device):
    """128 input channels x 3x3 over 96 columns: the CPU columns workspace holds one output
    row, so each sample takes 48 blocks (and 5 samples split unevenly over threads)."""
    x = torch.randn(5, 128, 48, 96, device=device)
    w = torch.randn(16, 128, 3, 3, device=device) / 30
    b = torch.randn(16, device=device)
    compare_with_torch(lambda x, w, b: CF.conv2d(x, w, b, padding=1), lambda x, w, b: F.conv2d(x, w, b, padding=1),
                       [x, w, b], torch.float32, reference_dtype=torch.float64)


# (shape, layout): each of the CPU bias gradient's ways (csrc/cpu/bias_gradient.cpp), with
# remainders: NHWC rows of 6 channels read 10 pixels at a time and 130 channels one at a time;
# NCHW planes of 3x3 in groups of 8 channels, of 5x13 one channel at a time, of 40x41 summed
# along the plane; runs and groups of rows that do not divide evenly.
BIAS_GRADIENT_CASES = [
    ((37, 6, 23, 9), "nhwc"), ((9, 130, 7, 5), "nhwc"), ((3, 1, 300, 301), "nhwc"),
    ((19, 21, 3, 3), "nchw"), ((11, 7, 5, 13), "nchw"), ((3, 5, 40, 41), "nchw"), ((2, 3, 1, 1), "nchw"),
]


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape,layout", BIAS_GRADIENT_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_conv2d_backward_bias_is_the_exact_channel_sum(shape, layout, dtype, device):
    """The bias gradient against the float64 sum, to the dtype's rounding of that sum (the CPU
    accumulates in double): values of mean 3, whose large sums would show digits lost along the
    way. Bitwise the same on one thread and on all."""
    gen = torch.Generator().manual_seed(sum(shape))
    dy = (torch.randn(shape, generator=gen, dtype=torch.float64) + 3).to(device=device, dtype=dtype)
    if layout == "nhwc":
        dy = dy.contiguous(memory_format=torch.channels_last)
    exact = dy.double().sum((0, 2, 3))
    db = ops.conv2d_backward_bias(dy)
    assert db.dtype == dtype and db.shape == (shape[1],)
    if device == "cpu":
        rounding = {torch.float64: 1e-15, torch.float32: 2e-7, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
        torch.testing.assert_close(db, exact.to(dtype), rtol=0, atol=exact.abs().max().item() * rounding)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one_thread = ops.conv2d_backward_bias(dy)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(db, one_thread)
    else:
        assert_matches(db, exact.to(dtype), dtype)


def test_conv2d_backward_bias_of_any_strides_and_an_empty_batch():
    base = torch.randn(4, 9, 12, 10, dtype=torch.float64)
    for dy in (base[:, ::2, 1:, ::3], base.transpose(2, 3), base[:0]):
        torch.testing.assert_close(ops.conv2d_backward_bias(dy), dy.sum((0, 2, 3)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv_is_the_book_matrix_product(stride, device):
    """1x1 kernels take the matrix-product path; it must equal the book's K @ X."""
    x = torch.randn(3, 8, 10, 12, dtype=torch.float64, device=device)
    w = torch.randn(5, 8, 1, 1, dtype=torch.float64, device=device)
    xs = x[:, :, ::stride, ::stride]
    expected = torch.einsum("oc,nchw->nohw", w[:, :, 0, 0], xs)
    assert_matches(CF.conv2d(x, w, stride=stride), expected, torch.float64)
    compare_with_torch(lambda x, w: CF.conv2d(x, w, None, stride), lambda x, w: F.conv2d(x, w, None, stride),
                       [x, w], torch.float64)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_types(dtype, device):
    """Half types against torch in float64 (the exact answer), with half-type tolerance."""
    x = torch.randn(2, 6, 10, 10, device=device)
    w = torch.randn(4, 3, 3, 3, device=device) / 5
    b = torch.randn(4, device=device)
    cast = lambda *ts: [t.to(dtype) for t in ts]  # noqa: E731
    xh, wh, bh = cast(x, w, b)
    exact = lambda fn, *ts: fn(*[t.double() for t in ts]).to(dtype)  # noqa: E731
    pairs = [
        (CF.conv2d(xh, wh, bh, 1, 1, 1, 2), exact(lambda x, w, b: F.conv2d(x, w, b, 1, 1, 1, 2), xh, wh, bh)),
        (CF.max_pool2d(xh, 3, 2, 1), exact(lambda t: F.max_pool2d(t, 3, 2, 1), xh)),
        (CF.avg_pool2d(xh, 3, 2, 1), exact(lambda t: F.avg_pool2d(t, 3, 2, 1), xh)),
        (CF.adaptive_avg_pool2d(xh, 3), exact(lambda t: F.adaptive_avg_pool2d(t, 3), xh)),
    ]
    for out, ref in pairs:
        assert out.dtype == dtype
        assert_matches(out, ref, dtype)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_op_is_bitwise_deterministic(dtype, device, monkeypatch):
    """Every op, forward and every gradient, twice on the same inputs: bitwise the same (no
    atomics, reductions in a fixed order), on every device, in float and a half type. The
    kernels, not the measured choice among them (which may change once in a shape's first
    calls, csrc/cpu/tuner.h): measuring is off."""
    monkeypatch.setenv("CUCONV_CPU_TUNE", "0")
    x = torch.randn(6, 16, 21, 19, device=device, dtype=dtype)
    w = torch.randn(24, 8, 3, 3, device=device, dtype=dtype) / 10
    w_depthwise = torch.randn(32, 1, 3, 3, device=device, dtype=dtype)
    b = torch.randn(24, device=device, dtype=dtype)
    cases = [
        (lambda x, w, b: CF.conv2d(x, w, b, 1, 1, 1, 2), [x, w, b]),
        (lambda x, w, b: CF.conv2d(x, w, b, 2, (0, 2), (2, 1), 2), [x, w, b]),
        (lambda x, w: CF.conv2d(x, w, None, 1, 1, 1, 16), [x, w_depthwise]),
        (lambda t: CF.max_pool2d(t, 3, 2, 1, ceil_mode=True), [x]),
        (lambda t: CF.max_pool2d(t, 2), [x]),
        (lambda t: CF.avg_pool2d(t, 3, 1, 1, count_include_pad=False), [x]),
        (lambda t: CF.avg_pool2d(t, 2), [x]),
        (lambda t: CF.adaptive_avg_pool2d(t, (5, 7)), [x]),
        (lambda t: CF.adaptive_avg_pool2d(t, 1), [x]),
    ]
    for fn, tensors in cases:
        first, first_grads = forward_and_grads(fn, tensors)
        second, second_grads = forward_and_grads(fn, tensors)
        assert torch.equal(first, second)
        assert all(torch.equal(a, b_) for a, b_ in zip(first_grads, second_grads))


# --- gradcheck, opcheck, compile -----------------------------------------------------------

def _gradcheck_cases(device):
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    w1 = torch.randn(5, 4, 1, 1, dtype=torch.float64, device=device, requires_grad=True)
    w_depthwise = torch.randn(8, 1, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    return {
        "conv2d": (lambda x, w, b: CF.conv2d(x, w, b, (2, 1), (1, 2), (2, 1), 2), (x, w, b)),
        "conv2d_depthwise": (lambda x, w: CF.conv2d(x, w, None, (1, 2), 1, (2, 1), 4), (x, w_depthwise)),
        "conv2d_1x1_stride2": (lambda x, w: CF.conv2d(x, w, None, 2), (x, w1)),
        "max_pool2d": (lambda x: CF.max_pool2d(x, (3, 2), (2, 1), 1, (1, 2), ceil_mode=True), (x,)),
        "avg_pool2d": (lambda x: CF.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (x,)),
        "avg_pool2d_divisor": (lambda x: CF.avg_pool2d(x, 2, 1, 1, divisor_override=3), (x,)),
        "adaptive_avg_pool2d": (lambda x: CF.adaptive_avg_pool2d(x, (4, 3)), (x,)),
    }


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("name", list(_gradcheck_cases("cpu")))
def test_gradcheck(name, device):
    fn, inputs = _gradcheck_cases(device)[name]
    # Max pooling is only differentiable away from ties: random inputs have none.
    assert torch.autograd.gradcheck(fn, inputs)


def _opcheck_samples(device, requires_grad):
    def rand(*shape):
        return torch.randn(*shape, device=device, requires_grad=requires_grad)

    x, w, b = rand(2, 4, 9, 8), rand(6, 2, 3, 3), rand(6)
    conv_args = ([2, 1], [1, 1], [1, 2], 2)
    y = CF.conv2d(x.detach(), w.detach(), b.detach(), *conv_args)
    grad_conv = torch.randn_like(y)
    pool = ([3, 3], [2, 2], [1, 1], [1, 1], True)
    out, idx = ops.max_pool2d(x.detach(), *pool)
    avg = ([3, 2], [2, 2], [1, 1], True, False, None)
    avg_out = ops.avg_pool2d(x.detach(), *avg)
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_(requires_grad)
    return [
        (ops.conv2d, (x, w, b, *conv_args)),
        (ops.conv2d, (x, rand(3, 4, 1, 1), None, [2, 2], [0, 0], [1, 1], 1)),  # 1x1, no bias
        (ops.conv2d_backward_input, (grad_conv, w.detach(), list(x.shape), *conv_args)),
        (ops.conv2d_backward_weight, (grad_conv, x.detach(), list(w.shape), *conv_args)),
        (ops.conv2d_backward_bias, (grad_conv,)),
        # channels_last in, channels_last out (the fake kernels must say so too)
        (ops.conv2d, (x.detach().to(memory_format=torch.channels_last).requires_grad_(requires_grad), w, b, *conv_args)),
        (ops.conv2d_backward_input, (grad_conv.to(memory_format=torch.channels_last), w.detach(), list(x.shape),
                                     *conv_args)),
        # allow_tf32 given (on the CPU it changes nothing)
        (ops.conv2d, (x, w, b, *conv_args, True)),
        (ops.max_pool2d, (x, *pool)),
        (ops.max_pool2d_backward, (torch.randn_like(out), idx, list(x.shape), *pool)),
        (ops.avg_pool2d, (x, *avg)),
        (ops.avg_pool2d, (x, [2, 2], [1, 1], [0, 0], False, True, 5)),
        (ops.avg_pool2d_backward, (torch.randn_like(avg_out), list(x.shape), *avg)),
        (ops.adaptive_avg_pool2d, (x, [4, 3])),
        (ops.adaptive_avg_pool2d_backward, (torch.randn(2, 4, 4, 3, device=device), list(x.shape))),
        # pooling: channels_last in, channels_last out (native NHWC kernels on the CPU)
        (ops.max_pool2d, (x_cl, *pool)),
        (ops.max_pool2d_backward, (torch.randn_like(out).to(memory_format=torch.channels_last), idx, list(x.shape),
                                   *pool)),
        (ops.avg_pool2d, (x_cl, *avg)),
        (ops.avg_pool2d_backward, (torch.randn_like(avg_out).to(memory_format=torch.channels_last), list(x.shape),
                                   *avg)),
        (ops.adaptive_avg_pool2d, (x_cl, [4, 3])),
        (ops.adaptive_avg_pool2d_backward, (torch.randn(2, 4, 4, 3, device=device).to(memory_format=torch.channels_last),
                                            list(x.shape))),
        # (2, 4, 1, 1) is both layouts at once: its strides decide, as torch's suggest_memory_format
        (ops.adaptive_avg_pool2d, (x_cl, [1, 1])),
        (ops.adaptive_avg_pool2d_backward, (ops.adaptive_avg_pool2d(x_cl.detach(), [1, 1]), list(x.shape))),
        (ops.adaptive_avg_pool2d_backward, (torch.randn(2, 4, 1, 1, device=device), list(x.shape))),
    ]


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("index", range(len(_opcheck_samples("cpu", requires_grad=False))))
def test_opcheck(index, device):
    op, args = _opcheck_samples(device, requires_grad=True)[index]
    torch.library.opcheck(op, args)


def test_plain_eager_calls_take_the_lean_path_and_match_the_ops_autograd_kernel_bitwise():
    """Plain eager calls run a classic autograd.Function (cuconv/_ops.py); under any torch function
    mode the op's register_autograd kernel runs instead: the same values, gradients and second
    derivatives, bit for bit."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, 8, generator=gen, dtype=torch.float64).requires_grad_()
    w = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64).requires_grad_()
    b = torch.randn(6, generator=gen, dtype=torch.float64).requires_grad_()

    def run():
        y = CF.conv2d(x, w, b, 1, 1, 1, 2)
        pooled = [CF.max_pool2d(y, 2), CF.avg_pool2d(y, 3, 2, 1), CF.adaptive_avg_pool2d(y, (3, 2))]
        loss = sum(p.square().sum() for p in pooled)
        grads = torch.autograd.grad(loss, (x, w, b), create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), (x, w))
        return pooled, [p.grad_fn for p in pooled], [*pooled, *grads, *second]

    class PassThrough(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    _, lean_fns, lean = run()
    with PassThrough():  # a mode: not a plain eager call
        _, kernel_fns, through_kernel = run()
    assert [type(f).__name__ for f in lean_fns] == ["max_pool2d_eagerBackward", "avg_pool2d_eagerBackward",
                                                     "adaptive_avg_pool2d_eagerBackward"]
    assert all("GeneratedBackwardFor_cuconv" in type(f).__name__ for f in kernel_fns)
    for a, k in zip(lean, through_kernel):
        assert torch.equal(a, k)


def test_the_lean_path_leaves_tensors_with_more_dispatch_keys_to_the_dispatcher():
    """The lean path (cuconv/_ops.py) calls the ops below autograd through the dispatcher, which
    handles what the kernels do not: a negative view (torch._neg_view: its sign is applied by the
    dispatcher's Negative fallback, not stored), in any tensor argument, and a tensor made in
    inference mode give the plain tensor's values. (A shortcut to the CPU kernel by the operator's
    handle for dense CPU tensors, tried in the fifty-first session, must leave these out; it also
    hid the ops from torch.profiler: test_max_pool_backward_fills_no_zeros_for_the_indices.)"""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, 7, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    negative_x, negative_w = torch._neg_view(x), torch._neg_view(w)
    assert negative_x.is_neg() and negative_w.is_neg()
    assert torch.equal(CF.avg_pool2d(negative_x, 2), CF.avg_pool2d(-x, 2))
    assert torch.equal(CF.max_pool2d(negative_x, 2), CF.max_pool2d(-x, 2))
    assert torch.equal(CF.conv2d(x, negative_w, padding=1), CF.conv2d(x, -w, padding=1))
    with torch.inference_mode():
        assert torch.equal(CF.conv2d(x.clone(), w, padding=1), CF.conv2d(x, w, padding=1))


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding="same", groups=2), nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True),
            nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        return self.features(x)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_matches_eager(dynamic):
    torch._dynamo.reset()
    model = cuconv.convert(SmallNet())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for batch in (4, 3):  # a second batch size exercises the symbolic-shape (meta) kernels
        x = torch.randn(batch, 3, 16, 16)
        eager_out, eager_grads = forward_and_grads(model, [x])
        out, grads = forward_and_grads(compiled, [x])
        torch.testing.assert_close(out, eager_out)
        torch.testing.assert_close(grads, eager_grads)
        params_eager = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
        params_compiled = torch.autograd.grad(compiled(x).square().sum(), list(model.parameters()))
        torch.testing.assert_close(params_compiled, params_eager)


# --- the kernels are ours ----------------------------------------------------------------

TORCH_KERNELS = ("conv", "pool", "im2col", "col2im", "unfold", "mkldnn", "cudnn")


def torch_kernels_called(fn):
    """Names of torch's own convolution / pooling / im2col ops that ran inside fn()."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = {event.name for event in prof.events()}
    return sorted(n for n in names if n.startswith("aten::") and any(k in n for k in TORCH_KERNELS))


def test_cuconv_path_never_calls_torch_convolution_or_pooling():
    model = SmallNet()
    x = torch.randn(2, 3, 16, 16)
    # The check can fail: the torch.nn model does call torch's kernels.
    assert torch_kernels_called(lambda: model(x).sum().backward())
    converted = cuconv.convert(model)
    assert torch_kernels_called(lambda: converted(x).sum().backward()) == []
