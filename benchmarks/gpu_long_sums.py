"""float32 weight gradients over long sums on a GPU: cuconv and cuDNN against float64.

    python benchmarks/gpu_long_sums.py

A weight gradient sums N*Ho*Wo products per value (6.4 million for a 224x224 layer at batch
128). For each case it prints the largest error of cuconv's and cuDNN's float32 weight gradient
(TF32 off) against torch's float64 one, over the largest value, whether cuconv's is bitwise the
same on a second call, and the time of each (CUDA events, median of 20 calls). cuconv splits
such sums into slices of at most 4,096 products where memory allows (reduction_splits in
csrc/cuda/conv2d.cu); the first GPU run (H200, 2026-12-04) measured that rule against the one
before it (at most 64 slices): benchmarks/RESULTS.md.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_protocol import time_ms  # noqa: E402  (CUDA events after warm-up; cuconv's ops registered)

# (name, batch, in channels, out channels, height, width), each a 3x3 kernel with padding 1
CASES = [
    ("64->64 at 224x224, batch 128", 128, 64, 64, 224, 224),  # tests/test_cuda.py's largest layer
    ("256->256 at 56x56, batch 64", 64, 256, 256, 56, 56),  # VGG-16's third block at full width
    ("64->64 at 56x56, batch 64", 64, 64, 64, 56, 56),  # ResNet-18's second stage at 224x224
    ("512->512 at 7x7, batch 64", 64, 512, 512, 7, 7),  # its last stage
    ("128->16 at 48x96, batch 5", 5, 128, 16, 48, 96),  # tests/test_ops.py's workspace-blocks layer
]


def main():
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    print(torch.cuda.get_device_name(), torch.__version__)
    print("| case | cuconv err / max | cuDNN err / max | bitwise repeat | cuconv ms | cuDNN ms |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for name, batch, cin, cout, height, width in CASES:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(batch, cin, height, width, device="cuda", generator=g)
        dy = torch.randn(batch, cout, height, width, device="cuda", generator=g)  # (3x3, padding 1: same size)
        w_shape = [cout, cin, 3, 3]
        args = ((1, 1), (1, 1), (1, 1), 1)
        ref = torch.ops.aten.convolution_backward(dy.double(), x.double(), torch.empty(w_shape, device="cuda", dtype=torch.float64),
                                                  None, *args[:3], False, [0, 0], 1, [False, True, False])[1]
        scale = ref.abs().max().item()

        def theirs():
            return torch.ops.aten.convolution_backward(dy, x, torch.empty(w_shape, device="cuda"), None, *args[:3],
                                                       False, [0, 0], 1, [False, True, False])[1]

        def ours():
            return torch.ops.cuconv.conv2d_backward_weight(dy, x, w_shape, *args, False)

        err_theirs = (theirs().double() - ref).abs().max().item() / scale
        t_theirs = time_ms(theirs, "cuda", 20, 1)
        first = ours()
        err = (first.double() - ref).abs().max().item() / scale
        same = torch.equal(first, ours())
        t_ours = time_ms(ours, "cuda", 20, 1)
        print(f"| {name} | {err:.2e} | {err_theirs:.2e} | {same} | {t_ours:.3f} | {t_theirs:.3f} |", flush=True)
        del x, dy, ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
