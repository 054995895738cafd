"""Layer shapes of the book's models at the book's settings, for the benchmarks.

Each case is one layer as the network sees it on Fashion-MNIST (1 input channel):
LeNet at 28x28, the reduced VGG ((1,16),(1,32),(2,64),(2,128),(2,128)) at 224x224 and
ResNet-18 at 96x96, batch 128 (the book's) or a smaller batch in quick mode; a few grouped
(RegNetX, chapter 8.8) and depthwise layers besides, and transposed convolutions (the book's
DCGAN generator, chapter 20.2, and a U-Net's 2x2 upsampling).
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConvCase:
    name: str
    in_channels: int
    out_channels: int
    size: int  # input height = width
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    quick: bool = False  # part of the quick subset
    channels_last: bool = False  # input (and so output and gradients) in channels_last, both backends

    def output_size(self):
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def flops(self, batch):
        """Multiply-adds x 2 of the forward pass."""
        out = self.output_size()
        return 2 * batch * self.out_channels * out * out * (self.in_channels // self.groups) * self.kernel ** 2


@dataclass(frozen=True)
class ConvTransposeCase:
    """A transposed convolution (upsampling) layer; the weight is (in_channels, out_channels, k, k)."""
    name: str
    in_channels: int
    out_channels: int
    size: int  # input height = width
    kernel: int
    stride: int = 1
    padding: int = 0
    quick: bool = False

    def output_size(self):
        return (self.size - 1) * self.stride - 2 * self.padding + self.kernel

    def flops(self, batch):
        """Multiply-adds x 2 of the forward pass: every input value times every tap and output channel."""
        return 2 * batch * self.in_channels * self.size ** 2 * self.out_channels * self.kernel ** 2


@dataclass(frozen=True)
class PoolCase:
    name: str
    kind: str  # max, avg, adaptive
    channels: int
    size: int
    kernel: int = 2
    stride: int = 2
    padding: int = 0
    output: tuple = field(default=(1, 1))
    quick: bool = False
    channels_last: bool = False

    def output_size(self):
        if self.kind == "adaptive":
            return self.output[0]
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def bytes_moved(self, batch, element_size):
        """Input read once, output written once (forward)."""
        out = self.output_size()
        return batch * self.channels * (self.size ** 2 + out * out) * element_size


CONV_CASES = [
    ConvCase("lenet.conv1", 1, 6, 28, 5, padding=2, quick=True),
    ConvCase("lenet.conv2", 6, 16, 14, 5, quick=True),
    ConvCase("vgg.b1.conv", 1, 16, 224, 3, padding=1),
    ConvCase("vgg.b2.conv", 16, 32, 112, 3, padding=1),
    ConvCase("vgg.b3.conv1", 32, 64, 56, 3, padding=1),
    ConvCase("vgg.b3.conv2", 64, 64, 56, 3, padding=1, quick=True),
    ConvCase("vgg.b4.conv1", 64, 128, 28, 3, padding=1),
    ConvCase("vgg.b4.conv2", 128, 128, 28, 3, padding=1),
    ConvCase("vgg.b5.conv", 128, 128, 14, 3, padding=1),
    ConvCase("resnet.stem", 1, 64, 96, 7, stride=2, padding=3, quick=True),
    ConvCase("resnet.b2.conv", 64, 64, 24, 3, padding=1, quick=True),
    ConvCase("resnet.b3.conv1", 64, 128, 24, 3, stride=2, padding=1),
    ConvCase("resnet.b3.conv2", 128, 128, 12, 3, padding=1),
    ConvCase("resnet.b3.shortcut", 64, 128, 24, 1, stride=2, quick=True),
    ConvCase("resnet.b4.conv1", 128, 256, 12, 3, stride=2, padding=1),
    ConvCase("resnet.b4.conv2", 256, 256, 6, 3, padding=1),
    ConvCase("resnet.b4.shortcut", 128, 256, 12, 1, stride=2),
    ConvCase("resnet.b5.conv1", 256, 512, 6, 3, stride=2, padding=1),
    ConvCase("resnet.b5.conv2", 512, 512, 3, 3, padding=1, quick=True),
    ConvCase("resnet.b5.shortcut", 256, 512, 6, 1, stride=2),
]

# channels_last: a few of the layers above with NHWC inputs, against torch's channels_last
CONV_CASES += [
    ConvCase("vgg.b3.conv2.cl", 64, 64, 56, 3, padding=1, channels_last=True),
    ConvCase("resnet.b2.conv.cl", 64, 64, 24, 3, padding=1, channels_last=True, quick=True),
    ConvCase("resnet.b3.shortcut.cl", 64, 128, 24, 1, stride=2, channels_last=True),
    ConvCase("resnet.b5.conv2.cl", 512, 512, 3, 3, padding=1, channels_last=True),
]

# Grouped and depthwise layers (reported, no goal of their own): RegNetX-32's grouped 3x3
# convolutions from the book's chapter 8.8 (group width 16; stages at 24x24 and 12x12 at the
# book's 96x96 input), and depthwise 3x3 layers as MobileNet has them.
CONV_CASES += [
    ConvCase("regnet.s1.conv", 32, 32, 24, 3, padding=1, groups=2),
    ConvCase("regnet.s2.conv", 80, 80, 12, 3, padding=1, groups=5),
    ConvCase("regnet.s1.conv.cl", 32, 32, 24, 3, padding=1, groups=2, channels_last=True),
    ConvCase("regnet.s2.conv.cl", 80, 80, 12, 3, padding=1, groups=5, channels_last=True),
    ConvCase("depthwise.56", 64, 64, 56, 3, padding=1, groups=64),
    ConvCase("depthwise.14", 256, 256, 14, 3, padding=1, groups=256),
    ConvCase("depthwise.56.cl", 64, 64, 56, 3, padding=1, groups=64, channels_last=True),
    ConvCase("depthwise.14.cl", 256, 256, 14, 3, padding=1, groups=256, channels_last=True),
]

# The "large VGG/ResNet layers" of the CPU GEMM goal: 3x3, at least 64 input channels, NCHW, not
# grouped (the grouped and depthwise layers are reported without a goal).
GEMM_GOAL_CASES = [c for c in CONV_CASES if c.name.split(".")[0] in ("vgg", "resnet") and c.groups == 1
                   and c.kernel == 3 and c.in_channels >= 64 and not c.channels_last]

# The book's DCGAN generator (chapter 20.2, n_G = 64, 64x64 images) after its first block, and a
# U-Net decoder's 2x2 stride-2 upsampling.
CONV_TRANSPOSE_CASES = [
    ConvTransposeCase("dcgan.g2", 512, 256, 4, 4, stride=2, padding=1),
    ConvTransposeCase("dcgan.g3", 256, 128, 8, 4, stride=2, padding=1),
    ConvTransposeCase("dcgan.g4", 128, 64, 16, 4, stride=2, padding=1, quick=True),
    ConvTransposeCase("dcgan.g5", 64, 3, 32, 4, stride=2, padding=1),
    ConvTransposeCase("unet.up", 128, 64, 28, 2, stride=2, quick=True),
]

POOL_CASES = [
    PoolCase("lenet.avgpool1", "avg", 6, 28, quick=True),
    PoolCase("lenet.avgpool2", "avg", 16, 10),
    PoolCase("vgg.b1.maxpool", "max", 16, 224),
    PoolCase("vgg.b3.maxpool", "max", 64, 56, quick=True),
    PoolCase("vgg.b5.maxpool", "max", 128, 14),
    PoolCase("resnet.stem.maxpool", "max", 64, 48, kernel=3, stride=2, padding=1, quick=True),
    PoolCase("resnet.globalpool", "adaptive", 512, 3, quick=True),
    PoolCase("torchvision.adaptive7", "adaptive", 512, 14, output=(7, 7)),
    PoolCase("vgg.b3.maxpool.cl", "max", 64, 56, channels_last=True),
    PoolCase("resnet.stem.maxpool.cl", "max", 64, 48, kernel=3, stride=2, padding=1, channels_last=True),
    PoolCase("resnet.globalpool.cl", "adaptive", 512, 3, channels_last=True),
]
