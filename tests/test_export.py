"""Leaving eager PyTorch with a cuconv model: torch.compile (inductor; torch.func's transforms
and dual tensors compiled), torch.export with a dynamic batch, an AOTInductor package,
torch.jit.trace, and the clear refusal of torch.jit.script. ONNX: test_onnx.py."""

import pytest
import torch
import torch._dynamo.testing
import torch.autograd.forward_ad as fwAD
import torch.func as tf
import torch.nn.functional as F

import cuconv
import cuconv.functional as CF
from test_ops import SmallNet, forward_and_grads


def _model():
    torch.manual_seed(0)
    return cuconv.convert(SmallNet()).eval()


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    torch._dynamo.reset()
    model = _model()
    compiled = torch.compile(model, fullgraph=True)
    for batch in (4, 3):
        x = torch.randn(batch, 3, 16, 16)
        out, grads = forward_and_grads(compiled, [x])
        ref, ref_grads = forward_and_grads(model, [x])
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(grads, ref_grads)


class _PooledToHalf(torch.nn.Module):
    """Adaptive pooling to a size computed from the input's (SymInts under export and compile)."""
    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        return self.pool(x, (x.shape[2] // 2, 3))


@pytest.mark.parametrize("pool", [cuconv.AdaptiveAvgPool2d((None, 3)), _PooledToHalf(CF.adaptive_avg_pool2d)],
                         ids=["none", "half"])
def test_compile_with_dynamic_shapes_traces_adaptive_pooling_to_the_input_s_size_once(pool):
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(pool, backend=counter, dynamic=True, fullgraph=True)
    for height in (10, 11, 12, 13, 14):
        x = torch.randn(2, 4, height, 9)
        torch.testing.assert_close(compiled(x), pool(x))
    assert counter.frame_count == 1


def test_compile_with_dynamic_shapes_traces_once_for_every_batch_size():
    """The fake kernels (cuconv/_fake.py) take symbolic sizes: one graph serves every batch."""
    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = _model()
    compiled = torch.compile(model, backend=counting_backend, dynamic=True, fullgraph=True)
    with torch.no_grad():
        for batch in (2, 3, 5, 8):
            x = torch.randn(batch, 3, 16, 16)
            torch.testing.assert_close(compiled(x), model(x))
    assert len(graphs) == 1


# torch.func's transforms and forward mode, compiled with fullgraph=True: cuconv's autograd.Function
# for them is one call in the graph (cuconv/_ops.py). Before, the compiled call took the op's own
# Autograd kernel: a jvp's tangent came back zero, and grad/jacrev/hessian did not compile.
_X = torch.randn(3, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
_V = torch.randn(3, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
_W = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
_WT = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
COMPILED_OPS = {
    "conv2d": lambda f, z: f.conv2d(z, _W, None, 1, 1),
    "conv_transpose2d": lambda f, z: f.conv_transpose2d(z, _WT, None, 2, 1, 1),
    "max_pool2d": lambda f, z: f.max_pool2d(z, 3, 2, 1, return_indices=True)[0],
    "avg_pool2d": lambda f, z: f.avg_pool2d(z, 3, 2, 1),
    "adaptive_avg_pool2d": lambda f, z: f.adaptive_avg_pool2d(z, (4, 3)),
}


def _dual_tangent(f, op):
    with fwAD.dual_level():
        return fwAD.unpack_dual(op(f, fwAD.make_dual(_X, _V))).tangent


COMPILED_TRANSFORMS = {
    "grad": lambda f, op: tf.grad(lambda z: op(f, z).pow(2).sum())(_X),
    "vmap_grad": lambda f, op: tf.vmap(tf.grad(lambda z: op(f, z[None]).pow(2).sum()))(_X),
    "jacrev": lambda f, op: tf.jacrev(lambda z: op(f, z))(_X[:1, :, :4, :4]),
    "jvp": lambda f, op: tf.jvp(lambda z: op(f, z), (_X,), (_V,))[1],
    "jacfwd": lambda f, op: tf.jacfwd(lambda z: op(f, z))(_X[:1, :, :4, :4]),
    "hessian": lambda f, op: tf.hessian(lambda z: op(f, z).pow(3).sum())(_X[:1, :, :3, :3]),
    "dual_tensors": _dual_tangent,
}


@pytest.mark.parametrize("transform", list(COMPILED_TRANSFORMS))
@pytest.mark.parametrize("op", list(COMPILED_OPS))
def test_compiled_transforms_equal_torch_s(op, transform):
    torch._dynamo.reset()
    call, layer = COMPILED_TRANSFORMS[transform], COMPILED_OPS[op]
    ours = torch.compile(lambda: call(CF, layer), backend="aot_eager", fullgraph=True)()
    torch.testing.assert_close(ours, call(F, layer), rtol=1e-9, atol=1e-9)


def test_compiled_jvp_with_inductor_equals_torch_s():
    torch._dynamo.reset()
    call, layer = COMPILED_TRANSFORMS["jvp"], COMPILED_OPS["conv2d"]
    ours = torch.compile(lambda: call(CF, layer), fullgraph=True)()
    torch.testing.assert_close(ours, call(F, layer), rtol=1e-9, atol=1e-9)


def _exported(model):
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(model, (torch.randn(4, 3, 16, 16),), dynamic_shapes={"x": {0: batch}})


def test_torch_export_with_a_dynamic_batch_records_cuconv_ops():
    model = _model()
    program = _exported(model)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"cuconv.conv2d.default", "cuconv.max_pool2d.default", "cuconv.avg_pool2d.default",
            "cuconv.adaptive_avg_pool2d.default"} <= targets
    assert not any("aten.conv" in t or "aten.max_pool" in t or "aten.avg_pool" in t for t in targets)
    for batch in (1, 7):
        x = torch.randn(batch, 3, 16, 16)
        torch.testing.assert_close(program.module()(x), model(x))


class _Upsample(torch.nn.Module):
    """A transposed convolution to twice the input's size: torch.nn's output_size handling hands
    cuconv an output_padding of SymInts when the height and width are dynamic."""
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x, output_size=[x.shape[2] * 2, x.shape[3] * 2])


class _PaddedBySize(torch.nn.Module):
    """A padding computed from the input's sizes (a SymInt under export), of value 1."""
    def __init__(self, conv, weight):
        super().__init__()
        self.conv, self.weight = conv, torch.nn.Parameter(weight)

    def forward(self, x):
        return self.conv(x, self.weight, None, 1, x.shape[0] // x.shape[0])


@pytest.mark.parametrize("case", ["output_size", "padding", "adaptive-none", "adaptive-half"])
def test_export_with_dynamic_sizes_takes_symbolic_int_arguments(case):
    """Sizes taken from the input reach the ops as symbolic ints (SymInt in their schemas): with an
    `int[2]` output size, adaptive pooling to (None, 3) was specialised to the traced height."""
    torch.manual_seed(0)
    if case.startswith("adaptive"):
        if case == "adaptive-none":
            theirs, ours = torch.nn.AdaptiveAvgPool2d((None, 3)), cuconv.AdaptiveAvgPool2d((None, 3))
        else:
            theirs, ours = _PooledToHalf(F.adaptive_avg_pool2d), _PooledToHalf(CF.adaptive_avg_pool2d)
    elif case == "output_size":
        theirs = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
        ours = cuconv.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
        ours.load_state_dict(theirs.state_dict())
        theirs, ours = _Upsample(theirs), _Upsample(ours)
    else:
        weight = torch.randn(4, 3, 3, 3)
        theirs, ours = _PaddedBySize(F.conv2d, weight), _PaddedBySize(CF.conv2d, weight)
    low = 4 if case == "adaptive-half" else 2  # (torch too guards against a half-height pooled to 1)
    sizes = {0: torch.export.Dim("n"), 2: torch.export.Dim("h", min=low, max=64), 3: torch.export.Dim("w", min=2, max=64)}
    program = torch.export.export(ours, (torch.randn(2, 3, 5, 5),), dynamic_shapes=(sizes,))
    with torch.no_grad():
        for shape in ((3, 3, 7, 9), (1, 3, 12, 4)):
            x = torch.randn(shape)
            torch.testing.assert_close(program.module()(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_fx_symbolic_trace_records_cuconv_layers_as_torch_nn_s():
    """torch.fx keeps torch.nn's layers as call_module nodes (leaves) and traces into any other
    module: cuconv's layers are leaves too, so a converted model traces to the same graph, and
    torchvision's create_feature_extractor (built on FX) takes the same node names."""
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    reference = SmallNet().eval()
    model = cuconv.convert(reference)
    graph, reference_graph = torch.fx.symbolic_trace(model), torch.fx.symbolic_trace(reference)
    assert [(n.op, str(n.target)) for n in graph.graph.nodes] == [(n.op, str(n.target))
                                                                 for n in reference_graph.graph.nodes]
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(graph(x), model(x))  # (the measured kernel choice may differ by a call)
    nodes = ["features.0", "features.5"]  # a convolution's output and an average pool's
    ours, theirs = create_feature_extractor(model, nodes)(x), create_feature_extractor(reference, nodes)(x)
    for node in nodes:
        torch.testing.assert_close(ours[node], theirs[node], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "functional"])
def test_fx_symbolic_trace_of_a_layer_or_a_functional_call(layer):
    """A traced cuconv layer, or a module of the user's that calls cuconv.functional: its op is a
    call_function node, as torch.nn.functional's, and the traced module computes what it does."""
    torch.manual_seed(0)

    class UsesFunctional(torch.nn.Module):
        def forward(self, x):
            return CF.max_pool2d(CF.conv2d(x, torch.ones(2, 3, 3, 3), stride=2), 2, ceil_mode=True)

    module = UsesFunctional() if layer == "functional" else {
        "Conv2d": lambda: cuconv.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        "MaxPool2d": lambda: cuconv.MaxPool2d(3, 2, 1, return_indices=True),
        "AvgPool2d": lambda: cuconv.AvgPool2d(2, ceil_mode=True), "AdaptiveAvgPool2d": lambda: cuconv.AdaptiveAvgPool2d(3),
    }[layer]()
    traced = torch.fx.symbolic_trace(module)
    assert any(n.op == "call_function" and n.target.__module__ == "cuconv.functional" for n in traced.graph.nodes)
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(traced(x), module(x))  # (the measured kernel choice may differ by a call)


@pytest.mark.slow
def test_aot_inductor_package_runs_with_another_batch(tmp_path):
    model = _model()
    path = torch._inductor.aoti_compile_and_package(_exported(model), package_path=str(tmp_path / "model.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    for batch in (2, 9):
        x = torch.randn(batch, 3, 16, 16)
        torch.testing.assert_close(loaded(x), model(x))


def test_jit_trace_works_and_jit_script_says_what_to_use():
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), model(x))
    with pytest.raises(RuntimeError, match=r"cuconv.Conv2d does not support torch.jit.script. Use torch.jit.trace"):
        torch.jit.script(model)


@pytest.mark.parametrize("args", [dict(stride=2, padding=1, output_padding=1),
                                  dict(stride=2, output_padding=(2, 1), dilation=3)], ids=str)
def test_jit_trace_of_a_transposed_convolution_keeps_its_output_size(args):
    """The transposed convolution passes its output size to cuconv's op as a list, which
    torch.jit.trace cannot record from traced shapes: the trace keeps the traced input's output
    size (both ways to compute it: output padding below the stride and not), and another input
    size raises a clear error instead of giving a wrong shape."""
    torch.manual_seed(3)
    model = cuconv.ConvTranspose2d(8, 4, 3, **args)
    x = torch.randn(2, 8, 5, 6)
    with pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), torch.nn.functional.conv_transpose2d(x, model.weight, model.bias, **args))
    with pytest.raises(RuntimeError, match=r"expected grad_output of shape \[2, 8, 5, 6\], but got \[3, 8, 5, 6\]"):
        traced(torch.randn(3, 8, 5, 6))
