"""Per-call overhead of cuconv's Python and dispatcher layers: tiny tensors on one thread, so that
the kernels' work is negligible and what is timed is everything around them.

    PYTHONPATH=$PWD python benchmarks/overhead.py        # best of 7 repeats of 2000 calls, in us
"""

import timeit

import torch
import torch.nn.functional as F

import cuconv.functional as CF

ops = torch.ops.cuconv


def main():
    torch.set_num_threads(1)
    x, w, dy = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), torch.randn(1, 1, 2, 2)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    args = ([1, 1], [0, 0], [1, 1], 1)
    cases = {
        "torch.ops.cuconv.conv2d (the raw op)": lambda: ops.conv2d(x, w, None, *args),
        "torch.ops.cuconv.conv2d_backward_input": lambda: ops.conv2d_backward_input(dy, w, [1, 1, 4, 4], *args),
        "torch.ops.cuconv.max_pool2d": lambda: ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False),
        "cuconv.functional.conv2d": lambda: CF.conv2d(x, w),
        "cuconv.functional.conv2d, recording autograd": lambda: CF.conv2d(xg, wg),
        "cuconv.functional.conv2d forward + backward": lambda: CF.conv2d(xg, wg).sum().backward(),
        "torch.nn.functional.conv2d": lambda: F.conv2d(x, w),
        "torch.nn.functional.conv2d forward + backward": lambda: F.conv2d(xg, wg).sum().backward(),
    }
    for name, fn in cases.items():
        for _ in range(200):
            fn()
        best = min(timeit.repeat(fn, number=2000, repeat=7)) / 2000 * 1e6
        print(f"| `{name}` | {best:.1f} us |")


if __name__ == "__main__":
    main()
