"""ONNX export of models built from cuconv layers.

torch.onnx.export(..., dynamo=True) does not know the cuconv namespace; these translations
lower each cuconv op to standard ONNX operators, so the exported model runs in any ONNX
runtime without cuconv:

    cuconv.conv2d                 Conv
    cuconv.conv2d_backward_input  ConvTranspose (the op of cuconv.functional.conv_transpose2d;
                                  static H, W)
    cuconv.max_pool2d             MaxPool (indices taken within each plane, as torch's)
    cuconv.avg_pool2d             AveragePool; Conv with a ones kernel for divisor_override
    cuconv.adaptive_avg_pool2d    GlobalAveragePool (1x1), AveragePool (sizes that divide),
                                  else two MatMuls with the averaging matrices (static H, W)

Use
    cuconv.onnx.export(model, args, "model.onnx")          # torch.onnx.export with the table
or pass `custom_translation_table=cuconv.onnx.translation_table()` to torch.onnx.export.
Needs the onnx and onnxscript packages (pip install "cuconv[onnx]").
"""

import torch

__all__ = ["export", "translation_table"]

_ops = torch.ops.cuconv


def _opset():
    try:
        from onnxscript import opset18
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("cuconv.onnx needs onnxscript (and onnx): pip install onnx onnxscript") from error
    return opset18


def _pads(padding, extra=(0, 0)):
    """ONNX pads [top, left, bottom, right]; extra adds room at the bottom / right."""
    return [padding[0], padding[1], padding[0] + extra[0], padding[1] + extra[1]]


def _conv2d(input, weight, bias, stride, padding, dilation, groups, allow_tf32=False, benchmark=False):
    op = _opset()
    args = (input, weight) if bias is None else (input, weight, bias)
    return op.Conv(*args, strides=list(stride), pads=_pads(padding), dilations=list(dilation), group=groups,
                   kernel_shape=list(weight.shape[2:]))


def _conv2d_backward_input(grad_output, weight, input_size, stride, padding, dilation, groups, allow_tf32=False,
                           benchmark=False):
    """ConvTranspose, the op a transposed convolution runs (cuconv.functional.conv_transpose2d):
    output_padding makes up input_size from the size the windows reach."""
    op = _opset()
    output_padding = []
    for i in (0, 1):
        size = _static_size(grad_output, 2 + i, "conv2d_backward_input (a transposed convolution)")
        reach = dilation[i] * (weight.shape[2 + i] - 1) + 1
        output_padding.append(int(input_size[2 + i]) - ((size - 1) * stride[i] + reach - 2 * padding[i]))
    return op.ConvTranspose(grad_output, weight, strides=list(stride), pads=_pads(padding), dilations=list(dilation),
                            group=groups, kernel_shape=list(weight.shape[2:]), output_padding=output_padding)


def _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode):
    op = _opset()
    output, flat_indices = op.MaxPool(input, kernel_shape=list(kernel_size), strides=list(stride),
                                      pads=_pads(padding), dilations=list(dilation), ceil_mode=int(ceil_mode))
    # ONNX counts indices over the whole NCHW tensor, torch within each (H, W) plane.
    plane = op.ReduceProd(op.Slice(op.Shape(input), [2], [4]), keepdims=1)
    return output, op.Mod(flat_indices, plane)


def _avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    op = _opset()
    if divisor_override is None:
        return op.AveragePool(input, kernel_shape=list(kernel_size), strides=list(stride), pads=_pads(padding),
                              ceil_mode=int(ceil_mode), count_include_pad=int(count_include_pad))
    # Window sums, a depthwise Conv with a ones kernel over the input padded with zeros (the
    # ceil-mode overhang included), divided by the fixed divisor.
    channels = _static_size(input, 1, "avg_pool2d with divisor_override")
    extra = [0, 0]
    if ceil_mode:
        for axis in (0, 1):
            size = _static_size(input, 2 + axis, "avg_pool2d with divisor_override and ceil_mode")
            out = _pool_output_size(size, kernel_size[axis], stride[axis], padding[axis], True)
            extra[axis] = max(0, (out - 1) * stride[axis] + kernel_size[axis] - size - 2 * padding[axis])
    ones = op.CastLike(op.Constant(value=_tensor(torch.ones(channels, 1, *kernel_size))), input)
    sums = op.Conv(input, ones, strides=list(stride), pads=_pads(padding, extra), group=channels)
    return op.Div(sums, op.CastLike(op.Constant(value_float=float(divisor_override)), input))


def _static_size(input, axis, what):
    size = input.shape[axis]
    if not isinstance(size, int):
        raise NotImplementedError(f"cuconv.onnx: {what} needs a static size in dimension {axis}, but the "
                                  f"input's shape is {input.shape}")
    return size


def _tensor(value):
    import onnx

    return onnx.numpy_helper.from_array(value.numpy())


def _pool_output_size(size, kernel, stride, pad, ceil_mode):
    """csrc/shape.h's pool_output_size for concrete ints (dilation 1)."""
    span = size + 2 * pad - kernel + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _averaging_matrix(in_size, out_size):
    """[out, in]: row i averages adaptive window i = [floor(i*in/out), ceil((i+1)*in/out))."""
    matrix = torch.zeros(out_size, in_size)
    for i in range(out_size):
        start, end = (i * in_size) // out_size, ((i + 1) * in_size + out_size - 1) // out_size
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _adaptive_avg_pool2d(input, output_size):
    op = _opset()
    out_h, out_w = output_size
    if out_h == 1 and out_w == 1:
        return op.GlobalAveragePool(input)
    in_h = _static_size(input, 2, "adaptive_avg_pool2d to a size other than 1x1")
    in_w = _static_size(input, 3, "adaptive_avg_pool2d to a size other than 1x1")
    if in_h % out_h == 0 and in_w % out_w == 0:
        kernel = [in_h // out_h, in_w // out_w]
        return op.AveragePool(input, kernel_shape=kernel, strides=kernel)
    rows = op.CastLike(op.Constant(value=_tensor(_averaging_matrix(in_h, out_h))), input)
    cols = op.CastLike(op.Constant(value=_tensor(_averaging_matrix(in_w, out_w).T.contiguous())), input)
    return op.MatMul(op.MatMul(rows, input), cols)


def translation_table():
    """{cuconv op: ONNX translation} for torch.onnx.export(custom_translation_table=...)."""
    return {
        _ops.conv2d.default: _conv2d,
        _ops.conv2d_backward_input.default: _conv2d_backward_input,
        _ops.max_pool2d.default: _max_pool2d,
        _ops.avg_pool2d.default: _avg_pool2d,
        _ops.adaptive_avg_pool2d.default: _adaptive_avg_pool2d,
    }


def export(model, args, f=None, **kwargs):
    """torch.onnx.export(model, args, f, dynamo=True, ...) with cuconv's translations added
    to any custom_translation_table given; returns torch's ONNXProgram."""
    table = dict(translation_table())
    table.update(kwargs.pop("custom_translation_table", None) or {})
    if kwargs.pop("dynamo", True) is not True:
        raise ValueError("cuconv.onnx.export: only the dynamo exporter (dynamo=True) is supported")
    return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
