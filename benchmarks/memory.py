"""Peak memory of one training step, cuconv against torch, each in a fresh process.

    python benchmarks/memory.py [--batch 128] [--models lenet,vgg,resnet18]

Each measurement runs in its own subprocess: the model and batch are built, one warm-up
step runs, and the step's peak resident memory above the state before the first step is
reported (Linux ru_maxrss, so it includes the allocator's caches: what the OS sees).
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
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(cuconv.__file__)))
    out = subprocess.run([sys.executable, "-c", CHILD, name, backend, str(batch), str(resize)],
                         capture_output=True, text=True, check=True, env=env, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", default="lenet,vgg,resnet18")
    args = parser.parse_args()
    from cuconv import models

    print("| model | input | batch | cuconv MiB | torch MiB | cuconv/torch |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name in args.models.split(","):
        resize = models.MODEL_DEFAULTS[name]["resize"]
        ours, theirs = (measure(name, b, args.batch, resize) for b in ("cuconv", "torch"))
        print(f"| {name} | {resize}x{resize} | {args.batch} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f} |")


if __name__ == "__main__":
    main()
