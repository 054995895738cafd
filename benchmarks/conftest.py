"""Options of the benchmark suite (pytest-benchmark, cuconv and torch side by side).

    pytest benchmarks --quick                  # a subset of shapes at batch 16, under a minute
    pytest benchmarks --benchmark-json=out.json && python benchmarks/report.py out.json

Every case is timed only after its cuconv result (output and gradients) has been checked
against torch's on the same seeded inputs, which both backends' rows share (check_against_torch).
On CUDA the TF32 setting of torch's convolutions is fixed by --tf32 (default off), which
cuconv's float32 convolutions follow as torch's do, and recorded in every row.
"""

import time
import zlib

import pytest
import torch

import cuconv.tuning


def pytest_addoption(parser):
    group = parser.getgroup("cuconv benchmarks")
    group.addoption("--quick", action="store_true", help="quick subset of shapes at a small batch")
    group.addoption("--batch", type=int, default=None, help="batch size (default 128, quick: 16)")
    group.addoption("--devices", default="cpu,cuda", help="comma-separated devices to run (those present)")
    group.addoption("--dtypes", default="float32", help="comma-separated dtypes, e.g. float32,bfloat16")
    group.addoption("--tf32", action="store_true",
                    help="let torch's CUDA convolutions and matmuls use TF32 (default: strict float32)")
    group.addoption("--passes", type=int, default=None,
                    help="times every op case is measured, the whole suite once per pass (default 2, quick: 1);"
                         " report.py keeps each backend's lowest median")


def pytest_configure(config):
    tf32 = config.getoption("--tf32", default=False)
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def pytest_report_header(config):
    return f"torch TF32 on CUDA: {'on' if torch.backends.cudnn.allow_tf32 else 'off'} (--tf32)"


def pytest_benchmark_update_machine_info(config, machine_info):
    """The vector instructions each backend ran with, for report.py's header: cuconv's kernels
    (CUCONV_CPU_ISA may ask for less than the CPU has) and torch's own (ATEN_CPU_CAPABILITY,
    ONEDNN_MAX_CPU_ISA likewise; e.g. all three at AVX2 measure this machine as an AVX2 CPU)."""
    import os

    import cuconv

    machine_info["cuconv_isa"] = cuconv._C.cpu_kernels()["isa"]
    machine_info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    machine_info["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA", "(unset: the CPU's best)")


def _devices(config):
    wanted = config.getoption("--devices").split(",")
    return [d for d in wanted if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", _devices(config))
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", config.getoption("--dtypes").split(","))
    if "measurement_pass" in metafunc.fixturenames:
        # Slowest-varying: pass 0 of every case, then pass 1 of every case, minutes later. On a
        # shared machine a burst of load from elsewhere (on the VM of benchmarks/RESULTS.md the
        # speed halved for seconds at a time) can fall on one backend's rounds of a case; with
        # two passes each backend keeps its lower median, so one burst no longer decides a ratio.
        passes = config.getoption("--passes") or (1 if config.getoption("--quick") else 2)
        metafunc.parametrize("measurement_pass", range(passes), ids=lambda k: f"pass{k}")


@pytest.fixture
def batch(request):
    explicit = request.config.getoption("--batch")
    return explicit or (16 if request.config.getoption("--quick") else 128)


@pytest.fixture
def quick(request):
    return request.config.getoption("--quick")


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def settle(step, impl):
    """Runs cuconv's step until its kernel choices are settled: the first call of a shape measures
    the candidate kernels, and the winner's next calls are checked, the last one measuring the
    others again (csrc/tuning/measured_choice.h; on the CPU and on CUDA). The timed rounds then see the steady speed; the first call's
    cost is reported apart (README, "Kernel choice by measurement")."""
    for _ in range(8):
        if impl != "cuconv" or cuconv.tuning.unsettled() == 0:
            return
        step()


def rounds_for(step, budget_s=0.25, fewest=5, most=200):
    """Enough rounds for a stable median: about budget_s of work, at least `fewest`
    (sub-millisecond cases get many, whole VGG layers a few)."""
    start = time.perf_counter()
    step()
    once = time.perf_counter() - start
    return int(min(most, max(fewest, budget_s / max(once, 1e-9))))


def seeded_generator(*key):
    """A CPU generator seeded from `key` (case name, batch...): the same inputs for both backends' rows."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def random_tensor(shape, generator, device, dtype, scale=1.0):
    return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)


# Relative to each tensor's largest value: float32 sums of thousands of products differ from
# torch's in the last bits; the half types by their rounding step.
# Integers (max pooling) exactly.
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 3e-2, torch.float16: 4e-3,
                   **{t: 0.0 for t in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)}}
TF32_CHECK_TOLERANCE = 5e-3


def check_against_torch(ours, theirs, inputs, backward, what):
    """Fail the benchmark unless ours(*inputs) and, with `backward`, its gradients (for a seeded
    random projection of the output) match theirs(*inputs) on the same inputs."""
    def results(fn):
        leaves = [t.detach().clone().requires_grad_(backward and t.is_floating_point()) for t in inputs]
        out = fn(*leaves)
        if not backward:
            return [out.detach()]
        projection = torch.randn(out.shape, generator=seeded_generator(what)).to(out)
        return [out.detach(), *torch.autograd.grad(out, [t for t in leaves if t.requires_grad], projection)]

    for name, got, expected in zip(["output", "grad 0", "grad 1", "grad 2"], results(ours), results(theirs)):
        relative = CHECK_TOLERANCE[expected.dtype]
        if expected.is_cuda and expected.dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
            relative = TF32_CHECK_TOLERANCE  # both sides multiply TF32 operands (10-bit mantissas)
        tolerance = relative * max(1.0, expected.abs().max().item())
        error = (got.float() - expected.float()).abs().max().item()
        if not error <= tolerance:  # also catches NaN
            pytest.fail(f"{what}: cuconv's {name} differs from torch's by {error:.3g} (allowed {tolerance:.3g}); "
                        "not timed")
