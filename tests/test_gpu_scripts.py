"""The scripts a lent GPU runs (benchmarks/gpu_run.sh, gpu_train.sh and the Python ones they call), checked
where there is none: the device time they get is too short to find a broken script there."""

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

import cuconv

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["benchmarks/gpu_run.sh", "benchmarks/gpu_train.sh", "benchmarks/gpu_common.sh"]


def test_the_gpu_scripts_parse_and_an_unknown_stage_says_which_there_are():
    for script in SCRIPTS:
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
    for script in ("benchmarks/gpu_protocol.py", "benchmarks/gpu_long_sums.py", "benchmarks/gpu_profile.py"):
        compile((ROOT / script).read_text(), script, "exec")
    run = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_run.sh"), "everything"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "usage: bash benchmarks/gpu_run.sh prebuild | check | bench | profile" in run.stderr


def _benchmark_script(name):
    """A module of benchmarks/ (its scripts import each other by name)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _protocol_on_the_cpu(tmp_path, *extra):
    """gpu_protocol.py's command on the quick subset at batch 2 on the CPU, with the cuconv under
    test: (argv, env), the JSON and markdown reports in tmp_path."""
    argv = [sys.executable, "-u", str(ROOT / "benchmarks/gpu_protocol.py"), "--device", "cpu", "--quick",
            "--batch", "2", "--reps", "1", "--inner", "1", "--json", str(tmp_path / "protocol.json"),
            "--markdown", str(tmp_path / "protocol.md"), *extra]
    return argv, dict(os.environ, PYTHONPATH=str(Path(cuconv.__file__).parents[1]))


def test_the_protocol_stops_starting_layers_at_its_budget_and_says_which_it_left(tmp_path):
    # On the CPU, at batch 2: the first layer of the quick subset runs whatever the budget, the
    # next ones not once it is spent; the report is written all the same.
    argv, env = _protocol_on_the_cpu(tmp_path, "--budget", "0")
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=tmp_path)
    json_path, markdown_path = tmp_path / "protocol.json", tmp_path / "protocol.md"
    report = json.loads(json_path.read_text())
    measured = {row["case"] for row in report["rows"]}
    left = report["header"]["layers_left_out"]
    assert len(measured) == 1 and len(left) >= 1 and measured.isdisjoint(left)
    assert all(row["correct"] and row["ratio"] > 0 for row in report["rows"])
    assert len(report["rows"]) == 3 * 2 * 3 * 2  # precisions x layouts x passes x cudnn.benchmark
    assert f"{len(left)} layers not measured ({', '.join(left)})" in markdown_path.read_text()


def test_the_protocol_reports_the_layers_measured_before_an_interrupt(tmp_path):
    """`timeout -s INT` (gpu_run.sh) stops it with SIGINT: the rows so far still reach the report."""
    argv, env = _protocol_on_the_cpu(tmp_path)
    json_path, markdown_path = tmp_path / "protocol.json", tmp_path / "protocol.md"
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                               cwd=tmp_path)
    first_row = json.loads(process.stdout.readline())  # a row printed: the first layer has begun
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    report = json.loads(json_path.read_text())
    measured = {row["case"] for row in report["rows"]}
    assert first_row["case"] in measured
    assert report["header"]["layers_left_out"] and measured.isdisjoint(report["header"]["layers_left_out"])
    assert "Stopped early (an interrupt)" in markdown_path.read_text()


def test_the_protocol_measures_the_layers_named_and_refuses_unknown_names(tmp_path):
    argv, env = _protocol_on_the_cpu(tmp_path, "--layers", "lenet.conv2")
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=tmp_path)
    report = json.loads((tmp_path / "protocol.json").read_text())
    assert {row["case"] for row in report["rows"]} == {"lenet.conv2"}
    argv, env = _protocol_on_the_cpu(tmp_path, "--layers", "lenet.conv2,lenet.conv9")
    run = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 2 and "--layers: no such layer lenet.conv9" in run.stderr


def test_the_protocol_gate_allows_tf32_its_own_rounding():
    """On an H200 cuDNN ran some TF32-allowed layers in full float32 (error 5e-6): cuconv's TF32
    error (2e-3, say, against a largest value of 10) is then no fault, while in float32 it is."""
    gpu_protocol = _benchmark_script("gpu_protocol")
    assert gpu_protocol.within_gate(2e-3, 5e-6, 10.0, "tf32", torch.float32)
    assert not gpu_protocol.within_gate(2e-3, 5e-6, 10.0, "float32", torch.float32)
    assert not gpu_protocol.within_gate(2e-2, 5e-6, 10.0, "tf32", torch.float32)
    assert gpu_protocol.within_gate(2e-2, 5e-6, 10.0, "bfloat16", torch.bfloat16)  # (bfloat16: 2^-7)


def test_the_profile_summary_names_each_call_s_kernels_from_the_markers(tmp_path):
    """ncu's raw-page CSV as it writes it (its log lines, a header, a units row, one row a kernel
    in launch order): the marker kernels split the rows, the labels name the groups."""
    gpu_profile = _benchmark_script("gpu_profile")
    header = ["ID", "Kernel Name", "Grid Size", "Block Size", "gpu__time_duration.sum",
              "sm__throughput.avg.pct_of_peak_sustained_elapsed", "launch__registers_per_thread"]
    rows = [["", "", "", "", "nsecond", "%", "register/thread"],
            ["0", "spin_kernel(long)", "(1, 1, 1)", "(1, 1, 1)", "1,024", "0.1", "16"],
            ["1", "void cuconv::conv_cuda::simt::gather_kernel<SimtTile<128>>(float const*)", "(36, 1, 4)",
             "(256, 1, 1)", "152,300", "71.5", "128"],
            ["2", "sum_partials_kernel", "(264, 1, 1)", "(256, 1, 1)", "4,100", "12.0", "20"],
            ["3", "spin_kernel(long)", "(1, 1, 1)", "(1, 1, 1)", "1,010", "0.1", "16"],
            ["4", "cudnn_sm90_kernel", "(120, 1, 1)", "(128, 1, 1)", "98,000", "80.2", "168"]]
    csv_path = tmp_path / "ncu.csv"
    csv_path.write_text("==PROF== Connected to process 1\n"
                        + "".join(",".join(f'"{v}"' for v in line) + "\n" for line in [header, *rows]))
    labels = tmp_path / "labels.txt"
    labels.write_text("vgg.b3.conv2 float32 forward cuconv\nvgg.b3.conv2 float32 forward cuDNN\n")
    table = gpu_profile.summarize(csv_path, labels).splitlines()
    assert table[0] == "| call | kernel | grid | block | us | SM % | registers |"
    assert table[2] == "| vgg.b3.conv2 float32 forward cuconv | gather_kernel | (36, 1, 4) | (256, 1, 1) | 152.3 | 71.5 | 128 |"
    assert table[3].startswith("| vgg.b3.conv2 float32 forward cuconv | sum_partials_kernel |")
    assert table[4].startswith("| vgg.b3.conv2 float32 forward cuDNN | cudnn_sm90_kernel | (120, 1, 1) | (128, 1, 1) | 98.0 |")
    assert len(table) == 5
