"""A strided layer's input gradient by stride phase on the CPU (csrc/cpu/stride_phases.h): one
stride-1 forward pass per phase over the phase's kernel taps, the results interleaved. Forced with
CUCONV_CPU_BY_PHASE=1, each phase's forward pass by the direct kernels (CUCONV_CPU_DIRECT=1) or
the GEMM (=0), against torch in float64 over strides (up to 4, each dimension its own), dilations
sharing a factor with the stride (phases with every other tap, or none), padding past the
kernel's reach, kernels smaller than the stride (positions no tap reaches: zeros), input rows no
window reaches; the measured choice takes it as a candidate; Inf and NaN weights get the GEMM's
answer; the transposed convolution (this op) runs it."""

import random

import pytest
import torch
import torch.nn.functional as F

import cuconv
import cuconv.functional as CF
from cuconv import _C, ops
from test_ops import assert_matches
from test_tuning import fresh_choices, needs_direct  # noqa: F401 (fresh_choices: autouse, the switches unset)


def random_cases(count, seed):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        kernel = (rng.randint(1, 6), rng.randint(1, 6))
        stride = (rng.randint(1, 4), rng.randint(2, 4)) if rng.random() < 0.5 else (rng.randint(2, 4), rng.randint(1, 4))
        dilation = (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2, 4]))
        padding = (rng.randint(0, 7), rng.randint(0, 7))
        size = (rng.randint(1, 20), rng.randint(1, 20))
        out = [(size[d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in (0, 1)]
        if min(out) < 1:
            continue
        cases.append(dict(batch=rng.choice([1, 2, 5]), in_channels=rng.choice([1, 3, 8, 20, 70]),
                          out_channels=rng.choice([1, 4, 16, 33]), kernel=kernel, stride=stride, padding=padding,
                          dilation=dilation, size=size))
    return cases


CASES = random_cases(40, seed=5) + [
    # ResNet's stride-2 3x3 layer: phases of 1, 2, 2 and 4 taps, windows padded at the end
    dict(batch=5, in_channels=24, out_channels=40, kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1),
         size=(12, 12)),
    # the DCGAN generator's 4x4 kernel of stride 2: 2x2 taps a phase, windows padded at either end
    dict(batch=2, in_channels=16, out_channels=32, kernel=(4, 4), stride=(2, 2), padding=(1, 1), dilation=(1, 1),
         size=(16, 16)),
    # a U-Net's 2x2 kernel of stride 2: one tap a phase, grad_output read in place
    dict(batch=2, in_channels=12, out_channels=24, kernel=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1),
         size=(14, 14)),
    # a 1x1 shortcut of stride 2: three phases of four no tap reaches (zeros)
    dict(batch=2, in_channels=16, out_channels=32, kernel=(1, 1), stride=(2, 2), padding=(0, 0), dilation=(1, 1),
         size=(11, 11)),
    # dilation 2 on stride 2: the odd phases have no taps; the even ones every tap, one row apart
    dict(batch=2, in_channels=5, out_channels=6, kernel=(3, 3), stride=(2, 2), padding=(2, 2), dilation=(2, 2),
         size=(9, 10)),
    # padding past the kernel's reach: phases whose windows start after grad_output's first row
    dict(batch=2, in_channels=3, out_channels=7, kernel=(2, 3), stride=(3, 2), padding=(5, 4), dilation=(1, 1),
         size=(4, 5)),
]


def _ids(case):
    return "n{batch}c{in_channels}o{out_channels}k{kernel}s{stride}p{padding}d{dilation}i{size}".format(
        **case).replace(" ", "")


def _operands(case, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(case["out_channels"], case["in_channels"], *case["kernel"], generator=gen, dtype=torch.float64)
    out = [(case["size"][d] + 2 * case["padding"][d] - case["dilation"][d] * (case["kernel"][d] - 1) - 1)
           // case["stride"][d] + 1 for d in (0, 1)]
    dy = torch.randn(case["batch"], case["out_channels"], *out, generator=gen, dtype=torch.float64)
    return dy, w, [case["batch"], case["in_channels"], *case["size"]]


def _input_gradient(case, dy, w, size):
    return ops.conv2d_backward_input(dy, w, size, list(case["stride"]), list(case["padding"]),
                                     list(case["dilation"]), 1)


def _expected(case, dy, w, size):
    return torch.nn.grad.conv2d_input(size, w, dy, stride=case["stride"], padding=case["padding"],
                                      dilation=case["dilation"])


@pytest.mark.parametrize("direct", ["1", "0"], ids=["phases-direct", "phases-gemm"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_input_gradient_by_phase_matches_torch(case, direct, monkeypatch):
    """Batches of 5 run in chunks of 2 samples (2, 2 and 1), the others whole."""
    if direct == "1" and _C.cpu_kernels()["direct_conv"] == "never":
        pytest.skip("no direct kernels on this CPU (or CUCONV_CPU_ISA=generic)")
    monkeypatch.setenv("CUCONV_CPU_BY_PHASE", "1")
    monkeypatch.setenv("CUCONV_CPU_DIRECT", direct)
    if case["batch"] == 5:
        monkeypatch.setenv("CUCONV_CPU_PHASE_CHUNK", "2")
    dy, w, size = _operands(case)
    got = _input_gradient(case, dy.float(), w.float(), size)
    assert got.shape == tuple(size) and got.is_contiguous()
    assert_matches(got, _expected(case, dy, w, size).float(), torch.float32)


def test_by_phase_is_the_path_that_runs(monkeypatch):
    """On and off (col2im then), the sums round differently, so the switch reaches the phases;
    both match float64, through autograd too."""
    case = CASES[-5]
    dy, w, size = _operands(case)
    x = torch.randn(size, dtype=torch.float64)
    monkeypatch.setenv("CUCONV_CPU_PIXEL_GEMM", "0")  # off, the GEMM and col2im alone
    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("CUCONV_CPU_BY_PHASE", setting)
        xl = x.float().requires_grad_()
        y = CF.conv2d(xl, w.float(), stride=case["stride"], padding=case["padding"])
        results[setting] = torch.autograd.grad(y, xl, dy.float())[0]
        assert_matches(results[setting], _expected(case, dy, w, size).float(), torch.float32)
    assert not torch.equal(results["1"], results["0"])


@pytest.mark.parametrize("special", [float("inf"), float("nan")])
def test_inf_and_nan_weights_get_the_gemm_answer(special, monkeypatch):
    """The phases multiply their windows' zero padding by every tap, where torch (and col2im) have
    no product at all: 0 * Inf would be NaN. So a non-finite weight runs col2im, bitwise."""
    case = CASES[-6]
    dy, w, size = (t.float() if torch.is_tensor(t) else t for t in _operands(case))
    w[3, 2, 0, 1] = special
    monkeypatch.setenv("CUCONV_CPU_DIRECT", "0")  # nothing else measured: the GEMM, or the phases
    monkeypatch.setenv("CUCONV_CPU_PIXEL_GEMM", "0")
    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("CUCONV_CPU_BY_PHASE", setting)
        results[setting] = _input_gradient(case, dy, w, size)
    torch.testing.assert_close(results["1"], results["0"], rtol=0, atol=0, equal_nan=True)
    expected = _expected(case, dy.double(), w.double(), size)
    assert torch.equal(results["1"].isnan(), expected.isnan())


@needs_direct
def test_the_measured_choice_takes_the_phases_as_a_candidate(monkeypatch, capfd):
    """Tuning a strided layer's input gradient measures by_phase beside the GEMM, and nothing
    inside it (its phases run the direct kernels); a recorded choice decides the path."""
    case = CASES[-5]
    dy, w, size = (t.float() if torch.is_tensor(t) else t for t in _operands(case))
    monkeypatch.setenv("CUCONV_LOG", "1")
    _input_gradient(case, dy, w, size)
    tuned = [line for line in capfd.readouterr().err.splitlines() if line.startswith("cuconv: tuned")]
    (line,) = tuned
    assert line.split()[2] == "conv2d_backward_input", line
    assert "by_phase " in line and "gemm " in line, line
    (key,) = [k for k in cuconv.tuning.choices() if k.startswith("conv2d_backward_input ")]
    monkeypatch.delenv("CUCONV_LOG")
    results = {}
    for path in ("by_phase", "gemm"):
        _C.cpu_tuning_set({key: path})
        results[path] = _input_gradient(case, dy, w, size)
        assert cuconv.tuning.choices()[key] == path
        assert_matches(results[path], _expected(case, dy.double(), w.double(), size).float(), torch.float32)
    assert not torch.equal(results["by_phase"], results["gemm"])


@pytest.mark.parametrize("variable, value, expected", [
    ("CUCONV_CPU_BY_PHASE", "yes", r"CUCONV_CPU_BY_PHASE to be 0 or 1, but got 'yes'"),
    ("CUCONV_CPU_PHASE_CHUNK", "0", r"CUCONV_CPU_PHASE_CHUNK to be a positive integer, but got '0'"),
    ("CUCONV_CPU_PHASE_CHUNK", "2x", r"CUCONV_CPU_PHASE_CHUNK to be a positive integer, but got '2x'"),
])
def test_a_bad_setting_is_an_error(variable, value, expected, monkeypatch):
    monkeypatch.setenv("CUCONV_CPU_BY_PHASE", "1")
    monkeypatch.setenv(variable, value)
    case = CASES[-5]
    dy, w, size = (t.float() if torch.is_tensor(t) else t for t in _operands(case))
    with pytest.raises(ValueError, match=expected):
        _input_gradient(case, dy, w, size)


@pytest.mark.parametrize("case", [CASES[-5], CASES[-4]], ids=["dcgan", "unet"])
def test_the_transposed_convolution_runs_by_phase(case, monkeypatch):
    """conv_transpose2d's forward pass is this input gradient: by phase (its sums round otherwise
    than col2im's), torch's values, and its gradients too."""
    dy, w, size = _operands(case)
    monkeypatch.setenv("CUCONV_CPU_PIXEL_GEMM", "0")
    monkeypatch.setenv("CUCONV_CPU_BY_PHASE", "0")
    by_col2im = CF.conv_transpose2d(dy.float(), w.float(), stride=case["stride"], padding=case["padding"])
    monkeypatch.setenv("CUCONV_CPU_BY_PHASE", "1")
    x = dy.float().requires_grad_()
    ours = CF.conv_transpose2d(x, w.float(), stride=case["stride"], padding=case["padding"])
    if case["kernel"] != case["stride"]:  # (one tap a phase, the U-Net's: the same sums either way)
        assert not torch.equal(ours.detach(), by_col2im)
    expected = F.conv_transpose2d(dy, w, stride=case["stride"], padding=case["padding"])
    assert_matches(ours, expected.float(), torch.float32)
    g = torch.randn(ours.shape, generator=torch.Generator().manual_seed(2))
    (dx,) = torch.autograd.grad(ours, x, g)
    assert_matches(dx, F.conv2d(g.double(), w, stride=case["stride"], padding=case["padding"]).float(),
                   torch.float32)


@pytest.mark.parametrize("by_group", ["0", "1"], ids=["gemm-per-group", "group-by-group"])
@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_layers_match_torch(groups, by_group, monkeypatch):
    """The phases take groups = 1: a grouped layer's GEMM per group (CUCONV_CPU_BY_GROUP=0) runs
    col2im, its groups as layers of their own (=1) the phases; torch's values either way."""
    monkeypatch.setenv("CUCONV_CPU_BY_PHASE", "1")
    monkeypatch.setenv("CUCONV_CPU_BY_GROUP", by_group)
    case = dict(CASES[-6], in_channels=8, out_channels=12)
    dy, w, size = _operands(case)
    w = w[:, : 8 // groups].contiguous()
    got = ops.conv2d_backward_input(dy.float(), w.float(), size, list(case["stride"]), list(case["padding"]),
                                    list(case["dilation"]), groups)
    expected = torch.nn.grad.conv2d_input(size, w, dy, stride=case["stride"], padding=case["padding"],
                                          dilation=case["dilation"], groups=groups)
    assert_matches(got, expected.float(), torch.float32)


def test_an_empty_batch_gives_an_empty_gradient(monkeypatch):
    monkeypatch.setenv("CUCONV_CPU_BY_PHASE", "1")
    case = dict(CASES[-6], batch=0)
    dy, w, size = (t.float() if torch.is_tensor(t) else t for t in _operands(case))
    assert _input_gradient(case, dy, w, size).shape == (0, case["in_channels"], *case["size"])
