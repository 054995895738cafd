"""Run by tests/test_train.py under torchrun (2 CPU processes, gloo on 127.0.0.1); not a test itself.

Each rank takes its shard of one global batch of a float64 LeNet, backpropagates the
trainer's loss through DistributedDataParallel, and saves the averaged gradients to
OUT/grads-RANK.pt.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from cuconv import data, train

GLOBAL_BATCH = 15  # odd on purpose: shards of 8 and 7


def main(out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    state = train.initial_state("lenet", seed=0)
    model = nn.parallel.DistributedDataParallel(train.make_model("lenet", "cuconv", state, dtype=torch.float64))
    dataset = data.synthetic_dataset(0, n_train=40, n_val=4)
    generator = torch.Generator().manual_seed(0)
    X, y = next(dataset.batches("train", GLOBAL_BATCH, generator=generator, rank=rank, world_size=world_size,
                                dtype=torch.float64))
    loss, _ = train.batch_loss(model, X, y, GLOBAL_BATCH, world_size)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.module.named_parameters()}
    torch.save(dict(grads=grads, shard=len(y), world_size=world_size), os.path.join(out, f"grads-{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
