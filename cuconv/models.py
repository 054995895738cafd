"""The book's CNNs (d2l 7.6 LeNet, 8.2 VGG, 8.6 ResNet-18), on cuconv or torch.nn layers.

Every model takes `backend="cuconv"` (default: convolution and pooling on cuconv's
kernels) or `backend="torch"` (the same network from torch.nn's own layers, i.e.
oneDNN on the CPU and cuDNN on a GPU). Both backends build the same module tree,
so parameter names and state_dict keys are identical and weights move freely
between them. The layers are lazy, as in the book: run one forward pass (see
`apply_init`) before counting parameters or building an optimizer.

    model = LeNet()                              # cuconv layers
    model.layer_summary((1, 1, 28, 28))          # the book's shape table
    apply_init(model, torch.zeros(1, 1, 28, 28)) # lazy shapes + Xavier init (d2l.init_cnn)
    twin = LeNet(backend="torch"); apply_init(twin, torch.zeros(1, 1, 28, 28))
    twin.load_state_dict(model.state_dict())
"""

import torch
from torch import nn
from torch.nn import functional as F

from . import modules as _cm

__all__ = [
    "BACKENDS", "Classifier", "LeNet", "BNLeNet", "vgg_block", "VGG", "Residual", "ResNet", "ResNet18",
    "VGG_ARCH_SMALL", "VGG_ARCH_FULL", "init_cnn", "apply_init", "build_model", "MODEL_DEFAULTS",
]

BACKENDS = ("cuconv", "torch")

# The layers that differ between backends; everything else (Linear, BatchNorm, activations) is torch.nn's.
_LAYERS = {
    "cuconv": dict(Conv2d=_cm.Conv2d, LazyConv2d=_cm.LazyConv2d, MaxPool2d=_cm.MaxPool2d,
                   AvgPool2d=_cm.AvgPool2d, AdaptiveAvgPool2d=_cm.AdaptiveAvgPool2d),
    "torch": dict(Conv2d=nn.Conv2d, LazyConv2d=nn.LazyConv2d, MaxPool2d=nn.MaxPool2d,
                  AvgPool2d=nn.AvgPool2d, AdaptiveAvgPool2d=nn.AdaptiveAvgPool2d),
}

# d2l 8.2: the full VGG-11 shape, and the 4x narrower one the book trains on Fashion-MNIST.
VGG_ARCH_FULL = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
VGG_ARCH_SMALL = ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))


def _layers(backend):
    try:
        return _LAYERS[backend]
    except KeyError:
        raise ValueError(f"cuconv.models: backend must be one of {BACKENDS}, but got {backend!r}") from None


class Classifier(nn.Module):
    """Base class: a `net` (nn.Sequential) plus the book's `layer_summary`."""

    def __init__(self, lr=0.1, num_classes=10, backend="cuconv"):
        super().__init__()
        _layers(backend)
        self.lr = lr                  # the book's default learning rate for this model
        self.num_classes = num_classes
        self.backend = backend

    def forward(self, X):
        return self.net(X)

    def layer_summary(self, X_shape):
        """Print each top-level layer's output shape, as the book does; return [(name, shape), ...].

        Runs without gradients and in eval mode (restored afterwards), so BatchNorm's
        running statistics are not touched; lazy layers get their shapes on the way.
        """
        params = [p for p in self.parameters() if not isinstance(p, nn.parameter.UninitializedParameter)]
        device = params[0].device if params else torch.device("cpu")
        X = torch.randn(*X_shape, device=device)
        rows = []
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for layer in self.net:
                    X = layer(X)
                    rows.append((layer.__class__.__name__, X.shape))
                    print(f"{layer.__class__.__name__} output shape:\t{X.shape}")
        finally:
            self.train(was_training)
        return rows


class LeNet(Classifier):
    """LeNet-5 (d2l 7.6): sigmoid activations and average pooling."""

    def __init__(self, lr=0.1, num_classes=10, backend="cuconv"):
        super().__init__(lr, num_classes, backend)
        L = _layers(backend)
        self.net = nn.Sequential(
            L["LazyConv2d"](6, kernel_size=5, padding=2), nn.Sigmoid(),
            L["AvgPool2d"](kernel_size=2, stride=2),
            L["LazyConv2d"](16, kernel_size=5), nn.Sigmoid(),
            L["AvgPool2d"](kernel_size=2, stride=2),
            nn.Flatten(),
            nn.LazyLinear(120), nn.Sigmoid(),
            nn.LazyLinear(84), nn.Sigmoid(),
            nn.LazyLinear(num_classes))


class BNLeNet(Classifier):
    """LeNet with batch normalization (d2l 8.5.4): BatchNorm before every sigmoid, which lets it
    leave the sigmoid plateau at once (the plain LeNet sits at chance for many epochs at first)."""

    def __init__(self, lr=0.1, num_classes=10, backend="cuconv"):
        super().__init__(lr, num_classes, backend)
        L = _layers(backend)
        self.net = nn.Sequential(
            L["LazyConv2d"](6, kernel_size=5), nn.LazyBatchNorm2d(), nn.Sigmoid(),
            L["AvgPool2d"](kernel_size=2, stride=2),
            L["LazyConv2d"](16, kernel_size=5), nn.LazyBatchNorm2d(), nn.Sigmoid(),
            L["AvgPool2d"](kernel_size=2, stride=2), nn.Flatten(),
            nn.LazyLinear(120), nn.LazyBatchNorm1d(), nn.Sigmoid(),
            nn.LazyLinear(84), nn.LazyBatchNorm1d(), nn.Sigmoid(),
            nn.LazyLinear(num_classes))


def vgg_block(num_convs, out_channels, backend="cuconv"):
    """num_convs 3x3 convolutions (padding 1) with ReLU, then 2x2 max-pooling (d2l 8.2.1)."""
    L = _layers(backend)
    layers = []
    for _ in range(num_convs):
        layers.append(L["LazyConv2d"](out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
    layers.append(L["MaxPool2d"](kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG(Classifier):
    """VGG (d2l 8.2.2): one vgg_block per (num_convs, out_channels) in `arch`, then the
    4096-4096-num_classes head with dropout 0.5."""

    def __init__(self, arch, lr=0.1, num_classes=10, backend="cuconv"):
        super().__init__(lr, num_classes, backend)
        self.arch = tuple(tuple(b) for b in arch)
        conv_blks = [vgg_block(num_convs, out_channels, backend) for num_convs, out_channels in self.arch]
        self.net = nn.Sequential(
            *conv_blks, nn.Flatten(),
            nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(0.5),
            nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(0.5),
            nn.LazyLinear(num_classes))


class Residual(nn.Module):
    """The residual block of ResNet (d2l 8.6.2), optionally with a 1x1 convolution on the shortcut."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, backend="cuconv"):
        super().__init__()
        L = _layers(backend)
        self.conv1 = L["LazyConv2d"](num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = L["LazyConv2d"](num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = L["LazyConv2d"](num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return F.relu(Y + X)


class ResNet(Classifier):
    """ResNet (d2l 8.6.3): the 7x7/stride-2 stem with max-pooling, one stage of residual
    blocks per (num_residuals, num_channels) in `arch`, global average pooling and a linear head."""

    def __init__(self, arch, lr=0.1, num_classes=10, backend="cuconv"):
        super().__init__(lr, num_classes, backend)
        self.arch = tuple(tuple(b) for b in arch)
        self.net = nn.Sequential(self.b1())
        for i, b in enumerate(self.arch):
            self.net.add_module(f"b{i + 2}", self.block(*b, first_block=(i == 0)))
        L = _layers(backend)
        self.net.add_module("last", nn.Sequential(
            L["AdaptiveAvgPool2d"]((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)))

    def b1(self):
        L = _layers(self.backend)
        return nn.Sequential(
            L["LazyConv2d"](64, kernel_size=7, stride=2, padding=3),
            nn.LazyBatchNorm2d(), nn.ReLU(),
            L["MaxPool2d"](kernel_size=3, stride=2, padding=1))

    def block(self, num_residuals, num_channels, first_block=False):
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(num_channels, use_1x1conv=True, strides=2, backend=self.backend))
            else:
                blk.append(Residual(num_channels, backend=self.backend))
        return nn.Sequential(*blk)


class ResNet18(ResNet):
    """ResNet-18 (d2l 8.6.3): four stages of two residual blocks, 64-128-256-512 channels."""

    def __init__(self, lr=0.1, num_classes=10, backend="cuconv"):
        super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)), lr, num_classes, backend)


def init_cnn(module):
    """The book's d2l.init_cnn: Xavier-uniform weights for every linear and convolution layer
    (cuconv's Conv2d is an nn.Conv2d, so it is covered); biases keep torch's default init."""
    if isinstance(module, (nn.Linear, nn.Conv2d)) and not isinstance(
            module.weight, nn.parameter.UninitializedParameter):
        nn.init.xavier_uniform_(module.weight)


def apply_init(model, inputs, init=init_cnn):
    """The book's Module.apply_init: one forward pass to give the lazy layers their shapes,
    then `init` applied to every submodule. `inputs` is a batch (or a shape tuple).

    The shape pass runs without gradients and in eval mode, so it changes no BatchNorm
    statistics; the model's mode is restored.
    """
    if not isinstance(inputs, torch.Tensor):
        inputs = torch.zeros(*inputs)
    params = [p for p in model.parameters() if not isinstance(p, nn.parameter.UninitializedParameter)]
    if params:
        inputs = inputs.to(params[0].device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        model.train(was_training)
    if init is not None:
        model.apply(init)
    return model


# Per-model training defaults from the book (d2l 7.6, 8.2, 8.6): 10 epochs, batch 128, plain SGD.
MODEL_DEFAULTS = {
    "lenet": dict(lr=0.1, resize=28, batch_size=128, epochs=10),
    "lenet-bn": dict(lr=0.1, resize=28, batch_size=128, epochs=10),
    "vgg": dict(lr=0.01, resize=224, batch_size=128, epochs=10),
    "resnet18": dict(lr=0.01, resize=96, batch_size=128, epochs=10),
}


def build_model(name, backend="cuconv", num_classes=10, vgg_arch=VGG_ARCH_SMALL):
    """A fresh (uninitialised, lazy) model by CLI name: 'lenet', 'lenet-bn', 'vgg' or 'resnet18'."""
    if name == "lenet":
        return LeNet(MODEL_DEFAULTS[name]["lr"], num_classes, backend)
    if name == "lenet-bn":
        return BNLeNet(MODEL_DEFAULTS[name]["lr"], num_classes, backend)
    if name == "vgg":
        return VGG(vgg_arch, MODEL_DEFAULTS[name]["lr"], num_classes, backend)
    if name == "resnet18":
        return ResNet18(MODEL_DEFAULTS[name]["lr"], num_classes, backend)
    raise ValueError(f"cuconv.models: unknown model {name!r}; expected one of {tuple(MODEL_DEFAULTS)}")
