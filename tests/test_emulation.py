"""The emulated CUDA device itself (csrc/emulation/): it runs the CUDA kernels, it catches the bugs
it is there to catch (races, overruns, unwritten outputs, illegal launches, barrier misuse), the
kernels agree bitwise under every thread schedule, and the host code's device-dependent choices
(split-K, grid chunking) are all taken by configuring the device.

The device-parametrised suite runs on the emulated device through the "emulated" device of
conftest.py; this file checks what that cannot."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cuconv
import cuconv.functional as CF
import emulated_cuda
from test_ops import CONV_CASES, assert_matches, conv_fns, conv_tensors, forward_and_grads, random_pool_cases

pytestmark = pytest.mark.skipif(not emulated_cuda.AVAILABLE,
                                reason="cuconv._C_emulated not built (CUCONV_EMULATED_CUDA=1)")

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ["forward", "reverse", "random"]


def selftest(bug, x):
    return torch.ops.cuconv_emulated.selftest(bug, x)


# --- the emulated kernels run ------------------------------------------------------------------

def test_routed_ops_run_the_emulated_cuda_kernels():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    before = emulated_cuda.module.stats()
    with emulated_cuda.routed():
        y = CF.conv2d(x, w, padding=1)
    after = emulated_cuda.module.stats()
    assert after["launches"] > before["launches"] and after["threads"] > before["threads"]
    assert after["barriers"] > before["barriers"]  # the implicit GEMM's shared-memory steps
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1))
    CF.conv2d(x, w, padding=1)  # outside the block, cuconv's own CPU kernels again
    assert emulated_cuda.module.stats()["launches"] == after["launches"]


# --- bugs it catches --------------------------------------------------------------------------

def test_selftest_without_bugs_passes_under_every_schedule():
    x = torch.randn(256)
    for schedule in SCHEDULES:
        with emulated_cuda.configured(schedule=schedule, seed=1):
            assert torch.equal(selftest("none", x), x + x.roll(-1))


def test_a_missing_syncthreads_is_a_race_that_schedules_expose():
    x = torch.randn(256)
    results = []
    for schedule in SCHEDULES:
        with emulated_cuda.configured(schedule=schedule, seed=1):
            results.append(selftest("race", x))
    expected = x + x.roll(-1)
    assert all(not torch.equal(r, expected) for r in results)  # reads of poisoned shared memory: NaN
    assert not torch.equal(results[0], results[1])


def test_an_unwritten_output_element_shows_as_nan():
    y = selftest("unwritten", torch.randn(256))
    assert torch.isnan(y).tolist() == [False] * 255 + [True]


@pytest.mark.parametrize("bug,message", [
    ("grid", r"CUDA error: invalid configuration argument: grid \(1, 70000, 1\)"),
    ("block", r"CUDA error: invalid configuration argument: block \(2048, 1, 1\)"),
    ("shared", r"static __shared__ variables take 65536 bytes, more than 49152"),
    ("exit-barrier", r"__syncthreads\(\) reached by 255 threads after 1 threads of the block had exited"),
    ("shfl-exited", r"warp collective's mask names lane 0, which has exited"),
])
def test_illegal_launches_and_barrier_misuse_fail_like_a_launch(bug, message):
    x = torch.randn(256)
    with pytest.raises(RuntimeError, match=message):
        selftest(bug, x)
    assert torch.equal(selftest("none", x), x + x.roll(-1))  # and the device goes on working


_ASAN_SCRIPT = r"""
import sys, torch, cuconv
import cuconv._C_emulated_asan
x = torch.randn(256)
assert torch.equal(torch.ops.cuconv_emulated.selftest("none", x), x + x.roll(-1))
print("clean run ok", flush=True)
torch.ops.cuconv_emulated.selftest("overrun", x)
print("overrun not caught", flush=True)
"""


def _asan_environment():
    asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    ubsan = subprocess.run(["gcc", "-print-file-name=libubsan.so"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, LD_PRELOAD=f"{asan}:{ubsan}", ASAN_OPTIONS="detect_leaks=0",
               CUCONV_EMULATED_MODULE="_C_emulated_asan",
               PYTHONPATH=str(Path(cuconv.__file__).resolve().parents[1]))
    return env


def _asan_built():
    return (any(Path(cuconv.__file__).parent.glob("_C_emulated_asan*.so")) and shutil.which("gcc") is not None)


needs_asan = pytest.mark.skipif(not _asan_built(), reason="cuconv._C_emulated_asan not built (CUCONV_EMULATED_CUDA=asan)")


@needs_asan
def test_address_sanitizer_catches_a_read_past_a_buffer(tmp_path):
    result = subprocess.run([sys.executable, "-c", _ASAN_SCRIPT], env=_asan_environment(), capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert "clean run ok" in result.stdout, result.stderr[-3000:]
    assert result.returncode != 0 and "overrun not caught" not in result.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in result.stderr and "neighbour_sum_kernel" in result.stderr


# Every kernel family and dtype, a few shapes each, and the schedules: about a minute under the sanitizers.
ASAN_SELECTION = ("emulated and (test_every_op_is_bitwise or test_gradcheck or test_adaptive_avg_pool2d_matches "
                  "or half_precision) or test_kernels_are_bitwise_the_same_under_every_schedule")


@needs_asan
@pytest.mark.slow
def test_kernel_families_run_clean_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    """A subset of the device suite (every kernel family, every dtype) on the sanitizer build."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", ASAN_SELECTION,
         str(ROOT / "tests" / "test_ops.py"), str(ROOT / "tests" / "test_precision.py"),
         str(ROOT / "tests" / "test_emulation.py")],
        env=_asan_environment(), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and " passed" in summary, result.stdout[-3000:] + result.stderr[-3000:]


# --- every kernel family agrees under every schedule ---------------------------------------------

def _families():
    cases = []
    for i, c in enumerate(CONV_CASES[:8]):
        tensors = [t for t in conv_tensors(c, torch.float64, "cpu") if t is not None]
        cases.append((f"conv-{i}", *conv_fns(c, len(tensors) == 3), tensors))
    for i, c in enumerate(random_pool_cases(4, seed=31, with_dilation=True)):
        args = (c["kernel"], c["stride"], c["padding"], c["dilation"], c["ceil_mode"])
        x = torch.randn(c["batch"], c["channels"], *c["size"], dtype=torch.float64)
        cases.append((f"max-{i}", lambda t, a=args: CF.max_pool2d(t, *a), lambda t, a=args: F.max_pool2d(t, *a), [x]))
        cases.append((f"avg-{i}", lambda t, a=args: CF.avg_pool2d(t, *a[:3], a[4]),
                      lambda t, a=args: F.avg_pool2d(t, *a[:3], a[4]), [x]))
    x = torch.randn(2, 5, 9, 7, dtype=torch.float64)
    cases.append(("adaptive", lambda t: CF.adaptive_avg_pool2d(t, (4, 3)), lambda t: F.adaptive_avg_pool2d(t, (4, 3)), [x]))
    cases.append(("global", lambda t: CF.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1), [x]))
    w_depthwise = torch.randn(10, 1, 3, 3, dtype=torch.float64)
    cases.append(("depthwise", lambda t, w: CF.conv2d(t, w, None, 1, 1, 1, 5), lambda t, w: F.conv2d(t, w, None, 1, 1, 1, 5),
                  [x, w_depthwise]))
    return cases


FAMILIES = _families()


@pytest.mark.parametrize("case", FAMILIES, ids=[c[0] for c in FAMILIES])
def test_kernels_are_bitwise_the_same_under_every_schedule(case):
    """No shared-memory race in any kernel: forward, reverse and random thread orders between
    barriers give bitwise the same results (and torch's)."""
    _, ours, theirs, tensors = case
    results = []
    for schedule in SCHEDULES:
        with emulated_cuda.routed(schedule=schedule, seed=7):
            results.append(forward_and_grads(ours, tensors))
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0]) and all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))
    ref, ref_grads = forward_and_grads(theirs, tensors)
    assert_matches(results[0][0], ref, torch.float64)
    for g, r in zip(results[0][1], ref_grads):
        assert_matches(g, r, torch.float64)


# --- the host code's device-dependent paths --------------------------------------------------------

@pytest.mark.parametrize("shape,weight,groups", [
    ((8, 6, 60, 50), (8, 6, 3, 3), 1),      # the implicit GEMM's split-K weight gradient
    ((8, 6, 60, 50), (12, 1, 3, 3), 6),     # the depthwise weight gradient's split reduction
])
def test_split_counts_follow_the_multiprocessor_count(shape, weight, groups):
    """More multiprocessors ask for more split-K slices (more blocks): every count gives torch's
    gradients, through a different split."""
    x, w = torch.randn(*shape, dtype=torch.float64), torch.randn(*weight, dtype=torch.float64)
    b = torch.randn(weight[0], dtype=torch.float64)
    ref, ref_grads = forward_and_grads(lambda x, w, b: F.conv2d(x, w, b, 1, 1, 1, groups), [x, w, b])
    blocks = {}
    for sm_count in (1, 4, 132, 5000):
        before = emulated_cuda.module.stats()["blocks"]
        with emulated_cuda.routed(multiprocessor_count=sm_count):
            out, grads = forward_and_grads(lambda x, w, b: CF.conv2d(x, w, b, 1, 1, 1, groups), [x, w, b])
        blocks[sm_count] = emulated_cuda.module.stats()["blocks"] - before
        assert_matches(out, ref, torch.float64)
        for g, r in zip(grads, ref_grads):
            assert_matches(g, r, torch.float64)
    assert blocks[1] < blocks[132] <= blocks[5000], blocks


def test_large_grouped_grids_are_launched_in_chunks():
    """gridDim.z holds (group, split) pairs; with more than it can hold the groups go in several
    launches (max_grid_yz lowered so that a small layer needs them)."""
    x, w = torch.randn(2, 24, 7, 6, dtype=torch.float64), torch.randn(36, 2, 3, 3, dtype=torch.float64)
    before = emulated_cuda.module.stats()["launches"]
    with emulated_cuda.routed(max_grid_yz=5):
        out, grads = forward_and_grads(lambda x, w: CF.conv2d(x, w, None, 1, 1, 1, 12), [x, w])
    launches = emulated_cuda.module.stats()["launches"] - before
    ref, ref_grads = forward_and_grads(lambda x, w: F.conv2d(x, w, None, 1, 1, 1, 12), [x, w])
    assert_matches(out, ref, torch.float64)
    for g, r in zip(grads, ref_grads):
        assert_matches(g, r, torch.float64)
    assert launches >= 3 * 3  # 12 groups in chunks of at most 5: >= 3 launches for each of the 3 GEMMs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_a_batch_beyond_the_grid_is_transposed_in_chunks(dtype):
    """The tensor-core passes copy an NCHW operand to NHWC with one grid z-block a sample: a batch
    of more than max_grid_yz samples (65,535 on a GPU; 5 here) goes in several launches."""
    gen = torch.Generator().manual_seed(4)
    x, w = torch.randn(7, 16, 3, 4, generator=gen).to(dtype), torch.randn(16, 16, 1, 1, generator=gen).to(dtype)
    with emulated_cuda.routed(max_grid_yz=5):
        out, grads = forward_and_grads(lambda x, w: CF.conv2d(x, w), [x, w])
        assert emulated_cuda.module.last_kernels()["forward"].startswith("tensor_core")
    ref, ref_grads = forward_and_grads(lambda x, w: F.conv2d(x.double(), w.double()), [x, w])
    assert_matches(out, ref.to(dtype), dtype)
    for g, r in zip(grads, ref_grads):
        assert_matches(g, r.to(dtype), dtype)


def test_configuration_is_checked():
    with pytest.raises(ValueError, match="schedule to be forward, reverse or random"):
        emulated_cuda.module.configure(schedule="sideways")
    with pytest.raises(ValueError, match="multiprocessor_count >= 1"):
        emulated_cuda.module.configure(multiprocessor_count=0)


# --- the emulated matrix instructions against plain matrix products --------------------------

def _tf32(t):
    """float32 rounded to tf32 as cvt.rna.tf32.f32 does (to nearest, ties away from zero)."""
    bits = t.view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("b_trans", [False, True], ids=["ldmatrix", "ldmatrix.trans"])
def test_mma_m16n8k16_with_ldmatrix_fragments_is_a_matrix_product(dtype, b_trans):
    """ldmatrix (both ways) and mma.sync m16n8k16 together compute A B + C: the fragment
    layouts of the two instructions, as emulated, agree with each other and with the ISA."""
    a, b, c = torch.randn(16, 16).to(dtype), torch.randn(16, 8).to(dtype), torch.randn(16, 8)
    d = torch.ops.cuconv_emulated.selftest_mma(a, b, c, b_trans)
    torch.testing.assert_close(d.double(), a.double() @ b.double() + c.double(), rtol=1e-6, atol=1e-5)


def test_mma_m16n8k8_tf32_rounds_its_operands():
    a, b, c = torch.randn(16, 8), torch.randn(8, 8), torch.randn(16, 8)
    d = torch.ops.cuconv_emulated.selftest_mma(a, b, c, False)
    torch.testing.assert_close(d.double(), _tf32(a).double() @ _tf32(b).double() + c.double(), rtol=1e-6, atol=1e-5)
    assert (d.double() - (a.double() @ b.double() + c.double())).abs().max() > 1e-4  # tf32, not float32


def test_cp_async_lands_at_the_wait_and_zero_fills():
    x = torch.randn(64)
    before, after = torch.ops.cuconv_emulated.selftest_cp_async(x)
    assert torch.isnan(before).all()  # read before cp.async.wait_group: shared memory's poison
    assert torch.equal(after[:60], x[:60]) and torch.equal(after[60:], torch.zeros(4))
