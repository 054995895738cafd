"""The measured choice of CPU kernels (csrc/tuning/measured_choice.h, csrc/cpu/tuner.h,
cuconv/tuning.py): the chooser picks the faster candidate, the call that measures returns the
winner's result, recorded choices are followed, and the choices survive a process through the
on-disk cache. (The CUDA kernels' use of the same chooser: test_cuda_tuning.py.)"""

import json
import os
import subprocess
import sys
import threading

import pytest
import torch

import cuconv
import cuconv.functional as CF
from cuconv import _C
from test_ops import assert_matches

needs_direct = pytest.mark.skipif(_C.cpu_kernels()["direct_conv"] == "never",
                                  reason="no direct kernels on this CPU: only the GEMM can run")


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    for name in ("CUCONV_CPU_DIRECT", "CUCONV_CPU_WINOGRAD", "CUCONV_CPU_PIXEL_GEMM", "CUCONV_CPU_BY_PHASE",
                 "CUCONV_CPU_PHASE_CHUNK", "CUCONV_CPU_BY_GROUP", "CUCONV_CPU_TUNE", "CUCONV_LOG", "CUCONV_TUNE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    saved = cuconv.tuning.choices()
    cuconv.tuning.clear()
    yield
    cuconv.tuning.clear()
    _C.cpu_tuning_set(saved)


@pytest.mark.parametrize("waits, faster", [((0.03, 0.002), 1), ((0.002, 0.03), 0), ((0.03, 0.02, 0.002), 2)])
def test_the_chooser_picks_the_faster_candidate_and_remembers_it(waits, faster):
    key = f"test {waits}"
    assert _C.cpu_tuner_pick(key, waits) == faster
    assert cuconv.tuning.choices()[key] == str(faster)
    # Now recorded: the winner runs at once, even where its speed has changed.
    slower_now = tuple(0.0 if i != faster else 0.01 for i in range(len(waits)))
    assert _C.cpu_tuner_pick(key, slower_now) == faster


@pytest.mark.parametrize("waits, winner", [((-1, 0.002), 1), ((0.002, -1), 0), ((0.03, -1, 0.002), 2)])
def test_a_candidate_that_fails_is_passed_over_and_only_all_failing_fail_the_call(waits, winner):
    """(Out of memory for one kernel's buffers must not fail a call another kernel can make.)"""
    key = f"failing {waits}"
    assert _C.cpu_tuner_pick(key, waits) == winner
    assert cuconv.tuning.choices()[key] == str(winner)
    with pytest.raises(RuntimeError, match="candidate failed"):
        _C.cpu_tuner_pick("all failing", (-1, -1))
    assert "all failing" not in cuconv.tuning.choices()


def test_a_choice_measured_in_a_burst_of_load_is_measured_again_once():
    # Both candidates measured slow (a burst of load elsewhere): "1" looks faster and wins.
    key = "test disturbed"
    assert _C.cpu_tuner_pick(key, ((0.05, 0.05), (0.03, 0.03))) == 1
    # The next call runs the winner in a third of its measured time: the other candidate is
    # measured again, the fastest over both measurements wins, and this call returns its result.
    assert _C.cpu_tuner_pick(key, (0.002, 0.01)) == 0
    assert cuconv.tuning.choices()[key] == "0"
    # For good: the new winner running faster still is not measured again (if it were, "1"
    # would win now).
    assert _C.cpu_tuner_pick(key, (0.0005, 0.0)) == 0


# (Waits of 20 ms: a sleep that overran by a quarter in both measuring rounds would look like a
# disturbed measurement.)
def test_a_loser_measured_in_a_burst_of_load_wins_the_second_look():
    # "0" measured slow in both rounds (a burst of load over them); the winner "1" then runs as
    # measured, so no check sees the burst, until the last checked call looks again.
    key = "test steady"
    assert _C.cpu_tuner_pick(key, (0.06, 0.02)) == 1
    for _ in range(3):
        assert _C.cpu_tuner_pick(key, (0.0, 0.02)) == 1
    assert _C.cpu_tuner_pick(key, (0.0, 0.02)) == 0  # the second look: "0" is the faster
    assert cuconv.tuning.choices()[key] == "0"
    # For good: no more looks.
    for _ in range(3):
        assert _C.cpu_tuner_pick(key, (0.02, 0.0)) == 0


def test_a_second_look_keeps_each_candidates_best_time():
    # The second look is disturbed itself: the winner "1" runs at 50 ms there, "0" at 30. Each
    # candidate's best time over both measurements counts (20 ms against 30), and the choice stands.
    key = "test second look"
    assert _C.cpu_tuner_pick(key, (0.06, 0.02)) == 1
    for _ in range(3):
        assert _C.cpu_tuner_pick(key, (0.06, 0.02)) == 1
    assert _C.cpu_tuner_pick(key, (0.03, 0.05)) == 1
    assert cuconv.tuning.choices()[key] == "1"


def test_only_the_first_calls_after_a_choice_are_checked():
    key = "test checked"
    assert cuconv.tuning.unsettled() == 0
    assert _C.cpu_tuner_pick(key, (0.06, 0.02)) == 1
    for _ in range(4):  # the checked calls (the last one a second look): the winner stays
        assert cuconv.tuning.unsettled() == 1  # (what the benchmarks wait on before timing)
        assert _C.cpu_tuner_pick(key, (0.06, 0.02)) == 1
    assert cuconv.tuning.unsettled() == 0
    assert _C.cpu_tuner_pick(key, (0.0, 0.001)) == 1  # faster now, but no longer timed


def test_a_recorded_choice_no_candidate_has_is_measured_again():
    _C.cpu_tuning_set({"test stale": "no-such-kernel"})
    assert _C.cpu_tuner_pick("test stale", (0.03, 0.002)) == 1
    assert cuconv.tuning.choices()["test stale"] == "1"


def _layer(seed=0):
    """A layer every candidate can run: 3x3 stride 1 (Winograd), a small image and a batch that
    fills a register tile's columns (the per-pixel products)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 16, 5, 4, generator=gen, requires_grad=True)
    w = torch.randn(24, 16, 3, 3, generator=gen, requires_grad=True)
    b = torch.randn(24, generator=gen, requires_grad=True)
    return x, w, b


def _forward_backward(x, w, b):
    y = CF.conv2d(x, w, b, padding=1)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9))
    return [y.detach(), *torch.autograd.grad(y, (x, w, b), dy)]


SWITCHES = ("CUCONV_CPU_DIRECT", "CUCONV_CPU_WINOGRAD", "CUCONV_CPU_PIXEL_GEMM")


def _with_path(monkeypatch, settings, tensors):
    for name, value in zip(SWITCHES, settings):
        monkeypatch.setenv(name, value)
    result = _forward_backward(*tensors)
    for name in SWITCHES:
        monkeypatch.delenv(name)
    return result


# The candidates, each forced by SWITCHES (_layer suits every candidate in all three passes).
PATHS = {"direct": ("1", "0", "0"), "gemm": ("0", "0", "0"), "winograd": ("0", "1", "0"), "pixel": ("0", "0", "1")}


@needs_direct
def test_a_measuring_call_returns_the_winners_result_and_later_calls_repeat_it(monkeypatch):
    tensors = _layer()
    by_path = {path: _with_path(monkeypatch, settings, tensors=tensors) for path, settings in PATHS.items()}
    assert not cuconv.tuning.choices()  # forcing a path measures nothing
    first = _forward_backward(*tensors)
    chosen = cuconv.tuning.choices()
    passes = sorted(key.split()[0] for key in chosen)
    assert passes == ["conv2d_backward_input", "conv2d_backward_weight", "conv2d_forward"], chosen
    # result k of _forward_backward comes from pass: y forward, dx input, dw weight (db: torch's sum)
    for k, name in enumerate(["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"]):
        (winner,) = [v for key, v in chosen.items() if key.startswith(name + " ")]
        assert torch.equal(first[k], by_path[winner][k]), (name, winner)
    # Every later call returns the recorded winner's result (a check may measure a pass again
    # and change its winner: tuner.h), and once the checks are over, the same result each time.
    results = []
    for _ in range(6):
        again = _forward_backward(*tensors)
        chosen = cuconv.tuning.choices()
        for k, name in enumerate(["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"]):
            (winner,) = [v for key, v in chosen.items() if key.startswith(name + " ")]
            assert torch.equal(again[k], by_path[winner][k]), (name, winner)
        results.append(again)
    assert all(torch.equal(a, f) for a, f in zip(results[-1], results[-2]))


@needs_direct
@pytest.mark.parametrize("path", PATHS)
def test_a_recorded_choice_decides_the_path(path, monkeypatch):
    tensors = _layer(1)
    _forward_backward(*tensors)
    keys = {key: path for key in cuconv.tuning.choices()}
    expected = _with_path(monkeypatch, PATHS[path], tensors=tensors)
    _C.cpu_tuning_set(keys)
    got = _forward_backward(*tensors)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert cuconv.tuning.choices() == keys


@needs_direct
@pytest.mark.parametrize("width", [27, 32], ids=["rows-off-vectors", "rows-on-vectors"])
def test_a_large_output_is_also_measured_streamed_and_either_way_gives_torchs_values(width, monkeypatch, capfd):
    """Where a pass's output is larger than the threads' L2 caches together, the direct kernels
    writing it past the caches are a candidate of their own (direct_streamed), in the forward and
    the stride-1 input gradient; recorded, each way gives the same values, torch's. (32 channels
    fill whole vectors, so the channel tiles run rather than the row tiles, which never stream.)"""
    threads = torch.get_num_threads()
    plane_bytes = 32 * width * width * 4
    batch = _C.cpu_kernels()["l2_cache_bytes"] * threads * 5 // 4 // plane_bytes + 1
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(batch, 32, width, width, generator=gen, requires_grad=True)
    w = torch.randn(32, 32, 3, 3, generator=gen) / 17
    b = torch.randn(32, generator=gen)
    dy = torch.randn(batch, 32, width, width, generator=gen)

    def forward_and_input_gradient():
        y = CF.conv2d(x, w, b, padding=1)
        return y.detach(), torch.autograd.grad(y, x, dy)[0]

    monkeypatch.setenv("CUCONV_LOG", "1")
    forward_and_input_gradient()
    tuned = [line for line in capfd.readouterr().err.splitlines() if line.startswith("cuconv: tuned")]
    passes = {line.split()[2]: line for line in tuned}
    assert set(passes) == {"conv2d_forward", "conv2d_backward_input"}, tuned
    assert all("direct " in line and "direct_streamed " in line for line in tuned), tuned
    keys = list(cuconv.tuning.choices())
    results = {}
    for path in ("direct", "direct_streamed"):
        _C.cpu_tuning_set({key: path for key in keys})
        results[path] = forward_and_input_gradient()
        assert cuconv.tuning.choices() == {key: path for key in keys}
    assert all(torch.equal(a, s) for a, s in zip(results["direct"], results["direct_streamed"]))
    y_ref = torch.nn.functional.conv2d(x.detach(), w, b, padding=1)
    dx_ref = torch.nn.grad.conv2d_input(x.shape, w, dy, padding=1)
    assert_matches(results["direct_streamed"][0], y_ref, torch.float32)
    assert_matches(results["direct_streamed"][1], dx_ref, torch.float32)


def test_bfloat16_layers_also_measure_the_direct_kernels_on_pairs(monkeypatch, capfd):
    """Where the CPU has AVX512-BF16, a bfloat16 forward pass and stride-1 input gradient measure
    the direct kernels on channel pairs beside the GEMM and the float32 copies, on NCHW planes cached
    and, for an output larger than the threads' L2 caches, streamed, and on NHWC pixels (the weight
    gradient, on pixel pairs, cached: a small output); recorded, the planes' two ways give the same
    bits, and every way is as accurate as the others."""
    monkeypatch.delenv("CUCONV_CPU_ISA", raising=False)
    if _C.cpu_kernels()["gemm_bfloat16"] != "avx512_bf16":
        pytest.skip("this CPU has no AVX512-BF16 (or no AVX-512): no bfloat16 pairs")
    threads = torch.get_num_threads()
    batch = _C.cpu_kernels()["l2_cache_bytes"] * threads * 5 // 4 // (32 * 20 * 20 * 2) + 1  # (bfloat16 outputs)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 31, 20, 20, generator=gen).bfloat16().requires_grad_()
    w = (torch.randn(32, 31, 3, 3, generator=gen) / 16).bfloat16().requires_grad_()
    b = torch.randn(32, generator=gen).bfloat16()
    dy = torch.randn(batch, 32, 20, 20, generator=gen).bfloat16()

    def forward_and_gradients():
        y = CF.conv2d(x, w, b, padding=1)
        return y.detach(), *torch.autograd.grad(y, [x, w], dy)

    monkeypatch.setenv("CUCONV_LOG", "1")
    forward_and_gradients()
    tuned = [line for line in capfd.readouterr().err.splitlines() if line.startswith("cuconv: tuned")]
    passes = {line.split()[2]: line for line in tuned if " bfloat16" in line}
    assert set(passes) == {"conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"}, tuned
    for name, line in passes.items():
        measured = ["gemm", "float32", "direct_pairs"]
        measured += ["direct_pairs_streamed", "direct_pairs_nhwc"] if "weight" not in name else []
        assert all(f" {path} " in line for path in measured) and ("streamed" in line) == ("weight" not in name), line
    keys = [key for key in cuconv.tuning.choices() if " bfloat16" in key]
    results = {}
    for path in ("direct_pairs", "direct_pairs_streamed", "direct_pairs_nhwc", "float32"):
        # (the weight gradient has no streamed or NHWC way: direct_pairs, not a fallback whose own
        # measured float32 choice could change between two calls)
        _C.cpu_tuning_set({key: path if "weight" not in key or path in ("direct_pairs", "float32") else "direct_pairs"
                           for key in keys})
        results[path] = forward_and_gradients()
    assert all(torch.equal(a, s) for a, s in zip(results["direct_pairs"], results["direct_pairs_streamed"]))
    for path in ("direct_pairs", "direct_pairs_nhwc"):  # (bfloat16's rounding apart)
        for ours, theirs in zip(results[path], results["float32"]):
            torch.testing.assert_close(ours, theirs, rtol=2 ** -7, atol=2 ** -7 * theirs.abs().max().item())


def test_tuning_off_measures_nothing_and_a_bad_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("CUCONV_CPU_TUNE", "0")
    _forward_backward(*_layer())
    assert cuconv.tuning.choices() == {}
    monkeypatch.setenv("CUCONV_CPU_TUNE", "yes")
    with pytest.raises(ValueError, match="CUCONV_CPU_TUNE to be 0 or 1, but got 'yes'"):
        _forward_backward(*_layer())


def test_a_bad_log_setting_fails_every_measured_call_alike(monkeypatch):
    """CUCONV_LOG was read only when a decision was logged: a bad value failed the calls that
    measured (the first and the second look) and let the others through."""
    monkeypatch.setenv("CUCONV_LOG", "yes")
    x, w = torch.randn(4, 16, 9, 9), torch.randn(8, 16, 3, 3)
    for _ in range(6):
        with pytest.raises(ValueError, match="CUCONV_LOG to be 0 or 1, but got 'yes'"):
            CF.conv2d(x, w, padding=1)


@needs_direct
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_choices_made_inside_a_losing_candidate_leave_nothing_unsettled(dtype):
    """A channels_last (or bfloat16) layer's candidates include one that runs a float32 NCHW layer
    whose kernels are measured too: that inner choice's checks come only through the candidate
    that made it. Where that candidate lost, they never came, and `unsettled()` stayed above 0
    for good (the benchmarks' wait for a settled step gave up after 8 steps)."""
    x = torch.randn(4, 16, 14, 14).to(dtype)
    if dtype == torch.float32:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 3, 3).to(dtype)
    for _ in range(12):
        CF.conv2d(x, w, padding=1)
    inner = [key for key in cuconv.tuning.choices() if key.startswith("conv2d_forward float32 N=")]
    assert inner, "no choice made inside another's measurement: the test no longer covers one"
    assert cuconv.tuning.unsettled() == 0


@needs_direct
def test_an_inner_choice_called_on_its_own_is_checked_as_any_other(monkeypatch, capfd):
    """A choice made inside a losing candidate is left unchecked, until its own layer calls it.
    Any check may find a call clearly faster than the measurement and measure again for good
    (CUCONV_LOG says so): then no check is left to count. Under load that happened, and this test
    failed; such an attempt is made again (up to five times)."""
    monkeypatch.setenv("CUCONV_LOG", "1")
    y = torch.randn(4, 16, 14, 14)

    def measured_again(key):
        return any("measured again" in line and f" {key}: " in line for line in capfd.readouterr().err.splitlines())

    for _ in range(5):
        cuconv.tuning.clear()
        capfd.readouterr()
        CF.conv2d(y.contiguous(memory_format=torch.channels_last), torch.randn(32, 16, 3, 3), padding=1)
        (outer,) = [key for key in cuconv.tuning.choices() if " channels_last " in key]
        (inner,) = [key for key in cuconv.tuning.choices() if key != outer]
        if measured_again(inner):
            continue  # settled while the outer layer measured: nothing left to check
        _C.cpu_tuning_set({outer: "nhwc"})  # the outer choice settled on a candidate other than "nchw"
        assert cuconv.tuning.unsettled() == 0  # (the inner one has checks left, but no call reaches them)
        CF.conv2d(y, torch.randn(32, 16, 3, 3), padding=1)  # the inner key's own layer, NCHW
        if measured_again(inner):
            continue
        assert cuconv.tuning.unsettled() == 1
        for _ in range(4):
            CF.conv2d(y, torch.randn(32, 16, 3, 3), padding=1)
        assert cuconv.tuning.unsettled() == 0
        return
    pytest.skip("every attempt's checks measured again: the machine's load left nothing to count")


def test_the_choice_is_per_thread_count(monkeypatch):
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            CF.conv2d(*_layer()[:2], padding=1)
    finally:
        torch.set_num_threads(saved)
    keys = [key for key in cuconv.tuning.choices() if key.startswith("conv2d_forward ")]
    if _C.cpu_kernels()["direct_conv"] == "never":
        assert keys == []  # one candidate: nothing to choose
    else:
        assert sorted(k.split("threads=")[1].split()[0] for k in keys) == ["1", "2"]


def test_the_cache_keeps_each_machines_choices(tmp_path):
    path = tmp_path / "sub" / "tuning.json"
    _C.cpu_tuning_set({"test a": "gemm", "test b": "direct"})
    cuconv.tuning.save(path)
    data = json.loads(path.read_text())
    data["Some Other CPU / cuconv 0"] = {"test a": "direct"}
    path.write_text(json.dumps(data))
    cuconv.tuning.clear()
    assert cuconv.tuning.load(path) == 2
    assert cuconv.tuning.choices() == {"test a": "gemm", "test b": "direct"}
    _C.cpu_tuning_set({"test c": "gemm"})
    cuconv.tuning.save(path)
    data = json.loads(path.read_text())
    assert data["Some Other CPU / cuconv 0"] == {"test a": "direct"}
    assert data[cuconv.tuning.machine()] == {"test a": "gemm", "test b": "direct", "test c": "gemm"}
    assert cuconv.tuning.load(tmp_path / "missing.json") == 0


_SAVER = threading.local()  # the choices each saving thread (or forked process) reports


def _save_many(path, name, saves):
    """Saves `saves` times choices named after `name` (each save adds one more of its own)."""
    for i in range(saves):
        _SAVER.choices = {f"{name} {j}": "gemm" for j in range(i + 1)}
        cuconv.tuning.save(path)


def test_concurrent_saves_keep_every_choice_and_a_whole_file(tmp_path, monkeypatch):
    """Processes and threads saving to one cache at once take turns (a lock): none drops
    another's choices, and none reads a half-written file (each writes a temporary of its own)."""
    import multiprocessing

    monkeypatch.setattr(cuconv.tuning, "choices", lambda: _SAVER.choices)
    path = tmp_path / "tuning.json"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_save_many, args=(path, f"process {p}", 15)) for p in range(3)]
    for process in processes:
        process.start()
    errors = []

    def in_thread(t):
        try:
            _save_many(path, f"thread {t}", 15)
        except Exception as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=in_thread, args=(t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        process.join()
        assert process.exitcode == 0
    assert errors == []
    saved = json.loads(path.read_text())[cuconv.tuning.machine()]
    assert sorted(saved) == sorted(f"{who} {j}" for who in [f"process {p}" for p in range(3)]
                                   + [f"thread {t}" for t in range(3)] for j in range(15))


def test_a_cache_made_with_other_kernels_is_measured_again(tmp_path):
    """The cache files choices under the kernels a choice may name too: a section written by a
    build without the per-pixel products (the same CPU and version) is not loaded, since its
    choices never tried them; every name the tuner records is one of this build's."""
    kernels = _C.cpu_tuning_kernels().split()
    assert {"direct", "gemm", "winograd", "pixel", "nhwc", "nchw", "nhwc_winograd"} <= set(kernels)
    assert cuconv.tuning.machine().endswith(" / kernels " + " ".join(kernels))
    older = cuconv.tuning.machine().rsplit(" / kernels ", 1)[0] + " / kernels direct gemm winograd nhwc nchw"
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps({older: {"test a": "gemm"}}))
    assert cuconv.tuning.load(path) == 0
    assert cuconv.tuning.choices() == {}
    _forward_backward(*_layer())
    assert set(cuconv.tuning.choices().values()) <= set(kernels)


def test_a_bad_cache_file_is_a_clear_error(tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="to hold a JSON object, but got list"):
        cuconv.tuning.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the tuning cache"):
        cuconv.tuning.load(path)


@needs_direct
@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "MACHINE_LIST", None], ids=["text", "list", "entry-list", "folder"])
def test_an_unreadable_cache_named_by_the_environment_is_reported_not_fatal(content, tmp_path):
    """A CUCONV_TUNE_CACHE that is no cache cuconv can read (another file, a folder) made
    `import cuconv` itself fail: now one warning, the choices measured afresh, and the file left
    exactly as it was (a mistyped path must not destroy a user's file)."""
    path = tmp_path / "tuning.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content.replace("MACHINE_LIST", json.dumps({cuconv.tuning.machine(): [1]})))
    before = None if content is None else path.read_text()
    env = dict(os.environ, CUCONV_TUNE_CACHE=str(path))
    env.pop("CUCONV_CPU_DIRECT", None)
    env.pop("CUCONV_CPU_TUNE", None)
    run = dict(env=env, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(cuconv.__file__)))
    result = subprocess.run([sys.executable, "-c", _SCRIPT], **run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "leaving the file as it is" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout.strip() == "1"
    assert (path.is_dir() if content is None else path.read_text() == before)
    assert sorted(p.name for p in tmp_path.iterdir()) in (["tuning.json"], ["tuning.json", "tuning.json.lock"])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc: a place no one can write, root included")
def test_a_cache_that_cannot_be_written_is_reported_at_exit_not_a_traceback():
    """A CUCONV_TUNE_CACHE where cuconv can read nothing and write nothing (a read-only folder for
    a user; /proc here, as the tests may run as root) passed the import, and the save at exit
    ended in a traceback."""
    env = dict(os.environ, CUCONV_TUNE_CACHE="/proc/cuconv-test-tuning.json")
    env.pop("CUCONV_CPU_TUNE", None)
    run = dict(env=env, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(cuconv.__file__)))
    result = subprocess.run([sys.executable, "-c", _SCRIPT], **run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cannot save the tuning cache" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stdout.strip() == "1"


def test_a_saved_cache_follows_the_umask(tmp_path):
    """mkstemp makes its file 0600 whatever the umask: a cache meant for several users was theirs
    to read only by chance."""
    path = tmp_path / "tuning.json"
    mask = os.umask(0o022)
    try:
        cuconv.tuning.save(path)
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


_SCRIPT = """
import torch, cuconv, cuconv.functional as CF
x, w = torch.randn(2, 16, 9, 9), torch.randn(8, 16, 3, 3)
CF.conv2d(x, w, padding=1)
print(len(cuconv.tuning.choices()))
"""


@needs_direct
def test_the_cache_carries_the_choices_to_the_next_process_and_the_log_says_what_was_measured(tmp_path):
    env = dict(os.environ, CUCONV_TUNE_CACHE=str(tmp_path / "tuning.json"), CUCONV_LOG="1")
    env.pop("CUCONV_CPU_DIRECT", None)
    env.pop("CUCONV_CPU_TUNE", None)
    # run from beside the package under test (the installed one in CI, not the source folder)
    run = dict(env=env, capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(cuconv.__file__)))
    first = subprocess.run([sys.executable, "-c", _SCRIPT], **run)
    assert first.stdout.strip() == "1"
    assert "cuconv: tuned conv2d_forward float32 N=2 C=16 H=9 W=9 O=8 k=3x3" in first.stderr
    assert "-> " in first.stderr and "tuning took" in first.stderr
    second = subprocess.run([sys.executable, "-c", _SCRIPT], **run)
    assert second.stdout.strip() == "1" and "tuned" not in second.stderr  # loaded, not measured


CL_CASES = {  # (x shape, w shape, stride, padding, dilation)
    "3x3": ((3, 16, 11, 10), (24, 16, 3, 3), 1, 1, 1),
    "strided-dilated": ((2, 5, 13, 9), (7, 5, 3, 2), (2, 1), (1, 2), (1, 2)),
    "1x1-64": ((2, 64, 6, 5), (64, 64, 1, 1), 1, 0, 1),
    "5x5-few-channels": ((2, 3, 12, 12), (6, 3, 5, 5), 1, 2, 1),
    "1x1-padded": ((2, 8, 5, 6), (4, 8, 1, 1), 1, 1, 1),  # padding past the kernel's reach: col2im
    # strided 1x1 (ResNet's shortcuts): the input gradient written row by row in place, the last
    # row and column in no window; then more output channels than one GEMM depth slice
    "1x1-strided": ((3, 24, 11, 10), (20, 24, 1, 1), 2, 0, 1),
    "1x1-strided-deep": ((2, 8, 6, 7), (300, 8, 1, 1), (2, 3), 0, 1),
    # 64 input channels: the input gradient's columns fill AVX-512's 6 x 64 tile (7-pixel rows: a
    # short last tile of rows)
    "1x1-strided-64": ((3, 64, 11, 13), (40, 64, 1, 1), 2, 0, 1),
    "big-channels": ((2, 300, 5, 4), (70, 300, 3, 3), 1, 1, 1),  # channel runs cut at the GEMM depth
    # pixels in several slices of the GEMM's depth per thread; channels in whole NR panels and a
    # tail; output channels past whole MR panels (the weight gradient's row-pointer tiles)
    "many-pixels": ((5, 70, 13, 12), (13, 70, 3, 3), 1, 1, 1),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("layout_path", ["nhwc", "nchw", "untuned"])
@pytest.mark.parametrize("case", CL_CASES)
def test_channels_last_conv_either_path_matches_torch_and_stays_channels_last(case, layout_path, dtype, monkeypatch):
    """A channels_last layer of one group runs the NHWC kernels or the NCHW ones between layout
    copies, whichever measures faster; both (and the NHWC default of CUCONV_CPU_TUNE=0) match torch."""
    x_shape, w_shape, stride, padding, dilation = CL_CASES[case]
    gen = torch.Generator().manual_seed(len(case))
    x = torch.randn(x_shape, generator=gen, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]  # outputs of order 1, as in a network
    w = (torch.randn(w_shape, generator=gen, dtype=dtype) / fan_in ** 0.5).requires_grad_()
    b = torch.randn(w_shape[0], generator=gen, dtype=dtype, requires_grad=True)
    args = (stride, padding, dilation)
    if layout_path == "untuned":
        monkeypatch.setenv("CUCONV_CPU_TUNE", "0")
    else:
        out = CF.conv2d(x, w, b, *args)  # measures every pass, then the choices are overwritten
        out.backward(torch.randn(out.shape, generator=gen, dtype=dtype).to(memory_format=torch.channels_last))
        keys = [k for k in cuconv.tuning.choices() if "channels_last" in k]
        assert len(keys) == 3, cuconv.tuning.choices()
        _C.cpu_tuning_set({k: layout_path for k in keys})
    y = CF.conv2d(x, w, b, *args)
    ref = torch.nn.functional.conv2d(x, w, b, *args)
    assert y.stride() == ref.stride()
    dy = torch.randn(ref.shape, generator=gen, dtype=dtype).to(memory_format=torch.channels_last)
    grads = torch.autograd.grad(y, (x, w, b), dy)
    ref_grads = torch.autograd.grad(ref, (x, w, b), dy)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(y, ref, **tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **tol)
    assert grads[0].stride() == ref_grads[0].stride()  # (the weight gradient stays OIHW-contiguous)
    if layout_path != "untuned":
        assert set(v for k, v in cuconv.tuning.choices().items() if "channels_last" in k) == {layout_path}


@pytest.mark.parametrize("path", ["nhwc", "nhwc_winograd"])
def test_a_channels_last_3x3_layer_measures_the_nhwc_winograd_too_and_a_recorded_choice_decides(path, capfd,
                                                                                               monkeypatch):
    """A float32 3x3 stride-1 channels_last layer has a third candidate in each pass, the NHWC
    Winograd (the log lists it), and a recorded choice of either NHWC kernel gives that kernel's
    result bitwise (forced: CUCONV_CPU_TUNE=0 and CUCONV_CPU_WINOGRAD=1)."""
    x_shape, w_shape, stride, padding, dilation = CL_CASES["3x3"]
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(x_shape, generator=gen).to(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(w_shape, generator=gen) / 12).requires_grad_()

    def run():
        y = CF.conv2d(x, w, None, stride, padding, dilation)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(memory_format=torch.channels_last)
        return [y.detach(), *torch.autograd.grad(y, (x, w), dy)]

    monkeypatch.setenv("CUCONV_LOG", "1")
    run()
    monkeypatch.delenv("CUCONV_LOG")
    log = capfd.readouterr().err
    for name in ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"):
        (line,) = [ln for ln in log.splitlines() if f"tuned {name} float32 channels_last" in ln]
        assert "nhwc " in line and "nchw " in line and "nhwc_winograd " in line, line
    monkeypatch.setenv(*(("CUCONV_CPU_TUNE", "0") if path == "nhwc" else ("CUCONV_CPU_WINOGRAD", "1")))
    expected = run()
    monkeypatch.delenv("CUCONV_CPU_TUNE", raising=False)
    monkeypatch.delenv("CUCONV_CPU_WINOGRAD", raising=False)
    keys = [k for k in cuconv.tuning.choices() if "channels_last" in k]
    assert len(keys) == 3
    _C.cpu_tuning_set({k: path for k in keys})
    got = run()
    assert all(torch.equal(g, e) for g, e in zip(got, expected))


@pytest.mark.parametrize("threads", [1, 3, 7])
@pytest.mark.parametrize("case", ["3x3", "strided-dilated"])
def test_channels_last_conv_at_any_thread_count_matches_torch_and_repeats_bitwise(case, threads, monkeypatch):
    """The NHWC kernels split pixel blocks, samples and pixel runs by the thread count: with more
    parts than rows to spare, each gives torch's values and repeats itself bitwise."""
    monkeypatch.setenv("CUCONV_CPU_TUNE", "0")  # the NHWC kernels, always
    x_shape, w_shape, stride, padding, dilation = CL_CASES[case]
    gen = torch.Generator().manual_seed(threads)
    x = torch.randn(x_shape, generator=gen).to(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(w_shape, generator=gen) / (w_shape[1] * w_shape[2] * w_shape[3]) ** 0.5).requires_grad_()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def run(conv):
            y = conv(x, w, None, stride, padding, dilation)
            dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(memory_format=torch.channels_last)
            return [y.detach(), *torch.autograd.grad(y, (x, w), dy)]

        ours, again, ref = run(CF.conv2d), run(CF.conv2d), run(torch.nn.functional.conv2d)
    finally:
        torch.set_num_threads(saved)
    for o, a, r in zip(ours, again, ref):
        assert torch.equal(o, a)
        assert_matches(o, r, torch.float32)  # the weight gradient sums 330 products: relative to its scale


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", ["many-pixels", "big-channels", "5x5-few-channels", "1x1-strided", "1x1-strided-deep",
                                  "1x1-strided-64"])
def test_channels_last_conv_every_microkernel_matches_torch(case, dtype, isa, monkeypatch):
    """The NHWC kernels on every register tile (CUCONV_CPU_ISA asks for a lesser one than the CPU
    has; on a CPU without it the best it has runs): the indirect forward, the weight gradient
    whose tiles read x's rows through pointers, across whole channel panels and a tail, and the
    strided 1x1 input gradient whose tiles read dy's pixels through pointers (rows of a last
    tile past the output row, channel tails, output channels past one depth slice)."""
    monkeypatch.setenv("CUCONV_CPU_TUNE", "0")  # the NHWC kernels, always
    monkeypatch.setenv("CUCONV_CPU_ISA", isa)
    x_shape, w_shape, stride, padding, dilation = CL_CASES[case]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(x_shape, generator=gen, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(w_shape, generator=gen, dtype=dtype) / (w_shape[1] * w_shape[2] * w_shape[3]) ** 0.5)
    w.requires_grad_()

    def run(conv):
        y = conv(x, w, None, stride, padding, dilation)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
        return [y.detach(), *torch.autograd.grad(y, (x, w), dy.to(memory_format=torch.channels_last))]

    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    for ours, ref in zip(run(CF.conv2d), run(torch.nn.functional.conv2d)):
        torch.testing.assert_close(ours, ref, **tol)
