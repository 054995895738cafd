"""Shared fixtures: devices, dtypes and tolerances for comparing cuconv with torch."""

import pytest
import torch

import cuconv

HAS_CUDA = torch.cuda.is_available() and cuconv.with_cuda

# Every device test runs on cpu, and on cuda where there is a GPU and the CUDA kernels were built.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU (or cuconv built CPU-only)")),
]

# rtol/atol for comparing against torch.nn.functional, per dtype.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def pytest_report_header(config):
    return (f"cuconv from {cuconv.__file__} (CUDA kernels: {cuconv.with_cuda}), "
            f"torch {torch.__version__}, threads {torch.get_num_threads()}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
