"""Smoke check of an installed cuconv under whatever torch the environment has (CI runs it
after a plain `pip install .` into a venv holding another torch than the build's):

    python -P tests/check_installed.py

Imports cuconv, prints what it was built with and what it runs under, and compares a forward
and backward pass of every op with torch.nn.functional in float64. Exits non-zero on a mismatch."""

import sys

import torch
import torch.nn.functional as F

import cuconv
import cuconv.functional as CF


def check(name, ours, theirs, *tensors):
    leaves = [t.clone().requires_grad_() for t in tensors]
    refs = [t.clone().requires_grad_() for t in tensors]
    out, ref = ours(*leaves), theirs(*refs)
    projection = torch.randn_like(ref)
    (out * projection).sum().backward()
    (ref * projection).sum().backward()
    for got, expected in [(out, ref)] + [(a.grad, b.grad) for a, b in zip(leaves, refs)]:
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    print(f"{name}: forward and backward match torch.nn.functional")


def main():
    print(f"cuconv {cuconv.__version__} from {cuconv.__file__}: built against torch {cuconv.built_with_torch}, "
          f"running under torch {torch.__version__} (CUDA kernels loaded: {cuconv.with_cuda})")
    torch.manual_seed(0)
    x = torch.randn(2, 4, 11, 10, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    check("conv2d", lambda x, w, b: CF.conv2d(x, w, b, 2, 1, 1, 2), lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 2), x, w, b)
    check("max_pool2d", lambda x: CF.max_pool2d(x, 3, 2, 1, ceil_mode=True),
          lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), x)
    check("avg_pool2d", lambda x: CF.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2), x)
    check("adaptive_avg_pool2d", lambda x: CF.adaptive_avg_pool2d(x, (3, 4)), lambda x: F.adaptive_avg_pool2d(x, (3, 4)), x)
    return 0


if __name__ == "__main__":
    sys.exit(main())
