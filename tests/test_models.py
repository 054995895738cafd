"""cuconv.models: the book's LeNet / VGG / ResNet-18 on cuconv and on torch.nn layers."""

import math

import pytest
import torch
from torch import nn

import cuconv
from cuconv import models


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machines are small and shared: OpenMP barriers over busy cores cost far more than they save.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LENET_SUMMARY = """\
Conv2d output shape:\ttorch.Size([1, 6, 28, 28])
Sigmoid output shape:\ttorch.Size([1, 6, 28, 28])
AvgPool2d output shape:\ttorch.Size([1, 6, 14, 14])
Conv2d output shape:\ttorch.Size([1, 16, 10, 10])
Sigmoid output shape:\ttorch.Size([1, 16, 10, 10])
AvgPool2d output shape:\ttorch.Size([1, 16, 5, 5])
Flatten output shape:\ttorch.Size([1, 400])
Linear output shape:\ttorch.Size([1, 120])
Sigmoid output shape:\ttorch.Size([1, 120])
Linear output shape:\ttorch.Size([1, 84])
Sigmoid output shape:\ttorch.Size([1, 84])
Linear output shape:\ttorch.Size([1, 10])
"""

RESNET18_SUMMARY = """\
Sequential output shape:\ttorch.Size([1, 64, 24, 24])
Sequential output shape:\ttorch.Size([1, 64, 24, 24])
Sequential output shape:\ttorch.Size([1, 128, 12, 12])
Sequential output shape:\ttorch.Size([1, 256, 6, 6])
Sequential output shape:\ttorch.Size([1, 512, 3, 3])
Sequential output shape:\ttorch.Size([1, 10])
"""

VGG_SMALL_SUMMARY_32 = """\
Sequential output shape:\ttorch.Size([1, 16, 16, 16])
Sequential output shape:\ttorch.Size([1, 32, 8, 8])
Sequential output shape:\ttorch.Size([1, 64, 4, 4])
Sequential output shape:\ttorch.Size([1, 128, 2, 2])
Sequential output shape:\ttorch.Size([1, 128, 1, 1])
Flatten output shape:\ttorch.Size([1, 128])
Linear output shape:\ttorch.Size([1, 4096])
ReLU output shape:\ttorch.Size([1, 4096])
Dropout output shape:\ttorch.Size([1, 4096])
Linear output shape:\ttorch.Size([1, 4096])
ReLU output shape:\ttorch.Size([1, 4096])
Dropout output shape:\ttorch.Size([1, 4096])
Linear output shape:\ttorch.Size([1, 10])
"""


@pytest.mark.parametrize("backend", models.BACKENDS)
def test_lenet_summary_matches_the_book(backend, capsys):
    rows = models.LeNet(backend=backend).layer_summary((1, 1, 28, 28))
    assert capsys.readouterr().out == LENET_SUMMARY
    assert rows[0] == ("Conv2d", torch.Size([1, 6, 28, 28]))


@pytest.mark.parametrize("backend", models.BACKENDS)
def test_resnet18_summary_matches_the_book(backend, capsys):
    models.ResNet18(backend=backend).layer_summary((1, 1, 96, 96))
    assert capsys.readouterr().out == RESNET18_SUMMARY


@pytest.mark.parametrize("backend", models.BACKENDS)
def test_vgg_summary(backend, capsys):
    models.VGG(models.VGG_ARCH_SMALL, backend=backend).layer_summary((1, 1, 32, 32))
    assert capsys.readouterr().out == VGG_SMALL_SUMMARY_32


def test_full_vgg_block_shapes_as_the_book():
    # The book's VGG-11 on 224 x 224: the five blocks' shapes, without building the 25088x4096 head,
    # on both backends from the same weights and a random image, with the same outputs.
    torch.manual_seed(0)
    X = {backend: torch.rand(1, 1, 224, 224) for backend in models.BACKENDS}
    X["cuconv"] = X["torch"].clone()
    shapes = {backend: [] for backend in models.BACKENDS}
    with torch.no_grad():
        for num_convs, channels in models.VGG_ARCH_FULL:
            blocks = {backend: models.vgg_block(num_convs, channels, backend=backend) for backend in models.BACKENDS}
            blocks["torch"](X["torch"][:, :, :8, :8])  # lazy shapes, then the same weights for both
            blocks["cuconv"](X["cuconv"][:, :, :8, :8])
            blocks["cuconv"].load_state_dict(blocks["torch"].state_dict())
            for backend, block in blocks.items():
                X[backend] = block(X[backend])
                shapes[backend].append(tuple(X[backend].shape))
            torch.testing.assert_close(X["cuconv"], X["torch"], rtol=1e-4, atol=1e-4)
            assert X["torch"].abs().max() > 0
    assert shapes["cuconv"] == shapes["torch"] == [
        (1, 64, 112, 112), (1, 128, 56, 56), (1, 256, 28, 28), (1, 512, 14, 14), (1, 512, 7, 7)]


def test_vgg_block_layers():
    blk = models.vgg_block(2, 8)
    assert [type(m) for m in blk] == [cuconv.LazyConv2d, nn.ReLU, cuconv.LazyConv2d, nn.ReLU, cuconv.MaxPool2d]
    assert blk(torch.zeros(2, 3, 8, 8)).shape == (2, 8, 4, 4)


@pytest.mark.parametrize("backend", models.BACKENDS)
def test_residual_shapes_as_the_book(backend):
    X = torch.randn(4, 3, 6, 6)
    assert models.Residual(3, backend=backend)(X).shape == (4, 3, 6, 6)
    assert models.Residual(6, use_1x1conv=True, strides=2, backend=backend)(X).shape == (4, 6, 3, 3)


def _build(name, backend):
    if name == "lenet":
        return models.LeNet(backend=backend), (2, 1, 28, 28)
    if name == "lenet-bn":
        return models.BNLeNet(backend=backend), (2, 1, 28, 28)
    if name == "vgg":
        return models.VGG(models.VGG_ARCH_SMALL, backend=backend), (2, 1, 32, 32)
    return models.ResNet18(backend=backend), (2, 1, 32, 32)


@pytest.mark.parametrize("name", ["lenet", "lenet-bn", "vgg", "resnet18"])
def test_backends_share_keys_and_compute_the_same(name):
    torch.manual_seed(0)
    a, shape = _build(name, "cuconv")
    b, _ = _build(name, "torch")
    models.apply_init(a, shape)
    models.apply_init(b, shape, init=None)
    assert list(a.state_dict()) == list(b.state_dict())
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    b.load_state_dict(a.state_dict())
    a.double().eval()
    b.double().eval()
    X = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(a(X), b(X), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["lenet", "lenet-bn", "vgg", "resnet18"])
def test_backend_layer_types(name):
    a, shape = _build(name, "cuconv")
    b, _ = _build(name, "torch")
    models.apply_init(a, shape)
    models.apply_init(b, shape)
    kinds_a = [type(m) for m in a.modules()]
    kinds_b = [type(m) for m in b.modules()]
    twins = {nn.Conv2d: cuconv.Conv2d, nn.MaxPool2d: cuconv.MaxPool2d, nn.AvgPool2d: cuconv.AvgPool2d,
             nn.AdaptiveAvgPool2d: cuconv.AdaptiveAvgPool2d}
    assert len(kinds_a) == len(kinds_b)
    assert any(k in twins for k in kinds_b)
    for ka, kb in zip(kinds_a, kinds_b):
        assert ka is twins.get(kb, kb), (ka, kb)   # torch: torch.nn's own classes; cuconv: their twins
    assert not any(k in twins for k in kinds_a)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        models.LeNet(backend="cudnn")


def test_book_init_is_xavier_uniform():
    torch.manual_seed(0)
    model = models.apply_init(models.LeNet(), (1, 1, 28, 28))
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            w = module.weight.detach()
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert float(w.abs().max()) <= bound
            # uniform on [-bound, bound] has std bound / sqrt(3); torch's default init is much narrower
            assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.2 * bound / math.sqrt(3)


def test_apply_init_leaves_batchnorm_statistics_alone():
    model = models.apply_init(models.ResNet18(), torch.randn(2, 1, 32, 32) + 5)
    bn = model.net[0][1]
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert model.training


def test_build_model_and_defaults():
    assert isinstance(models.build_model("lenet", "torch"), models.LeNet)
    assert isinstance(models.build_model("lenet-bn"), models.BNLeNet)
    assert models.build_model("vgg").arch == models.VGG_ARCH_SMALL
    assert models.build_model("vgg", vgg_arch=models.VGG_ARCH_FULL).arch == models.VGG_ARCH_FULL
    assert isinstance(models.build_model("resnet18"), models.ResNet18)
    assert models.MODEL_DEFAULTS["lenet"]["lr"] == 0.1 and models.MODEL_DEFAULTS["resnet18"]["resize"] == 96
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("alexnet")


@pytest.mark.parametrize("name", ["lenet", "lenet-bn", "vgg", "resnet18"])
def test_backends_train_mode_gradients_agree_in_float64(name):
    torch.manual_seed(0)
    a, shape = _build(name, "cuconv")
    b, _ = _build(name, "torch")
    models.apply_init(a, shape)
    models.apply_init(b, shape, init=None)
    b.load_state_dict(a.state_dict())
    a.double().train()
    b.double().train()
    X = torch.randn(shape, dtype=torch.float64)
    y = torch.tensor([1, 7])
    for model in (a, b):
        torch.manual_seed(3)  # the same dropout masks
        nn.functional.cross_entropy(model(X), y).backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        # Train-mode BatchNorm over 2 tiny images amplifies float64 rounding (gradients reach
        # 1e4 in ResNet-18's stem), so the tolerance is relative to each gradient's scale.
        scale = max(1.0, pb.grad.abs().max().item())
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-8, atol=1e-10 * scale, msg=n)
