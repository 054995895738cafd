"""Options of the benchmark suite (pytest-benchmark, cuconv and torch side by side).

    pytest benchmarks --quick                  # a subset of shapes at batch 16, a few minutes
    pytest benchmarks --benchmark-json=out.json && python benchmarks/report.py out.json
"""

import time

import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("cuconv benchmarks")
    group.addoption("--quick", action="store_true", help="quick subset of shapes at a small batch")
    group.addoption("--batch", type=int, default=None, help="batch size (default 128, quick: 16)")
    group.addoption("--devices", default="cpu,cuda", help="comma-separated devices to run (those present)")
    group.addoption("--dtypes", default="float32", help="comma-separated dtypes, e.g. float32,bfloat16")


def _devices(config):
    wanted = config.getoption("--devices").split(",")
    return [d for d in wanted if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", _devices(config))
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", config.getoption("--dtypes").split(","))


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


def rounds_for(step, budget_s=0.25, fewest=5, most=200):
    """Enough rounds for a stable median: about budget_s of work, at least `fewest`
    (sub-millisecond cases get many, whole VGG layers a few)."""
    start = time.perf_counter()
    step()
    once = time.perf_counter() - start
    return int(min(most, max(fewest, budget_s / max(once, 1e-9))))
