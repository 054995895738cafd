"""How the CPU kernels are run: with 1, 3 and 7 threads (code that splits work by the thread
count, checked with more than two parts), bitwise repeatably at each count, and with the
instruction set that CUCONV_CPU_ISA asks for actually running (AVX2 and AVX-512 results are
bitwise identical, so only the kernels' own record can tell them apart)."""

import pytest
import torch
import torch.nn.functional as F

import cuconv
import cuconv.functional as CF
from test_ops import POOL_ISAS, assert_matches, forward_and_grads, use_pool_isa

ISAS = ("generic", "avx2", "avx512")  # in order of capability


def _conv(stride=1, padding=1, dilation=1, groups=1):
    return (lambda x, w, b: CF.conv2d(x, w, b, stride, padding, dilation, groups),
            lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups))


# Sizes with more rows, samples, planes and blocks than 7 threads take, so that every split
# (rows of the forward and weight-gradient GEMM, samples of the input gradient, planes of the
# pooling kernels, rows of the direct kernels) has several uneven parts.
THREAD_CASES = {
    "conv-gemm": (_conv(), [(9, 20, 13, 11), (24, 20, 3, 3), (24,)], "0"),
    "conv-direct": (_conv(), [(9, 20, 13, 11), (24, 20, 3, 3), (24,)], "1"),
    # few output channels: the weight gradient's row tiles (rows of 30 columns, two samples a call)
    "conv-direct-few-channels": (_conv(1, 2), [(9, 2, 13, 30), (7, 2, 5, 5), (7,)], "1"),
    "conv-rules": (_conv(2, 1), [(8, 40, 17, 16), (70, 40, 3, 3), (70,)], ""),
    "conv-grouped-dilated": (_conv((2, 1), 2, (2, 1), 2), [(7, 12, 15, 14), (10, 6, 3, 3), (10,)], ""),
    "conv-depthwise": (_conv(1, 1, 1, 12), [(9, 12, 10, 9), (24, 1, 3, 3), (24,)], ""),
    "conv-1x1-batch1": (_conv(1, 0), [(1, 64, 23, 19), (48, 64, 1, 1), (48,)], ""),
    "max-pool-2x2": ((lambda t: CF.max_pool2d(t, 2), lambda t: F.max_pool2d(t, 2)), [(5, 7, 12, 10)], ""),
    "max-pool-3s2": ((lambda t: CF.max_pool2d(t, 3, 2, 1, ceil_mode=True),
                      lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True)), [(5, 7, 13, 11)], ""),
    "avg-pool-2x2": ((lambda t: CF.avg_pool2d(t, 2), lambda t: F.avg_pool2d(t, 2)), [(5, 7, 12, 10)], ""),
    # LeNet's 10x10 planes, more of them than 7 threads' groups of 8 or 16 (the short-plane kernels)
    "avg-pool-2x2-short-planes": ((lambda t: CF.avg_pool2d(t, 2), lambda t: F.avg_pool2d(t, 2)), [(9, 23, 10, 10)], ""),
    "avg-pool-3s1": ((lambda t: CF.avg_pool2d(t, 3, 1, 1), lambda t: F.avg_pool2d(t, 3, 1, 1)), [(5, 7, 9, 10)], ""),
    "adaptive-global": ((lambda t: CF.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1)),
                        [(5, 7, 9, 10)], ""),
    # 3x3 planes (ResNet's), enough of them that the threads split them: each plane's gradient is
    # one store that runs into the next plane, never into another thread's
    "adaptive-global-3x3": ((lambda t: CF.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1)),
                            [(64, 130, 3, 3)], ""),
    "adaptive": ((lambda t: CF.adaptive_avg_pool2d(t, (4, 3)), lambda t: F.adaptive_avg_pool2d(t, (4, 3))),
                 [(5, 7, 9, 10)], ""),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", THREAD_CASES)
def test_ops_match_torch_and_repeat_bitwise_at_any_thread_count(case, dtype, threads, monkeypatch):
    _check_thread_case(case, dtype, monkeypatch)


@pytest.mark.parametrize("case", [case for case in THREAD_CASES if "pool" in case or "adaptive" in case])
def test_pooling_with_16_lanes_at_any_thread_count(case, threads, monkeypatch):
    """The same with pooling's 16-lane vector kernels (AVX-512's, here compiled for AVX2 where the
    CPU lacks AVX-512): each thread's planes in groups of 16."""
    use_pool_isa(monkeypatch, "avx2_16_lanes")
    _check_thread_case(case, torch.float32, monkeypatch)


def _check_thread_case(case, dtype, monkeypatch):
    (ours, theirs), shapes, direct = THREAD_CASES[case]
    monkeypatch.setenv("CUCONV_CPU_DIRECT", direct)
    gen = torch.Generator().manual_seed(len(case))
    tensors = [torch.randn(*s, generator=gen, dtype=dtype) for s in shapes]
    for _ in range(5):  # the measured choices settled: the measuring call and its four checks (tuner.h)
        forward_and_grads(ours, tensors)
    out, grads = forward_and_grads(ours, tensors)
    ref, ref_grads = forward_and_grads(theirs, tensors)
    assert_matches(out, ref, dtype)
    for g, r in zip(grads, ref_grads):
        assert_matches(g, r, dtype)
    again, again_grads = forward_and_grads(ours, tensors)
    assert torch.equal(again, out) and all(torch.equal(a, g) for a, g in zip(again_grads, grads))


def _expected_isa(requested, best):
    return ISAS[min(ISAS.index(requested), ISAS.index(best))]


@pytest.mark.parametrize("requested", ISAS)
def test_cpu_isa_setting_reaches_the_kernels_that_run(requested, monkeypatch):
    monkeypatch.delenv("CUCONV_CPU_ISA", raising=False)
    best = cuconv._C.cpu_kernels()["isa"]
    monkeypatch.setenv("CUCONV_CPU_ISA", requested)
    expected = _expected_isa(requested, best)
    x, w = torch.randn(2, 8, 12, 12), torch.randn(16, 8, 3, 3)
    for dtype, name in ((torch.float32, "gemm_float"), (torch.float64, "gemm_double")):
        monkeypatch.setenv("CUCONV_CPU_DIRECT", "0")
        CF.conv2d(x.to(dtype), w.to(dtype), padding=1)
        kernels = cuconv._C.cpu_kernels()
        assert kernels["isa"] == kernels[name] == kernels["last_gemm"] == expected, kernels
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "1")
    CF.conv2d(x, w, padding=1)
    kernels = cuconv._C.cpu_kernels()
    if expected == "generic":  # the direct kernels are vector code: the GEMM runs instead
        assert kernels["direct_conv"] == "never" and kernels["last_gemm"] == "generic"
    else:
        assert kernels["direct_conv"] == "always" and kernels["last_direct"] == expected, kernels


@pytest.mark.parametrize("isa", POOL_ISAS)
def test_pool_kernels_are_the_ones_the_settings_ask_for(isa, monkeypatch):
    """Pooling's vector kernels are those of the instruction set CUCONV_CPU_ISA asks for (the best
    the CPU has of it), and CUCONV_CPU_POOL_LANES=16 on AVX2 runs the AVX-512 kernels' code with
    its 16 lanes compiled for AVX2 (so a CPU without AVX-512 tests it): the record of the kernels
    fetched names them."""
    monkeypatch.delenv("CUCONV_CPU_ISA", raising=False)
    best = cuconv._C.cpu_kernels()["isa"]
    use_pool_isa(monkeypatch, isa)
    expected = _expected_isa("avx2" if isa == "avx2_16_lanes" else isa, best)
    if isa == "avx2_16_lanes" and expected == "avx2":
        expected = "avx2_16_lanes"
    CF.adaptive_avg_pool2d(torch.randn(2, 16, 3, 3), 1)
    assert cuconv._C.cpu_kernels()["last_pool"] == expected


def test_pool_lanes_setting_is_checked(monkeypatch):
    monkeypatch.setenv("CUCONV_CPU_POOL_LANES", "8")
    with pytest.raises(ValueError, match=r"CUCONV_CPU_POOL_LANES to be 16 or unset, but got '8'"):
        CF.adaptive_avg_pool2d(torch.randn(2, 16, 3, 3), 1)


def test_cpu_isa_default_is_the_best_the_cpu_has(monkeypatch):
    monkeypatch.delenv("CUCONV_CPU_ISA", raising=False)
    capability = torch.backends.cpu.get_cpu_capability()  # torch's own reading of the CPU
    expected = {"AVX512": "avx512", "AVX2": "avx2"}.get(capability)
    if expected is None:
        pytest.skip(f"torch reports {capability}; cuconv's choice there is not pinned down here")
    assert cuconv._C.cpu_kernels()["isa"] == expected


def _global_sums(x):
    """The sums of x's planes in cuconv's order, in x's dtype: 16 partial sums (value k into sum
    k mod 16) per block of 256 values, the blocks' partial sums added into 16 totals in order, the
    totals then added pairwise (i += i + s, s = 8, 4, 2, 1)."""
    values = x.flatten(2)
    totals = torch.zeros(*values.shape[:2], 16, dtype=x.dtype)
    for block in values.split(256, dim=2):
        part = torch.zeros(*values.shape[:2], 16, dtype=x.dtype)
        for k0 in range(0, block.shape[2], 16):
            chunk = block[:, :, k0:k0 + 16]
            part[:, :, :chunk.shape[2]] = part[:, :, :chunk.shape[2]] + chunk
        totals = totals + part
    for step in (8, 4, 2, 1):
        totals = totals[:, :, :step] + totals[:, :, step:2 * step]
    return totals[:, :, 0]


# Rows of 64 floats, which each ISA's bias gradient sums row by row (column_sums_tile.h): NHWC
# 64, 32 and 16 channels (1, 2 and 4 pixels a row), one channel (64 pixels a row, and pixels
# left over), NCHW planes of 8x8 (a channel a row, rows 5 planes apart) and of 1x1 (64 channels a
# row); at least two blocks of 8 rows, and part of one left over.
@pytest.mark.parametrize("shape, layout", [((3, 64, 5, 7), "nhwc"), ((9, 32, 6, 5), "nhwc"), ((2, 16, 9, 11), "nhwc"),
                                           ((2, 1, 33, 40), "nhwc"), ((21, 5, 8, 8), "nchw"), ((21, 64, 1, 1), "nchw")],
                         ids=str)
def test_bias_gradient_has_the_same_bits_on_every_isa(shape, layout, monkeypatch):
    """The vector kernels' column sums add each block's rows in the portable loop's order: the
    same bits as CUCONV_CPU_ISA=generic, torch's sum to float rounding, a NaN and an Inf kept."""
    dy = torch.randn(*shape, generator=torch.Generator().manual_seed(7)) + 3
    if layout == "nhwc":
        dy = dy.contiguous(memory_format=torch.channels_last)
    dy[1, -1, 0, 0] = float("nan")
    dy[-1, 0, -1, -1] = float("inf")
    monkeypatch.delenv("CUCONV_CPU_ISA", raising=False)
    best = cuconv._C.cpu_kernels()["isa"]
    results = {}
    for isa in ISAS[:ISAS.index(best) + 1]:
        monkeypatch.setenv("CUCONV_CPU_ISA", isa)
        results[isa] = torch.ops.cuconv.conv2d_backward_bias(dy)
    assert len(results) > 1 or best == "generic"
    for isa, db in results.items():
        torch.testing.assert_close(db, results["generic"], rtol=0, atol=0, equal_nan=True, msg=isa)
    torch.testing.assert_close(results["generic"], dy.double().sum((0, 2, 3)).float(), equal_nan=True)


@pytest.mark.parametrize("shape", [(5, 67, 3, 3), (2, 16, 3, 3), (5, 67, 1, 1), (5, 67, 2, 7), (5, 67, 4, 4),
                                   (3, 37, 7, 7), (3, 37, 14, 14), (2, 24, 17, 19), (1, 20, 56, 56), (1, 5, 16, 17)],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_global_average_pool_sums_in_one_order_on_every_isa(shape, dtype, monkeypatch):
    """Global average pooling sums each plane in _global_sums's order on every ISA (bfloat16 and
    float16 in float, the mean rounded once): the vector kernels (planes of up to 256 values: 16
    at once on AVX-512, 8 on AVX2, 8 and 4 in float64, their partial sums transposed in registers
    for the pairwise adds; float16 converted by F16C; larger float32 planes: 16 partial sums in
    registers) give the scalar loops' sums bit for bit. Shapes: tails of planes (the last load of a plane runs past it), planes
    smaller than, equal to and larger than a block, and (2, 16, 3, 3), whose last group would
    read past the tensor (the scalar loop takes it). An Inf and a NaN must come through, and a
    plane of -0.0 averages to +0.0 as the in-order sum from +0 has it (torch's too), and so must a
    float16 NaN with a payload (a NaN's own bits are not promised: F16C's conversion and torch's
    copies keep its payload, c10's scalar conversion does not)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(6)).to(dtype)
    x.view(-1, shape[2] * shape[3])[3, -1] = float("inf")
    x.view(-1, shape[2] * shape[3])[-2, 0] = float("nan")
    x.view(-1, shape[2] * shape[3])[1] = -0.0
    if dtype == torch.float16:
        x.view(torch.int16).view(-1, shape[2] * shape[3])[2, 0] = -0x02FF  # 0xFD01: -NaN, payload 0x101 (a vector kernel's plane)
    accumulated = x.float() if dtype in (torch.bfloat16, torch.float16) else x
    expected = (_global_sums(accumulated) / (shape[2] * shape[3])).to(dtype).view(*shape[:2], 1, 1)
    for isa in POOL_ISAS:
        use_pool_isa(monkeypatch, isa)
        out = CF.adaptive_avg_pool2d(x, 1)
        torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True, msg=isa)
        assert torch.equal(out.signbit() & ~out.isnan(), expected.signbit() & ~expected.isnan()), isa  # (== takes -0 for +0)
        torch.testing.assert_close(out, F.adaptive_avg_pool2d(x, 1), equal_nan=True)


@pytest.mark.parametrize("isa", POOL_ISAS)
def test_float16_global_average_pool_rounds_its_means_as_torch(isa, monkeypatch):
    """float16 global pooling of small NCHW planes runs its own kernels where the CPU has F16C (the
    vector kernel through F16C, the planes past its groups by cuconv's conversions, opmath.h; the
    generic ISA through float32 copies): each mean rounded once to nearest even, as torch rounds
    float32. Planes of two values make ties half the time (their mean has one bit more than
    float16 holds); sums past 65504 (a divisor of 1) become Inf; NaN stays NaN (in the last plane,
    which the scalar loop takes: 111 planes are 13 groups of 8 and 7 more)."""
    use_pool_isa(monkeypatch, isa)
    gen = torch.Generator().manual_seed(12)
    x = (torch.rand(3, 37, 1, 2, generator=gen) * 4 + 1).half()
    x.view(-1)[-1] = float("nan")
    expected = (x.float().sum((2, 3), keepdim=True) / 2).half()
    _assert_bitwise([CF.adaptive_avg_pool2d(x, 1)], [expected], isa)
    big = (torch.rand(3, 37, 1, 2, generator=gen) * 25000 + 20000).half()
    summed = CF.avg_pool2d(big, (1, 2), divisor_override=1)
    _assert_bitwise([summed], [big.float().sum((2, 3), keepdim=True).half()], isa)
    assert summed.isinf().any() and not summed.isinf().all()


def _average_pool_2x2_case(shape, divisor_override, seed):
    """(x, pool, dy, expected): an input with a plane of -0.0, an Inf and a NaN, pool(f) = 2x2
    average pooling through f (torch.nn.functional or cuconv's), a grad_output with a plane of
    -0.0, and torch's output and input gradient."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    planes = x.view(-1, shape[2] * shape[3])
    planes[0] = -0.0
    planes[len(planes) // 2, 0], planes[-1, shape[3] + 1] = float("inf"), float("nan")
    x.requires_grad_()
    pool = lambda f: f.avg_pool2d(x, 2, divisor_override=divisor_override)
    ref = pool(F)
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1))
    dy.view(-1, ref.shape[2] * ref.shape[3])[0] = -0.0
    (ref_dx,) = torch.autograd.grad(ref, x, dy)
    return x, pool, dy, (ref, ref_dx)


def _assert_bitwise(results, expected, msg):
    """Each result equal to its expected tensor bit for bit: NaN where NaN, -0.0 where -0.0."""
    for ours, theirs in zip(results, expected):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True, msg=msg)
        assert torch.equal(ours.signbit() & ~ours.isnan(), theirs.signbit() & ~theirs.isnan()), msg


@pytest.mark.parametrize("shape", [(5, 19, 10, 10), (3, 17, 11, 13), (2, 33, 12, 12), (1, 18, 21, 12), (4, 9, 6, 6),
                                   (2, 40, 4, 4), (3, 7, 14, 14), (1, 5, 17, 15)], ids=str)
@pytest.mark.parametrize("divisor_override", [None, 3, 8], ids=lambda d: f"divisor={d}")
def test_average_pool_2x2_of_short_planes_matches_torch_bitwise_on_every_isa(shape, divisor_override, monkeypatch):
    """2x2 average pooling with stride 2 on small planes with rows of at most 6 outputs (LeNet's
    10x10) takes the float32 vector kernels, a register's lanes of planes at a time transposed in
    registers (16 on AVX-512, 8 on AVX2; planes with fewer outputs than that, longer rows, and each
    thread's last planes the plane kernel): forward and gradient bit for bit torch's, -0.0, Inf
    and NaN included. Shapes: plane counts that leave a partial group, odd sizes (a last row or
    column in no window, whose gradient is 0), 252 values (21x12), 9 and 4 outputs (fewer than 16
    and 8 lanes), rows of 7 outputs (the plane kernel). Divisors: 4 and 8 divide as
    multiplications by their inverse, 3 as a division."""
    x, pool, dy, expected = _average_pool_2x2_case(shape, divisor_override, 11)
    for isa in POOL_ISAS:
        use_pool_isa(monkeypatch, isa)
        out = pool(CF)
        _assert_bitwise((out, *torch.autograd.grad(out, x, dy)), expected, isa)


TILED_2X2_KERNELS = ("pool_groups", "pool_rows", "pool_planes")


@pytest.mark.parametrize("shape", [(5, 19, 10, 10), (3, 17, 11, 13), (2, 6, 28, 28), (1, 3, 34, 36), (2, 9, 6, 6),
                                   (4, 5, 7, 40), (1, 2, 2, 4), (3, 4, 4, 18)], ids=str)
@pytest.mark.parametrize("divisor_override", [None, 3], ids=lambda d: f"divisor={d}")
@pytest.mark.parametrize("isa", POOL_ISAS)
def test_each_tiled_2x2_average_pool_kernel_matches_torch_bitwise(shape, divisor_override, isa, threads, monkeypatch):
    """Tiled 2x2 average pooling of float32 has three kernels, measured per shape (pool2d.cpp,
    run_2x2_kernel): groups of planes transposed in registers, the rows (two rows' pixels split
    into even and odd in registers; vectors that run past a row, reads past the last plane kept
    within the input, the last outputs through a buffer), the plane kernel. Each one, forced
    through the tuning table, gives torch's forward and gradient bit for bit, -0.0, Inf and NaN
    included, with any thread split. Shapes: LeNet's 10x10 and 28x28 planes, odd sizes (the
    rows' gradient only where the windows tile the plane exactly), rows of 17-20 outputs (a
    vector and a tail), one row of two windows, rows shorter than a vector."""
    use_pool_isa(monkeypatch, isa)
    monkeypatch.delenv("CUCONV_CPU_TUNE", raising=False)
    x, pool, dy, expected = _average_pool_2x2_case(shape, divisor_override, 13)
    saved = cuconv.tuning.choices()
    try:
        cuconv.tuning.clear()
        torch.autograd.grad(pool(CF), x, dy)  # measured once: the keys of this shape
        keys = [key for key in cuconv.tuning.choices() if key.startswith("avg_pool2d_2x2")]
        # (no vector kernels: the plane kernel alone; a gradient only the plane kernel can run is not measured)
        assert len([key for key in keys if "forward" in key]) == (isa != "generic"), keys
        ran = set()
        for kernel in TILED_2X2_KERNELS:
            cuconv._C.cpu_tuning_set({key: kernel for key in keys})
            out = pool(CF)
            _assert_bitwise((out, *torch.autograd.grad(out, x, dy)), expected, f"{isa} {kernel}")
            ran |= {(key, kernel) for key in keys if cuconv.tuning.choices()[key] == kernel}  # (else not a candidate here)
        if keys:  # the rows and the plane kernel run every shape's forward; the rows' gradient tiles exactly
            exact = shape[2] % 2 == 0 and shape[3] % 2 == 0
            assert {kernel for key, kernel in ran if "forward" in key} >= {"pool_rows", "pool_planes"}
            assert ("pool_rows" in {kernel for key, kernel in ran if "backward" in key}) == exact
    finally:
        cuconv.tuning.clear()
        cuconv._C.cpu_tuning_set(saved)


def _forcing_each_tiled_2x2_kernel(prefix, call):
    """Runs call() once to measure its tiled 2x2 keys starting with `prefix`, then once with each
    kernel forced through the tuning table; yields (kernel, call()'s result, whether the kernel
    ran), and restores the table."""
    saved = cuconv.tuning.choices()
    try:
        cuconv.tuning.clear()
        call()
        keys = [key for key in cuconv.tuning.choices() if key.startswith(prefix)]
        for kernel in TILED_2X2_KERNELS:
            cuconv._C.cpu_tuning_set({key: kernel for key in keys})
            result = call()
            yield kernel, result, bool(keys) and all(cuconv.tuning.choices()[key] == kernel for key in keys)
    finally:
        cuconv.tuning.clear()
        cuconv._C.cpu_tuning_set(saved)


@pytest.mark.parametrize("shape", [(5, 19, 14, 14), (3, 7, 16, 16), (2, 9, 24, 24), (2, 5, 10, 36), (1, 3, 2, 4),
                                   (4, 6, 2, 2), (2, 3, 34, 66), (3, 4, 11, 13)], ids=str)
@pytest.mark.parametrize("isa", POOL_ISAS)
def test_each_tiled_2x2_max_pool_gradient_kernel_matches_torch(shape, isa, threads, monkeypatch):
    """Max pooling's float32 gradient over tiled 2x2 windows has two kernels, measured per shape
    (pool2d.cpp, max_unpool_planes): the rows (pool_tile.h: vectors of a row's outputs, the last
    overlapping the one before, or one vector running past a row shorter than a vector, the last
    rows one output at a time) and the plane kernel. Each one, forced through the tuning table,
    puts each gradient at its index, -0.0, Inf and NaN as they are, with any thread split; an
    index off its window (moved elsewhere in its plane) takes the general scatter, and one outside
    the plane, also past 32 bits, an IndexError. Shapes: rows of 7, 8, 12, 18, 2, 1 and 33
    outputs (shorter than a vector, one, a vector and an overlap, on 8 and 16 lanes), and odd
    sizes (no rows kernel: a last row and column in no window)."""
    use_pool_isa(monkeypatch, isa)
    monkeypatch.delenv("CUCONV_CPU_TUNE", raising=False)
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=gen)
    out, idx = torch.ops.cuconv.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    assert torch.equal(idx, F.max_pool2d(x, 2, return_indices=True)[1])
    dy = torch.randn(out.shape, generator=gen)
    flat = dy.view(-1)
    flat[::5], flat[1::7], flat[2::11] = -0.0, float("inf"), float("nan")
    moved = idx.clone()
    moved.view(-1)[len(flat) // 2] = (moved.view(-1)[len(flat) // 2] + 2) % (shape[2] * shape[3])  # off its window

    def gradient(indices):
        return lambda: torch.ops.cuconv.max_pool2d_backward(dy, indices, list(shape), [2, 2], [2, 2], [0, 0],
                                                            [1, 1], False)

    exact = shape[2] % 2 == 0 and shape[3] % 2 == 0
    for indices in (idx, moved):
        # each pixel written once where the indices are distinct in their plane (-0.0 kept), else added
        written = torch.zeros_like(x).flatten(2)
        expected = (written.scatter_(2, indices.flatten(2), dy.flatten(2)) if indices is idx else
                    written.scatter_add_(2, indices.flatten(2), dy.flatten(2))).view_as(x)
        ran = set()
        for kernel, grad, forced in _forcing_each_tiled_2x2_kernel("max_pool2d_2x2_backward", gradient(indices)):
            if indices is idx:
                _assert_bitwise((grad,), (expected,), f"{isa} {kernel}")
            else:  # (the general scatter adds to +0.0, as torch's: -0.0 there comes out +0.0)
                torch.testing.assert_close(grad, expected, rtol=0, atol=0, equal_nan=True, msg=f"{isa} {kernel}")
            ran |= {kernel} if forced else set()
        assert ran == ({"pool_rows", "pool_planes"} if exact and isa != "generic" else set()), ran
    for bad, shown in ((idx.view(-1)[-1] + (1 << 32), None), (-1, "-1")):
        outside = idx.clone()
        outside.view(-1)[-1] = bad
        for kernel, _, _ in _forcing_each_tiled_2x2_kernel("max_pool2d_2x2_backward", gradient(idx)):
            with pytest.raises(IndexError, match=f"index {shown or int(bad)} in indices is outside the input plane"):
                gradient(outside)()


@pytest.mark.parametrize("isa", POOL_ISAS)
def test_global_average_pool_of_large_planes_is_as_accurate_as_torch(isa, monkeypatch):
    """One float32 sum running over a 512x512 plane strays from the mean by more than torch's
    (cascade sums); the blocks of 256 keep the error within float32 tolerance of the exact mean."""
    use_pool_isa(monkeypatch, isa)
    x = torch.randn(3, 17, 512, 512, generator=torch.Generator().manual_seed(10)) + 0.5
    exact = x.double().mean((2, 3), keepdim=True)
    torch.testing.assert_close(CF.adaptive_avg_pool2d(x, 1).double(), exact, rtol=2e-6, atol=0)
    torch.testing.assert_close(F.adaptive_avg_pool2d(x, 1).double(), exact, rtol=2e-6, atol=0)  # torch's own


@pytest.mark.parametrize("args, divisor", [(((7, 7), 7, 0, False, True, None), 49),
                                           (((5, 9), 1, 0, False, True, None), 45),
                                           (((9, 11), 1, (2, 1), False, True, None), 99),
                                           (((9, 11), 1, (2, 1), False, False, None), 45),
                                           (((5, 9), 1, 0, True, True, 3), 3)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_average_pool_over_the_whole_plane_is_global_pooling(args, divisor, dtype, monkeypatch):
    """avg_pool2d whose one window covers the whole plane (padding aside) runs the global pooling
    kernels with the window's divisor (the padded size, the plain size, or divisor_override):
    the plane's sum in _global_sums's order over that divisor, and dy over it as the gradient, on
    every ISA."""
    kernel, stride, padding, ceil_mode, count_include_pad, divisor_override = args
    shape = (3, 37, 5, 9) if kernel != (7, 7) else (3, 37, 7, 7)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(7), dtype=dtype, requires_grad=True)
    call = lambda f, t: f.avg_pool2d(t, *args)
    ref = call(F, x)
    assert ref.shape[2:] == (1, 1)
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(8), dtype=dtype)
    (ref_dx,) = torch.autograd.grad(ref, x, dy)
    expected = (_global_sums(x.detach()) / divisor).view(ref.shape)
    for isa in POOL_ISAS:
        use_pool_isa(monkeypatch, isa)
        out = call(CF, x)
        (dx,) = torch.autograd.grad(out, x, dy)
        torch.testing.assert_close(out, expected, rtol=0, atol=0, msg=isa)
        torch.testing.assert_close(dx, (0 + dy / divisor).expand(shape), rtol=0, atol=0, msg=isa)
        torch.testing.assert_close(out, ref.detach())
        torch.testing.assert_close(dx, ref_dx)


@pytest.mark.parametrize("shape, args", [((5, 67, 3, 3), (3,)), ((2, 16, 3, 3), (3,)), ((3, 37, 7, 7), (7,)),
                                         ((2, 24, 17, 19), ((17, 19),)), ((3, 37, 5, 6), ((7, 9), 9, (2, 3))),
                                         ((1, 20, 56, 56), (56,))], ids=str)
def test_max_pool_over_the_whole_plane_on_every_isa(shape, args, monkeypatch):
    """max_pool2d whose one window covers the whole plane (padding aside) takes the float32 vector
    kernels (16 planes at once on AVX-512, 8 on AVX2, blocks of values transposed in registers):
    maxima and indices as torch's, ties to the first maximum, a NaN wins, an all -inf plane
    reports index 0; bit for bit the generic kernel's. Planes smaller and larger than a block."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(9))
    planes = x.view(-1, shape[2] * shape[3])
    planes[0, 2:5] = planes[0].max() + 1  # a tie for the maximum
    planes[1] = float("-inf")
    planes[2, shape[2] * shape[3] // 2] = float("nan")
    planes[3, -1] = float("inf")
    ref, ref_idx = F.max_pool2d(x, *args, return_indices=True)
    assert ref.shape[2:] == (1, 1)
    results = {}
    for isa in POOL_ISAS:
        use_pool_isa(monkeypatch, isa)
        results[isa] = CF.max_pool2d(x, *args, return_indices=True)
        torch.testing.assert_close(results[isa][0], ref, rtol=0, atol=0, equal_nan=True, msg=isa)
        assert torch.equal(results[isa][1], ref_idx), isa
    assert all(torch.equal(results[isa][1], results["generic"][1]) for isa in POOL_ISAS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("channels", [5, 8, 16, 24, 37, 72])
def test_channels_last_max_pool_on_every_isa(channels, dtype, monkeypatch):
    """channels_last max pooling runs float32 and bfloat16 a register of channels at a time (16 on
    AVX-512, 8 on AVX2; the last channels as the last whole register, overlapping the one before,
    or one by one where there are fewer), float16 by comparing its bits: maxima and indices
    exactly torch's, ties (many in the half types) to the first maximum, a NaN wins, padding
    never."""
    x = torch.randn(3, channels, 11, 10, generator=torch.Generator().manual_seed(channels)).to(dtype)
    x[0, -1, 4, 4] = float("nan")
    x[1, 0, :3, :3] = float("-inf")
    x[2, channels // 2, 5, 5:7] = x.max() + 1  # a tie for a window's maximum
    x = x.contiguous(memory_format=torch.channels_last)
    for args in ((2,), (3, 2, 1), (3, 1, 1, 1, True)):
        ref, ref_idx = F.max_pool2d(x, *args, return_indices=True)
        for isa in POOL_ISAS:
            use_pool_isa(monkeypatch, isa)
            out, idx = CF.max_pool2d(x, *args, return_indices=True)
            assert out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True, msg=isa)
            assert torch.equal(idx, ref_idx), isa


CHANNELS_LAST_AVERAGES = {  # (function of torch.nn.functional's signature, arguments)
    "2x2": ("avg_pool2d", (2,)),
    "3s2p1-ceil-no-pad": ("avg_pool2d", (3, 2, 1, True, False)),
    "overflows": ("avg_pool2d", ((3, 2), 1, (1, 0), False, True, 1)),  # sums of up to 6 values, divided by 1
    "adaptive-uneven": ("adaptive_avg_pool2d", ((4, 3),)),
    "adaptive-global": ("adaptive_avg_pool2d", (1,)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("channels", [5, 8, 16, 24, 37, 72])
@pytest.mark.parametrize("case", CHANNELS_LAST_AVERAGES)
def test_channels_last_average_pool_on_every_isa(case, channels, dtype, monkeypatch):
    """channels_last average pooling runs float16 a register of channels at a time (F16C), as max
    pooling (above), each sum in float from +0 in the window's order and rounded once: the same
    bits on every ISA as the scalar kernels' (float16 there: the float32 kernels rounded,
    pool2d.cpp's via_float), NaN, Inf and float16's overflow to Inf included. (float32, bfloat16,
    and float16 with fewer channels than a register, run loops that CUCONV_CPU_ISA does not
    switch: for them this checks the values against torch.)"""
    name, args = CHANNELS_LAST_AVERAGES[case]
    x = torch.randn(3, channels, 11, 10, generator=torch.Generator().manual_seed(channels)).to(dtype)
    x[0, -1, 4, 4] = float("nan")
    x[1, 0, 2, 3] = float("inf")
    x[2, channels // 2, 6, 6] = float("-inf")
    if dtype == torch.float16:  # sums past float16's largest, 65504
        x[1, -1, :4, :4] = 40000.0
    x = x.contiguous(memory_format=torch.channels_last)
    ref = getattr(F, name)(x.float(), *args).to(dtype)  # (float16's overflow: Inf)
    results = {}
    for isa in POOL_ISAS:
        use_pool_isa(monkeypatch, isa)
        results[isa] = getattr(CF, name)(x, *args)
        assert results[isa].is_contiguous(memory_format=torch.channels_last), isa
        torch.testing.assert_close(results[isa], ref, rtol=1e-2, atol=1e-2, equal_nan=True, msg=isa)
    for isa in POOL_ISAS:
        nan = torch.isnan(results["generic"])
        assert torch.equal(torch.isnan(results[isa]), nan), isa
        assert torch.equal(results[isa][~nan], results["generic"][~nan]), isa
        assert torch.equal(results[isa][~nan].signbit(), results["generic"][~nan].signbit()), isa


@pytest.mark.parametrize("size", [(3, 3), (1, 1), (4, 4), (2, 7)])
def test_global_average_pool_gradient_matches_torch_on_every_isa(size, monkeypatch):
    """Small planes (<= 16 values) take a vector kernel in groups of 16 planes on AVX-512, of 8
    on AVX2, and a store per plane elsewhere: the same values on every ISA, bitwise, and torch's.
    5 x 67 planes: whole groups and a tail; planes larger and smaller than a group."""
    x = torch.randn(5, 67, *size, generator=torch.Generator().manual_seed(4), requires_grad=True)
    dy = torch.randn(5, 67, 1, 1, generator=torch.Generator().manual_seed(5))
    (ref,) = torch.autograd.grad(F.adaptive_avg_pool2d(x, 1), x, dy)
    grads = {}
    for isa in POOL_ISAS:
        use_pool_isa(monkeypatch, isa)
        (grads[isa],) = torch.autograd.grad(CF.adaptive_avg_pool2d(x, 1), x, dy)
        torch.testing.assert_close(grads[isa], ref, rtol=1e-6, atol=1e-7)
    assert all(torch.equal(grads[isa], grads["generic"]) for isa in POOL_ISAS)


GLOBAL_POOL_KERNELS = ("pool_groups", "pool_quads")


@pytest.mark.parametrize("size", [(1, 1), (1, 3), (2, 2), (2, 3), (2, 4), (3, 3), (3, 4), (2, 7), (4, 4), (7, 7),
                                  (15, 17)], ids=str)
@pytest.mark.parametrize("isa", POOL_ISAS)
def test_each_global_average_pool_kernel_gives_the_same_bits(size, isa, threads, monkeypatch):
    """Global average pooling of small float32 planes, and its gradient, have two vector kernels
    each, measured per shape (pool2d.cpp, run_global_kernel): a register's lanes of planes at a
    time, and quads of planes in 128-bit registers. Each one, forced through the tuning table,
    sums in _global_sums's order (a plane of -0.0 averages to +0.0, an Inf and a NaN come through)
    and divides the gradient as torch does, bit for bit, with any thread split. Planes of 1 to 16
    values (each count of registers that reach into a plane: 1 to 4 quads, 1 or 2 groups of 8, and
    planes that fill their last register), 49 and 255 (whole loads of 16, then the rest);
    5 x 67 planes: whole groups and a tail, which the scalar loops take."""
    use_pool_isa(monkeypatch, isa)
    monkeypatch.delenv("CUCONV_CPU_TUNE", raising=False)
    gen = torch.Generator().manual_seed(size[0] * 100 + size[1])
    x = torch.randn(5, 67, *size, generator=gen, requires_grad=True)
    with torch.no_grad():
        planes = x.view(-1, size[0] * size[1])
        planes[1] = -0.0
        planes[3, -1] = float("inf")
        planes[-2, 0] = float("nan")
    dy = torch.randn(5, 67, 1, 1, generator=gen)
    expected = (_global_sums(x.detach()) / (size[0] * size[1])).view(5, 67, 1, 1)
    expected_grad = (dy / (size[0] * size[1])).expand_as(x)
    saved = cuconv.tuning.choices()
    try:
        cuconv.tuning.clear()
        torch.autograd.grad(CF.adaptive_avg_pool2d(x, 1), x, dy)  # measured once: the keys of this shape
        keys = [key for key in cuconv.tuning.choices() if key.startswith("global_avg_pool")]
        vector = cuconv._C.cpu_kernels()["isa"] != "generic"
        assert sorted(key.split()[0] for key in keys) == (
            ["global_avg_pool_backward"] * (size[0] * size[1] <= 16) + ["global_avg_pool_forward"]) * vector, keys
        for kernel in GLOBAL_POOL_KERNELS:
            cuconv._C.cpu_tuning_set({key: kernel for key in keys})
            out = CF.adaptive_avg_pool2d(x, 1)
            (grad,) = torch.autograd.grad(out, x, dy)
            assert all(cuconv.tuning.choices()[key] == kernel for key in keys)
            torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True, msg=f"{isa} {kernel}")
            assert not (out == 0).logical_and(out.signbit()).any(), f"{isa} {kernel}: -0.0"
            torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0, msg=f"{isa} {kernel}")
    finally:
        cuconv.tuning.clear()
        cuconv._C.cpu_tuning_set(saved)


# --- grouped layers: a GEMM per group, or group by group as groups = 1 layers -------------------

GROUPED_CASES = [  # (input, weight, stride, padding, dilation, groups)
    ((3, 12, 11, 10), (18, 4, 3, 3), 1, 1, 1, 3),
    ((2, 8, 13, 9), (8, 2, 3, 2), (2, 1), (1, 0), (1, 2), 4),
    ((4, 64, 7, 7), (64, 16, 1, 1), 1, 0, 1, 4),
    ((2, 6, 9, 12), (4, 3, 5, 5), 2, 2, 1, 2),
    # wider groups, as RegNet's (the NHWC kernels' panels: one vector of output channels, one and
    # a part, three), strided, dilated, and unpadded (read in place, a pixel's channels apart)
    ((2, 80, 6, 7), (80, 16, 3, 3), 1, 1, 1, 5),
    ((2, 48, 9, 9), (48, 24, 3, 3), 2, 1, 1, 2),
    ((2, 32, 8, 9), (96, 16, 3, 3), 1, 2, 2, 2),
    ((3, 64, 5, 5), (40, 32, 1, 1), 1, 0, 1, 2),
    ((2, 24, 7, 6), (36, 8, 2, 3), (1, 2), 0, 1, 3),
]


def _batch_past_last_level_cache(sample_bytes):
    """A batch of samples of this size larger than the CPU's last-level cache (by a quarter),
    or a skip where that would need more than 2 GiB."""
    llc = cuconv._C.cpu_kernels()["last_level_cache_bytes"]
    batch = llc * 5 // 4 // sample_bytes + 1
    if batch * sample_bytes > 2 << 30:
        pytest.skip(f"an output larger than this CPU's {llc >> 20} MiB cache needs > 2 GiB")
    return batch


# Output widths whose plane rows start on vector boundaries (224), off them (221), and rows
# shorter than a vector (5); 20 output channels fill a register's lanes and part of the next.
@pytest.mark.parametrize("width", [224, 221, 5])
def test_direct_forward_streams_an_output_larger_than_the_last_level_cache(width, monkeypatch):
    """An output larger than the last-level cache is written past the caches (each panel's rows
    staged, then non-temporal stores from each plane row's first aligned vector on, ordinary stores
    at its ends): torch's values all the same."""
    kernels = cuconv._C.cpu_kernels()
    if kernels["direct_conv"] == "never":
        pytest.skip("no direct kernels on this CPU (or CUCONV_CPU_ISA=generic)")
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "1")
    channels = 20
    batch = _batch_past_last_level_cache(channels * width * width * 4)
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(batch, 2, width, width, generator=gen)
    w, b = torch.randn(channels, 2, 3, 3, generator=gen), torch.randn(channels, generator=gen)
    out = CF.conv2d(x, w, b, padding=1)
    assert cuconv._C.cpu_kernels()["last_direct"] is not None
    assert_matches(out, F.conv2d(x, w, b, padding=1), torch.float32)


def _force_direct(direct, monkeypatch):
    """CUCONV_CPU_DIRECT=direct; skips "1" where there are no direct kernels."""
    if direct == "1" and cuconv._C.cpu_kernels()["direct_conv"] == "never":
        pytest.skip("no direct kernels on this CPU (or CUCONV_CPU_ISA=generic)")
    monkeypatch.setenv("CUCONV_CPU_DIRECT", direct)


def _distance_from(exact, got):
    """max |got - exact| / max |exact|."""
    return ((got.double() - exact).abs().max() / exact.abs().max()).item()


# 512 input channels: 4,608 products per output, for 512 output channels (the direct kernels'
# channel tiles) and for 6 (with AVX-512 their row tiles, as LeNet's layers; AVX2's 8-lane
# vectors fill enough of their lanes for the channel tiles to run).
@pytest.mark.parametrize("out_channels, size", [(512, 3), (6, 14)], ids=["512_channels", "6_channels"])
@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct", "gemm"])
def test_long_float32_sums_are_as_close_to_float64_as_torchs(direct, out_channels, size, monkeypatch):
    """Either way (the direct kernels' chains of at most a few hundred products, each from zero,
    then added up; the GEMM's depth slices) the forward pass and the input gradient of a
    512-channel 3x3 layer stay within 3x oneDNN's distance from float64 (the direct kernels
    summed all 4,608 products in one chain: 7-8x)."""
    _force_direct(direct, monkeypatch)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 512, size, size, generator=gen, dtype=torch.float64)
    w = torch.randn(out_channels, 512, 3, 3, generator=gen, dtype=torch.float64) / (512 * 9) ** 0.5
    dy = torch.randn(8, out_channels, size, size, generator=gen, dtype=torch.float64)
    args = ([1, 1], [1, 1], [1, 1], 1, False)
    forward = (lambda x, w, dy: CF.conv2d(x, w, None, 1, 1),
               lambda x, w, dy: F.conv2d(x, w, None, 1, 1))
    input_grad = (lambda x, w, dy: torch.ops.cuconv.conv2d_backward_input(dy, w, list(x.shape), *args),
                  lambda x, w, dy: torch.ops.aten.convolution_backward(dy, x, w, None, *args[:3], False, [0, 0], 1,
                                                                       [True, False, False])[0])
    for ours, torchs in (forward, input_grad):
        exact = torchs(x, w, dy)
        single = [t.float() for t in (x, w, dy)]
        assert _distance_from(exact, ours(*single)) <= 3 * _distance_from(exact, torchs(*single))


# 16 output channels (the channel tiles) and 6 (the row weight tiles, where a vector holds more
# than 6 floats: each lane's chains a run of rows long, a few dozen products, then added up)
@pytest.mark.parametrize("out_channels", [16, 6])
@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct", "gemm"])
def test_a_weight_gradient_over_large_images_stays_close_to_float64(direct, out_channels, monkeypatch):
    """The weight gradient of VGG's first layer sums 2 x 50,176 pixels per weight. Either way (the
    direct kernels' chains of rows of ~512 pixels, each from zero, added up; the GEMM's depth
    slices) it is within 2e-6 of the largest gradient from float64 (oneDNN: ~9e-6; the direct
    kernels in one chain per image: 4e-6)."""
    _force_direct(direct, monkeypatch)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 224, 224, generator=gen, dtype=torch.float64)
    dy = torch.randn(2, out_channels, 224, 224, generator=gen, dtype=torch.float64)
    args = ([out_channels, 1, 3, 3], [1, 1], [1, 1], [1, 1], 1, False)
    exact = torch.ops.cuconv.conv2d_backward_weight(dy, x, *args)
    ours = torch.ops.cuconv.conv2d_backward_weight(dy.float(), x.float(), *args)
    assert _distance_from(exact, ours) <= 2e-6


# Planes of 56x56 (each starting on a cache line) and 55x55 (most starting off one).
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("size", [56, 55])
@pytest.mark.parametrize("window", [(2, 2, 0), (3, 2, 1)], ids=["2x2", "3x3s2p1"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_gradient_larger_than_the_last_level_cache_is_streamed(kind, window, size, layout):
    """A pooling gradient larger than the last-level cache is written a plane at a time into a
    buffer in cache and streamed from there past the caches (max pooling's channels_last
    gradient a sample at a time): torch's values all the same."""
    channels = 8
    batch = _batch_past_last_level_cache(channels * size * size * 4)
    x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(size))
    x = x.contiguous(memory_format=layout)

    def run(pool):  # (the output's gradient in the input's layout, which decides the kernels)
        leaf = x.clone().requires_grad_()
        out = pool(leaf, *window)
        dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=layout)
        return out.detach(), torch.autograd.grad(out, leaf, dy)[0]

    out, grad = run(CF.max_pool2d if kind == "max" else CF.avg_pool2d)
    ref, ref_grad = run(F.max_pool2d if kind == "max" else F.avg_pool2d)
    assert_matches(out, ref, torch.float32)
    assert_matches(grad, ref_grad, torch.float32)


@pytest.mark.parametrize("size", [56, 14])
def test_max_pool_gradient_rows_streamed_past_the_last_level_cache(size):
    """Where max pooling's gradient is larger than the last-level cache, the rows kernel writes
    each plane into the buffer in cache that is streamed from there (pool2d.cpp,
    max_unpool_planes): each gradient at its index, as the plane kernel's, for both kernels
    forced. Rows of 28 outputs (vectors and an overlap) and of 7 (one vector past the row,
    the plane's last row one output at a time)."""
    channels = 8
    batch = _batch_past_last_level_cache(channels * size * size * 4)
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(batch, channels, size, size, generator=gen)
    out, idx = torch.ops.cuconv.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    dy = torch.randn(out.shape, generator=gen)
    expected = torch.zeros_like(x).flatten(2).scatter_(2, idx.flatten(2), dy.flatten(2)).view_as(x)
    del x
    gradient = lambda: torch.ops.cuconv.max_pool2d_backward(  # noqa: E731
        dy, idx, list(expected.shape), [2, 2], [2, 2], [0, 0], [1, 1], False)
    ran = set()
    for kernel, grad, forced in _forcing_each_tiled_2x2_kernel("max_pool2d_2x2_backward", gradient):
        assert torch.equal(grad, expected), kernel
        ran |= {kernel} if forced else set()
    assert ran == ({"pool_rows", "pool_planes"} if cuconv._C.cpu_kernels()["last_pool"] != "generic" else set())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("way", [{"CUCONV_CPU_BY_GROUP": "0"}, {"CUCONV_CPU_BY_GROUP": "1"}, {"CUCONV_CPU_DIRECT": "1"}],
                         ids=["gemm-per-group", "by-group", "direct-by-group"])
@pytest.mark.parametrize("case", GROUPED_CASES, ids=lambda c: f"{c[0]}-{c[1]}-g{c[5]}")
def test_grouped_layers_every_way_match_torch(case, way, channels_last, dtype, monkeypatch):
    """CUCONV_CPU_BY_GROUP=1 runs a grouped layer group by group through the groups = 1 kernels
    (on copies of each group's channels), =0 as a GEMM per group; CUCONV_CPU_DIRECT=1 (float32)
    the direct kernels group by group on the layer's own tensors (each group's channels in place,
    the samples the whole layer's strides apart; the input gradient of a strided layer has no
    direct kernel and is measured between the other two): all torch's values and layouts."""
    for name, value in way.items():
        monkeypatch.setenv(name, value)
    x_shape, w_shape, stride, padding, dilation, groups = case
    x = torch.randn(*x_shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    tensors = [x, torch.randn(*w_shape, dtype=dtype), torch.randn(w_shape[0], dtype=dtype)]
    conv = lambda f: (lambda x, w, b: f.conv2d(x, w, b, stride, padding, dilation, groups))
    out, grads = forward_and_grads(conv(CF), tensors)
    ref, ref_grads = forward_and_grads(conv(F), tensors)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert_matches(out, ref, dtype)
    for g, r in zip(grads, ref_grads):
        assert_matches(g, r, dtype)


def test_grouped_layer_choice_is_measured(monkeypatch, capfd):
    """Unforced, the three ways of a float32 grouped layer are candidates of the measured choice
    (CUCONV_LOG=1 prints every candidate's time)."""
    for name in ("CUCONV_CPU_BY_GROUP", "CUCONV_CPU_TUNE", "CUCONV_CPU_DIRECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUCONV_LOG", "1")
    x, w = torch.randn(2, 12, 9, 8, requires_grad=True), torch.randn(12, 4, 3, 3, requires_grad=True)
    CF.conv2d(x, w, None, 1, 1, 1, 3).sum().backward()
    grouped = {key: winner for key, winner in cuconv.tuning.choices().items()
               if "float32 grouped N=2 C=12 H=9 W=8 O=12 k=3x3" in key and "groups=3 " in key}
    passes = {key.split()[0] for key in grouped}
    assert passes == {"conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"}, grouped
    assert all(winner in ("gemm", "by_group", "direct_by_group") for winner in grouped.values()), grouped
    if cuconv._C.cpu_kernels()["direct_conv"] != "never":
        log = [line for line in capfd.readouterr().err.splitlines() if "grouped N=2 C=12 H=9 W=8" in line]
        assert len(log) == 3 and all("direct_by_group" in line for line in log), log


def test_direct_by_group_leaves_a_nonfinite_weight_to_the_other_ways(monkeypatch):
    """The direct input gradient multiplies its zero border by every tap (an Inf weight would make
    NaNs torch does not have), so with an Inf or NaN weight a grouped layer's input gradient runs
    another way even when CUCONV_CPU_DIRECT=1 asks for the direct kernels."""
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "1")
    x, w = torch.randn(2, 8, 7, 6), torch.randn(8, 4, 3, 3)
    w[1, 2, 0, 1] = float("inf")
    w[6, 0, 2, 2] = float("nan")
    dy = torch.randn(2, 8, 7, 6)
    ours = torch.ops.cuconv.conv2d_backward_input(dy, w, list(x.shape), [1, 1], [1, 1], [1, 1], 2)
    theirs = torch.ops.aten.convolution_backward(dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 2,
                                                 [True, False, False])[0]
    torch.testing.assert_close(ours, theirs, equal_nan=True)


# (input, weight, stride, padding, dilation): output channels within a vector, one and a part, and
# several panels; 1x1 in place, strided, dilated, uneven kernels; images of fewer pixels than a tile
NHWC_DIRECT_CASES = [
    ((3, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1),
    ((2, 16, 9, 8), (20, 16, 3, 3), 1, 1, 1),
    ((2, 24, 7, 7), (70, 24, 3, 3), 2, 1, 1),
    ((3, 64, 6, 6), (130, 64, 1, 1), 1, 0, 1),
    ((2, 32, 9, 9), (48, 32, 1, 1), 2, 0, 1),
    ((2, 8, 11, 10), (5, 8, 3, 2), (1, 2), (2, 1), (2, 1)),
    ((5, 40, 3, 3), (36, 40, 3, 3), 1, 1, 1),
]


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("case", NHWC_DIRECT_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}")
def test_channels_last_direct_kernels_match_torch(case, isa, monkeypatch):
    """CUCONV_CPU_DIRECT=1 runs a float32 channels_last layer on the direct kernels over NHWC pixels
    (the forward pass and weight gradient always, the input gradient at stride 1): torch's values
    in torch's channels_last layout, every pass."""
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "1")
    monkeypatch.setenv("CUCONV_CPU_ISA", isa)
    if cuconv._C.cpu_kernels()["isa"] != isa:
        pytest.skip(f"no {isa} on this CPU")
    x_shape, w_shape, stride, padding, dilation = case
    x = torch.randn(*x_shape).contiguous(memory_format=torch.channels_last)
    tensors = [x, torch.randn(*w_shape), torch.randn(w_shape[0])]
    conv = lambda f: (lambda x, w, b: f.conv2d(x, w, b, stride, padding, dilation))  # noqa: E731
    out, grads = forward_and_grads(conv(CF), tensors)
    assert cuconv._C.cpu_kernels()["last_direct"] == isa
    ref, ref_grads = forward_and_grads(lambda x, w, b: conv(F)(x.double(), w.double(), b.double()), tensors)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)
    assert_matches(out, ref.float(), torch.float32)
    for g, r in zip(grads, ref_grads):
        assert_matches(g, r.float(), torch.float32)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_channels_last_direct_rows_wholly_in_the_padding_are_the_bias(isa, groups, monkeypatch):
    """Output rows whose every kernel row falls in the padding (padding 2 above and below a 1-row
    kernel) have no products to make: the NHWC direct forward writes them the bias alone, also
    where the tiles store the other rows' sums in place (16 channels a group: whole vectors)."""
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "1")
    monkeypatch.setenv("CUCONV_CPU_ISA", isa)
    if cuconv._C.cpu_kernels()["isa"] != isa:
        pytest.skip(f"no {isa} on this CPU")
    gen = torch.Generator().manual_seed(groups)
    x = torch.randn(3, 16 * groups, 3, 14, generator=gen).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(32, 16, 1, 3, generator=gen), torch.randn(32, generator=gen)
    out = CF.conv2d(x, w, b, 1, (2, 1), 1, groups)
    assert cuconv._C.cpu_kernels()["last_direct"] == isa
    ref = F.conv2d(x.double(), w.double(), b.double(), 1, (2, 1), 1, groups)
    assert torch.equal(out[:, :, :2], b.view(1, 32, 1, 1).expand(3, 32, 2, 14))
    assert_matches(out, ref.float(), torch.float32)


# Layers of fewer output channels than a vector has lanes, stride 1 along rows: the weight
# gradient's row tiles. (x shape, weight shape, stride, padding, dilation, groups): LeNet's first
# layer (rows of 28: a short last vector), 7 channels (groups of channels and a narrower last
# group: 6 + 1 with AVX-512, 3 + 3 + 1 with AVX2), rows of exactly 32 without padding (read in
# place, no short vector), a grouped layer (by group), 3-row images (a call's rows span samples),
# and 200 rows of 40 (several runs of rows, their sums added up).
ROW_WEIGHT_CASES = [
    ((3, 1, 28, 28), (6, 1, 5, 5), 1, 2, 1, 1),
    ((2, 3, 17, 32), (7, 3, 3, 4), (2, 1), (1, 2), (1, 2), 1),
    ((2, 2, 12, 36), (5, 2, 3, 3), 1, 0, (2, 2), 1),
    ((2, 6, 11, 19), (8, 3, 3, 3), 1, 1, 1, 2),
    ((7, 2, 3, 21), (4, 2, 3, 3), 1, 1, 1, 1),
    ((1, 1, 202, 42), (3, 1, 3, 3), 1, 0, 1, 1),
]


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("case", ROW_WEIGHT_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_weight_gradient_by_row_tiles_matches_float64(case, isa, monkeypatch):
    """With few output channels the direct weight gradient runs along output rows (a row's last
    vector partly filled): within float32 rounding of torch's float64 gradient, on either ISA; and
    an Inf at the end of every input row gives NaN exactly where float64 has it (the short vector's
    unused lanes multiply zeros, never the columns past the row)."""
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "1")
    monkeypatch.setenv("CUCONV_CPU_ISA", isa)
    if cuconv._C.cpu_kernels()["isa"] != isa:
        pytest.skip(f"no {isa} on this CPU")
    x_shape, w_shape, stride, padding, dilation, groups = case
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(*x_shape, generator=gen), torch.randn(*w_shape, generator=gen)
    dy = torch.randn(F.conv2d(x, w, None, stride, padding, dilation, groups).shape, generator=gen)
    dy[..., -1] = 0  # (so that the Inf column below meets zeros in some windows only)

    def weight_gradient(conv, x, w, dy):
        w = w.clone().requires_grad_()
        return torch.autograd.grad(conv(x, w, None, stride, padding, dilation, groups), w, dy)[0]

    for inf_at_row_ends in (False, True):
        if inf_at_row_ends:
            x[..., -1] = float("inf")
        ours = weight_gradient(CF.conv2d, x, w, dy)
        kernels = cuconv._C.cpu_kernels()
        assert kernels["last_direct"] == isa and kernels["last_direct_tiles"] == "rows", kernels
        exact = weight_gradient(F.conv2d, x.double(), w.double(), dy.double())
        assert torch.equal(ours.isnan(), exact.isnan()) and torch.equal(ours.isinf(), exact.isinf())
        finite = exact.isfinite()
        assert_matches(ours[finite], exact[finite].float(), torch.float32)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("out_channels", [1, 2, 3, 4, 5, 6, 7, 11, 13])
def test_forward_by_row_tiles_of_every_width(out_channels, isa, monkeypatch):
    """The forward pass along output rows takes the channels in as few groups of at most 6 (the
    widest row tile) as they need, their widths as even as they divide (7 as 4 + 3, 13 as 5 + 5 +
    3: every tile width runs; a narrower tile had padded them with zero weights, a 1-channel
    layer making 6 products for each one it needed), each tile writing its rows of the output
    (11 rows: the last band of either ISA's tile short; 31 columns: the last vector short):
    torch's values in float64, for every width, on either ISA, with the bias of each group; and
    the input gradient, the same tiles on the flipped weights, with as few input channels."""
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "1")
    monkeypatch.setenv("CUCONV_CPU_ISA", isa)
    if cuconv._C.cpu_kernels()["isa"] != isa:
        pytest.skip(f"no {isa} on this CPU")
    gen = torch.Generator().manual_seed(out_channels)
    x = torch.randn(2, 3, 11, 31, generator=gen)
    w, b = torch.randn(out_channels, 3, 3, 3, generator=gen), torch.randn(out_channels, generator=gen)
    out = CF.conv2d(x, w, b, 1, 1)
    kernels = cuconv._C.cpu_kernels()
    assert kernels["last_direct"] == isa and kernels["last_direct_tiles"] == "rows", kernels
    assert_matches(out, F.conv2d(x.double(), w.double(), b.double(), 1, 1).float(), torch.float32)

    dy, w_t = torch.randn(2, 8, 11, 31, generator=gen), torch.randn(8, out_channels, 3, 3, generator=gen)
    args = ([1, 1], [1, 1], [1, 1], 1, False)
    grad_input = torch.ops.cuconv.conv2d_backward_input(dy, w_t, [2, out_channels, 11, 31], *args)
    kernels = cuconv._C.cpu_kernels()
    assert kernels["last_direct"] == isa and kernels["last_direct_tiles"] == "rows", kernels
    exact = torch.ops.aten.convolution_backward(dy.double(), x.new_empty(2, out_channels, 11, 31).double(), w_t.double(),
                                                None, *args[:3], False, [0, 0], 1, [True, False, False])[0]
    assert_matches(grad_input, exact.float(), torch.float32)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_direct_forward_keeps_the_nans_of_nonfinite_weights(channels_last, groups, monkeypatch):
    """An Inf or NaN weight times the padding's zeros is NaN (the reference is torch's convolution
    of the explicitly padded input, as in test_errors.py: torch's float32 kernels skip the padding,
    its float64 ones give NaN): the direct kernels, of one group or group by group, skip no tap of
    the padding then (in NHWC they skip the kernel rows in the padding only for finite weights)."""
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "1")
    x, w = torch.randn(2, 16 * groups, 7, 6), torch.randn(32, 16, 3, 3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w[3, 5, 0, 1] = float("inf")
    w[20, 0, 2, 2] = float("nan")
    ours = CF.conv2d(x, w, None, 1, 1, 1, groups)
    theirs = F.conv2d(F.pad(x, (1, 1, 1, 1)), w, None, 1, 0, 1, groups)
    assert ours.isnan().any() and ours.isfinite().any()
    torch.testing.assert_close(ours, theirs, equal_nan=True)


def test_grouped_switch_rejects_other_values(monkeypatch):
    monkeypatch.setenv("CUCONV_CPU_BY_GROUP", "yes")
    with pytest.raises(ValueError, match="CUCONV_CPU_BY_GROUP to be 0 or 1, but got 'yes'"):
        CF.conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3), None, 1, 1, 1, 2)


def test_half_type_choice_is_measured(monkeypatch):
    """Unforced, a half-type pass measures its GEMM (packing the half type as float, or bfloat16 in
    pairs) against the float32 kernels on float32 copies (and, for bfloat16 on a CPU with
    AVX512-BF16, the direct kernels on channel pairs); the result keeps the input's dtype and
    layout."""
    for name in ("CUCONV_CPU_HALF_AS_FLOAT", "CUCONV_CPU_TUNE", "CUCONV_CPU_DIRECT", "CUCONV_CPU_DIRECT_PAIRS"):
        monkeypatch.delenv(name, raising=False)
    x = torch.randn(2, 10, 9, 8).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(7, 10, 3, 3).bfloat16().requires_grad_()
    y = CF.conv2d(x, w, None, 1, 1)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.randn_like(y))
    # ("bfloat16 pairs": where the CPU multiplies bfloat16 pairs, gemm.h)
    chosen = {key: winner for key, winner in cuconv.tuning.choices().items()
              if " channels_last N=2 C=10 H=9 W=8 O=7 " in key and " bfloat16" in key}
    assert {key.split()[0] for key in chosen} == {"conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"}
    assert all(winner in ("gemm", "float32", "direct_pairs", "direct_pairs_streamed")
               for winner in chosen.values()), chosen
