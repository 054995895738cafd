"""Each kernel of tiled 2x2 pooling (float32, NCHW: pool_groups, pool_rows, pool_planes, where
the pass has them) forced through the tuning table, the kernels alternated call by call in one
process (the machine's speed moves within minutes here: times from separate runs do not compare).
Prints each kernel's median time and the median of its per-round ratios to the plane kernel's,
for the pooling cases of benchmarks/cases.py with 2x2 windows of stride 2, at batch 128:

    PYTHONPATH=$PWD python benchmarks/tiled_2x2_kernels.py [--rounds 15] [--calls 3] [-k vgg]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuconv  # noqa: E402
from cases import POOL_CASES  # noqa: E402

ops = torch.ops.cuconv
WINDOW = ([2, 2], [2, 2], [0, 0])


def passes(case, x):
    """(name, key prefix, call) of each pass of the case's pooling."""
    if case.kind == "max":
        y, indices = ops.max_pool2d(x, *WINDOW, [1, 1], False)
        dy = torch.randn_like(y)
        return [("gradient", "max_pool2d_2x2_backward",
                 lambda: ops.max_pool2d_backward(dy, indices, list(x.shape), *WINDOW, [1, 1], False))]
    dy = torch.randn_like(ops.avg_pool2d(x, *WINDOW, False, True, None))
    return [("forward", "avg_pool2d_2x2_forward", lambda: ops.avg_pool2d(x, *WINDOW, False, True, None)),
            ("gradient", "avg_pool2d_2x2_backward",
             lambda: ops.avg_pool2d_backward(dy, list(x.shape), *WINDOW, False, True, None))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=3, help="calls timed together in a round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms a call, median of {args.rounds} rounds")
    for case in POOL_CASES:
        tiled = case.kernel == 2 and case.stride == 2 and case.padding == 0 and case.kind in ("max", "avg")
        if not tiled or case.channels_last or args.k not in case.name:
            continue
        x = torch.randn(args.batch, case.channels, case.size, case.size)
        for name, prefix, call in passes(case, x):
            cuconv.tuning.clear()
            call()  # measured: the pass's key and its candidates
            keys = [key for key in cuconv.tuning.choices() if key.startswith(prefix)]
            if not keys:
                print(f"{case.name} {name}: one kernel only")
                continue
            chosen = cuconv.tuning.choices()[keys[0]]
            times = {}
            for kernel in ("pool_groups", "pool_rows", "pool_planes"):
                cuconv._C.cpu_tuning_set({key: kernel for key in keys})
                call()
                if all(cuconv.tuning.choices()[key] == kernel for key in keys):  # (else not a candidate)
                    times[kernel] = []
            for _ in range(args.rounds):
                for kernel, rounds in times.items():
                    cuconv._C.cpu_tuning_set({key: kernel for key in keys})
                    call()
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        call()
                    rounds.append((time.perf_counter() - start) / args.calls * 1e3)
            shown = ", ".join(
                f"{kernel} {statistics.median(rounds):.3f} ms ("
                f"{statistics.median(a / b for a, b in zip(rounds, times['pool_planes'])):.2f})"
                for kernel, rounds in times.items())
            print(f"{case.name} {name} ({tuple(x.shape)}; the tuner chose {chosen}): {shown}")


if __name__ == "__main__":
    main()
