"""Whole-model training steps (forward, loss, backward, SGD update) of the book's three
models on both backends, side by side: same initial weights, same batch.

LeNet at 28x28, the reduced VGG at 224x224 and ResNet-18 at 96x96, batch 128 as in the book
(quick mode: batch 16, and VGG at 96x96 so that it stays a matter of seconds).
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import CHECK_TOLERANCE, rounds_for, settle, synchronize
from cuconv import models
from cuconv.train import initial_state, make_model

STEP_MODELS = ["lenet", "vgg", "resnet18"]


@pytest.fixture(scope="module")
def states():
    return {}


@pytest.mark.parametrize("backend", ["cuconv", "torch"])
@pytest.mark.parametrize("model_name", STEP_MODELS)
def test_training_step(benchmark, model_name, backend, device, dtype, batch, quick, states):
    if dtype != "float32":
        pytest.skip("training steps are benchmarked in float32")
    resize = models.MODEL_DEFAULTS[model_name]["resize"]
    if quick and model_name == "vgg":
        resize = 96
    key = (model_name, resize)
    if key not in states:
        states[key] = initial_state(model_name, seed=0, resize=resize)
    model = make_model(model_name, backend, states[key], resize=resize, device=device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=models.MODEL_DEFAULTS[model_name]["lr"])
    generator = torch.Generator().manual_seed(0)
    X = torch.rand(batch, 1, resize, resize, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)

    if backend == "cuconv":  # timed only if its loss and gradients are torch's, from the same weights
        check_step_against_torch(model, make_model(model_name, "torch", states[key], resize=resize, device=device),
                                 X, y, f"{model_name} training step {device}")

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
        synchronize(device)

    benchmark.group = f"{model_name} training step {device} {dtype}"
    benchmark.extra_info.update(case=f"{model_name}.train_step@{resize}", mode="training step", device=device,
                                dtype=dtype, impl=backend, images=batch, batch=batch)
    step()  # warm-up
    settle(step, backend)
    benchmark.pedantic(step, rounds=rounds_for(step, budget_s=1.0, fewest=3), warmup_rounds=1, iterations=1)


def check_step_against_torch(model, twin, X, y, what):
    """The step's loss on the batch within float32 rounding of its torch.nn twin's, and on a few of
    its images, in float64, the same loss and gradients (float32 gradients are no test of the model:
    one ReLU whose input lies within rounding of 0 flips, and its gradient differs by a whole step)."""
    def results(net, dtype, count):
        net = copy.deepcopy(net).to(dtype).train()
        torch.manual_seed(0)  # the same dropout masks (VGG)
        loss = F.cross_entropy(net(X[:count].to(dtype)), y[:count])
        return [loss.detach(), *torch.autograd.grad(loss, list(net.parameters()))]

    names = ["loss"] + [f"{name} (gradient)" for name, _ in model.named_parameters()]
    checks = [(results(model, X.dtype, len(X))[:1], results(twin, X.dtype, len(X))[:1], CHECK_TOLERANCE[X.dtype]),
              (results(model, torch.float64, 4), results(twin, torch.float64, 4), 1e-7)]
    for ours, theirs, tolerance in checks:
        for name, got, expected in zip(names, ours, theirs):
            error = (got - expected).abs().max().item()
            if not error <= tolerance * max(1.0, expected.abs().max().item()):
                pytest.fail(f"{what}: cuconv's {name} in {got.dtype} differs from torch's by {error:.3g}; not timed")
