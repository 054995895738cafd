"""Whole-model training steps (forward, loss, backward, SGD update) of the book's three
models on both backends, side by side: same initial weights, same batch.

LeNet at 28x28, the reduced VGG at 224x224 and ResNet-18 at 96x96, batch 128 as in the book
(quick mode: batch 16, and VGG at 96x96 so that it stays a matter of seconds).
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import rounds_for, synchronize
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

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
        synchronize(device)

    benchmark.group = f"{model_name} training step {device} {dtype}"
    benchmark.extra_info.update(case=f"{model_name}.train_step@{resize}", mode="training step", device=device,
                                dtype=dtype, impl=backend, images=batch, batch=batch)
    step()  # warm-up
    benchmark.pedantic(step, rounds=rounds_for(step, budget_s=1.0, fewest=3), warmup_rounds=1, iterations=1)
