"""Drop-in nn modules: torch.nn's layers with cuconv's kernels underneath.

Each class subclasses its torch.nn twin and replaces only the computation, so
constructor arguments, defaults, parameter names, initialisation, padding_mode,
repr and state_dict keys are torch.nn's own, and `isinstance(m, nn.Conv2d)`
still holds for code (such as torchvision's weight init) that asks.
"""

import torch
from torch import nn

from . import functional as CF

__all__ = ["Conv2d", "LazyConv2d", "ConvTranspose2d", "LazyConvTranspose2d", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "convert"]


class _NotScriptable:
    """torch.jit.script calls __prepare_scriptable__ on every submodule before compiling it:
    TorchScript cannot compile cuconv's argument handling (cuconv.functional), so say what
    to use instead rather than fail inside it."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"cuconv.{type(self).__name__} does not support torch.jit.script. Use torch.jit.trace(model, "
            "example_inputs) or torch.export.export(model, (example_input,)) instead: both record cuconv's "
            "ops, and cuconv.onnx.export writes the model as ONNX.")


def _fx_leaf(module, *args):
    """Under torch.fx.symbolic_trace (called with a Proxy): the module as one call_module node, as
    FX records torch.nn's own layers (it traces into the forward of any module outside torch.nn,
    where cuconv's argument checks cannot read a Proxy), so that torchvision's
    create_feature_extractor finds cuconv's layers where torch.nn's were. (FX's fusion and
    quantization match exact module types: they pass cuconv's layers by, unfused and in float.)
    None otherwise, and for the traced module itself (FX traces the root's forward, where
    cuconv.functional records its op as a call_function node, as torch.nn.functional's)."""
    if isinstance(args[0], torch.fx.Proxy):
        tracer = args[0].tracer
        path = tracer.path_of_module(module)
        if path:
            return tracer.create_proxy("call_module", path, args, {})
    return None


class Conv2d(_NotScriptable, nn.Conv2d):
    """torch.nn.Conv2d on cuconv's convolution kernels."""

    def forward(self, input):
        traced = _fx_leaf(self, input)
        return traced if traced is not None else super().forward(input)

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            # As torch.nn.Conv2d: pad explicitly in the requested mode, then convolve unpadded.
            input = nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return CF.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return CF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class LazyConv2d(nn.LazyConv2d, Conv2d):
    """torch.nn.LazyConv2d that becomes a cuconv.Conv2d once in_channels is known."""

    cls_to_become = Conv2d


class ConvTranspose2d(_NotScriptable, nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d on cuconv's kernels (the convolution's input-gradient ones)."""

    def forward(self, input, output_size=None):
        traced = _fx_leaf(self, input, output_size)
        if traced is not None:
            return traced
        if self.padding_mode != "zeros":
            raise ValueError('Only "zeros" padding mode is supported for ConvTranspose2d')  # (torch's words)
        # torch.nn's own choice of output_padding for a requested output_size (checked there)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return CF.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                   self.groups, self.dilation)


class LazyConvTranspose2d(nn.LazyConvTranspose2d, ConvTranspose2d):
    """torch.nn.LazyConvTranspose2d that becomes a cuconv.ConvTranspose2d once in_channels is known."""

    cls_to_become = ConvTranspose2d


class MaxPool2d(_NotScriptable, nn.MaxPool2d):
    """torch.nn.MaxPool2d on cuconv's max-pooling kernels."""

    def forward(self, input):
        traced = _fx_leaf(self, input)
        if traced is not None:
            return traced
        return CF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(_NotScriptable, nn.AvgPool2d):
    """torch.nn.AvgPool2d on cuconv's average-pooling kernels."""

    def forward(self, input):
        traced = _fx_leaf(self, input)
        if traced is not None:
            return traced
        return CF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(_NotScriptable, nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d on cuconv's adaptive-pooling kernels."""

    def forward(self, input):
        traced = _fx_leaf(self, input)
        if traced is not None:
            return traced
        return CF.adaptive_avg_pool2d(input, self.output_size)


# torch.nn class -> its cuconv twin. Exact types only: a user's subclass may
# override forward, and swapping its class would silently drop that.
_TWINS = {
    nn.Conv2d: Conv2d,
    nn.LazyConv2d: LazyConv2d,
    nn.ConvTranspose2d: ConvTranspose2d,
    nn.LazyConvTranspose2d: LazyConvTranspose2d,
    nn.MaxPool2d: MaxPool2d,
    nn.AvgPool2d: AvgPool2d,
    nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
}


def _uninitialized_like(t):
    kind = nn.parameter.UninitializedParameter if isinstance(t, nn.Parameter) else nn.parameter.UninitializedBuffer
    return kind(requires_grad=t.requires_grad, device=t.device, dtype=t.dtype)


def _twin_class(module):
    """The class `module` takes on cuconv's kernels, or None. An exact torch.nn class's twin; and for
    a layer under torch.nn.utils.parametrize (spectral_norm, weight_norm, orthogonal: parametrize
    gives it a class of its own, Parametrized<Conv2d>, holding the parametrized tensors' properties),
    the same class made over the twin, so that removing the parametrizations leaves the twin."""
    cls = type(module)
    twin = _TWINS.get(cls)
    if twin is not None or len(cls.__bases__) != 1:
        return twin
    base = cls.__bases__[0]
    if base not in _TWINS or cls.__name__ != f"Parametrized{base.__name__}":
        return None
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(module):
        return None
    members = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    return type(cls.__name__, (_TWINS[base],), members)


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return `model` with every nn.Conv2d, nn.LazyConv2d, nn.ConvTranspose2d,
    nn.LazyConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d and nn.AdaptiveAvgPool2d running on
    cuconv's kernels.

    The twins add no state, so each layer keeps its parameters, buffers, hooks,
    parametrizations (torch.nn.utils.parametrize) and state_dict keys; only its class
    changes. With inplace=False (default) a deep copy is converted and the original
    model is left as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"cuconv.convert: expected model to be a torch.nn.Module, but got "
                        f"{type(model).__name__}")
    if not inplace:
        import copy

        # torch cannot deepcopy a lazy layer's uninitialized parameters and buffers (d2l's models
        # are lazy until their first batch): the copy gets fresh uninitialized ones of its own.
        memo = {id(t): _uninitialized_like(t) for t in [*model.parameters(), *model.buffers()]
                if nn.parameter.is_lazy(t)}
        try:
            model = copy.deepcopy(model, memo)
        except RuntimeError as error:  # (torch's own deepcopy of the model fails the same way)
            raise RuntimeError(f"cuconv.convert: cannot copy the model to convert ({error}); convert it in place "
                               "with inplace=True") from error
    for module in model.modules():
        twin = _twin_class(module)
        if twin is not None:
            module.__class__ = twin
    return model
