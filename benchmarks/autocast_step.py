"""A training step under torch.autocast("cpu", dtype=torch.bfloat16): cuconv's model next to
torch.nn's (the same architecture and initialisation, SGD), random images, one thread pool.

    PYTHONPATH=$PWD python benchmarks/autocast_step.py resnet18 --batch 64 --size 96
    PYTHONPATH=$PWD python benchmarks/autocast_step.py resnet18 --batch 64 --size 96 --channels-last
    PYTHONPATH=$PWD python benchmarks/autocast_step.py lenet --batch 128 --size 28 --reps 5

Each backend runs three warm-up steps (cuconv measures its kernel choices there), then the best
of --reps steps is kept; the two backends alternate twice and each keeps its best.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from cuconv import models


def best_step_ms(name, backend, X, y, reps, channels_last):
    torch.manual_seed(0)
    net = models.build_model(name, backend=backend)
    models.apply_init(net, X[:2])
    if channels_last:  # (the layout torch's CPU guides recommend with bfloat16: weights and images NHWC)
        net = net.to(memory_format=torch.channels_last)
        X = X.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(X), y)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=["lenet", "vgg", "resnet18"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=96, help="image height and width")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true", help="the model and the images in channels_last")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    X = torch.rand(args.batch, 1, args.size, args.size, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    times = {"cuconv": [], "torch": []}
    for backend in ("cuconv", "torch", "cuconv", "torch"):
        times[backend].append(best_step_ms(args.model, backend, X, y, args.reps, args.channels_last))
    ours, theirs = min(times["cuconv"]), min(times["torch"])
    layout = ", channels_last" if args.channels_last else ""
    print(f"{args.model} batch {args.batch} {args.size}x{args.size}{layout}, autocast bfloat16 training step: "
          f"cuconv {ours:.1f} ms, torch {theirs:.1f} ms, ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
