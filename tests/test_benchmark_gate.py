"""The benchmarks time nothing that is wrong: their correctness gate (benchmarks/conftest.py)
passes cuconv's ops and fails a kernel that is off by a little."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cuconv.functional as CF

_spec = importlib.util.spec_from_file_location(
    "benchmark_conftest", Path(__file__).resolve().parents[1] / "benchmarks" / "conftest.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_gate_passes_cuconv_and_shares_inputs_between_backends():
    gen_a, gen_b = bench.seeded_generator("vgg.b3.conv2", 16), bench.seeded_generator("vgg.b3.conv2", 16)
    x = bench.random_tensor((4, 8, 10, 10), gen_a, "cpu", torch.float32)
    assert torch.equal(x, bench.random_tensor((4, 8, 10, 10), gen_b, "cpu", torch.float32))
    w = torch.randn(6, 8, 3, 3) / 9
    bench.check_against_torch(lambda x, w: CF.conv2d(x, w, None, 1, 1), lambda x, w: F.conv2d(x, w, None, 1, 1),
                              (x, w), True, "conv")


@pytest.mark.parametrize("backward", [False, True])
def test_gate_fails_a_slightly_wrong_kernel(backward):
    x = torch.randn(4, 8, 10, 10)
    wrong = (lambda t: CF.avg_pool2d(t, 2) * 1.001) if not backward else (
        lambda t: CF.avg_pool2d(t, 2) + 0.01 * (t[:, :, ::2, ::2] - t[:, :, ::2, ::2].detach()))
    with pytest.raises(pytest.fail.Exception, match="not timed"):
        bench.check_against_torch(wrong, lambda t: F.avg_pool2d(t, 2), (x,), backward, "avg")
