"""cuconv's nn modules against their torch.nn twins, cuconv.convert on small and torchvision
models, and the d2l book's chapter 7 examples with the values the book prints."""

import copy
import inspect
import io
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import cuconv

# torch's own warning for padding='same' with an even kernel, from the reference modules.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")

DTYPE = torch.float64
TWINS = {
    cuconv.Conv2d: nn.Conv2d,
    cuconv.LazyConv2d: nn.LazyConv2d,
    cuconv.MaxPool2d: nn.MaxPool2d,
    cuconv.AvgPool2d: nn.AvgPool2d,
    cuconv.AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d,
}
CUCONV_CLASSES = {cuconv.Conv2d, cuconv.LazyConv2d, cuconv.MaxPool2d, cuconv.AvgPool2d, cuconv.AdaptiveAvgPool2d}
TORCH_CLASSES = set(TWINS.values())


def assert_close64(actual, expected):
    """float64 agreement to ~1e-10 of the tensor's scale."""
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10 * scale)


class OpRecorder(TorchDispatchMode):
    """Counts the ops (by overload packet, e.g. 'aten.convolution', 'cuconv.conv2d') that run."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


TORCH_CONV_POOL_OPS = {
    "aten.convolution", "aten._convolution", "aten.convolution_backward", "aten.mkldnn_convolution",
    "aten._slow_conv2d_forward", "aten.thnn_conv2d", "aten.max_pool2d_with_indices",
    "aten.max_pool2d_with_indices_backward", "aten.avg_pool2d", "aten.avg_pool2d_backward",
    "aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool2d_backward",
}


def forward_backward(module, x, seed=1):
    """module(x) and the gradients of a random projection of it w.r.t. x and every parameter."""
    module.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_()
    out = module(leaf)
    main = out[0] if isinstance(out, tuple) else out
    gen = torch.Generator().manual_seed(seed)
    (main * torch.randn(main.shape, generator=gen, dtype=main.dtype)).sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    return out, leaf.grad, grads


def assert_same_results(ours, theirs):
    (out, gx, gp), (ref, ref_gx, ref_gp) = ours, theirs
    if isinstance(ref, tuple):  # MaxPool2d(return_indices=True)
        assert isinstance(out, tuple) and len(out) == 2
        assert torch.equal(out[1], ref[1]), "max-pooling indices differ"
        out, ref = out[0], ref[0]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_close64(out, ref)
    assert_close64(gx, ref_gx)
    assert gp.keys() == ref_gp.keys()
    for name in ref_gp:
        assert_close64(gp[name], ref_gp[name])


# --- module configurations ------------------------------------------------------------------

CONV_CONFIGS = [
    dict(args=(4, 6, 3)),
    dict(args=(4, 6, 3), kwargs=dict(bias=False)),
    dict(args=(4, 6, (2, 3)), kwargs=dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1))),
    dict(args=(4, 6, 1)),
    dict(args=(4, 8, 3), kwargs=dict(groups=2, padding=1)),
    dict(args=(4, 4, 3), kwargs=dict(groups=4, padding=1, bias=False)),  # depthwise
    dict(args=(4, 8, 5), kwargs=dict(groups=4, stride=2, padding=2)),  # depthwise multiplier 2
    dict(args=(4, 6, 3), kwargs=dict(padding="valid", stride=2)),
    # 'same' with odd, even and mixed kernels and dilations
    dict(args=(4, 6, 3), kwargs=dict(padding="same")),
    dict(args=(4, 6, (3, 5)), kwargs=dict(padding="same", dilation=(2, 1))),
    dict(args=(4, 6, 2), kwargs=dict(padding="same")),
    dict(args=(4, 6, (4, 2)), kwargs=dict(padding="same", dilation=(1, 3))),
    dict(args=(4, 6, (2, 4)), kwargs=dict(padding="same", dilation=2, bias=False)),
    dict(args=(4, 8, 4), kwargs=dict(padding="same", groups=2)),
] + [
    dict(args=(4, 6, 3), kwargs=dict(padding=padding, padding_mode=mode, **extra))
    for mode in ("zeros", "reflect", "replicate", "circular")
    for padding, extra in [(1, {}), ((2, 1), dict(stride=2)), ("same", {}), ("valid", {}),
                           ((1, 2), dict(groups=2, dilation=(1, 2)))]
] + [
    dict(args=(4, 6, (2, 3)), kwargs=dict(padding="same", padding_mode=mode, dilation=(1, 2)))
    for mode in ("reflect", "replicate", "circular")
]

MAX_CONFIGS = [
    dict(args=(2,)),
    dict(args=(3,), kwargs=dict(stride=2, padding=1)),
    dict(args=((2, 3),), kwargs=dict(stride=(1, 2), padding=(1, 0), dilation=(2, 1))),
    dict(args=(3,), kwargs=dict(stride=2, ceil_mode=True)),
    dict(args=(3,), kwargs=dict(stride=2, return_indices=True, ceil_mode=True)),
    dict(args=(2,), kwargs=dict(stride=2, padding=1, return_indices=True, ceil_mode=True)),
    dict(args=(3,), kwargs=dict(stride=1, padding=1, dilation=2, return_indices=True)),
]

AVG_CONFIGS = [
    dict(args=(2,)),
    dict(args=(3,), kwargs=dict(stride=2, padding=1)),
    dict(args=(3,), kwargs=dict(stride=2, padding=1, count_include_pad=False)),
    dict(args=(3,), kwargs=dict(stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    dict(args=((2, 3),), kwargs=dict(divisor_override=3)),
    dict(args=(3,), kwargs=dict(stride=2, padding=1, ceil_mode=True, divisor_override=3)),
    dict(args=(2,), kwargs=dict(stride=1, count_include_pad=False, divisor_override=3)),
]

ADAPTIVE_CONFIGS = [dict(args=(size,)) for size in (1, 3, (None, 3), (3, None), (None, None), (4, 2), (12, 13))]

MODULE_CASES = (
    [pytest.param(cuconv.Conv2d, c, id=f"Conv2d-{i}") for i, c in enumerate(CONV_CONFIGS)]
    + [pytest.param(cuconv.MaxPool2d, c, id=f"MaxPool2d-{i}") for i, c in enumerate(MAX_CONFIGS)]
    + [pytest.param(cuconv.AvgPool2d, c, id=f"AvgPool2d-{i}") for i, c in enumerate(AVG_CONFIGS)]
    + [pytest.param(cuconv.AdaptiveAvgPool2d, c, id=f"AdaptiveAvgPool2d-{i}") for i, c in enumerate(ADAPTIVE_CONFIGS)]
)


def make_pair(cls, config, seed=0):
    """(cuconv module, torch.nn twin) built from the same arguments under the same seed."""
    args, kwargs = config.get("args", ()), config.get("kwargs", {})
    torch.manual_seed(seed)
    ours = cls(*args, **kwargs)
    torch.manual_seed(seed)
    theirs = TWINS[cls](*args, **kwargs)
    return ours.to(DTYPE), theirs.to(DTYPE)


def public_state(module):
    """The module's attributes other than parameters/buffers/submodules (constructor args and
    what torch derives from them, e.g. _reversed_padding_repeated_twice)."""
    skip = {"_parameters", "_buffers", "_modules"}
    return {k: v for k, v in vars(module).items()
            if k not in skip and "hook" not in k and not isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("cls", list(TWINS))
def test_subclasses_its_twin_with_the_same_constructor(cls):
    assert issubclass(cls, TWINS[cls])
    assert cls.__name__ == TWINS[cls].__name__
    assert inspect.signature(cls.__init__) == inspect.signature(TWINS[cls].__init__)


@pytest.mark.parametrize("cls, args", [
    (cuconv.Conv2d, (3, 8, 3)), (cuconv.LazyConv2d, (8, 3)), (cuconv.MaxPool2d, (2,)),
    (cuconv.AvgPool2d, (2,)), (cuconv.AdaptiveAvgPool2d, (1,)),
])
def test_isinstance_and_defaults(cls, args):
    ours, theirs = cls(*args), TWINS[cls](*args)
    assert isinstance(ours, TWINS[cls]) and isinstance(ours, nn.Module)
    assert repr(ours) == repr(theirs)
    assert public_state(ours) == public_state(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_conv2d_isinstance():
    assert isinstance(cuconv.Conv2d(3, 8, 3), torch.nn.Conv2d)
    assert isinstance(cuconv.LazyConv2d(8, 3), torch.nn.LazyConv2d)
    assert isinstance(cuconv.MaxPool2d(2), torch.nn.MaxPool2d)
    assert isinstance(cuconv.AvgPool2d(2), torch.nn.AvgPool2d)
    assert isinstance(cuconv.AdaptiveAvgPool2d(2), torch.nn.AdaptiveAvgPool2d)


@pytest.mark.parametrize("cls, config", MODULE_CASES)
def test_same_construction_as_torch(cls, config):
    ours, theirs = make_pair(cls, config)
    assert repr(ours) == repr(theirs)
    assert public_state(ours) == public_state(theirs)
    # The same initialisation from the same seed, under the same names.
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, p), (ref_name, ref_p) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == ref_name and torch.equal(p, ref_p) and p.requires_grad == ref_p.requires_grad


def _input_for(cls, config, unbatched=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    channels = config.get("args", (4,))[0] if cls is cuconv.Conv2d else 4
    shape = (channels, 9, 11) if unbatched else (2, channels, 9, 11)
    return torch.randn(shape, generator=gen, dtype=DTYPE)


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("cls, config", MODULE_CASES)
def test_forward_and_gradients_match_torch(cls, config, unbatched):
    ours, theirs = make_pair(cls, config)
    x = _input_for(cls, config, unbatched)
    result = forward_backward(ours, x)
    expected = forward_backward(theirs, x)
    assert_same_results(result, expected)
    out = result[0][0] if isinstance(result[0], tuple) else result[0]
    assert out.dim() == (3 if unbatched else 4)


@pytest.mark.parametrize("cls, config", MODULE_CASES)
def test_state_dict_round_trips(cls, config):
    ours, theirs = make_pair(cls, config)
    with torch.no_grad():  # fresh values, so that a load that did nothing would show
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p))
    x = _input_for(cls, config)

    # torch.nn -> cuconv
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    assert_same_results(forward_backward(ours, x), forward_backward(theirs, x))

    # cuconv -> torch.nn (into a freshly initialised twin)
    args, kwargs = config.get("args", ()), config.get("kwargs", {})
    fresh = TWINS[cls](*args, **kwargs).to(DTYPE)
    fresh.load_state_dict(ours.state_dict(), strict=True)
    assert ours.state_dict().keys() == fresh.state_dict().keys()
    assert_same_results(forward_backward(ours, x), forward_backward(fresh, x))


def test_state_dict_strict_load_reports_missing_keys():
    conv = cuconv.Conv2d(3, 4, 3)
    with pytest.raises(RuntimeError, match="Missing key"):
        conv.load_state_dict(nn.Conv2d(3, 4, 3, bias=False).state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        conv.load_state_dict(nn.Conv2d(3, 5, 3).state_dict(), strict=True)


def test_float32_modules_match_torch():
    """The modules in the default dtype too (looser tolerance)."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 10, 9)
    pairs = [(cuconv.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)),
             (cuconv.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
             (cuconv.AvgPool2d(3, 2, 1, count_include_pad=False), nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
             (cuconv.AdaptiveAvgPool2d((3, 4)), nn.AdaptiveAvgPool2d((3, 4)))]
    for ours, theirs in pairs:
        theirs.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_modules_use_cuconv_kernels():
    """The forward and backward of each module run cuconv's ops and none of torch's."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    for module, op in [(cuconv.Conv2d(4, 6, 3, padding=1, padding_mode="circular"), "cuconv.conv2d"),
                       (cuconv.Conv2d(4, 6, 2, padding="same"), "cuconv.conv2d"),
                       (cuconv.MaxPool2d(3, 2, 1, return_indices=True), "cuconv.max_pool2d"),
                       (cuconv.AvgPool2d(3, divisor_override=3), "cuconv.avg_pool2d"),
                       (cuconv.AdaptiveAvgPool2d(1), "cuconv.adaptive_avg_pool2d")]:
        with OpRecorder() as rec:
            out = module(x)
            (out[0] if isinstance(out, tuple) else out).sum().backward()
        assert rec.ops[op] == 1, rec.ops
        assert rec.ops[op + "_backward" if op != "cuconv.conv2d" else "cuconv.conv2d_backward_input"] == 1, rec.ops
        assert not TORCH_CONV_POOL_OPS & set(rec.ops), rec.ops


class ArgRecorder(TorchDispatchMode):
    """The arguments of each op call, by op name."""

    def __init__(self):
        super().__init__()
        self.args = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.args.setdefault(str(func.overloadpacket), []).append(args)
        return func(*args, **(kwargs or {}))


def _allows_tf32(args):
    # allow_tf32 is the 8th argument; the dispatcher drops it where it and those after it are their
    # defaults (False)
    return len(args) >= 8 and args[7] is True


def _benchmarks(args):
    # benchmark is the 9th argument (default False)
    return len(args) == 9 and args[8] is True


@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_conv2d_on_cuda_follows_torchs_tf32_setting(precision):
    """A float32 cuconv.Conv2d on CUDA makes torch.nn.Conv2d's TF32 choice (torch.backends.cudnn.conv.
    fp32_precision, or the legacy torch.backends.cudnn.allow_tf32); on the CPU there is no TF32.
    (Fake CUDA tensors: the choice is made before any kernel runs.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    saved = torch.backends.cudnn.conv.fp32_precision
    try:
        torch.backends.cudnn.conv.fp32_precision = precision
        for device in ["cuda", "cpu"]:
            with FakeTensorMode():
                layer = cuconv.Conv2d(8, 8, 3, padding=1, device=device)
                with ArgRecorder() as rec:
                    layer(torch.empty(2, 8, 6, 6, device=device))
            assert [_allows_tf32(a) for a in rec.args["cuconv.conv2d"]] == [precision == "tf32" and device == "cuda"]
    finally:
        torch.backends.cudnn.conv.fp32_precision = saved
    saved_legacy = torch.backends.cudnn.allow_tf32  # the legacy switch sets the same flag
    try:
        torch.backends.cudnn.allow_tf32 = False
        assert not cuconv.functional._cuda_conv_allows_tf32()
        torch.backends.cudnn.allow_tf32 = True
        assert cuconv.functional._cuda_conv_allows_tf32()
    finally:
        torch.backends.cudnn.allow_tf32 = saved_legacy


@pytest.mark.parametrize("cudnn_benchmark", [False, True])
def test_conv2d_on_cuda_follows_torchs_cudnn_benchmark_setting(cudnn_benchmark):
    """With torch.backends.cudnn.benchmark on, a cuconv.Conv2d on CUDA asks for its kernel family to
    be measured, as torch.nn.Conv2d asks cuDNN (csrc/cuda/conv2d.cu run_chosen; README "Kernel
    choice by measurement"); on the CPU the flag changes nothing. (Fake CUDA tensors: the argument
    is passed before any kernel runs.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        for device in ["cuda", "cpu"]:
            with FakeTensorMode():
                layer = cuconv.Conv2d(8, 8, 3, padding=1, device=device)
                with ArgRecorder() as rec:
                    layer(torch.empty(2, 8, 6, 6, device=device))
            assert [_benchmarks(a) for a in rec.args["cuconv.conv2d"]] == [cudnn_benchmark and device == "cuda"]
    finally:
        torch.backends.cudnn.benchmark = saved


@pytest.mark.parametrize("allow_tf32, measure", [(False, False), (True, False), (False, True), (True, True)])
def test_backward_passes_make_the_forwards_tf32_and_benchmark_choices(allow_tf32, measure):
    """The gradients of a convolution, and their gradients (double backward), are computed with
    the TF32 and measuring choices of the forward pass."""
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    with ArgRecorder() as rec:
        y = torch.ops.cuconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, allow_tf32, measure)
        gx, gw = torch.autograd.grad(y.square().sum(), [x, w], create_graph=True)
        (gx.sum() + gw.sum()).backward()
    calls = [a for op in ["cuconv.conv2d", "cuconv.conv2d_backward_input", "cuconv.conv2d_backward_weight"]
             for a in rec.args[op]]
    assert len(calls) >= 5
    assert all(_allows_tf32(a) == allow_tf32 and _benchmarks(a) == measure for a in calls)


# --- LazyConv2d ----------------------------------------------------------------------------

LAZY_CONFIGS = [
    dict(args=(6, 3)),
    dict(args=(6, 3), kwargs=dict(padding=1, bias=False)),
    dict(args=(8, (2, 3)), kwargs=dict(stride=2, padding="valid", groups=2)),
    dict(args=(6, 2), kwargs=dict(padding="same", padding_mode="reflect")),
    dict(args=(4, 3), kwargs=dict(padding=1, groups=4, padding_mode="circular")),
]


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("config", LAZY_CONFIGS, ids=lambda c: str(c["args"]) + str(c.get("kwargs", "")))
def test_lazy_conv2d_matches_torch(config, unbatched):
    args, kwargs = config["args"], config.get("kwargs", {})
    x = torch.randn((4, 7, 8) if unbatched else (2, 4, 7, 8), dtype=DTYPE)
    torch.manual_seed(5)
    ours = cuconv.LazyConv2d(*args, **kwargs).to(DTYPE)
    torch.manual_seed(5)
    theirs = nn.LazyConv2d(*args, **kwargs).to(DTYPE)
    assert repr(ours) == repr(theirs)
    assert ours.has_uninitialized_params()
    assert list(ours.state_dict()) == list(theirs.state_dict())

    torch.manual_seed(6)
    out = ours(x)
    torch.manual_seed(6)
    ref = theirs(x)
    # in_channels inferred; the module is now a cuconv.Conv2d, as torch's becomes nn.Conv2d.
    assert type(ours) is cuconv.Conv2d and type(theirs) is nn.Conv2d
    assert ours.in_channels == 4 == theirs.in_channels
    assert ours.weight.shape == theirs.weight.shape and ours.weight.dtype == DTYPE
    assert repr(ours) == repr(theirs)
    # Same seed, same initialised weights, same outputs and gradients.
    for (name, p), (ref_name, ref_p) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == ref_name and torch.equal(p, ref_p)
    assert_close64(out, ref)
    assert_same_results(forward_backward(ours, x), forward_backward(theirs, x))


def test_lazy_conv2d_given_torch_weights():
    """A LazyConv2d that gets weights copied from an initialised torch LazyConv2d matches it."""
    x = torch.randn(2, 3, 8, 8, dtype=DTYPE)
    theirs = nn.LazyConv2d(5, 3, padding=1).to(DTYPE)
    theirs(x)
    ours = cuconv.LazyConv2d(5, 3, padding=1).to(DTYPE)
    ours.load_state_dict(theirs.state_dict())  # materialises the lazy parameters
    assert not ours.has_uninitialized_params()
    assert_same_results(forward_backward(ours, x), forward_backward(theirs, x))
    assert type(ours) is cuconv.Conv2d


def test_lazy_conv2d_first_forward_runs_on_cuconv():
    lazy = cuconv.LazyConv2d(6, 3)
    with OpRecorder() as rec:
        lazy(torch.randn(1, 3, 6, 6))
    assert rec.ops["cuconv.conv2d"] == 1 and "aten.convolution" not in rec.ops
    assert isinstance(lazy, cuconv.Conv2d) and isinstance(lazy, nn.Conv2d)
    assert not isinstance(lazy, nn.LazyConv2d)


# --- convert -------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pools = nn.ModuleList([nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1, count_include_pad=False)])
        self.heads = nn.ModuleDict({"a": nn.Conv2d(8, 8, 1), "b": nn.Conv2d(8, 8, (1, 3), padding=(0, 1))})

    def forward(self, x):
        y = self.conv(x)
        y = self.pools[0](y) + self.pools[1](y)
        return x + self.heads["a"](y) * self.heads["b"](y)


class MyConv(nn.Conv2d):
    """A user subclass: convert must leave it (and its forward) alone."""

    def forward(self, x):
        return super().forward(x) * 2


def small_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        Block(),
        nn.Conv2d(8, 8, 2, padding="same", padding_mode="circular"),
        nn.AvgPool2d(2, divisor_override=3),
        MyConv(8, 8, 1),
        nn.AdaptiveAvgPool2d((None, 2)),
        nn.Flatten(),
        nn.LazyLinear(5),
    )


def module_types(model):
    return [type(m) for m in model.modules()]


def check_converted(original, converted, inplace=False):
    """Every check convert promises, on one model."""
    original_types = module_types(original) if not inplace else None
    original_state = {k: v.clone() for k, v in original.state_dict().items()}

    # Every convertible layer is now its cuconv twin; nothing else changed class.
    for module in converted.modules():
        if type(module) in TORCH_CLASSES:
            raise AssertionError(f"{type(module).__name__} was not converted")
        if isinstance(module, tuple(TORCH_CLASSES)) and not isinstance(module, MyConv):
            assert type(module) in CUCONV_CLASSES, type(module)
    assert len(list(converted.modules())) == len(list(original.modules()))
    if not inplace:
        assert converted is not original
        # The original is untouched: its classes, its parameters (not shared), its values.
        assert module_types(original) == original_types
        assert not CUCONV_CLASSES & set(original_types)
        ours = dict(converted.named_parameters())
        for name, p in original.named_parameters():
            assert ours[name] is not p and ours[name].data_ptr() != p.data_ptr()

    # state_dict: the same keys in the same order, the same values.
    state = converted.state_dict()
    assert list(state) == list(original_state)
    for key, value in original_state.items():
        assert torch.equal(state[key], value), key
    return state


def _pairs_of_types(model):
    return [(name, type(m)) for name, m in model.named_modules()]


def test_convert_a_lazy_model_before_its_first_batch():
    """d2l's models are lazy until their first batch, and torch cannot deepcopy an uninitialized
    parameter: convert copies one all the same, the copy's lazy layers are cuconv's and become
    cuconv.Conv2d on the first batch, the original stays lazy and torch's."""
    def make():
        return nn.Sequential(nn.LazyConv2d(6, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(), nn.MaxPool2d(2),
                             nn.LazyConv2d(4, 3), nn.Flatten(), nn.LazyLinear(3))
    torch.manual_seed(0)
    model = make()
    converted = cuconv.convert(model)
    assert type(converted[0]) is cuconv.LazyConv2d and type(model[0]) is nn.LazyConv2d
    x = torch.randn(2, 3, 10, 10)
    reference = make()
    reference(x), converted(x)  # (the first batch: every lazy layer takes its shapes)
    assert type(converted[0]) is cuconv.Conv2d and type(converted[4]) is cuconv.Conv2d
    assert nn.parameter.is_lazy(model[0].weight) and nn.parameter.is_lazy(model[1].running_mean)
    converted.load_state_dict(reference.state_dict())
    torch.testing.assert_close(converted(x), reference(x), rtol=1e-5, atol=1e-5)


def test_convert_small_model():
    torch.manual_seed(0)
    model = small_model().to(DTYPE)
    x = torch.randn(2, 3, 9, 10, dtype=DTYPE)
    model(x)  # initialise the LazyLinear
    model.eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    original_types = _pairs_of_types(model)

    converted = cuconv.convert(model)
    check_converted(model, converted)
    assert _pairs_of_types(model) == original_types
    assert type(converted[0]) is cuconv.Conv2d and converted[0].padding_mode == "reflect"
    assert type(converted[4].pools[0]) is cuconv.MaxPool2d and type(converted[4].heads["b"]) is cuconv.Conv2d
    assert type(converted[7]) is MyConv  # exact types only: a subclass keeps its own forward
    assert type(converted[8]) is cuconv.AdaptiveAvgPool2d and converted[8].output_size == (None, 2)
    assert converted.training == model.training

    assert_same_results(forward_backward(converted, x), forward_backward(model, x))
    with OpRecorder() as rec:
        converted(x).sum().backward()
    assert rec.ops["cuconv.conv2d"] == 5 and rec.ops["cuconv.max_pool2d"] == 2
    assert rec.ops["cuconv.avg_pool2d"] == 2 and rec.ops["cuconv.adaptive_avg_pool2d"] == 1
    assert rec.ops["aten.convolution"] == 1  # MyConv, left on torch's kernels on purpose

    # Training mode too (BatchNorm batch statistics), same results.
    model.train(), converted.train()
    assert_same_results(forward_backward(converted, x), forward_backward(model, x))


def test_convert_inplace_and_twice():
    torch.manual_seed(0)
    model = small_model().to(DTYPE)
    x = torch.randn(1, 3, 8, 8, dtype=DTYPE)
    model(x)
    reference = copy.deepcopy(model)
    params = dict(model.named_parameters())

    converted = cuconv.convert(model, inplace=True)
    assert converted is model
    assert all(p is params[n] for n, p in converted.named_parameters())  # the same Parameters
    check_converted(reference, converted, inplace=True)
    assert_same_results(forward_backward(converted, x), forward_backward(reference, x))

    # A second convert is a no-op: the same classes, the same state, the same results.
    types = module_types(converted)
    again = cuconv.convert(converted, inplace=True)
    assert again is converted and module_types(again) == types
    copied = cuconv.convert(converted)
    assert copied is not converted and module_types(copied) == types
    assert list(copied.state_dict()) == list(converted.state_dict())
    assert_same_results(forward_backward(copied, x), forward_backward(converted, x))


def test_convert_single_layers_and_lazy():
    for layer, cls in [(nn.Conv2d(3, 4, 3), cuconv.Conv2d), (nn.MaxPool2d(2), cuconv.MaxPool2d),
                       (nn.AvgPool2d(2), cuconv.AvgPool2d), (nn.AdaptiveAvgPool2d(2), cuconv.AdaptiveAvgPool2d),
                       (nn.LazyConv2d(4, 3), cuconv.LazyConv2d)]:
        converted = cuconv.convert(layer)
        assert type(converted) is cls and type(layer) is TWINS[cls]
        assert repr(converted) == repr(layer)
    # A converted, still uninitialised LazyConv2d becomes a cuconv.Conv2d on its first forward.
    torch.manual_seed(3)
    model = nn.Sequential(nn.LazyConv2d(4, 3, padding=1), nn.ReLU(), nn.LazyConv2d(2, 1))
    converted = cuconv.convert(model)
    x = torch.randn(2, 3, 5, 5)
    out = converted(x)
    assert [type(m) for m in converted] == [cuconv.Conv2d, nn.ReLU, cuconv.Conv2d]
    assert [type(m) for m in model] == [nn.LazyConv2d, nn.ReLU, nn.LazyConv2d]
    model.load_state_dict(converted.state_dict())
    ref = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_convert_keeps_hooks_and_attributes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2))
    calls = []
    model[0].register_forward_hook(lambda m, i, o: calls.append(("conv", type(m))))
    model[1].register_forward_pre_hook(lambda m, i: calls.append(("pool", type(m))))
    model[0].weight.requires_grad_(False)
    model[0].custom_tag = "kept"
    model.eval()

    converted = cuconv.convert(model)
    converted(torch.randn(1, 3, 8, 8))
    assert calls == [("conv", cuconv.Conv2d), ("pool", cuconv.MaxPool2d)]
    assert converted[0].custom_tag == "kept" and not converted[0].weight.requires_grad
    assert not converted.training


@pytest.mark.parametrize("parametrization", ["spectral_norm", "weight_norm", "orthogonal"])
@pytest.mark.parametrize("layer", ["Conv2d", "ConvTranspose2d"])
def test_convert_takes_parametrized_layers(layer, parametrization):
    """A layer under torch.nn.utils.parametrize has a class of parametrize's own
    (ParametrizedConv2d, a subclass of nn.Conv2d), which convert left on torch's kernels silently:
    now it runs on cuconv's, its parametrizations kept (outputs, spectral norm's power iterations
    in training, gradients to the originals: torch's), and removing them leaves cuconv's layer."""
    from torch.nn.utils import parametrizations, parametrize

    torch.manual_seed(0)
    kernel = 1 if parametrization == "orthogonal" else 3  # (orthogonal: a square-able 8 x 3 matrix)
    torch_layer = getattr(nn, layer)(3, 8, kernel, padding=1).double()
    getattr(parametrizations, parametrization)(torch_layer)
    ours = cuconv.convert(torch_layer)
    assert isinstance(ours, getattr(cuconv, layer)) and parametrize.is_parametrized(ours, "weight")
    assert list(ours.state_dict()) == list(torch_layer.state_dict())
    for _ in range(2):  # training mode: spectral norm's power iteration updates its vectors each call
        x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
        out, ref = ours(x), torch_layer(x)
        assert_close64(out, ref)
        grads = torch.autograd.grad(out.square().sum(), list(ours.parameters()))
        ref_grads = torch.autograd.grad(ref.square().sum(), list(torch_layer.parameters()))
        for g, r in zip(grads, ref_grads):
            assert_close64(g, r)
    parametrize.remove_parametrizations(ours, "weight")
    assert type(ours) is getattr(cuconv, layer)


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated:FutureWarning")
def test_convert_says_to_convert_in_place_where_torch_cannot_copy_the_model():
    """torch cannot deepcopy a layer under the old nn.utils.weight_norm (a non-leaf weight): the error
    says what to do instead, and inplace=True converts it."""
    model = nn.Sequential(nn.utils.weight_norm(nn.Conv2d(2, 4, 3)))
    x = torch.randn(1, 2, 5, 5)
    model(x)  # (the forward pre-hook makes the non-leaf weight)
    with pytest.raises(RuntimeError, match="cuconv.convert: cannot copy the model to convert .*inplace=True"):
        cuconv.convert(model)
    expected = model(x)
    assert isinstance(cuconv.convert(model, inplace=True)[0], cuconv.Conv2d)
    torch.testing.assert_close(model(x), expected)


def test_converted_model_pickles():
    torch.manual_seed(0)
    model = cuconv.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AvgPool2d(2)))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert module_types(loaded) == module_types(model)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))


# --- torchvision models -----------------------------------------------------------------------

try:
    import torchvision
except ImportError:  # only the torchvision tests need it
    torchvision = None


def _resnet18():
    return torchvision.models.resnet18(num_classes=10)


def _vgg11():
    return torchvision.models.vgg11(num_classes=10)


def _mobilenet_v2():
    return torchvision.models.mobilenet_v2(num_classes=10)


def _googlenet():
    return torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=False)


def _squeezenet():
    return torchvision.models.squeezenet1_1(num_classes=10)  # MaxPool2d(ceil_mode=True) throughout


TORCHVISION_MODELS = [
    pytest.param(_resnet18, (1, 3, 32, 32), id="resnet18"),
    pytest.param(_vgg11, (1, 3, 32, 32), id="vgg11", marks=pytest.mark.slow),
    pytest.param(_mobilenet_v2, (1, 3, 32, 32), id="mobilenet_v2"),
    pytest.param(_googlenet, (1, 3, 48, 48), id="googlenet"),
    pytest.param(_squeezenet, (2, 3, 40, 40), id="squeezenet1_1"),
]


@pytest.mark.skipif(torchvision is None, reason="torchvision is not installed")
@pytest.mark.parametrize("build, shape", TORCHVISION_MODELS)
def test_convert_torchvision_model(build, shape):
    torch.manual_seed(0)
    model = build().to(DTYPE).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
    x = torch.randn(shape, dtype=DTYPE)
    counts = Counter(type(m) for m in model.modules())

    converted = cuconv.convert(model)
    check_converted(model, converted)
    converted_counts = Counter(type(m) for m in converted.modules())
    for cls, torch_cls in TWINS.items():
        assert converted_counts[cls] == counts[torch_cls] and converted_counts[torch_cls] == 0
    if build is _googlenet or build is _squeezenet:
        assert any(m.ceil_mode for m in converted.modules() if isinstance(m, cuconv.MaxPool2d))
    if build is _mobilenet_v2:
        assert any(m.groups == m.in_channels > 1 for m in converted.modules() if isinstance(m, cuconv.Conv2d))

    # Same outputs and parameter gradients; the converted forward/backward runs on cuconv's ops.
    with OpRecorder() as rec:
        result = forward_backward(converted, x)
    with OpRecorder() as original_rec:
        expected = forward_backward(model, x)
    assert_same_results(result, expected)
    assert not any(op.startswith("cuconv.") for op in original_rec.ops)  # the original still runs on torch
    assert rec.ops["cuconv.conv2d"] == counts[nn.Conv2d]
    assert rec.ops["cuconv.max_pool2d"] == counts[nn.MaxPool2d]
    assert rec.ops["cuconv.adaptive_avg_pool2d"] == counts[nn.AdaptiveAvgPool2d]
    assert not {"aten.convolution", "aten.convolution_backward", "aten.max_pool2d_with_indices"} & set(rec.ops)

    # A second convert changes nothing.
    types = module_types(converted)
    assert cuconv.convert(converted, inplace=True) is converted and module_types(converted) == types


# --- the d2l book's chapter 7 examples -------------------------------------------------------

def book_corr2d(X, K):
    """The book's loop (7.2), as the reference for random inputs."""
    h, w = K.shape
    Y = torch.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1), dtype=X.dtype)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


def book_pool2d(X, pool_size, mode="max"):
    """The book's loop (7.5)."""
    p_h, p_w = pool_size
    Y = torch.zeros((X.shape[0] - p_h + 1, X.shape[1] - p_w + 1), dtype=X.dtype)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            window = X[i:i + p_h, j:j + p_w]
            Y[i, j] = window.max() if mode == "max" else window.mean()
    return Y


BOOK_X = [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]


def test_book_corr2d():
    X, K = torch.tensor(BOOK_X), torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    Y = cuconv.corr2d(X, K)
    assert Y.dtype == torch.float32
    assert torch.equal(Y, torch.tensor([[19.0, 25.0], [37.0, 43.0]]))


def test_book_edge_detection():
    X = torch.ones((6, 8))
    X[:, 2:6] = 0
    K = torch.tensor([[1.0, -1.0]])
    Y = cuconv.corr2d(X, K)
    expected = torch.zeros(6, 7)
    expected[:, 1], expected[:, 5] = 1.0, -1.0
    assert torch.equal(Y, expected)
    # The transposed image has only horizontal edges: the vertical-edge kernel sees none.
    Yt = cuconv.corr2d(X.t(), K)
    assert Yt.shape == (8, 5) and torch.equal(Yt, torch.zeros(8, 5))


def test_book_corr2d_multi_in():
    X = torch.tensor([BOOK_X, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]])
    K = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
    assert torch.equal(cuconv.corr2d_multi_in(X, K), torch.tensor([[56.0, 72.0], [104.0, 120.0]]))

    K = torch.stack((K, K + 1, K + 2), 0)
    assert K.shape == (3, 2, 2, 2)
    expected = torch.tensor([[[56.0, 72.0], [104.0, 120.0]],
                             [[76.0, 100.0], [148.0, 172.0]],
                             [[96.0, 128.0], [192.0, 224.0]]])
    Y = cuconv.corr2d_multi_in_out(X, K)
    assert Y.shape == (3, 2, 2) and torch.equal(Y, expected)


def test_book_corr2d_multi_in_out_1x1():
    X = torch.normal(0, 1, (3, 3, 3))
    K = torch.normal(0, 1, (2, 3, 1, 1))
    Y1 = cuconv.corr2d_multi_in_out_1x1(X, K)
    Y2 = torch.nn.functional.conv2d(X[None], K)[0]  # torch's convolution, not another cuconv helper
    assert Y1.shape == Y2.shape == (2, 3, 3)
    assert float(torch.abs(Y1 - Y2).sum()) < 1e-5
    # The book's own definition: a matrix product over channels.
    torch.testing.assert_close(Y1, (K.reshape(2, 3) @ X.reshape(3, 9)).reshape(2, 3, 3))


def test_book_helpers_against_the_books_loops():
    gen = torch.Generator().manual_seed(11)
    for _ in range(5):
        h, w = torch.randint(3, 9, (2,), generator=gen).tolist()
        kh, kw = torch.randint(1, h + 1, (1,), generator=gen).item(), torch.randint(1, w + 1, (1,), generator=gen).item()
        X = torch.randn(h, w, generator=gen, dtype=DTYPE)
        K = torch.randn(kh, kw, generator=gen, dtype=DTYPE)
        assert_close64(cuconv.corr2d(X, K), book_corr2d(X, K))
        assert_close64(cuconv.pool2d(X, (kh, kw)), book_pool2d(X, (kh, kw)))
        assert_close64(cuconv.pool2d(X, (kh, kw), "avg"), book_pool2d(X, (kh, kw), "avg"))
        Xc, Kc = torch.randn(3, h, w, generator=gen, dtype=DTYPE), torch.randn(2, 3, kh, kw, generator=gen, dtype=DTYPE)
        expected = torch.stack([sum(book_corr2d(x, k) for x, k in zip(Xc, ko)) for ko in Kc])
        assert_close64(cuconv.corr2d_multi_in(Xc, Kc[0]), expected[0])
        assert_close64(cuconv.corr2d_multi_in_out(Xc, Kc), expected)
        assert cuconv.corr2d(X, K).dtype == DTYPE


def test_book_helpers_integer_tensors_compute_in_float():
    X = torch.arange(9).reshape(3, 3)
    K = torch.tensor([[0, 1], [2, 3]])
    Y = cuconv.corr2d(X, K)
    assert Y.dtype == torch.get_default_dtype()
    assert torch.equal(Y, torch.tensor([[19.0, 25.0], [37.0, 43.0]]))
    assert torch.equal(cuconv.pool2d(X, (2, 2)), torch.tensor([[4.0, 5.0], [7.0, 8.0]]))


def test_book_helpers_correlate_complex_tensors_as_complex_numbers():
    """Complex X and K were cast to real first (the imaginary parts dropped, with a warning): now
    the book's loop over complex numbers (its Y made complex), through the complex convolution."""
    gen = torch.Generator().manual_seed(12)
    X = torch.randn(6, 7, generator=gen, dtype=torch.complex128)
    K = torch.randn(2, 3, generator=gen, dtype=torch.complex128)
    Y = cuconv.corr2d(X, K)
    assert Y.dtype == torch.complex128
    torch.testing.assert_close(Y, book_corr2d(X, K))
    Xc, Kc = torch.randn(3, 6, 7, generator=gen, dtype=torch.complex64), torch.randn(2, 3, 2, 3, generator=gen,
                                                                                        dtype=torch.complex64)
    expected = torch.stack([sum(book_corr2d(x, k) for x, k in zip(Xc, ko)) for ko in Kc])
    torch.testing.assert_close(cuconv.corr2d_multi_in_out(Xc, Kc), expected)
    with pytest.raises(cuconv.DtypeError, match="cuconv.pool2d: expected a real tensor X, but got torch.complex128"):
        cuconv.pool2d(X, (2, 2))


@pytest.mark.parametrize("call, message", [
    (lambda: cuconv.corr2d(torch.ones(2, 2), torch.ones(3, 3)),
     "cuconv.corr2d: expected a kernel no larger than X's 2 x 2 plane, but got 3 x 3"),
    (lambda: cuconv.corr2d(torch.ones(2, 2, 2), torch.ones(1, 1)),
     r"cuconv.corr2d: expected X to be 2-D \(height, width\), but got 3-D"),
    (lambda: cuconv.corr2d_multi_in(torch.ones(2, 4, 4), torch.ones(3, 2, 2)),
     r"cuconv.corr2d_multi_in: expected K to have X's 2 input channels, but got 3"),
    (lambda: cuconv.corr2d_multi_in_out(torch.ones(2, 4, 4), torch.ones(5, 2, 5, 1)),
     "cuconv.corr2d_multi_in_out: expected a kernel no larger than X's 4 x 4 plane, but got 5 x 1"),
    (lambda: cuconv.corr2d_multi_in_out_1x1(torch.ones(2, 4, 4), torch.ones(5, 3, 1, 1)),
     "cuconv.corr2d_multi_in_out_1x1: expected K to have X's 2 input channels, but got 3"),
    (lambda: cuconv.pool2d(torch.ones(3, 3), (4, 1)),
     "cuconv.pool2d: expected a window no larger than X's 3 x 3 plane, but got 4 x 1"),
    (lambda: cuconv.pool2d(torch.ones(3, 3), 2, mode="min"), "cuconv.pool2d: expected mode to be 'max' or 'avg'"),
])
def test_book_helpers_name_themselves_in_their_errors(call, message):
    """A kernel larger than the image was refused by the op underneath, naming cuconv.conv2d and a 4-D
    shape the user never made, as a plain ValueError (no RuntimeError, as cuconv's other errors)."""
    with pytest.raises(cuconv.ArgumentError, match=message):
        call()


def test_book_helpers_are_differentiable():
    X = torch.randn(5, 6, dtype=DTYPE, requires_grad=True)
    K = torch.randn(2, 3, dtype=DTYPE, requires_grad=True)
    cuconv.corr2d(X, K).sum().backward()
    Xr, Kr = X.detach().clone().requires_grad_(), K.detach().clone().requires_grad_()
    book_corr2d(Xr, Kr).sum().backward()
    assert_close64(X.grad, Xr.grad)
    assert_close64(K.grad, Kr.grad)


def test_book_pool2d():
    X = torch.tensor(BOOK_X)
    assert torch.equal(cuconv.pool2d(X, (2, 2)), torch.tensor([[4.0, 5.0], [7.0, 8.0]]))
    assert torch.equal(cuconv.pool2d(X, (2, 2), "avg"), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    assert torch.equal(cuconv.pool2d(X, (2, 2), mode="max"), torch.tensor([[4.0, 5.0], [7.0, 8.0]]))


def test_book_max_pool2d_examples():
    X = torch.arange(16, dtype=torch.float32).reshape((1, 1, 4, 4))
    assert torch.equal(cuconv.MaxPool2d(3)(X), torch.tensor([[[[10.0]]]]))
    expected = torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]])
    assert torch.equal(cuconv.MaxPool2d(3, padding=1, stride=2)(X), expected)
    assert torch.equal(cuconv.MaxPool2d((2, 3), stride=(2, 3), padding=(0, 1))(X), expected)

    X = torch.cat((X, X + 1), 1)
    assert X.shape == (1, 2, 4, 4)
    Y = cuconv.MaxPool2d(3, padding=1, stride=2)(X)
    assert torch.equal(Y, torch.tensor([[[[5.0, 7.0], [13.0, 15.0]], [[6.0, 8.0], [14.0, 16.0]]]]))


def comp_conv2d(conv2d, X):
    """The book's 7.3 helper."""
    X = X.reshape((1, 1) + X.shape)
    Y = conv2d(X)
    return Y.reshape(Y.shape[2:])


@pytest.mark.parametrize("kwargs, shape", [
    (dict(kernel_size=3, padding=1), (8, 8)),
    (dict(kernel_size=(5, 3), padding=(2, 1)), (8, 8)),
    (dict(kernel_size=3, padding=1, stride=2), (4, 4)),
    (dict(kernel_size=(3, 5), padding=(0, 1), stride=(3, 4)), (2, 2)),
])
def test_book_padding_and_stride_shapes(kwargs, shape):
    X = torch.rand(size=(8, 8))
    conv2d = cuconv.LazyConv2d(1, **kwargs)
    Y = comp_conv2d(conv2d, X)
    assert Y.shape == torch.Size(shape)
    assert type(conv2d) is cuconv.Conv2d and conv2d.in_channels == 1
    reference = nn.Conv2d(1, 1, **kwargs)
    reference.load_state_dict(conv2d.state_dict())
    torch.testing.assert_close(Y, comp_conv2d(reference, X))


def _book_training_loop(conv2d):
    """The book's 7.2 loop: learn the edge-detection kernel from X and Y."""
    X = torch.ones((6, 8))
    X[:, 2:6] = 0
    Y = cuconv.corr2d(X, torch.tensor([[1.0, -1.0]]))
    X = X.reshape((1, 1, 6, 8))
    Y = Y.reshape((1, 1, 6, 7))
    lr = 3e-2
    losses, weights = [], []
    for i in range(10):
        Y_hat = conv2d(X)
        l = (Y_hat - Y) ** 2  # noqa: E741
        conv2d.zero_grad()
        l.sum().backward()
        conv2d.weight.data[:] -= lr * conv2d.weight.grad
        losses.append(l.sum().item())
        weights.append(conv2d.weight.detach().clone())
    return losses, weights


def test_book_learning_a_kernel():
    torch.manual_seed(0)
    conv2d = cuconv.LazyConv2d(1, kernel_size=(1, 2), bias=False)
    losses, weights = _book_training_loop(conv2d)
    assert type(conv2d) is cuconv.Conv2d and conv2d.weight.shape == (1, 1, 1, 2)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] / 20 and losses[-1] < 1.0, losses
    learned = conv2d.weight.data.reshape((1, 2))
    torch.testing.assert_close(learned, torch.tensor([[1.0, -1.0]]), rtol=0, atol=0.15)

    # Step for step what torch.nn.LazyConv2d does from the same initialisation.
    torch.manual_seed(0)
    ref_losses, ref_weights = _book_training_loop(nn.LazyConv2d(1, kernel_size=(1, 2), bias=False))
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-5)
    for w, ref_w in zip(weights, ref_weights):
        torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)


def _counted_flops(module, x):
    """FlopCounterMode's total for module's forward pass, and for forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as forward:
        module(x)
    with FlopCounterMode(display=False) as both:
        module(x).sum().backward()
    return forward.get_total_flops(), both.get_total_flops()


@pytest.mark.parametrize("cls, kwargs", [
    (torch.nn.Conv2d, dict(kernel_size=3, padding=1)),
    (torch.nn.Conv2d, dict(kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=(2, 1))),
    (torch.nn.ConvTranspose2d, dict(kernel_size=3, stride=2, padding=1, output_padding=1)),
    (torch.nn.ConvTranspose2d, dict(kernel_size=(2, 3), stride=(3, 1), dilation=2)),
], ids=str)
@pytest.mark.parametrize("groups", [1, 2])
def test_flop_counter_counts_cuconv_convolutions(cls, kwargs, groups):
    """torch.utils.flop_counter counts cuconv's convolutions by torch's formula: the forward
    pass and the whole step as torch's for one group. A grouped layer's step is three times its
    forward pass (the two gradients cost one forward pass each), where torch counts the weight
    gradient as if the layer had one group."""
    torch.manual_seed(0)
    ours_cls = cuconv.Conv2d if cls is torch.nn.Conv2d else cuconv.ConvTranspose2d
    x = torch.randn(2, 6, 9, 10, requires_grad=True)
    forward, both = _counted_flops(ours_cls(6, 4, groups=groups, **kwargs), x)
    torch_forward, torch_both = _counted_flops(cls(6, 4, groups=groups, **kwargs), x)
    assert forward == torch_forward > 0
    assert both == (torch_both if groups == 1 else 3 * forward)
