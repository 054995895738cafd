"""cuconv.train: the trainer on tiny data, both backends in lockstep, the CLI end to end, DDP."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cuconv
from cuconv import data, train
from cuconv.__main__ import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "fashion-mnist-subset"
needs_subset = pytest.mark.skipif(not (SUBSET / "train-images-idx3-ubyte.gz").is_file(),
                                  reason=f"the Fashion-MNIST subset is not at {SUBSET} (../shared beside the repository)")


@pytest.fixture(autouse=True)
def _one_thread():
    # Small shared test machines: OpenMP barriers over busy cores cost far more than they save.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _env():
    """Environment for child processes: import the cuconv this test imported (the installed one in CI,
    the in-place build in a checkout), one thread each, no progress-bar noise."""
    env = dict(os.environ)
    package_parent = str(Path(cuconv.__file__).resolve().parents[1])
    env["PYTHONPATH"] = package_parent + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the trainer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cuconv", "torch"])
def test_lenet_loss_decreases_on_tiny_data(backend):
    # The book's sigmoid LeNet sits on a plateau near ln(10) for ~1,000 steps before it learns
    # (see benchmarks/RESULTS.md); on a tiny set it gets only as far as that plateau, from above.
    dataset = data.synthetic_dataset(0, n_train=128, n_val=64)
    model = train.make_model("lenet", backend, train.initial_state("lenet", 0))
    initial_loss, _ = train.evaluate(model, dataset, 64)
    history = train.fit(model, dataset, epochs=3, batch_size=16, lr=0.9, progress=False)
    assert len(history) == 3
    assert set(history[0]) >= {"epoch", "train_loss", "val_loss", "val_acc", "seconds", "images_per_second"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < initial_loss - 0.1


def test_resnet18_loss_decreases_on_tiny_data():
    dataset = data.synthetic_dataset(0, n_train=64, n_val=16)
    model = train.make_model("resnet18", "cuconv", train.initial_state("resnet18", 0, resize=28), resize=28)
    history = train.fit(model, dataset, epochs=3, batch_size=16, lr=0.05, resize=28, progress=False)
    losses = [r["train_loss"] for r in history]
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("name, resize, batch", [("lenet", 28, 16), ("vgg", 32, 4), ("resnet18", 32, 4)])
def test_both_backends_take_the_same_first_steps(name, resize, batch):
    dataset = data.synthetic_dataset(0, n_train=3 * batch, n_val=4)
    state = train.initial_state(name, seed=1, resize=resize)
    losses = {}
    for backend in ("cuconv", "torch"):
        model = train.make_model(name, backend, state, resize)
        torch.manual_seed(1)  # dropout masks (VGG), as fit() does per run
        generator = torch.Generator().manual_seed(1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        losses[backend] = []
        for X, y in dataset.batches("train", batch, resize=resize, generator=generator):
            optimizer.zero_grad()
            loss, _ = train.batch_loss(model, X, y, len(y))
            loss.backward()
            optimizer.step()
            losses[backend].append(float(loss.detach()))
    assert losses["cuconv"][0] == pytest.approx(losses["torch"][0], rel=2e-5)  # same weights, same batch: float32 rounding only
    if name != "resnet18":  # BatchNorm over 4 examples at 1x1 resolution amplifies float32 rounding step by step
        assert losses["cuconv"] == pytest.approx(losses["torch"], rel=1e-4, abs=1e-4)


def test_fit_both_identical_first_epoch():
    dataset = data.synthetic_dataset(0, n_train=64, n_val=32)
    state = train.initial_state("lenet", 0)
    runs = {b: train.fit(train.make_model("lenet", b, state), dataset, 1, 16, 0.1, seed=5, progress=False)
            for b in ("cuconv", "torch")}
    for key in ("train_loss", "val_loss", "val_acc"):
        assert runs["cuconv"][0][key] == pytest.approx(runs["torch"][0][key], rel=1e-5, abs=1e-6)


def test_make_model_copies_the_initial_weights():
    state = train.initial_state("resnet18", 0, resize=32)
    for backend in ("cuconv", "torch"):
        model = train.make_model("resnet18", backend, state, 32)
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key


# --- the command line --------------------------------------------------------------------------------


def test_cli_synthetic_vgg_and_resnet_in_process(tmp_path, capsys):
    for model in ("vgg", "resnet18"):
        out = tmp_path / model
        assert cli_main(["train", "--model", model, "--dataset", "synthetic", "--backend", "both", "--epochs", "1",
                         "--batch-size", "4", "--resize", "32", "--limit-train", "8", "--limit-val", "4",
                         "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["dataset"] == "synthetic" and metrics["model"] == model
        assert metrics["config"]["lr"] == 0.01 and metrics["config"]["resize"] == 32
        printed = capsys.readouterr().out
        assert all("synthetic" in line for line in printed.splitlines() if line.strip()), printed
        assert "cuconv/torch time ratio" in printed


def test_cli_no_data_no_network(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "cuconv", "train", "--data-dir", str(missing), "--epochs", "1"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Looked in" in result.stderr and str(missing) in result.stderr
    assert "--dataset synthetic" in result.stderr and "Traceback" not in result.stderr


@needs_subset
def test_cli_end_to_end_on_the_real_subset(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "cuconv", "train", "--model", "lenet", "--backend", "both", "--data-dir", str(SUBSET),
         "--epochs", "3", "--batch-size", "32", "--lr", "0.9", "--device", "cpu", "--threads", "1", "--out", str(out)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"model", "device", "dataset", "runs"}
    assert metrics["model"] == "lenet" and metrics["device"] == "cpu"
    assert metrics["dataset"] == "fashion-mnist subset"
    assert set(metrics["runs"]) == {"cuconv", "torch"}
    for run in metrics["runs"].values():
        assert [r["epoch"] for r in run["epochs"]] == [1, 2, 3]
        for r in run["epochs"]:
            assert set(r) >= {"epoch", "train_loss", "val_loss", "val_acc", "seconds", "images_per_second"}
            assert r["seconds"] > 0 and r["images_per_second"] > 0
    first = [metrics["runs"][b]["epochs"][0]["train_loss"] for b in ("cuconv", "torch")]
    assert first[0] == pytest.approx(first[1], rel=1e-4)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cuconv/torch time ratio" in result.stdout and "3443 train / 1000 val" in result.stdout
    assert "epoch 1/3" in result.stderr  # tqdm bars and per-epoch lines go to stderr


# --- data-parallel training --------------------------------------------------------------------------


def test_ddp_two_processes_match_single_process_gradients(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"grads-{r}.pt") for r in range(2)]
    assert [r["shard"] for r in ranks] == [8, 7] and ranks[0]["world_size"] == 2

    # One process, the whole global batch of 15, same weights, same order.
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import ddp_worker
    finally:
        sys.path.pop(0)
    model = train.make_model("lenet", "cuconv", train.initial_state("lenet", seed=0), dtype=torch.float64)
    dataset = data.synthetic_dataset(0, n_train=40, n_val=4)
    X, y = next(dataset.batches("train", ddp_worker.GLOBAL_BATCH, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64))
    loss, _ = train.batch_loss(model, X, y, ddp_worker.GLOBAL_BATCH)
    loss.backward()
    for name, p in model.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_cli_under_torchrun(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "cuconv", "train", "--model", "lenet", "--dataset", "synthetic",
         "--backend", "both", "--epochs", "2", "--batch-size", "32", "--limit-train", "200", "--limit-val", "50",
         "--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("cuconv/torch time ratio") == 1  # only rank 0 prints
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and "2 processes (DDP)" in metrics["dataset_description"]
    losses = [metrics["runs"][b]["epochs"][0]["train_loss"] for b in ("cuconv", "torch")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


# --- first contact: the quick start, argument checks, curves, version and info ---------------------


@needs_subset
def test_quick_start_recipe_learns_with_identical_curves(tmp_path):
    """The README's main job: the book's batch-normalised LeNet at its defaults (10 epochs, batch
    128, lr 0.1) on the subset leaves chance accuracy far behind, on both backends alike."""
    out = tmp_path / "run"
    assert cli_main(["train", "--model", "lenet-bn", "--data-dir", str(SUBSET), "--device", "cpu", "--no-progress",
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    runs = metrics["runs"]
    assert metrics["config"] == dict(metrics["config"], epochs=10, batch_size=128, lr=0.1)
    for backend in ("cuconv", "torch"):
        assert runs[backend]["epochs"][-1]["val_acc"] >= 0.6
    for ours, theirs in zip(runs["cuconv"]["epochs"], runs["torch"]["epochs"]):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-3)
        assert ours["val_acc"] == pytest.approx(theirs["val_acc"], abs=0.01)


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "argument --epochs: expected a positive int, got '0'"),
    (["--batch-size", "0"], "argument --batch-size: expected a positive int, got '0'"),
    (["--batch-size", "-4"], "argument --batch-size: expected a positive int, got '-4'"),
    (["--lr", "-0.1"], "argument --lr: expected a positive float, got '-0.1'"),
    (["--threads", "0"], "argument --threads: expected a positive int, got '0'"),
    (["--limit-train", "0"], "argument --limit-train: expected a positive int, got '0'"),
    (["--resize", "8"], "argument --resize: lenet needs inputs of at least 12 x 12 pixels, got 8"),
    (["--model", "vgg", "--resize", "20"], "argument --resize: vgg needs inputs of at least 32 x 32 pixels, got 20"),
    (["--out", "/proc/cuconv-cannot-write-here"], "argument --out: cannot write to '/proc/cuconv-cannot-write-here'"),
    (["--resize", "5000"], "argument --resize: expected a positive int of at most 4096, got '5000'"),
    (["--seed", str(2**64)], f"argument --seed: expected a seed from 0 to 2**63 - 1, got '{2**64}'"),
    (["--seed", "-1"], "argument --seed: expected a seed from 0 to 2**63 - 1, got '-1'"),
    (["--lr", "1e308"], "argument --lr: expected a positive float of at most 3.40282e+38, got '1e308'"),
    (["--model", "lenet-bn", "--batch-size", "1"],
     "argument --batch-size: lenet-bn normalises each batch, which needs at least 2 images at 28 x 28, got 1"),
    (["--model", "resnet18", "--resize", "32", "--batch-size", "1"],
     "argument --batch-size: resnet18 normalises each batch, which needs at least 2 images at 32 x 32, got 1"),
    (["--threads", "2147483648"], "argument --threads: expected a positive int of at most 1024, got '2147483648'"),
    (["--download-timeout", "1e10"], "argument --download-timeout: expected a positive float of at most 86400, got '1e10'"),
])
def test_cli_rejects_bad_arguments_before_training(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--dataset", "synthetic", *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert captured.err.startswith("cuconv train: error: ")
    assert "epoch" not in captured.out + captured.err.replace("--epochs", "")  # nothing trained


@pytest.mark.parametrize("world_size, args, message", [
    (4, ["--batch-size", "3"], "argument --batch-size: each batch is shared over 4 processes, which needs at least 4 "
                               "images, got 3"),
    (2, ["--model", "lenet-bn", "--batch-size", "3"],
     "argument --batch-size: lenet-bn normalises each batch a process takes, which needs at least 4 images over 2 "
     "processes at 28 x 28, got 3"),
])
def test_cli_under_torchrun_rejects_batches_a_process_cannot_take(world_size, args, message, capsys, monkeypatch):
    """Under torchrun each global batch is cut into one shard a process: a batch smaller than the
    processes leaves one without images, and a batch-normalised model's shard of one image made
    torch's batch norm raise in the middle of the first epoch."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--dataset", "synthetic", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_refuses_a_last_batch_that_leaves_a_process_one_image(capsys, monkeypatch):
    """67 images in batches of 64 over 2 processes: the last batch's 3 images are shards of 2 and 1."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = train.build_parser().parse_args(["--model", "lenet-bn", "--dataset", "synthetic", "--limit-train", "67",
                                            "--limit-val", "8", "--batch-size", "64", "--no-progress"])
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # (the check comes before any process group is used)
    with pytest.raises(SystemExit) as exit_info:
        train.run(args)
    assert ("a process's share of the last batch (3 images over 2 processes) would hold one image (67 images in "
            "batches of 64)") in str(exit_info.value.code)


@pytest.mark.parametrize("args, missing", [([], "tqdm for its progress bars (or --no-progress)"),
                                           (["--no-progress", "--out", "OUT"], "matplotlib for --out's plots")])
def test_cli_names_the_missing_train_extra_before_training(args, missing, tmp_path, capsys, monkeypatch):
    """A plain `pip install .` has neither tqdm nor matplotlib (the `train` extra): the run stops
    at once, naming what it needs (they failed with a traceback in the first epoch, and after the
    whole training at the plot); --no-progress without --out needs neither."""
    for name in ("tqdm", "matplotlib"):
        monkeypatch.setitem(sys.modules, name, None)  # (import and find_spec fail, as when not installed)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--dataset", "synthetic", *args])
    assert exit_info.value.code == 2
    assert f"this run needs {missing}, not installed: pip install 'cuconv[train]'" in capsys.readouterr().err
    assert cli_main(["train", "--dataset", "synthetic", "--epochs", "1", "--limit-train", "32", "--limit-val", "8",
                     "--backend", "cuconv", "--no-progress"]) == 0


def test_cli_trains_resnet18_on_one_image_where_its_batch_norm_can():
    """ResNet-18's batch norm has 3 x 3 maps at 96 x 96 to normalise over: a batch of one image
    trains (it was refused, as LeNet-BN's dense layers' must be)."""
    assert cli_main(["train", "--model", "resnet18", "--dataset", "synthetic", "--batch-size", "1", "--epochs", "1",
                     "--limit-train", "2", "--limit-val", "1", "--backend", "cuconv", "--no-progress"]) == 0


def test_a_diverging_run_writes_standard_json(tmp_path):
    """A run whose loss becomes NaN writes standard JSON (null for NaN: Python wrote NaN, which JSON
    parsers refuse) and says it diverged."""
    out = tmp_path / "run"
    assert cli_main(["train", "--model", "lenet", "--dataset", "synthetic", "--lr", "3e38", "--epochs", "2",
                     "--limit-train", "64", "--limit-val", "16", "--backend", "cuconv", "--no-progress",
                     "--out", str(out)]) == 0
    text = (out / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda name: pytest.fail(f"metrics.json holds {name}"))
    run = metrics["runs"]["cuconv"]
    assert run["diverged"] is True and None in (run["epochs"][-1]["train_loss"], run["epochs"][-1]["val_loss"])


def test_cli_takes_a_large_input_side_the_model_takes():
    """--resize above the sizes searched before (1024) is checked by the model itself, on the meta
    device (the full VGG's first dense layer at 4096 x 4096 takes 34 GB: a failed allocation was
    reported as "needs inputs of at least None x None")."""
    parser = train.build_parser()
    train.check_args(parser, parser.parse_args(["--resize", "1100"]))  # (no SystemExit)
    train.check_args(parser, parser.parse_args(["--model", "vgg", "--vgg-arch", "full", "--resize", "4096"]))


def test_cli_refuses_a_last_batch_of_one_image_for_batch_norm(capsys):
    """torch's batch norm cannot train on one image: a run whose last batch would hold one stops
    before training, with a message, not with a traceback in the middle of an epoch."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--model", "lenet-bn", "--data-dir", str(SUBSET), "--limit-train", "129",
                  "--limit-val", "8", "--no-progress", "--backend", "cuconv"])
    assert "the last batch would hold one image (129 images in batches of 128)" in str(exit_info.value.code)
    assert "epoch" not in capsys.readouterr().out


def test_curves_have_integer_epoch_ticks_markers_and_a_throughput_panel():
    epoch = dict(train_loss=1.0, val_loss=1.1, val_acc=0.5, seconds=1.0, images_per_second=900.0)
    metrics = dict(title="LeNet", dataset_description="test", device="cpu", time_ratio=0.9,
                   runs={b: dict(epochs=[dict(epoch, epoch=1, images_per_second=s)]) for b, s in
                         (("cuconv", 1000.0), ("torch", 800.0))})
    fig = train.curves_figure(metrics)
    loss, acc, speed = fig.axes
    assert "images" in speed.get_ylabel()
    assert [line.get_ydata()[0] for line in speed.get_lines()] == [1000.0, 800.0]
    for ax in (loss, acc, speed):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0]
        assert all(line.get_marker() not in (None, "None", "") for line in ax.get_lines())


def test_cli_version_and_info(capsys):
    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"cuconv {cuconv.__version__} (torch {torch.__version__}")
    assert cli_main(["info"]) == 0
    report = capsys.readouterr().out
    for expected in ("torch: running", "built against", "CUDA kernels:", "GPUs:", "CPU kernels: instruction set",
                     "direct float32 convolution", "CPU memory recycling: ", "threads:"):
        assert expected in report
    assert cli_main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu_kernels"]["isa"] in ("avx512", "avx2", "generic")
    memory = cuconv.memory.stats()  # (the policy; what is held moves between the two calls)
    assert info["cpu_memory"].keys() == memory.keys()
    assert [info["cpu_memory"][k] for k in ("enabled", "smallest_bytes", "limit_bytes")] == \
        [memory[k] for k in ("enabled", "smallest_bytes", "limit_bytes")]
    assert info["cuda_kernels_compiled"] == cuconv.with_cuda


def test_cli_info_lists_every_setting_and_refuses_bad_ones(capsys, monkeypatch):
    """`cuconv info` shows every CUCONV_* variable set (it showed four, "none" with others set) and
    whether kernels are chosen by measurement; a value the kernels would refuse is a one-line
    error (a traceback for CUCONV_CPU_ISA; CUCONV_CPU_TUNE=2 was shown as if fine)."""
    monkeypatch.setenv("CUCONV_CPU_WINOGRAD", "1")
    monkeypatch.setenv("CUCONV_CPU_TUNE", "0")
    assert cli_main(["info"]) == 0
    report = capsys.readouterr().out
    assert "settings: CUCONV_CPU_TUNE=0, CUCONV_CPU_WINOGRAD=1" in report
    assert "kernel choice by measurement off" in report
    for name, value in (("CUCONV_CPU_TUNE", "2"), ("CUCONV_CPU_ISA", "bogus")):
        monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["info"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith("cuconv info: error: ") and f"{name} to be" in err and repr(value) in err
        monkeypatch.delenv(name)


def test_cli_without_a_command_says_so(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([])
    assert exit_info.value.code == 2 and "a command is required: train or info" in capsys.readouterr().err
