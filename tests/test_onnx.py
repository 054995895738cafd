"""ONNX export (cuconv.onnx): models and every op's translation run by onnxruntime, with
torch's outputs, and no cuconv-specific node left in the graph."""

import pytest
import torch

import cuconv
import cuconv.functional as CF
from test_ops import SmallNet, random_pool_cases

onnxruntime = pytest.importorskip("onnxruntime", reason="the ONNX tests need the test extra (onnxruntime)")
pytest.importorskip("onnxscript", reason="the ONNX tests need the test extra (onnxscript)")
import cuconv.onnx  # noqa: E402


def _model():
    torch.manual_seed(0)
    return cuconv.convert(SmallNet()).eval()


def run_onnx(program, *inputs):
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString())
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(out) for out in session.run(None, feeds)]


class Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def assert_onnx_matches(fn, x, **export_kwargs):
    expected = fn(x)
    expected = expected if isinstance(expected, tuple) else (expected,)
    program = cuconv.onnx.export(Fn(fn).eval(), (x,), **export_kwargs)
    assert not [n.op_type for n in program.model_proto.graph.node if n.domain not in ("", "ai.onnx")]
    got = run_onnx(program, x)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if e.is_floating_point():
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(g, e)


def test_onnx_model_runs_in_onnxruntime_with_torch_s_outputs(tmp_path):
    model = _model()
    x = torch.randn(5, 3, 16, 16)
    path = tmp_path / "model.onnx"
    program = cuconv.onnx.export(model, (torch.randn(2, 3, 16, 16),), str(path),
                                 dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    ops_used = {n.op_type for n in program.model_proto.graph.node}
    assert {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool"} <= ops_used
    assert path.exists()
    (got,) = run_onnx(program, x)
    torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)


def test_onnx_translation_table_works_with_torch_onnx_export():
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    program = torch.onnx.export(model, (x,), dynamo=True, custom_translation_table=cuconv.onnx.translation_table())
    torch.testing.assert_close(run_onnx(program, x)[0], model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", random_pool_cases(8, seed=7, with_dilation=True),
                         ids=lambda c: "k{kernel}s{stride}p{padding}d{dilation}c{ceil_mode}".format(**c))
def test_onnx_max_pool2d_values_and_indices(case):
    x = torch.randn(2, 3, *case["size"])
    args = (case["kernel"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"])
    assert_onnx_matches(lambda t: CF.max_pool2d(t, *args, return_indices=True), x)


@pytest.mark.parametrize("count_include_pad,divisor_override", [(True, None), (False, None), (True, 3), (False, 5)])
@pytest.mark.parametrize("case", random_pool_cases(6, seed=11, with_dilation=False),
                         ids=lambda c: "k{kernel}s{stride}p{padding}c{ceil_mode}".format(**c))
def test_onnx_avg_pool2d(case, count_include_pad, divisor_override):
    x = torch.randn(2, 3, *case["size"])
    args = (case["kernel"], case["stride"], case["padding"], case["ceil_mode"], count_include_pad, divisor_override)
    assert_onnx_matches(lambda t: CF.avg_pool2d(t, *args), x)


@pytest.mark.parametrize("in_size,out_size", [((7, 9), (3, 4)), ((8, 8), 1), ((6, 6), (3, 2)), ((4, 5), (7, 9))])
def test_onnx_adaptive_avg_pool2d(in_size, out_size):
    assert_onnx_matches(lambda t: CF.adaptive_avg_pool2d(t, out_size), torch.randn(2, 3, *in_size))


@pytest.mark.parametrize("stride,padding,dilation,groups,bias", [
    (1, 0, 1, 1, True), ((2, 1), (1, 2), (2, 1), 2, False), (1, "same", 1, 1, True), (2, 1, 1, 4, True)])
def test_onnx_conv2d(stride, padding, dilation, groups, bias):
    w = torch.randn(8, 4 // groups, 3, 2)
    b = torch.randn(8) if bias else None
    assert_onnx_matches(lambda t: CF.conv2d(t, w, b, stride, padding, dilation, groups), torch.randn(2, 4, 11, 10))


# The transposed convolution's op, conv2d_backward_input, as ConvTranspose: output padding below
# the stride, at least the stride (below the dilation: cropped and padded with zeros), groups.
@pytest.mark.parametrize("stride,padding,output_padding,dilation,groups,bias", [
    (1, 0, 0, 1, 1, True), (2, 1, 1, 1, 2, True), ((2, 3), (1, 0), (1, 2), (1, 2), 1, False),
    (1, 1, 1, 2, 4, True)])
def test_onnx_conv_transpose2d(stride, padding, output_padding, dilation, groups, bias):
    w = torch.randn(4, 8 // groups, 3, 2)
    b = torch.randn(8) if bias else None
    assert_onnx_matches(lambda t: CF.conv_transpose2d(t, w, b, stride, padding, output_padding, groups, dilation),
                        torch.randn(2, 4, 7, 6))
    if groups == 2:  # (and the module)
        assert_onnx_matches(cuconv.convert(torch.nn.ConvTranspose2d(4, 8, 3, 2, 1, 1)).eval(), torch.randn(2, 4, 5, 6))
