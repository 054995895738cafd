"""The benchmark report's CPU ceilings and GEMM goal (benchmarks/report.py, ceilings.py): the FMA
peak builds and measures, and the goal compares the large layers with the best sgemm, round by
round where the run timed them alongside it."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name):
    sys.path.insert(0, str(BENCHMARKS))  # report.py reads cases.py, as when run from benchmarks/
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_fma_peak_builds_and_scales_with_its_work():
    library = _module("ceilings").fma_library()
    if library is None:
        pytest.skip("no C compiler, or not x86-64")
    assert library.fma_chains() >= 8
    assert library.fma_flops(1, 8, 1_000_000) > 1e9  # any AVX2 core does billions a second
    assert library.fma_flops(0, 8, 1) == -1.0 and library.fma_flops(1, 4, 1) == -1.0


def _rows(gflops_by_case):
    # flops and a median of 1 s: GFLOP/s = flops / 1e9
    return {(case, "forward", "cpu", "float32"): {"cuconv": {"flops": g * 1e9, "median": 1.0}}
            for case, g in gflops_by_case.items()}


def test_the_gemm_goal_takes_the_best_sgemm_and_the_slowest_large_layer():
    report = _module("report")
    ceilings = {("cpu", "sgemm"): 200.0, ("cpu", "sgemm.cuconv"): 400.0, ("cpu", "fma"): 500.0}
    # lenet.conv2 (6 input channels) and vgg.b1.conv (1) are not large layers: never the worst
    met = report.gemm_goal(_rows({"vgg.b4.conv2": 600, "resnet.b4.conv1": 350, "lenet.conv2": 10,
                                  "vgg.b1.conv": 20}), ceilings)
    assert "met;" in met and "worst resnet.b4.conv1 at 350 GFLOP/s, 0.88 of that sgemm, 0.70 of the FMA peak" in met
    missed = report.gemm_goal(_rows({"vgg.b4.conv2": 600, "resnet.b4.conv1": 330}), ceilings)
    assert "**not met**" in missed and "(2 layers)" in missed
    assert "not run" in report.gemm_goal(_rows({"vgg.b4.conv2": 600}), {})


def test_a_case_measured_in_two_passes_keeps_each_backends_lowest_median(tmp_path):
    report = _module("report")

    def bench(impl, measurement_pass, median):
        info = dict(case="vgg.b4.conv2", mode="forward", device="cpu", dtype="float32", impl=impl,
                    measurement_pass=measurement_pass, flops=1e9)
        return dict(extra_info=info, stats=dict(median=median, q1=median, q3=median))

    # pass 0: a burst of load during cuconv's rounds; pass 1: during torch's
    runs = [bench("cuconv", 0, 2.0), bench("torch", 0, 1.0), bench("cuconv", 1, 0.9), bench("torch", 1, 1.8)]
    path = tmp_path / "bench.json"
    path.write_text(__import__("json").dumps({"benchmarks": runs}))
    _, rows, _, _ = report.load(path)
    impls = rows[("vgg.b4.conv2", "forward", "cpu", "float32")]
    assert impls["cuconv"]["median"] == 0.9 and impls["torch"]["median"] == 1.0


def test_a_ceiling_is_its_fastest_round_not_its_median(tmp_path):
    report = _module("report")
    info = dict(case="fma", mode="ceiling", device="cpu", dtype="float32", impl="fma_peak.c", flops=4e9)
    # a ceiling whose median round was slowed (the other vCPU busy) by half
    runs = [dict(extra_info=info, stats=dict(min=0.01, median=0.02, q1=0.01, q3=0.02))]
    path = tmp_path / "bench.json"
    path.write_text(__import__("json").dumps({"benchmarks": runs}))
    _, _, ceilings, _ = report.load(path)
    assert ceilings[("cpu", "fma")] == 400.0


def _alongside_run(tmp_path, layer_seconds, sgemm_seconds, cuconv_sgemm_seconds):
    """A run's JSON with one GEMM-goal case, resnet.b4.conv1 (1 GFLOP) beside a 2 GFLOP sgemm."""
    info = dict(case="resnet.b4.conv1", mode="gemm goal", device="cpu", dtype="float32", impl="cuconv",
                measurement_pass=0, batch=128, flops=1e9, sgemm_flops=2e9,
                seconds={"layer": layer_seconds, "sgemm": sgemm_seconds, "sgemm.cuconv": cuconv_sgemm_seconds})
    path = tmp_path / "bench.json"
    path.write_text(__import__("json").dumps({"benchmarks": [dict(extra_info=info, stats=dict(median=1.0))]}))
    return path


def test_the_gemm_goal_compares_each_round_with_the_sgemm_of_that_round(tmp_path):
    report = _module("report")
    # a machine whose speed halves in the last three rounds: the layer at 0.9 of the faster
    # sgemm (cuconv's in the first two rounds, torch's after) in every round
    path = _alongside_run(tmp_path, [1 / 90, 1 / 90, 1 / 45, 1 / 45, 1 / 45],
                          [2 / 80, 2 / 80, 2 / 50, 2 / 50, 2 / 50], [2 / 100, 2 / 100, 2 / 40, 2 / 40, 2 / 40])
    _, rows, ceilings, alongside = report.load(path)
    assert not rows and not ceilings
    assert alongside[("cpu", "resnet.b4.conv1")][0] == pytest.approx((90.0, 100.0))
    # the run's fastest sgemm round (100) against a median layer of the slow phase (45) would
    # read 0.45; round by round the layer is at 0.9 throughout
    ceilings = {("cpu", "sgemm"): 100.0}
    rows = _rows({"resnet.b4.conv1": 45})
    met = report.gemm_goal(rows, ceilings, alongside)
    assert met.startswith("GEMM goal") and "): met; worst resnet.b4.conv1 at 0.90 (rounds 0.90-0.90" in met
    assert "0.45 of that sgemm" in met  # (the old statistic, for comparison)

    path = _alongside_run(tmp_path, [1 / 80] * 3, [2 / 100] * 3, [2 / 90] * 3)
    missed = report.gemm_goal(rows, ceilings, report.load(path)[3])
    assert "**not met**; worst resnet.b4.conv1 at 0.80" in missed
