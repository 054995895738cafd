"""The compiled ops (torch.ops.cuconv.*) with autograd attached.

Each forward op has a backward op of its own (CPU, CUDA and meta kernels in
csrc/); here torch.library.register_autograd wires them together. The backward
ops are differentiable too (double backward: gradient penalties, Hessian-vector
products), each expressed with cuconv's own ops:

    conv2d_backward_input  dx = conv^T(dy, w)      d/d dy = conv(ggx, w)           d/dw = backward_weight(dy, ggx)
    conv2d_backward_weight dw = corr(dy, x)        d/d dy = conv(x, ggw)           d/dx = backward_input(dy, ggw)
    conv2d_backward_bias   db = sum(dy)            d/d dy = ggb broadcast over (N, H, W)
    avg_pool2d_backward    dx = avg^T(dy)          d/d dy = avg_pool2d(ggx)        (the adjoint of the adjoint)
    adaptive_..._backward  dx = adaptive^T(dy)     d/d dy = adaptive_avg_pool2d(ggx)
    max_pool2d_backward    dx = scatter(dy, idx)   d/d dy = ggx gathered at idx

Tensors are saved for backward only when the gradient that needs them is requested.

Each op is differentiable in two ways that share these formulas: its Autograd kernel
(torch.library.register_autograd), and an autograd.Function in the form torch.func
accepts (forward without ctx, setup_context, vmap rules generated from the ops' own in
_batching.py). cuconv.functional and the backward formulas call `differentiable.<op>(...)`,
which is the op itself (its Autograd kernel records the graph) except inside torch.func's
transforms, which refuse the autograd.Function that register_autograd builds (it has no
setup_context): torch.func.grad, jacrev and vmap(grad(...)) (per-sample gradients) go
through the second. (Outside them the second would cost ~10 us a call more: torch binds
its arguments with inspect.signature on every apply.)

Plain eager calls (no compile, export, jit.trace, torch.func, dispatch or function mode, only plain tensors)
take a third, leaner way with the same formulas: without gradients, the kernels directly (below
the Autograd key, whose Python kernel costs ~15 us a call); with them, an autograd.Function of the
classic form (forward(ctx, ...)), which skips register_autograd's per-call argument handling. On a
Zen 3 a pooling layer's forward+backward spent ~140 us more than torch's in that machinery.
"""

import types

import torch

from . import _C  # noqa: F401  (loading the extension registers torch.ops.cuconv)
from . import _autocast

ops = torch.ops.cuconv
differentiable = types.SimpleNamespace()
_lib = torch.library.Library("cuconv", "IMPL")  # owns the autocast kernels for the module's lifetime


_functorch_active = torch._C._are_functorch_transforms_active
_below_autograd = torch._C._AutoDispatchBelowAutograd
_plain_types = (torch.Tensor, torch.nn.Parameter)


def _eager_call(args):
    """How a call may go (see the module's docstring): None when something besides autograd needs
    to see it, else whether autograd has to record it. (Written out, not as generator
    expressions: this runs on every call, and each generator costs ~0.5 us.)"""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():  # first: the tracer reads no further
        return None
    if (_functorch_active() or torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
            or torch._C._get_tracing_state() is not None):  # (torch.jit.trace records the op itself)
        return None
    records = False
    for a in args:
        if isinstance(a, torch.Tensor):
            if type(a) not in _plain_types:
                return None
            records = records or a.requires_grad
    return records and torch.is_grad_enabled()


def _saved_if(needed, tensor):
    return tensor if needed else None


def _register_autograd(name, backward, setup_context, autocast=False):
    """Attach backward(ctx, *grads) to cuconv::name, and publish differentiable.<name>.
    autocast: the op follows torch's convolution under torch.autocast (_autocast.py)."""
    op = getattr(ops, name)
    overload = op.default  # (the packet would first pick the overload: ~0.3 us)
    torch.library.register_autograd(f"cuconv::{name}", backward, setup_context=setup_context)
    if autocast:
        _autocast.register_kernels(_lib, name, op.default)

    class Function(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(*args):
            return op(*args)  # autograd is off inside forward: this reaches the kernels

    Function.__name__ = Function.__qualname__ = f"{name}_function"
    Function.setup_context = staticmethod(setup_context)
    Function.backward = staticmethod(backward)

    def eager_forward(ctx, *args):
        with _below_autograd():
            output = overload(*args)
        setup_context(ctx, args, output)
        return output

    # (named when made: autograd names the graph's node, <name>_eagerBackward, from it)
    EagerFunction = type(f"{name}_eager", (torch.autograd.Function,),
                         {"forward": staticmethod(eager_forward), "backward": staticmethod(backward)})

    def apply(*args):
        if autocast:  # before autograd sees the arguments, so that it records the casts
            args = _autocast.cast_args(args)
        call = _eager_call(args)
        if call:
            return EagerFunction.apply(*args)
        if call is False:
            with _below_autograd():
                return overload(*args)
        # (torch.compile's tracer cannot follow an autograd.Function whose backward applies
        # another one: there the op's own Autograd kernel does the job too.)
        if _functorch_active() and not torch.compiler.is_compiling():
            return Function.apply(*args)
        return op(*args)

    apply.__name__ = name
    setattr(differentiable, name, apply)


# conv2d -----------------------------------------------------------------------

def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, *conv_args = inputs  # stride, padding, dilation, groups[, allow_tf32]
    ctx.conv_args = conv_args
    ctx.no_grads = (None,) * len(conv_args)
    ctx.input_shape = input.shape
    ctx.weight_shape = weight.shape
    ctx.has_bias = bias is not None
    ctx.save_for_backward(_saved_if(ctx.needs_input_grad[1], input), _saved_if(ctx.needs_input_grad[0], weight))


def _conv2d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = differentiable.conv2d_backward_input(grad_output, weight, ctx.input_shape, *ctx.conv_args)
    if ctx.needs_input_grad[1]:
        grad_weight = differentiable.conv2d_backward_weight(grad_output, input, ctx.weight_shape, *ctx.conv_args)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = differentiable.conv2d_backward_bias(grad_output)
    return grad_input, grad_weight, grad_bias, *ctx.no_grads


_register_autograd("conv2d", _conv2d_backward, _conv2d_setup_context, autocast=True)


def _conv2d_backward_input_setup_context(ctx, inputs, output):
    grad_output, weight, _input_size, *conv_args = inputs
    ctx.conv_args = conv_args
    ctx.no_grads = (None,) * (1 + len(conv_args))
    ctx.weight_shape = weight.shape
    ctx.save_for_backward(_saved_if(ctx.needs_input_grad[1], grad_output),
                          _saved_if(ctx.needs_input_grad[0], weight))


def _conv2d_backward_input_backward(ctx, grad_grad_input):
    grad_output, weight = ctx.saved_tensors
    grad_grad_output = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_grad_output = differentiable.conv2d(grad_grad_input, weight, None, *ctx.conv_args)
    if ctx.needs_input_grad[1]:
        grad_weight = differentiable.conv2d_backward_weight(grad_output, grad_grad_input, ctx.weight_shape, *ctx.conv_args)
    return grad_grad_output, grad_weight, *ctx.no_grads


_register_autograd("conv2d_backward_input", _conv2d_backward_input_backward, _conv2d_backward_input_setup_context)


def _conv2d_backward_weight_setup_context(ctx, inputs, output):
    grad_output, input, _weight_size, *conv_args = inputs
    ctx.conv_args = conv_args
    ctx.no_grads = (None,) * (1 + len(conv_args))
    ctx.input_shape = input.shape
    ctx.save_for_backward(_saved_if(ctx.needs_input_grad[1], grad_output),
                          _saved_if(ctx.needs_input_grad[0], input))


def _conv2d_backward_weight_backward(ctx, grad_grad_weight):
    grad_output, input = ctx.saved_tensors
    grad_grad_output = grad_input = None
    if ctx.needs_input_grad[0]:
        grad_grad_output = differentiable.conv2d(input, grad_grad_weight, None, *ctx.conv_args)
    if ctx.needs_input_grad[1]:
        grad_input = differentiable.conv2d_backward_input(grad_output, grad_grad_weight, ctx.input_shape, *ctx.conv_args)
    return grad_grad_output, grad_input, *ctx.no_grads


_register_autograd("conv2d_backward_weight", _conv2d_backward_weight_backward, _conv2d_backward_weight_setup_context)


def _conv2d_backward_bias_setup_context(ctx, inputs, output):
    ctx.grad_output_shape = inputs[0].shape


def _conv2d_backward_bias_backward(ctx, grad_grad_bias):
    return grad_grad_bias.view(1, -1, 1, 1).expand(ctx.grad_output_shape)


_register_autograd("conv2d_backward_bias", _conv2d_backward_bias_backward, _conv2d_backward_bias_setup_context)


# max_pool2d ---------------------------------------------------------------------

def _max_pool2d_setup_context(ctx, inputs, output):
    input, *pool_args = inputs
    ctx.pool_args = pool_args
    ctx.input_shape = input.shape
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    # No zeros for the indices' gradient (autograd would fill one of their size, int64, on every
    # backward: 2.2 ms a step of ResNet's stem pooling, more than torch's whole scatter).
    ctx.set_materialize_grads(False)


def _max_pool2d_backward(ctx, grad_output, _grad_indices):
    if grad_output is None:  # (no gradient reached the output: gradcheck's undefined-grad check)
        return (None,) * 6
    (indices,) = ctx.saved_tensors
    grad_input = differentiable.max_pool2d_backward(grad_output, indices, ctx.input_shape, *ctx.pool_args)
    return grad_input, None, None, None, None, None


_register_autograd("max_pool2d", _max_pool2d_backward, _max_pool2d_setup_context)


def _max_pool2d_backward_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _max_pool2d_backward_backward(ctx, grad_grad_input):
    # dx[p] = sum of dy[o] with idx[o] == p, so d<ggx, dx>/d dy[o] = ggx[idx[o]].
    (indices,) = ctx.saved_tensors
    grad_grad_output = grad_grad_input.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
    return (grad_grad_output,) + (None,) * 7


_register_autograd("max_pool2d_backward", _max_pool2d_backward_backward, _max_pool2d_backward_setup_context)


# avg_pool2d ---------------------------------------------------------------------

def _avg_pool2d_setup_context(ctx, inputs, output):
    input, *pool_args = inputs
    ctx.pool_args = pool_args
    ctx.input_shape = input.shape


def _avg_pool2d_backward(ctx, grad_output):
    grad_input = differentiable.avg_pool2d_backward(grad_output, ctx.input_shape, *ctx.pool_args)
    return (grad_input,) + (None,) * len(ctx.pool_args)


_register_autograd("avg_pool2d", _avg_pool2d_backward, _avg_pool2d_setup_context)


def _avg_pool2d_backward_setup_context(ctx, inputs, output):
    _grad_output, _input_size, *pool_args = inputs
    ctx.pool_args = pool_args


def _avg_pool2d_backward_backward(ctx, grad_grad_input):
    return (differentiable.avg_pool2d(grad_grad_input, *ctx.pool_args),) + (None,) * 7


_register_autograd("avg_pool2d_backward", _avg_pool2d_backward_backward, _avg_pool2d_backward_setup_context)


# adaptive_avg_pool2d --------------------------------------------------------------

def _adaptive_avg_pool2d_setup_context(ctx, inputs, output):
    ctx.input_shape = inputs[0].shape


def _adaptive_avg_pool2d_backward(ctx, grad_output):
    return differentiable.adaptive_avg_pool2d_backward(grad_output, ctx.input_shape), None


_register_autograd("adaptive_avg_pool2d", _adaptive_avg_pool2d_backward, _adaptive_avg_pool2d_setup_context)


def _adaptive_avg_pool2d_backward_setup_context(ctx, inputs, output):
    ctx.output_size = inputs[0].shape[2:]


def _adaptive_avg_pool2d_backward_backward(ctx, grad_grad_input):
    return differentiable.adaptive_avg_pool2d(grad_grad_input, ctx.output_size), None


_register_autograd("adaptive_avg_pool2d_backward", _adaptive_avg_pool2d_backward_backward, _adaptive_avg_pool2d_backward_setup_context)
