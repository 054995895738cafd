"""The CUDA kernels' measured choice of family (csrc/cuda/conv2d.cu run_chosen, on the shared
algorithm of csrc/tuning/measured_choice.h, whose picking of the faster candidate
test_tuning.py checks on candidates with made-up speeds): which families are measured, that a
recorded choice decides, that nothing waits for a stream capturing a CUDA graph, and the
switch. On the emulated device (where the times are the emulation's: which family wins there
means nothing) and on a GPU where there is one.

Measuring is off by default: the ops' `benchmark` argument (cuconv.functional passes torch's
cudnn.benchmark) turns it on, CUCONV_CUDA_TUNE=1 / 0 overrides that; these tests turn it on."""

import re

import pytest
import torch
import torch.nn.functional as F

import emulated_cuda
from test_cuda_kernels import TARGETS, Target, _random

pytestmark = pytest.mark.skipif(not TARGETS, reason="neither the emulated device nor a GPU")


@pytest.fixture(params=TARGETS)
def target(request, monkeypatch):
    """A target with the measuring on and an empty table (emptied again afterwards)."""
    monkeypatch.setenv("CUCONV_CUDA_TUNE", "1")
    t = Target(request.param)
    t.module.cuda_tuning_set(None)
    yield t
    t.module.cuda_tuning_set(None)


def _set_tuning_variable(monkeypatch, setting):
    """CUCONV_CUDA_TUNE set to `setting`, or unset for None."""
    if setting is None:
        monkeypatch.delenv("CUCONV_CUDA_TUNE")
    else:
        monkeypatch.setenv("CUCONV_CUDA_TUNE", setting)


def _synchronizations(target):
    return emulated_cuda.module.stats()["synchronizations"] if target.name == "emulated" else None


# (x shape, w shape, stride, padding, groups, allow_tf32) -> the families measured, the rule's first
MEASURED = {
    "tf32": (((2, 16, 9, 11), (24, 16, 3, 3), 1, 1, 1, True), {
        "conv2d": ["tensor_core", "simt"], "conv2d_backward_input": ["tensor_core", "simt"],
        "conv2d_backward_weight": ["tensor_core", "simt"]}),
    "one-input-channel": (((2, 1, 20, 18), (64, 1, 7, 7), 2, 3, 1, False), {
        "conv2d": ["simt", "depthwise"], "conv2d_backward_weight": ["depthwise", "simt"]}),
}


PASS_NAMES = {"conv2d": "conv2d_forward", "conv2d_backward_input": "conv2d_backward_input",
              "conv2d_backward_weight": "conv2d_backward_weight"}


def _call(target, name, case, g, benchmark=False):
    x_shape, w_shape, stride, padding, groups, allow_tf32 = case
    x, w = _random(x_shape, torch.float32, target.device, g), _random(w_shape, torch.float32, target.device, g)
    conv = ((stride, stride), (padding, padding), (1, 1), groups, allow_tf32, benchmark)
    y_shape = F.conv2d(torch.empty(x_shape), torch.empty(w_shape), None, stride, padding, 1, groups).shape
    dy = _random(y_shape, torch.float32, target.device, g)
    args = {"conv2d": (x, w, None, *conv), "conv2d_backward_input": (dy, w, list(x_shape), *conv),
            "conv2d_backward_weight": (dy, x, list(w_shape), *conv)}[name]
    return target.run(name, *args), args


def _reference(name, args, case):
    _, w_shape, stride, padding, groups, _ = case
    a, b = args[0].cpu().double(), args[1].cpu().double()
    if name == "conv2d":
        return F.conv2d(a, b, None, stride, padding, 1, groups)
    if name == "conv2d_backward_input":
        return torch.nn.grad.conv2d_input(args[2], b, a, stride, padding, 1, groups)
    return torch.nn.grad.conv2d_weight(b, w_shape, a, stride, padding, 1, groups)


@pytest.mark.parametrize("layer", MEASURED)
def test_each_family_that_can_run_a_call_is_measured_and_the_winner_recorded(target, layer, capfd, monkeypatch):
    """The first call of a shape times every family that can run it (the log names them with
    their times), waiting for the stream around each timed run, records the fastest under a key
    naming the pass, dtype, TF32, geometry and GPU, and returns that family's result."""
    monkeypatch.setenv("CUCONV_LOG", "1")
    case, passes = MEASURED[layer]
    g = torch.Generator().manual_seed(21)
    for name, families in passes.items():
        before = _synchronizations(target)
        (out, ran), args = _call(target, name, case, g)
        log = capfd.readouterr().err
        lines = re.findall(r"^cuconv: tuned (.*?): (.*) -> (\w+) \(tuning took", log, re.MULTILINE)
        assert len(lines) == 1, log
        key, times, winner = lines[0]
        assert re.findall(r"(\w+) [0-9.]+ ms", times) == families
        assert target.module.cuda_tuning() == {key: winner} and winner == ran
        assert key.startswith(PASS_NAMES[name] + " float32" + (" tf32" if case[-1] else "") + " layouts=nchw,nchw N=")
        assert key.endswith("gpu=emulated" if target.name == "emulated" else "gpu=" + torch.cuda.get_device_name())
        if before is not None:  # around each of 2 rounds x the candidates
            assert _synchronizations(target) - before >= 2 * 2 * len(families)
        # The call's result is the winner's: the winner alone, recorded, computes the same. And
        # every family, recorded, gives torch's values (TF32: to a TF32 rounding).
        ref = _reference(name, args, case)
        tolerance = 2e-3 if case[-1] else 1e-5
        for family in families:
            target.module.cuda_tuning_set({key: family})
            again, ran_again = target.run(name, *args)
            assert ran_again == family
            if family == ran:
                torch.testing.assert_close(again, out, rtol=0, atol=0)
            torch.testing.assert_close(again.cpu().double(), ref, rtol=tolerance, atol=tolerance * ref.abs().max().item())
        target.module.cuda_tuning_set(None)


@pytest.mark.parametrize("family", ["tensor_core", "simt"])
def test_a_recorded_choice_decides_the_family_and_others_still_give_torchs_values(target, family):
    case, _ = MEASURED["tf32"]
    g = torch.Generator().manual_seed(22)
    _call(target, "conv2d", case, g)
    (key, _), = target.module.cuda_tuning().items()
    target.module.cuda_tuning_set({key: family})
    (y, ran), (x, w, *_) = _call(target, "conv2d", case, torch.Generator().manual_seed(22))
    assert ran == family
    ref = F.conv2d(x.cpu().double(), w.cpu().double(), None, 1, 1)
    torch.testing.assert_close(y.cpu().double(), ref, rtol=2e-3, atol=2e-3 * ref.abs().max().item())  # TF32


def test_a_recorded_family_that_cannot_run_the_call_is_measured_again(target):
    case, _ = MEASURED["tf32"]
    g = torch.Generator().manual_seed(23)
    _call(target, "conv2d", case, g)
    (key, _), = target.module.cuda_tuning().items()
    target.module.cuda_tuning_set({key: "depthwise"})  # not a candidate of a 16-channel layer
    _, ran = _call(target, "conv2d", case, g)[0]
    assert ran in ("tensor_core", "simt") and target.module.cuda_tuning()[key] == ran


def test_layouts_and_bias_are_keyed_apart(target):
    """A channels_last input makes the NCHW families copy it, a bias changes the epilogue: each its own choice."""
    g = torch.Generator().manual_seed(27)
    x = _random((2, 16, 9, 11), torch.float32, target.device, g)
    w, b = _random((24, 16, 3, 3), torch.float32, target.device, g), _random((24,), torch.float32, target.device, g)
    conv = ((1, 1), (1, 1), (1, 1), 1, True)
    for tensor, bias in ((x, None), (x.to(memory_format=torch.channels_last), None), (x, b)):
        target.run("conv2d", tensor, w, bias, *conv)
    keys = sorted(target.module.cuda_tuning())
    assert len(keys) == 3, keys
    assert {("layouts=channels_last,nchw" in k, " bias " in k) for k in keys} == {(False, False), (False, True),
                                                                                   (True, False)}


@pytest.mark.skipif("emulated" not in TARGETS, reason="the emulated device plays the capture")
def test_while_a_graph_is_captured_nothing_waits_and_a_recorded_choice_or_the_rule_decides(target):
    if target.name != "emulated":
        pytest.skip("the emulated device's capture")
    case, _ = MEASURED["tf32"]
    g = torch.Generator().manual_seed(24)
    with emulated_cuda.configured(capturing=True):
        before = _synchronizations(target)
        _, ran = _call(target, "conv2d", case, g)[0]
        assert ran == "tensor_core" and _synchronizations(target) == before  # the rule, unmeasured
        assert target.module.cuda_tuning() == {}
    _call(target, "conv2d", case, g)  # measured outside the capture
    (key, _), = target.module.cuda_tuning().items()
    target.module.cuda_tuning_set({key: "simt"})
    with emulated_cuda.configured(capturing=True):
        _, ran = _call(target, "conv2d", case, g)[0]
        assert ran == "simt"


@pytest.mark.parametrize("setting", ["0", None])
def test_measuring_off_leaves_every_choice_to_the_rule_and_a_bad_setting_is_an_error(target, monkeypatch, setting):
    """Off by default (unset), as torch's cudnn.benchmark."""
    case, passes = MEASURED["one-input-channel"]
    _set_tuning_variable(monkeypatch, setting)
    before = _synchronizations(target)
    g = torch.Generator().manual_seed(25)
    for name, families in passes.items():
        _, ran = _call(target, name, case, g)[0]
        assert ran == families[0]
    assert target.module.cuda_tuning() == {} and _synchronizations(target) == before
    monkeypatch.setenv("CUCONV_CUDA_TUNE", "yes")
    with pytest.raises(ValueError, match="CUCONV_CUDA_TUNE to be 0 or 1, but got 'yes'"):
        _call(target, "conv2d", case, g)


@pytest.mark.parametrize("setting, cudnn_benchmark, measured", [(None, True, True), (None, False, False),
                                                         ("0", True, False), ("1", False, True)])
def test_the_benchmark_argument_turns_measuring_on_unless_the_variable_says_otherwise(
        target, monkeypatch, setting, cudnn_benchmark, measured):
    """The ops' benchmark argument (torch.backends.cudnn.benchmark, from cuconv.functional) measures
    where CUCONV_CUDA_TUNE is unset; set, the variable decides."""
    case, passes = MEASURED["one-input-channel"]
    _set_tuning_variable(monkeypatch, setting)
    before = _synchronizations(target)
    g = torch.Generator().manual_seed(27)
    for name in passes:
        _call(target, name, case, g, cudnn_benchmark)
    assert len(target.module.cuda_tuning()) == (len(passes) if measured else 0)
    if before is not None:
        assert (_synchronizations(target) > before) == measured


def test_one_family_is_not_measured(target):
    """A pass only one family can run (float32 without TF32, several input channels) records nothing."""
    g = torch.Generator().manual_seed(26)
    _, ran = _call(target, "conv2d", ((2, 16, 9, 11), (24, 16, 3, 3), 1, 1, 1, False), g)[0]
    assert ran == "simt" and target.module.cuda_tuning() == {}


@pytest.mark.skipif(not torch.cuda.is_available() or "cuda" not in TARGETS, reason="no CUDA GPU")
def test_a_shape_first_seen_inside_a_graph_capture_is_not_measured_and_the_replay_matches_eager(monkeypatch):
    """Waiting for a capturing stream is an error (cudaErrorStreamCaptureUnsupported): a shape
    first seen while capturing takes the rule's family, unmeasured, and replays correctly."""
    import cuconv  # noqa: F401

    monkeypatch.setenv("CUCONV_CUDA_TUNE", "1")
    torch.ops.cuconv.conv2d  # noqa: B018  (loaded)
    x = torch.randn(2, 16, 9, 11, device="cuda")
    w = torch.randn(24, 16, 3, 3, device="cuda")
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.ops.cuconv.conv2d(x[:1], w, None, [1, 1], [1, 1], [1, 1], 1, True)  # warm-up, another shape
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        y = torch.ops.cuconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, True)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    eager = torch.ops.cuconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, True)
    torch.testing.assert_close(y, eager, rtol=0, atol=0) if cuconv._C_cuda.last_kernels()["forward"] == "tensor_core" \
        else torch.testing.assert_close(y, eager, rtol=2e-3, atol=2e-3 * eager.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available() or "cuda" not in TARGETS, reason="no CUDA GPU")
def test_measuring_on_a_side_stream_gives_torchs_values(monkeypatch):
    import cuconv

    monkeypatch.setenv("CUCONV_CUDA_TUNE", "1")
    cuconv.tuning.clear()
    x = torch.randn(4, 16, 20, 20, device="cuda")
    w = torch.randn(32, 16, 3, 3, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # queued before the measured call: the wait must cover it
        y = torch.ops.cuconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, True)  # measured here
    torch.cuda.current_stream().wait_stream(side)
    assert len(cuconv.tuning.cuda_choices()) == 1
    ref = F.conv2d(x.double(), w.double(), None, 1, 1)
    torch.testing.assert_close(y.double(), ref, rtol=2e-3, atol=2e-3 * ref.abs().max().item())  # (TF32)
    cuconv.tuning.clear()
