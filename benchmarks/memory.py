"""Peak memory of one training step, cuconv against torch, each in a fresh process.

    python benchmarks/memory.py [--batch 128] [--models lenet,vgg,resnet18]

Each measurement runs in its own subprocess: the model and batch are built, two training
steps run, and their peak resident memory above the state before the first step is
reported (Linux ru_maxrss). The child runs with glibc's mmap threshold fixed at 128 KiB
(MALLOC_MMAP_THRESHOLD_), so every tensor is its own mapping, returned to the OS when
freed: the peak is then the peak of live memory, the same from run to run. With glibc's
default, adaptive threshold, freed tensors of up to 32 MiB stay in the heap, and the
peak depends on fragmentation (ResNet-18 varied from 1.14x to 1.26x torch's between
identical runs on 2026-11-25).
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch, torch.nn.functional as F
from cuconv import models
from cuconv.train import initial_state, make_model
name, backend, batch, resize = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = make_model(name, backend, initial_state(name, resize=resize), resize=resize)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
X, y = torch.rand(batch, 1, resize, resize), torch.randint(0, 10, (batch,))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(2):
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(X), y).backward()
    optimizer.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mib": (peak - before) / 1024}))
"""


def measure(name, backend, batch, resize):
    import os
    import tempfile

    import cuconv

    # The child imports the same cuconv as this process, whatever the working directory holds.
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(cuconv.__file__)),
               MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", CHILD, name, backend, str(batch), str(resize)],
                         capture_output=True, text=True, check=True, env=env, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", default="lenet,vgg,resnet18")
    args = parser.parse_args()
    from cuconv import models

    print("| model | input | batch | cuconv MiB | torch MiB | cuconv/torch | goal <= 1.1 met |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for name in args.models.split(","):
        resize = models.MODEL_DEFAULTS[name]["resize"]
        ours, theirs = (measure(name, b, args.batch, resize) for b in ("cuconv", "torch"))
        ratio = ours / theirs
        print(f"| {name} | {resize}x{resize} | {args.batch} | {ours:.0f} | {theirs:.0f} | {ratio:.2f} | "
              f"{'yes' if ratio <= 1.1 else '**no**'} |")


if __name__ == "__main__":
    main()
