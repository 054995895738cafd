"""Shared fixtures: devices, dtypes and tolerances for comparing cuconv with torch.

Device-parametrised tests take `device` through the fixture below (indirect parametrisation):
"cpu", "cuda" where there is a GPU and cuconv has its CUDA kernels, and "emulated" where
cuconv._C_emulated was built (CUCONV_EMULATED_CUDA=1): the CUDA kernels on the emulated
device (tests/emulated_cuda.py), with CPU tensors, so the test receives device "cpu".
"""

import os

import pytest
import torch

# Tests assert which CUDA kernel family ran: the rules decide (the default), whatever the
# environment says; the tests of the measured choice (test_cuda_tuning.py) turn it on.
os.environ["CUCONV_CUDA_TUNE"] = "0"

import cuconv  # noqa: E402
import emulated_cuda  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and cuconv.with_cuda

_NO_GPU = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU (or cuconv built CPU-only)")
_NO_EMULATION = pytest.mark.skipif(not emulated_cuda.AVAILABLE,
                                   reason="cuconv._C_emulated not built (CUCONV_EMULATED_CUDA=1)")

# Every device test runs on cpu, on cuda where there is a GPU and the CUDA kernels were built,
# and on the emulated CUDA device where it was built. Use with indirect=True.
DEVICES = ["cpu", pytest.param("cuda", marks=_NO_GPU), pytest.param("emulated", marks=_NO_EMULATION)]
# The CUDA kernels: on a GPU, or on the emulated device.
CUDA_DEVICES = [pytest.param("cuda", marks=_NO_GPU), pytest.param("emulated", marks=_NO_EMULATION)]


@pytest.fixture
def device(request):
    """The torch device for the test's tensors; "emulated" routes cuconv's CPU kernels to the
    emulated CUDA kernels for the test's duration and gives "cpu"."""
    if request.param != "emulated":
        yield request.param
        return
    with emulated_cuda.routed():
        yield "cpu"


# rtol/atol for comparing against torch.nn.functional, per dtype.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}
TOLERANCES.update({torch.complex128: TOLERANCES[torch.float64], torch.complex64: TOLERANCES[torch.float32],
                   torch.complex32: TOLERANCES[torch.float16]})


def pytest_report_header(config):
    return (f"cuconv from {cuconv.__file__} (CUDA kernels: {cuconv.with_cuda}, emulated CUDA device: "
            f"{emulated_cuda.AVAILABLE}), torch {torch.__version__}, threads {torch.get_num_threads()}")


@pytest.fixture(params=[1, 3, 7], ids=lambda n: f"{n}threads")
def threads(request):
    """Runs the test with 1, 3 and 7 threads (work split by the thread count gets several uneven
    parts), then restores the count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _exact_float32():
    """float32 is float32 in every test: on a GPU torch's convolutions (and so cuconv's, which
    follow them) would otherwise default to TF32, 1e-3 from float64. Tests of TF32 set it
    themselves, or pass allow_tf32 to the ops."""
    # (the legacy switches: they set cuDNN's conv and RNN flags alike, so that both APIs can read them)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
