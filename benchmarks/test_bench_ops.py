"""Every op, forward and forward+backward, cuconv next to torch.nn.functional.

Each pair shares a pytest-benchmark group ("<case> <mode> <device> <dtype>"), so the two
rows print together; report.py turns the JSON into cuconv/torch ratios. Both rows time the
same seeded inputs, and cuconv's row is timed only once its results match torch's. Every case
runs in each of --passes passes over the suite (conftest.py); report.py keeps each backend's
lowest median.
"""

import time

import pytest
import torch
import torch.nn.functional as F

import ceilings
import cuconv
import cuconv.functional as CF
from cases import CONV_CASES, CONV_TRANSPOSE_CASES, GEMM_GOAL_CASES, POOL_CASES
from conftest import check_against_torch, random_tensor, rounds_for, seeded_generator, settle, synchronize

IMPLS = {"cuconv": CF, "torch": F}
MODES = ["forward", "forward+backward"]


def run(benchmark, fn, inputs, mode, device, impl):
    if mode == "forward+backward":
        for t in inputs:
            t.requires_grad_()

    def step():
        out = fn(*inputs)
        if mode == "forward+backward":
            out.backward(torch.ones_like(out))  # (ones_like keeps a channels_last output's layout)
        synchronize(device)

    step()  # warm-up outside the timing (allocator, thread pool)
    settle(step, impl)
    benchmark.pedantic(step, rounds=rounds_for(step), warmup_rounds=1, iterations=1)


def label(benchmark, case, mode, device, dtype, impl, measurement_pass, **extra):
    benchmark.group = f"{case.name} {mode} {device} {dtype}"
    benchmark.extra_info.update(case=case.name, mode=mode, device=device, dtype=dtype, impl=impl,
                                measurement_pass=measurement_pass,
                                tf32=torch.backends.cudnn.allow_tf32 if device == "cuda" else None, **extra)


def checked(impl, make_fn, inputs, mode, what):
    """make_fn(api) for this impl, after cuconv's version has been checked against torch's."""
    if impl == "cuconv":
        check_against_torch(make_fn(CF), make_fn(F), inputs, mode == "forward+backward", what)
    return make_fn(IMPLS[impl])


def skip_unless_selected(case, quick):
    if quick and not case.quick:
        pytest.skip("not in the quick subset")


def conv_inputs(case, batch, device, dt):
    """The layer's seeded input, weight and bias (integer tensors: values in the hundreds)."""
    integers = not dt.is_floating_point
    gen = seeded_generator(case.name, batch)
    x = random_tensor((batch, case.in_channels, case.size, case.size), gen, device, dt, scale=100.0 if integers else 1.0)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    fan_in = case.in_channels // case.groups * case.kernel ** 2
    w = random_tensor((case.out_channels, case.in_channels // case.groups, case.kernel, case.kernel), gen, device, dt,
                      scale=10.0 if integers else fan_in ** -0.5)
    b = random_tensor((case.out_channels,), gen, device, dt, scale=100.0 if integers else 1.0)
    return x, w, b


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_conv2d(benchmark, case, mode, impl, device, dtype, batch, quick, measurement_pass):
    skip_unless_selected(case, quick)
    dt = getattr(torch, dtype)
    integers = not dt.is_floating_point  # (--dtypes uint8,int32,...: the forward alone, on the CPU, as torch)
    if integers and (mode != "forward" or device != "cpu"):
        pytest.skip("integer tensors: the CPU's forward only")
    x, w, b = conv_inputs(case, batch, device, dt)
    flops = case.flops(batch) * (3 if mode == "forward+backward" else 1)
    label(benchmark, case, mode, device, dtype, impl, measurement_pass, flops=flops, batch=batch)
    conv = checked(impl, lambda api: lambda x, w, b: api.conv2d(x, w, b, case.stride, case.padding, 1, case.groups),
                   (x, w, b), mode, f"{case.name} {mode} {device} {dtype}")
    run(benchmark, conv, (x, w, b), mode, device, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES, ids=lambda c: c.name)
def test_conv_transpose2d(benchmark, case, mode, impl, device, dtype, batch, quick, measurement_pass):
    skip_unless_selected(case, quick)
    dt = getattr(torch, dtype)
    if not dt.is_floating_point:
        pytest.skip("integer tensors: no transposed convolution")
    gen = seeded_generator(case.name, batch)
    x = random_tensor((batch, case.in_channels, case.size, case.size), gen, device, dt)
    w = random_tensor((case.in_channels, case.out_channels, case.kernel, case.kernel), gen, device, dt,
                      scale=(case.in_channels * case.kernel ** 2) ** -0.5)
    b = random_tensor((case.out_channels,), gen, device, dt)
    flops = case.flops(batch) * (3 if mode == "forward+backward" else 1)
    label(benchmark, case, mode, device, dtype, impl, measurement_pass, flops=flops, batch=batch)
    conv = checked(impl, lambda api: lambda x, w, b: api.conv_transpose2d(x, w, b, case.stride, case.padding),
                   (x, w, b), mode, f"{case.name} {mode} {device} {dtype}")
    run(benchmark, conv, (x, w, b), mode, device, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.name)
def test_pool2d(benchmark, case, mode, impl, device, dtype, batch, quick, measurement_pass):
    skip_unless_selected(case, quick)
    dt = getattr(torch, dtype)
    # (--dtypes uint8,int32,...: max pooling's forward alone, and int64 average pooling's on the CPU, as torch)
    integers = not dt.is_floating_point
    if integers and not (mode == "forward" and (case.kind == "max" or
                                                case.kind == "avg" and dt == torch.int64 and device == "cpu")):
        pytest.skip("integer tensors: max pooling's forward, and int64 average pooling's on the CPU, only")
    # torch's NHWC max pooling refuses int8 and uint8 planes of over 127 pixels: no torch time
    # there, and cuconv's result is checked against torch's NCHW one
    torch_refuses = integers and dt in (torch.uint8, torch.int8) and case.channels_last and case.size ** 2 > 127
    if torch_refuses and impl == "torch":
        pytest.skip("torch's NHWC max pooling refuses int8 and uint8 planes of over 127 pixels")
    x = random_tensor((batch, case.channels, case.size, case.size), seeded_generator(case.name, batch), device, dt,
                      scale=100.0 if integers else 1.0)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    moved = case.bytes_moved(batch, x.element_size()) * (3 if mode == "forward+backward" else 1)
    label(benchmark, case, mode, device, dtype, impl, measurement_pass, bytes=moved, batch=batch)

    def make(api):
        if case.kind == "max" and torch_refuses and api is F:
            return lambda x: api.max_pool2d(x.contiguous(), case.kernel, case.stride, case.padding)
        if case.kind == "max":
            return lambda x: api.max_pool2d(x, case.kernel, case.stride, case.padding)
        if case.kind == "avg":
            return lambda x: api.avg_pool2d(x, case.kernel, case.stride, case.padding)
        return lambda x: api.adaptive_avg_pool2d(x, case.output)

    fn = checked(impl, make, (x,), mode, f"{case.name} {mode} {device} {dtype}")
    run(benchmark, fn, (x,), mode, device, impl)


# --- the machine's ceilings, measured in the same run -----------------------------------------

def sgemm_products(device):
    """n and an n^3 float32 matrix product of each backend: torch.mm, and cuconv's as a 1x1
    convolution (C = W @ X with W the [n, n] weight and X the input's [n, H*W] pixels), checked
    against torch's."""
    n = 2048 if device == "cpu" else 8192
    gen = seeded_generator("sgemm", n)
    a = random_tensor((n, n), gen, device, torch.float32)
    b = random_tensor((n, n), gen, device, torch.float32)
    weight, pixels = a.reshape(n, n, 1, 1), b.reshape(1, n, 32, n // 32)
    check_against_torch(CF.conv2d, F.conv2d, (pixels, weight), False, f"sgemm {device}")
    return n, {"torch": lambda: torch.mm(a, b), "cuconv": lambda: CF.conv2d(pixels, weight)}


@pytest.mark.parametrize("impl", IMPLS)
def test_ceiling_sgemm(benchmark, impl, device):
    """An n^3 float32 matrix product: torch.mm, and cuconv's as a 1x1 convolution (C = W @ X with
    W the [n, n] weight and X the input's [n, H*W] pixels)."""
    n, products = sgemm_products(device)
    product = products[impl]
    benchmark.group = f"ceiling {device}"
    benchmark.extra_info.update(case="sgemm" if impl == "torch" else "sgemm.cuconv", mode="ceiling", device=device,
                                dtype="float32", impl=impl, flops=2 * n ** 3)

    def step():
        product()
        synchronize(device)

    step()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


def test_ceiling_fma_peak(benchmark, device):
    """The float32 FMA peak of torch's threads, at the vector width cuconv's kernels use."""
    lanes = {"avx512": 16, "avx2": 8}.get(cuconv._C.cpu_kernels()["gemm_float"])
    library = ceilings.fma_library()
    if device != "cpu" or lanes is None or library is None:
        pytest.skip("a CPU ceiling, for AVX2 or AVX-512 with a C compiler")
    threads, iterations = torch.get_num_threads(), 10_000_000
    benchmark.group = f"ceiling {device}"
    benchmark.extra_info.update(case="fma", mode="ceiling", device=device, dtype="float32", impl="fma_peak.c",
                                flops=2 * lanes * library.fma_chains() * iterations * threads, threads=threads,
                                lanes=lanes)
    assert library.fma_flops(threads, lanes, iterations) > 0
    benchmark.pedantic(lambda: library.fma_flops(threads, lanes, iterations), rounds=5, warmup_rounds=1)


def test_ceiling_copy(benchmark, device):
    x = torch.randn(64 * 2 ** 20, device=device)  # 256 MiB
    y = torch.empty_like(x)
    benchmark.group = f"ceiling {device}"
    benchmark.extra_info.update(case="copy", mode="ceiling", device=device, dtype="float32", impl="torch",
                                bytes=2 * x.numel() * x.element_size())

    def step():
        y.copy_(x)
        synchronize(device)

    step()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


# --- the GEMM goal: each large layer next to the sgemm ceiling, round by round -----------------
@pytest.mark.parametrize("case", GEMM_GOAL_CASES, ids=lambda c: c.name)
def test_gemm_goal_alongside_sgemm(benchmark, case, device, dtype, batch, quick, measurement_pass):
    """The CPU GEMM goal compares a large layer's forward with the machine's sgemm. On a VM whose
    speed moves by a third within minutes, a layer's median and the sgemm ceiling's fastest round,
    measured minutes apart, read different phases of the machine. Here every round times the
    layer's forward twice (the second counted: its tensors in cache, as in its own case's
    back-to-back rounds), then torch's and cuconv's sgemm (the ceiling's products); report.py
    compares each round's layer with the faster sgemm of the same round."""
    skip_unless_selected(case, quick)
    if device != "cpu" or dtype != "float32":
        pytest.skip("the GEMM goal is the CPU's, in float32")
    x, w, b = conv_inputs(case, batch, device, torch.float32)
    layer = lambda: CF.conv2d(x, w, b, case.stride, case.padding)  # noqa: E731
    check_against_torch(lambda *t: CF.conv2d(*t, case.stride, case.padding),
                        lambda *t: F.conv2d(*t, case.stride, case.padding), (x, w, b), False, f"{case.name} gemm goal")
    n, products = sgemm_products(device)
    seconds = {"layer": [], "sgemm": [], "sgemm.cuconv": []}

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def one_round():
        layer()
        seconds["layer"].append(timed(layer))
        seconds["sgemm"].append(timed(products["torch"]))
        seconds["sgemm.cuconv"].append(timed(products["cuconv"]))

    for warm_up in (layer, products["torch"], products["cuconv"]):
        warm_up()
    settle(layer, "cuconv")
    benchmark.group = f"{case.name} gemm goal {device} {dtype}"
    benchmark.pedantic(one_round, rounds=5, iterations=1)
    benchmark.extra_info.update(case=case.name, mode="gemm goal", device=device, dtype=dtype, impl="cuconv",
                                measurement_pass=measurement_pass, batch=batch, flops=case.flops(batch),
                                sgemm_flops=2 * n ** 3, seconds=seconds)
