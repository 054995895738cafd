"""Train the book's models on cuconv layers and on torch.nn layers, and compare them.

    python -m cuconv train --model lenet --backend both --data-dir DIR --epochs 10 --out runs/lenet
    torchrun --nproc_per_node 2 -m cuconv train --model lenet ...      # data-parallel (DDP)

The book's recipe (d2l 7.6, 8.2, 8.6): Xavier-initialised lazy models, plain minibatch
SGD on the mean cross-entropy, 10 epochs, batch 128, learning rate and input size per
model (LeNet 0.1 at 28x28, VGG 0.01 at 224x224, ResNet-18 0.01 at 96x96).

With --backend both, both runs start from the same weights (the cuconv model is built
and initialised, and its state_dict is loaded into the torch model), and each run
draws its batch order and dropout masks from generators reset to the same seed, so
their curves differ only by floating-point rounding in the kernels.

Under torchrun each process trains a DistributedDataParallel copy (gloo on the CPU,
nccl on GPUs) on its shard of every global batch of --batch-size examples; the loss
is scaled so that DDP's gradient average is exactly the gradient of the global batch's
mean loss. Only rank 0 prints and writes files.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import data as cdata
from . import models as cmodels

__all__ = ["initial_state", "make_model", "batch_loss", "fit", "evaluate", "run", "main", "build_parser", "check_args",
           "plot_curves", "curves_figure"]

_MODEL_TITLES = {"lenet": "LeNet", "lenet-bn": "LeNet with batch norm", "vgg": "VGG", "resnet18": "ResNet-18"}


def initial_state(model_name, seed=0, resize=None, vgg_arch=cmodels.VGG_ARCH_SMALL, num_classes=10):
    """The book's initial weights for `model_name`: a cuconv model, seeded, given its lazy shapes
    by one forward pass on a (1, 1, resize, resize) input, Xavier-initialised; its state_dict."""
    resize = resize or cmodels.MODEL_DEFAULTS[model_name]["resize"]
    torch.manual_seed(seed)
    model = cmodels.build_model(model_name, "cuconv", num_classes, vgg_arch)
    cmodels.apply_init(model, (1, 1, resize, resize))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_model(model_name, backend, state, resize=None, device="cpu", dtype=None,
               vgg_arch=cmodels.VGG_ARCH_SMALL, num_classes=10):
    """A `backend` model with the weights `state` (from initial_state), on `device`."""
    resize = resize or cmodels.MODEL_DEFAULTS[model_name]["resize"]
    model = cmodels.build_model(model_name, backend, num_classes, vgg_arch)
    cmodels.apply_init(model, (1, 1, resize, resize), init=None)
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype)


def batch_loss(model, X, y, global_batch_size, world_size=1):
    """(loss to backpropagate, summed cross-entropy of this shard).

    The loss is this shard's summed cross-entropy * world_size / global_batch_size: one process
    gets the book's mean over the batch, and DDP's average over world_size ranks gets the same
    mean over the whole global batch even when the shards are of unequal size.
    """
    total = F.cross_entropy(model(X), y, reduction="sum")
    return total * (world_size / global_batch_size), total.detach()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _all_reduce(values, world_size, device):
    if world_size == 1:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def evaluate(model, dataset, batch_size, device="cpu", resize=None, rank=0, world_size=1, dtype=torch.float32):
    """(mean cross-entropy, accuracy) on the validation split, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    with torch.no_grad():
        for X, y in dataset.batches("val", batch_size, device, resize, shuffle=False, rank=rank,
                                    world_size=world_size, dtype=dtype):
            out = model(X)
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            correct += float((out.argmax(1) == y).sum())
            count += len(y)
    model.train(was_training)
    loss_sum, correct, count = _all_reduce([loss_sum, correct, count], world_size, device)
    return loss_sum / max(count, 1), correct / max(count, 1)


class _NoBar:
    """Stands in for a tqdm bar where none is shown."""

    def __init__(self, iterable, **_):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **_):
        pass

    def close(self):
        pass


def fit(model, dataset, epochs, batch_size, lr, device="cpu", resize=None, seed=0, label="",
        progress=True, rank=0, world_size=1, dtype=torch.float32):
    """Train with plain SGD on the mean cross-entropy; returns one dict per epoch:
    {epoch, train_loss, val_loss, val_acc, seconds, images_per_second}.

    `seconds` is the wall time of the epoch's training pass (the evaluation is timed apart, as
    `val_seconds`); `images_per_second` counts the images of all ranks. The batch order comes
    from a generator seeded with `seed`, and the global RNG (dropout) is reseeded with it too.
    """
    if progress:
        from tqdm.auto import tqdm
    else:  # (tqdm is needed for progress bars only: cuconv train --no-progress runs without it)
        tqdm = _NoBar

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    n_train = len(dataset.train_labels)
    steps = dataset.num_batches("train", batch_size)
    if world_size > 1 and n_train % batch_size and n_train % batch_size < world_size:
        steps -= 1  # batches() drops a last global batch too small to shard
    n_seen = min(n_train, steps * batch_size)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum = 0.0
        _sync(device)
        start = time.perf_counter()
        batches = dataset.batches("train", batch_size, device, resize, generator=generator, rank=rank,
                                  world_size=world_size, dtype=dtype)
        bar = tqdm(batches, total=steps, desc=f"{label} epoch {epoch}/{epochs}", disable=not progress,
                   leave=False, dynamic_ncols=True, file=sys.stderr)
        for step, (X, y) in enumerate(bar):
            global_batch = min(batch_size, n_train - step * batch_size)
            optimizer.zero_grad(set_to_none=True)
            loss, shard_sum = batch_loss(model, X, y, global_batch, world_size)
            loss.backward()
            optimizer.step()
            loss_sum += float(shard_sum)
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{float(shard_sum) / max(len(y), 1):.4f}")
        bar.close()
        _sync(device)
        seconds = time.perf_counter() - start
        (loss_sum,) = _all_reduce([loss_sum], world_size, device)
        eval_start = time.perf_counter()
        val_loss, val_acc = evaluate(model, dataset, batch_size, device, resize, rank, world_size, dtype)
        row = dict(epoch=epoch, train_loss=loss_sum / n_seen, val_loss=val_loss, val_acc=val_acc,
                   seconds=seconds, images_per_second=n_seen / seconds,
                   val_seconds=time.perf_counter() - eval_start)
        history.append(row)
        if progress:
            tqdm.write(f"{label} epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}, val loss "
                       f"{val_loss:.4f}, val acc {val_acc:.4f}, {seconds:.2f} s, "
                       f"{row['images_per_second']:.0f} img/s", file=sys.stderr)
        if not all(math.isfinite(v) for v in (row["train_loss"], val_loss)):
            print(f"{label}: the loss is not finite in epoch {epoch}; stopping this run (lower --lr?)",
                  file=sys.stderr)
            break
    return history


def _resolve_device(requested, backends, local_rank=0):
    import cuconv

    if requested == "cpu":
        return torch.device("cpu")
    cuda_ok = torch.cuda.is_available()
    kernels_ok = cuconv.with_cuda or "cuconv" not in backends
    if requested == "cuda":
        if not cuda_ok:
            raise SystemExit("cuconv train: --device cuda, but torch sees no CUDA GPU")
        if not kernels_ok:
            raise SystemExit("cuconv train: --device cuda, but cuconv was built without its CUDA kernels "
                             "(rebuild without CUCONV_CPU_ONLY, with nvcc available)")
        return torch.device("cuda", local_rank)
    if cuda_ok and kernels_ok:
        return torch.device("cuda", local_rank)
    if cuda_ok:
        print("cuconv train: a GPU is present but cuconv was built without CUDA kernels; training on the CPU",
              file=sys.stderr)
    return torch.device("cpu")


def format_tables(metrics):
    """The end-of-run tables, as text: one per backend, then a summary with the time ratio."""
    lines = [f"{metrics['title']} on {metrics['dataset_description']}, device {metrics['device']}, "
             f"batch {metrics['config']['batch_size']}, lr {metrics['config']['lr']}, "
             f"input {metrics['config']['resize']}x{metrics['config']['resize']}"]
    head = f"{'epoch':>5}  {'train loss':>10}  {'val loss':>9}  {'val acc':>7}  {'s/epoch':>8}  {'img/s':>8}"
    for backend, run in metrics["runs"].items():
        lines += ["", f"[{metrics['dataset']}] backend {backend}", head]
        for r in run["epochs"]:
            lines.append(f"{r['epoch']:>5}  {r['train_loss']:>10.4f}  {r['val_loss']:>9.4f}  {r['val_acc']:>7.4f}  "
                         f"{r['seconds']:>8.2f}  {r['images_per_second']:>8.0f}")
    lines += ["", f"[{metrics['dataset']}] summary (last epoch; time: mean over epochs)",
              f"{'backend':>7}  {'train loss':>10}  {'val loss':>9}  {'val acc':>7}  {'s/epoch':>8}  {'img/s':>8}"]
    for backend, run in metrics["runs"].items():
        if not run["epochs"]:
            continue
        last = run["epochs"][-1]
        lines.append(f"{backend:>7}  {last['train_loss']:>10.4f}  {last['val_loss']:>9.4f}  {last['val_acc']:>7.4f}  "
                     f"{run['mean_seconds']:>8.2f}  {run['mean_images_per_second']:>8.0f}")
    if metrics.get("time_ratio") is not None:
        lines.append(f"cuconv/torch time ratio (s/epoch): {metrics['time_ratio']:.2f}")
    if metrics["dataset"] == "synthetic":  # say so on every line, so no excerpt passes for Fashion-MNIST
        lines = [f"[synthetic] {line}" if line and not line.startswith("[synthetic]") else line for line in lines]
    return "\n".join(lines)


def plot_curves(metrics, path):
    """Write curves_figure(metrics) to `path` (PNG)."""
    import matplotlib.pyplot as plt

    fig = curves_figure(metrics)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_figure(metrics):
    """Three panels against epochs, one colour per backend: loss (train solid, val dashed),
    validation accuracy, and training throughput (images/s), with a marker on every epoch
    and integer epoch ticks, so that a 1-2 epoch run reads as well as a long one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc, ax_speed) = plt.subplots(1, 3, figsize=(14, 4))
    for i, ((backend, run), colour) in enumerate(zip(metrics["runs"].items(), ("tab:blue", "tab:orange", "tab:green"))):
        epochs = [r["epoch"] for r in run["epochs"]]
        width = 4 - 2 * i if len(metrics["runs"]) > 1 else 1.5  # the first run drawn wider: equal curves stay visible
        style = dict(color=colour, lw=width, alpha=0.8, marker="os"[i % 2], ms=7 - 3 * i)
        ax_loss.plot(epochs, [r["train_loss"] for r in run["epochs"]], "-", label=f"{backend} train", **style)
        ax_loss.plot(epochs, [r["val_loss"] for r in run["epochs"]], "--", label=f"{backend} val", **style)
        ax_acc.plot(epochs, [r["val_acc"] for r in run["epochs"]], "-", label=backend, **style)
        ax_speed.plot(epochs, [r["images_per_second"] for r in run["epochs"]], "-", label=backend, **style)
    last_epoch = max((len(run["epochs"]) for run in metrics["runs"].values()), default=1)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "validation accuracy"), (ax_speed, "training images / s")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_xlim(0.5, last_epoch + 0.5)
        if last_epoch <= 12:
            ax.set_xticks(range(1, last_epoch + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    ax_speed.set_ylim(bottom=0)
    ratio = metrics.get("time_ratio")
    if ratio is not None:
        ax_speed.set_title(f"cuconv/torch time ratio {ratio:.2f}", fontsize=9)
    fig.suptitle(f"{metrics['title']}, {metrics['dataset_description']}, {metrics['device']}", fontsize=9)
    fig.tight_layout()
    return fig


def _finite_or_none(value):
    """`value` with every NaN or infinite float as None: metrics.json stays standard JSON (null)
    when a run diverges (Python's json would write NaN, which JSON parsers refuse)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def run(args):
    """Train as `args` (from build_parser) says; returns the metrics dict (on every rank)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    main_rank = rank == 0
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = ["cuconv", "torch"] if args.backend == "both" else [args.backend]
    device = _resolve_device(args.device, backends, local_rank)
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    defaults = cmodels.MODEL_DEFAULTS[args.model]
    lr = args.lr if args.lr is not None else defaults["lr"]
    resize = args.resize or defaults["resize"]
    batch_size = args.batch_size or defaults["batch_size"]
    epochs = args.epochs if args.epochs is not None else defaults["epochs"]
    vgg_arch = cmodels.VGG_ARCH_FULL if args.vgg_arch == "full" else cmodels.VGG_ARCH_SMALL

    if args.dataset == "synthetic":
        dataset = cdata.synthetic_dataset(args.seed)
    else:
        try:
            dataset = cdata.load_fashion_mnist(args.data_dir, download=not args.no_download,
                                               timeout=args.download_timeout)
        except (cdata.DataNotFoundError, cdata.IDXError) as error:
            raise SystemExit(f"cuconv train: {error}") from None
    dataset = dataset.limit(args.limit_train, args.limit_val)
    if len(dataset.train_labels) == 0 or len(dataset.val_labels) == 0:
        raise SystemExit("cuconv train: no training or validation images left (check --limit-train/--limit-val)")
    if len(dataset.train_labels) < world_size:
        raise SystemExit(f"cuconv train: {len(dataset.train_labels)} training images cannot be shared over {world_size} "
                         "processes (check --limit-train)")
    last = len(dataset.train_labels) % batch_size
    if last and world_size <= last < 2 * world_size and _needs_two_images(args.model, resize, vgg_arch):
        shard = "the last batch would hold one image" if world_size == 1 else \
            f"a process's share of the last batch ({last} images over {world_size} processes) would hold one image"
        raise SystemExit(f"cuconv train: {args.model} normalises each training batch, and {shard} "
                         f"({len(dataset.train_labels)} images in batches of {batch_size}), which torch's "
                         "batch norm refuses; change --batch-size or --limit-train")
    title = _MODEL_TITLES[args.model] + (" (full VGG-11 widths)" if args.model == "vgg" and args.vgg_arch == "full" else "")
    description = dataset.describe() + (f", {world_size} processes (DDP)" if world_size > 1 else "")
    tag = "[synthetic] " if dataset.name == "synthetic" else ""
    progress = main_rank and not args.no_progress
    if main_rank:
        print(f"{tag}cuconv train: {title}, backend(s) {', '.join(backends)}, on {description}; device {device}, "
              f"{epochs} epochs, batch {batch_size}, lr {lr}, input {resize}x{resize}, seed {args.seed}, "
              f"{torch.get_num_threads()} CPU threads", flush=True)
        if dataset.name == "synthetic":
            print("cuconv train: [synthetic] the data are generated, not Fashion-MNIST", flush=True)

    state = initial_state(args.model, args.seed, resize, vgg_arch)
    metrics = dict(model=args.model, title=title, device=str(device) if device.type == "cpu" else
                   f"{device} ({torch.cuda.get_device_name(device)})",
                   dataset=dataset.name, dataset_description=description, world_size=world_size,
                   torch_version=torch.__version__, cpu_threads=torch.get_num_threads(),
                   config=dict(epochs=epochs, batch_size=batch_size, lr=lr, resize=resize, seed=args.seed,
                               limit_train=args.limit_train, limit_val=args.limit_val,
                               vgg_arch=[list(b) for b in vgg_arch] if args.model == "vgg" else None),
                   runs={})
    for backend in backends:
        model = make_model(args.model, backend, state, resize, device, vgg_arch=vgg_arch)
        if world_size > 1:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        history = fit(model, dataset, epochs, batch_size, lr, device, resize, args.seed,
                      label=f"[{dataset.name}] {backend}", progress=progress, rank=rank, world_size=world_size)
        timed = history[1:] if len(history) > 1 else history  # the first epoch includes warm-up
        metrics["runs"][backend] = dict(
            epochs=history,
            diverged=not all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in history),
            mean_seconds=sum(r["seconds"] for r in timed) / max(len(timed), 1),
            mean_images_per_second=sum(r["images_per_second"] for r in timed) / max(len(timed), 1))
    runs = metrics["runs"]
    metrics["time_ratio"] = (runs["cuconv"]["mean_seconds"] / runs["torch"]["mean_seconds"]
                             if "cuconv" in runs and "torch" in runs and runs["torch"]["mean_seconds"] else None)
    if main_rank:
        print(format_tables(metrics), flush=True)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps(_finite_or_none(metrics), indent=2, allow_nan=False) + "\n")
            plot_curves(metrics, out / "curves.png")
            print(f"{tag}cuconv train: [{dataset.name}] wrote {out / 'metrics.json'} and {out / 'curves.png'}")
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    return metrics


def _positive(kind, most=None):
    """An argparse type: a number of `kind` (int or float) greater than 0 (and at most `most`)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__} of at most {most:g}, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _seed(text):
    """An argparse type: a seed torch's generators take and cuconv's data shuffling too."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 2**63 - 1, got {text!r}")
    return value


# The largest input side `--resize` takes: a 4096 x 4096 image is 64 MB a channel in float32
# (larger ones were as likely to exhaust memory as to be meant).
MAX_RESIZE = 4096
MAX_THREADS = 1024  # (torch.set_num_threads overflows past 2**31; OpenMP runs out of memory far below)


def build_parser(parser=None):
    if parser is None:
        from .__main__ import ArgumentParser

        parser = ArgumentParser(prog="cuconv train", description=__doc__.split("\n\n")[0])
    a = parser.add_argument
    positive_int = _positive(int)
    a("--model", choices=tuple(cmodels.MODEL_DEFAULTS), default="lenet",
      help="which of the book's models (default lenet; lenet-bn is the batch-normalised LeNet of d2l 8.5)")
    a("--backend", choices=("cuconv", "torch", "both"), default="both",
      help="cuconv layers, torch.nn layers (oneDNN/cuDNN), or both from the same weights (default both)")
    a("--epochs", type=positive_int, default=None, help="default 10 (the book)")
    a("--batch-size", type=positive_int, default=None, help="global batch size (default 128, the book)")
    # (at most float32's largest: the optimizer multiplies float32 gradients by it)
    a("--lr", type=_positive(float, most=float(torch.finfo(torch.float32).max)), default=None,
      help="SGD learning rate (default: lenet and lenet-bn 0.1, vgg 0.01, resnet18 0.01)")
    a("--resize", type=_positive(int, most=MAX_RESIZE), default=None,
      help="input side in pixels (default: lenet and lenet-bn 28, vgg 224, resnet18 96)")
    a("--vgg-arch", choices=("small", "full"), default="small",
      help="VGG widths: the book's Fashion-MNIST 'small' ((1,16),(1,32),(2,64),(2,128),(2,128)) or 'full' VGG-11")
    a("--dataset", choices=("fashion-mnist", "synthetic"), default="fashion-mnist",
      help="Fashion-MNIST (default) or a generated synthetic stand-in that needs no files")
    a("--data-dir", default=None, help="folder with the four Fashion-MNIST IDX files (.gz or not); default: "
      "$CUCONV_DATA_DIR or ~/.cache/cuconv/fashion-mnist, downloaded there if missing")
    a("--no-download", action="store_true", help="never download; fail if the files are missing")
    a("--download-timeout", type=_positive(float, most=cdata.MAX_TIMEOUT), default=30.0,
      help="seconds a download may wait for the server at each step: connecting, each read (default 30)")
    a("--limit-train", type=positive_int, default=None, metavar="N", help="use only the first N training images")
    a("--limit-val", type=positive_int, default=None, metavar="N", help="use only the first N validation images")
    a("--seed", type=_seed, default=0, help="seed for the initial weights, batch order and dropout (default 0)")
    a("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if available")
    a("--out", default=None, metavar="DIR", help="write DIR/metrics.json and DIR/curves.png")
    a("--threads", type=_positive(int, most=MAX_THREADS), default=None, metavar="N",
      help="CPU threads for torch and cuconv (default: torch's default; on a busy shared machine 1 is often faster)")
    a("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    return parser


def _smallest_input(model_name, vgg_arch, start):
    """The smallest input side from `start` up (to MAX_RESIZE) that the model accepts (its torch.nn
    twin on the meta device: shapes only, so that a large side's weights take no memory)."""
    with torch.device("meta"):
        model = cmodels.build_model(model_name, "torch", 10, vgg_arch).eval()
        for side in range(start, MAX_RESIZE + 1):
            try:
                with torch.no_grad():
                    model(torch.zeros(1, 1, side, side))
                return side
            except RuntimeError:
                continue
    return None


def _needs_two_images(model_name, resize, vgg_arch=cmodels.VGG_ARCH_SMALL):
    """Whether training the model on a batch of one image fails: torch's batch norm needs more than
    one value a channel (LeNet-BN's dense layers; ResNet-18's 1 x 1 maps at 32 x 32 and smaller).
    Tried on the meta device."""
    with torch.device("meta"):
        model = cmodels.build_model(model_name, "torch", 10, vgg_arch).train()
        try:
            model(torch.zeros(1, 1, resize, resize))
        except ValueError:
            return True
    return False


def _missing_packages(args):
    """The optional packages this run needs that are not installed (the `train` extra)."""
    import importlib.util

    needed = (["tqdm"] if not args.no_progress else []) + (["matplotlib"] if args.out is not None else [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def check_args(parser, args):
    """The checks argparse cannot make alone, before any data is read or model trained: a batch
    that every process can take, an input size the model can take, a device that is there, an
    --out folder that can be written, and the packages the run needs. Errors exit with code 2."""
    vgg_arch = cmodels.VGG_ARCH_FULL if args.vgg_arch == "full" else cmodels.VGG_ARCH_SMALL
    if args.resize is not None:
        smallest = _smallest_input(args.model, vgg_arch, args.resize)
        if smallest != args.resize:
            parser.error(f"argument --resize: {args.model} needs inputs of at least {smallest} x {smallest} "
                         f"pixels, got {args.resize}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # (torchrun's processes)
    batch_size = args.batch_size or cmodels.MODEL_DEFAULTS[args.model]["batch_size"]
    processes = f" over {world_size} processes" if world_size > 1 else ""
    if batch_size < world_size:
        parser.error(f"argument --batch-size: each batch is shared{processes}, which needs at least {world_size} "
                     f"images, got {batch_size}")
    resize = args.resize or cmodels.MODEL_DEFAULTS[args.model]["resize"]
    if batch_size < 2 * world_size and _needs_two_images(args.model, resize, vgg_arch):
        parser.error(f"argument --batch-size: {args.model} normalises each batch{' a process takes' if processes else ''}, "
                     f"which needs at least {2 * world_size} images{processes} at {resize} x {resize}, got {batch_size}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda, but torch sees no CUDA GPU")
    if args.out is not None:
        import tempfile

        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=args.out):
                pass
        except OSError as error:
            parser.error(f"argument --out: cannot write to {args.out!r} ({error.strerror or error})")
    missing = _missing_packages(args)
    if missing:
        purposes = {"tqdm": "tqdm for its progress bars (or --no-progress)", "matplotlib": "matplotlib for --out's plots"}
        parser.error(f"this run needs {' and '.join(purposes[name] for name in missing)}, not installed: "
                     "pip install 'cuconv[train]'")


def main(argv=None):
    """`cuconv train` on its own: parse argv (default sys.argv[1:]), check and train."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return main_with_args(args)


def main_with_args(args):
    try:
        run(args)
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # python -m cuconv.train ... (as cuconv train ...)
    sys.exit(main())
