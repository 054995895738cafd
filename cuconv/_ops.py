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

Forward mode (torch.func.jvp, jacfwd, hessian; dual tensors of torch.autograd.forward_ad): every
op is linear in each tensor argument (the convolutions bilinear), so each tangent is the op itself
applied to the tangents, e.g. conv2d: t_y = conv(t_x, w) + conv(x, t_w) + t_b, max_pool2d: t_x
gathered at the indices. Those formulas are the `jvp` of the torch.func-form autograd.Function
below, which calls take while a dual level is open (the op's own Autograd kernel, made by
register_autograd, has no forward mode: torch would drop the tangents of inputs that do not
require grad, and refuse the others).

Each op is differentiable in two ways that share these formulas: its Autograd kernel
(torch.library.register_autograd), and an autograd.Function in the form torch.func
accepts (forward without ctx, setup_context, vmap rules generated from the ops' own in
_batching.py). cuconv.functional and the backward formulas call `differentiable.<op>(...)`,
which is the op itself (its Autograd kernel records the graph) except inside torch.func's
transforms, which refuse the autograd.Function that register_autograd builds (it has no
setup_context): torch.func.grad, jacrev and vmap(grad(...)) (per-sample gradients) go
through the second. (Outside them the second would cost ~10 us a call more: torch binds
its arguments with inspect.signature on every apply.) Under torch.compile too, as one call
in the graph (allow_in_graph), so that compiled transforms and dual tensors, fullgraph
included, get the same formulas.

Plain eager calls (no compile, export, jit.trace, torch.func, dispatch or function mode, dual level, only plain tensors)
take a third, leaner way with the same formulas: without gradients, the kernels directly (below
the Autograd key, whose Python kernel costs ~15 us a call); with them, an autograd.Function of the
classic form (forward(ctx, ...)), which skips register_autograd's per-call argument handling. On a
Zen 3 a pooling layer's forward+backward spent ~140 us more than torch's in that machinery.
"""

import math
import types

import torch
import torch.autograd.forward_ad as _fwad

from . import _C  # noqa: F401  (loading the extension registers torch.ops.cuconv)
from . import _autocast, _shape

ops = torch.ops.cuconv
differentiable = types.SimpleNamespace()
_lib = torch.library.Library("cuconv", "IMPL")  # owns the autocast kernels for the module's lifetime


_functorch_active = torch._C._are_functorch_transforms_active
_below_autograd = torch._C._AutoDispatchBelowAutograd
_plain_types = (torch.Tensor, torch.nn.Parameter)


def _eager_call(tensors):
    """How a call may go (see the module's docstring): None when something besides autograd needs
    to see it, else whether autograd has to record it. tensors: the call's tensor arguments (an
    op's leading ones, None for an absent Tensor?). (Written out, not as generator expressions:
    this runs on every call, and each generator costs ~0.5 us.)"""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():  # first: the tracer reads no further
        return None
    if (_functorch_active() or torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
            or torch._C._get_tracing_state() is not None  # (torch.jit.trace records the op itself)
            or _fwad._current_level >= 0):  # (dual tensors: their tangents need the jvp formulas)
        return None
    records = False
    for a in tensors:
        if a is not None:
            if type(a) not in _plain_types:  # (a subclass, or no tensor: the op's own checks then)
                return None
            records = records or a.requires_grad
    return records and torch.is_grad_enabled()


def _saved_if(needed, tensor):
    return tensor if needed else None


def _gather_at_indices(values, indices):
    """values[n, c][indices[n, c, ...]]: each plane's values at max pooling's flat indices.
    (reshape, not flatten: autograd's older vmap has no rule for flatten; the planes' sizes
    spelled out, as -1 is ambiguous in a batch of 0.)"""
    n, c = indices.shape[:2]
    planes = values.reshape(n, c, math.prod(values.shape[2:]))
    return planes.gather(2, indices.reshape(n, c, math.prod(indices.shape[2:]))).view(indices.shape)


# Forward mode's own steps. A jvp formula runs with forward-mode AD off, so under torch.func's
# nested transforms (jvp of jvp, jacfwd of jacfwd) only what it computes through
# autograd.Functions gets a tangent at the outer levels: a plain torch op there would drop it
# (a second directional derivative of 0). The formulas' steps that are not cuconv ops are
# therefore autograd.Functions of their own, each with its jvp.

class _TangentSum(torch.autograd.Function):
    """a + b."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a, b):
        return a + b

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad, grad

    @staticmethod
    def jvp(ctx, a_t, b_t):
        return _TangentSum.apply(a_t, b_t)


def _tangent_sum(*terms):
    """The sum of the terms that are not None (None if all are: no tangent)."""
    present = [t for t in terms if t is not None]
    total = present[0] if present else None
    for term in present[1:]:
        total = _TangentSum.apply(total, term)
    return total


class _GatherAtIndices(torch.autograd.Function):
    """_gather_at_indices(values, indices), differentiable in values (max pooling's tangent)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(values, indices):
        return _gather_at_indices(values, indices)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.values_shape = inputs[0].shape
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        values = grad.new_zeros(ctx.values_shape).flatten(2)
        return values.scatter_add(2, indices.flatten(2), grad.flatten(2)).view(ctx.values_shape), None

    @staticmethod
    def jvp(ctx, values_t, _):
        (indices,) = ctx.saved_tensors
        return _GatherAtIndices.apply(values_t, indices)


class _BroadcastBias(torch.autograd.Function):
    """A per-channel vector as an (N, C, H, W) tensor (a bias's tangent, spread over the output)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(bias, shape):
        return bias.view(1, -1, 1, 1).expand(shape.value).contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shape = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return differentiable.conv2d_backward_bias(grad), None

    @staticmethod
    def jvp(ctx, bias_t, _):
        return _BroadcastBias.apply(bias_t, ctx.shape)


class _Whole:
    """A list argument (sizes, strides) handed whole to torch.func's form of an op's
    autograd.Function. Its generated vmap rule for jvp flattens the inputs' lists into their
    items but takes one tangent per argument, and then fails to pair them (jacfwd of a
    backward op: a Hessian's forward-over-reverse); a _Whole is one item."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _wrapped(args):
    return tuple(_Whole(a) if isinstance(a, (list, tuple)) else a for a in args)


def _unwrapped(args):
    return tuple(a.value if isinstance(a, _Whole) else a for a in args)


class _SetupRecorder:
    """ctx for an op's setup_context in torch.func's form of its Function: records the tensors
    it saves for backward (see function_setup_context), passes everything else through."""

    def __init__(self, ctx):
        object.__setattr__(self, "ctx", ctx)
        object.__setattr__(self, "saved", ())

    def save_for_backward(self, *tensors):
        object.__setattr__(self, "saved", tensors)

    def __getattr__(self, name):
        return getattr(self.ctx, name)

    def __setattr__(self, name, value):
        setattr(self.ctx, name, value)


class _SavedPart:
    """ctx with saved_tensors narrowed to the part saved for backward, or for jvp."""

    def __init__(self, ctx, saved):
        self.ctx, self.saved_tensors = ctx, saved

    def __getattr__(self, name):
        return getattr(self.ctx, name)


def _forward_ad_active():
    """Whether a forward-mode dual level is open (dual tensors exist only inside one)."""
    return _fwad._current_level >= 0


def _register_autograd(name, backward, setup_context, jvp, jvp_setup=None, autocast=False):
    """Attach backward(ctx, *grads) to cuconv::name, and publish differentiable.<name>.
    jvp(ctx, *tangents): the forward-mode formula (tangent None: none), its ctx.saved_tensors
    the tensors that jvp_setup(ctx, inputs, output) returns. autocast: the op follows torch's
    convolution under torch.autocast (_autocast.py)."""
    op = getattr(ops, name)
    overload = op.default  # (the packet would first pick the overload: ~0.3 us)
    # the schema's leading Tensor and Tensor? arguments (every op's tensors lead): the ones
    # _eager_call reads, not every argument (~1 us a call less on a slow VM)
    arguments = overload._schema.arguments
    tensors = 0
    while tensors < len(arguments) and str(arguments[tensors].type) in ("Tensor", "Optional[Tensor]"):
        tensors += 1
    torch.library.register_autograd(f"cuconv::{name}", backward, setup_context=setup_context)
    if autocast:
        _autocast.register_kernels(_lib, name, op.default)

    class Function(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(*args):
            return op(*_unwrapped(args))  # autograd is off inside forward: this reaches the kernels

    # Backward and jvp see one tuple of saved tensors, the backward's first: torch.func's vmap
    # rules re-batch the saved tensors (ctx attributes they would miss) and keep one record of
    # them, the last saved, for both.
    def function_setup_context(ctx, inputs, output):
        inputs = _unwrapped(inputs)
        recorder = _SetupRecorder(ctx)
        setup_context(recorder, inputs, output)
        for_jvp = jvp_setup(ctx, inputs, output) if jvp_setup is not None else ()
        ctx.save_for_backward(*recorder.saved, *for_jvp)
        ctx.save_for_forward(*recorder.saved, *for_jvp)
        ctx.backward_saves = len(recorder.saved)
        ctx.inputs_count = len(inputs)
        ctx.set_materialize_grads(False)  # (jvp: None for the inputs without a tangent, not zeros)

    def function_backward(ctx, *grads):
        if grads[0] is None:  # (no gradient reached the output)
            return (None,) * ctx.inputs_count
        return backward(_SavedPart(ctx, ctx.saved_tensors[:ctx.backward_saves]), *grads)

    def function_jvp(ctx, *tangents):
        return jvp(_SavedPart(ctx, ctx.saved_tensors[ctx.backward_saves:]), *tangents)

    Function.__name__ = Function.__qualname__ = f"{name}_function"
    Function.setup_context = staticmethod(function_setup_context)
    Function.backward = staticmethod(function_backward)
    Function.jvp = staticmethod(function_jvp)

    def eager_forward(ctx, *args):
        with _below_autograd():
            output = overload(*args)
        setup_context(ctx, args, output)
        return output

    # (named when made: autograd names the graph's node, <name>_eagerBackward, from it)
    EagerFunction = type(f"{name}_eager", (torch.autograd.Function,),
                         {"forward": staticmethod(eager_forward), "backward": staticmethod(backward)})

    # Under torch.compile, the Function as one call in the graph: dynamo does not trace into it
    # (it cannot follow an autograd.Function whose backward applies another one), AOTAutograd
    # runs it under the transforms as eager code would.
    @torch._dynamo.allow_in_graph
    def function_in_graph(*args):
        return Function.apply(*_wrapped(args))

    def apply(*args):
        if autocast:  # before autograd sees the arguments, so that it records the casts
            args = _autocast.cast_args(args)
        call = _eager_call(args[:tensors])
        if call:
            return EagerFunction.apply(*args)
        if call is False:
            with _below_autograd():
                return overload(*args)
        if _functorch_active() or _forward_ad_active():
            # (not the op's own Autograd kernel, compiled or not: it has no forward mode, and a
            # tangent through it would be dropped, zeros; nor any functorch rule)
            if torch.compiler.is_compiling():
                return function_in_graph(*args)
            return Function.apply(*_wrapped(args))
        return op(*args)

    apply.__name__ = name
    setattr(differentiable, name, apply)


# conv2d -----------------------------------------------------------------------

def batched_by_vmap(t):
    """Whether t is batched by torch.func.vmap at some level of torch.func's wrappers, or by
    autograd's older vmap (is_grads_batched, jacobian(vectorize=True), gradcheck's batched
    gradients), which refuses the same layout queries. (Under torch.compile, the outermost level
    only: dynamo traces is_batchedtensor, not the unwrapping.)"""
    if torch.compiler.is_compiling():
        return torch._C._functorch.is_batchedtensor(t)
    if torch._C._functorch.is_legacy_batchedtensor(t):
        return True
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        if torch._C._functorch.is_batchedtensor(t):
            return True
        t = torch._C._functorch.get_unwrapped(t)
    return False


def _in_layout(channels_last, t):
    """t in a convolution's or pooling's layout (channels_last or NCHW, torch's rule: _shape.py):
    t itself, or a clone where the kernels would read it in the other (as in cuconv.functional:
    `contiguous` keeps a tensor that is both layouts as it is). The kernels follow their first
    operand's layout, so a gradient that arrives channels_last to an NCHW layer is cloned too. Under
    vmap (jacrev, hessian) t stays as it is: vmap clones into no layout but torch's contiguous
    one, and the kernels give the same values in either (only the layout follows)."""
    if channels_last != _shape.is_channels_last(t):
        if channels_last and batched_by_vmap(t):
            return t
        return t.clone(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return t


def _in_input_layout(channels_last, grad_input, grad_output):
    """An input gradient channels_last where its input asked for that (ctx.channels_last, torch's
    rule) but grad_output was one value a sample, (N, 1, 1, 1): no strides of that shape read as
    channels_last (torch reads them all as NCHW), so the kernels, which follow grad_output's layout,
    wrote NCHW. A copy in the input's layout then, as torch returns it."""
    if (channels_last and grad_input is not None and tuple(grad_output.shape[1:]) == (1, 1, 1)
            and not batched_by_vmap(grad_input) and not _shape.is_channels_last(grad_input)):
        return grad_input.clone(memory_format=torch.channels_last)
    return grad_input


def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, *conv_args = inputs  # stride, padding, dilation, groups[, allow_tf32, benchmark]
    ctx.conv_args = conv_args
    ctx.no_grads = (None,) * len(conv_args)
    ctx.input_shape = input.shape
    ctx.weight_shape = weight.shape
    ctx.has_bias = bias is not None
    # torch's gradients are channels_last where the input or the weight is (_shape.py)
    ctx.channels_last = _shape.convolution_prefers_channels_last(input, weight)
    ctx.save_for_backward(_saved_if(ctx.needs_input_grad[1], input), _saved_if(ctx.needs_input_grad[0], weight))


def _conv2d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    grad_input = grad_weight = grad_bias = None
    grad_output = _in_layout(ctx.channels_last, grad_output)
    if ctx.needs_input_grad[0]:
        grad_input = _in_input_layout(ctx.channels_last, differentiable.conv2d_backward_input(
            grad_output, weight, ctx.input_shape, *ctx.conv_args), grad_output)
    if ctx.needs_input_grad[1]:
        grad_weight = _in_layout(ctx.channels_last, differentiable.conv2d_backward_weight(
            grad_output, input, ctx.weight_shape, *ctx.conv_args))
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = differentiable.conv2d_backward_bias(grad_output)
    return grad_input, grad_weight, grad_bias, *ctx.no_grads


def _conv2d_jvp_setup(ctx, inputs, output):
    ctx.output_shape = output.shape
    return inputs[0], inputs[1]


def _conv2d_jvp(ctx, input_t, weight_t, bias_t, *_):
    input, weight = ctx.saved_tensors
    terms = []  # (the bias's tangent rides on the first convolution's bias add; alone, it is broadcast)
    if input_t is not None:
        terms.append(differentiable.conv2d(input_t, weight, bias_t, *ctx.conv_args))
        bias_t = None
    if weight_t is not None:
        terms.append(differentiable.conv2d(input, weight_t, bias_t, *ctx.conv_args))
        bias_t = None
    if bias_t is not None:
        terms.append(_BroadcastBias.apply(bias_t, _Whole(ctx.output_shape)))
    return _tangent_sum(*terms)


_register_autograd("conv2d", _conv2d_backward, _conv2d_setup_context, _conv2d_jvp, _conv2d_jvp_setup, autocast=True)


def _conv2d_backward_input_setup_context(ctx, inputs, output):
    grad_output, weight, _input_size, *conv_args = inputs
    ctx.conv_args = conv_args
    ctx.no_grads = (None,) * (1 + len(conv_args))
    ctx.weight_shape = weight.shape
    # (the layout of its gradients: a transposed convolution's, cuconv.functional's, and a
    # convolution's second derivatives; channels_last where its operands are, as torch's)
    ctx.channels_last = _shape.convolution_prefers_channels_last(grad_output, weight)
    ctx.save_for_backward(_saved_if(ctx.needs_input_grad[1], grad_output),
                          _saved_if(ctx.needs_input_grad[0], weight))


def _conv2d_backward_input_backward(ctx, grad_grad_input):
    grad_output, weight = ctx.saved_tensors
    grad_grad_output = grad_weight = None
    grad_grad_input = _in_layout(ctx.channels_last, grad_grad_input)  # (as in _conv2d_backward)
    if ctx.needs_input_grad[0]:
        grad_grad_output = differentiable.conv2d(grad_grad_input, weight, None, *ctx.conv_args)
    if ctx.needs_input_grad[1]:
        grad_weight = _in_layout(ctx.channels_last, differentiable.conv2d_backward_weight(
            grad_output, grad_grad_input, ctx.weight_shape, *ctx.conv_args))
    return grad_grad_output, grad_weight, *ctx.no_grads


def _save_first_two_for_jvp(ctx, inputs, output):
    ctx.size_arg = inputs[2]  # (the input's or the weight's size)
    return inputs[0], inputs[1]


def _bilinear_jvp(op, ctx, a_t, b_t):
    """The tangent of op(a, b, size, *conv_args), linear in a and in b: op(a_t, b) + op(a, b_t)."""
    a, b = ctx.saved_tensors
    return _tangent_sum(None if a_t is None else op(a_t, b, ctx.size_arg, *ctx.conv_args),
                        None if b_t is None else op(a, b_t, ctx.size_arg, *ctx.conv_args))


def _conv2d_backward_input_jvp(ctx, grad_output_t, weight_t, *_):
    return _bilinear_jvp(differentiable.conv2d_backward_input, ctx, grad_output_t, weight_t)


_register_autograd("conv2d_backward_input", _conv2d_backward_input_backward, _conv2d_backward_input_setup_context,
                   _conv2d_backward_input_jvp, _save_first_two_for_jvp)


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


def _conv2d_backward_weight_jvp(ctx, grad_output_t, input_t, *_):
    return _bilinear_jvp(differentiable.conv2d_backward_weight, ctx, grad_output_t, input_t)


_register_autograd("conv2d_backward_weight", _conv2d_backward_weight_backward, _conv2d_backward_weight_setup_context,
                   _conv2d_backward_weight_jvp, _save_first_two_for_jvp)


def _conv2d_backward_bias_setup_context(ctx, inputs, output):
    ctx.grad_output_shape = inputs[0].shape


def _conv2d_backward_bias_backward(ctx, grad_grad_bias):
    return grad_grad_bias.view(1, -1, 1, 1).expand(ctx.grad_output_shape)


def _conv2d_backward_bias_jvp(ctx, grad_output_t):
    return None if grad_output_t is None else differentiable.conv2d_backward_bias(grad_output_t)


_register_autograd("conv2d_backward_bias", _conv2d_backward_bias_backward, _conv2d_backward_bias_setup_context,
                   _conv2d_backward_bias_jvp)


# max_pool2d ---------------------------------------------------------------------

def _dense_in(t, channels_last):
    """Whether t is dense in that layout, by one call into torch where it can answer (~0.3 us; a
    walk over the strides in _shape.py costs ~10 us on a slow VM): not for channels_last under
    vmap, where is_contiguous takes no memory format."""
    if not channels_last:
        return t.is_contiguous()
    return not batched_by_vmap(t) and t.is_contiguous(memory_format=torch.channels_last)


def _pooling_layout(input):
    """Whether pooling's input gradient is channels_last: where the input is (torch's rule)."""
    if input.is_contiguous():
        sizes = input.shape
        if sizes[1] != 1 and sizes[2] * sizes[3] != 1:
            # (the common case, settled from the sizes alone: with several channels and pixels, a
            # tensor dense in NCHW is not channels_last, and an empty one is not either, as
            # _shape.suggests_channels_last has it; the calls below into torch and _shape.py,
            # with those of _in_pooling_layout, were 4-8% of a small pooling layer's step)
            return False
        # (dense in both layouts too where it has one channel or one pixel: torch reads the
        # strides then, as the kernels do)
        return _dense_in(input, True) and _shape.is_channels_last(input)
    return _dense_in(input, True) or _shape.is_channels_last(input)


def _in_pooling_layout(channels_last, grad_output):
    """The incoming gradient in the input's layout (_pooling_layout), as torch's pooling takes it.
    A gradient dense in both layouts (one pixel or one channel: is_contiguous cannot tell them
    apart) goes by the kernels' own reading of its strides (_in_layout), which sets the result's."""
    if not channels_last and grad_output.is_contiguous() and not _shape.suggests_channels_last(grad_output):
        # (NCHW, read as NCHW by the kernels too; the common case, global pooling's one pixel
        # included, without the calls below)
        return grad_output
    if _dense_in(grad_output, channels_last) and not _dense_in(grad_output, not channels_last):  # (channels_last, vmap)
        return grad_output
    return _in_layout(channels_last, grad_output)


def _max_pool2d_setup_context(ctx, inputs, output):
    input, *pool_args = inputs
    ctx.pool_args = pool_args
    ctx.input_shape = input.shape
    ctx.channels_last = _pooling_layout(input)
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    # No zeros for the indices' gradient (autograd would fill one of their size, int64, on every
    # backward: 2.2 ms a step of ResNet's stem pooling, more than torch's whole scatter).
    ctx.set_materialize_grads(False)


def _max_pool2d_backward(ctx, grad_output, _grad_indices):
    if grad_output is None:  # (no gradient reached the output: gradcheck's undefined-grad check)
        return (None,) * 6
    (indices,) = ctx.saved_tensors
    grad_output = _in_pooling_layout(ctx.channels_last, grad_output)
    grad_input = differentiable.max_pool2d_backward(grad_output, indices, ctx.input_shape, *ctx.pool_args)
    return _in_input_layout(ctx.channels_last, grad_input, grad_output), None, None, None, None, None


def _max_pool2d_jvp_setup(ctx, inputs, output):
    return (output[1],)


def _max_pool2d_jvp(ctx, input_t, *_):
    (indices,) = ctx.saved_tensors
    return (None if input_t is None else _GatherAtIndices.apply(input_t, indices)), None


_register_autograd("max_pool2d", _max_pool2d_backward, _max_pool2d_setup_context, _max_pool2d_jvp, _max_pool2d_jvp_setup)


def _max_pool2d_backward_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _max_pool2d_backward_backward(ctx, grad_grad_input):
    # dx[p] = sum of dy[o] with idx[o] == p, so d<ggx, dx>/d dy[o] = ggx[idx[o]].
    (indices,) = ctx.saved_tensors
    return (_gather_at_indices(grad_grad_input, indices),) + (None,) * 7


def _max_pool2d_backward_jvp_setup(ctx, inputs, output):
    ctx.size_and_pool_args = inputs[2:]
    return (inputs[1],)


def _max_pool2d_backward_jvp(ctx, grad_output_t, *_):
    (indices,) = ctx.saved_tensors
    return None if grad_output_t is None else differentiable.max_pool2d_backward(grad_output_t, indices,
                                                                                 *ctx.size_and_pool_args)


_register_autograd("max_pool2d_backward", _max_pool2d_backward_backward, _max_pool2d_backward_setup_context,
                   _max_pool2d_backward_jvp, _max_pool2d_backward_jvp_setup)


# avg_pool2d ---------------------------------------------------------------------

def _avg_pool2d_setup_context(ctx, inputs, output):
    input, *pool_args = inputs
    ctx.pool_args = pool_args
    ctx.input_shape = input.shape
    ctx.channels_last = _pooling_layout(input)


def _avg_pool2d_backward(ctx, grad_output):
    grad_output = _in_pooling_layout(ctx.channels_last, grad_output)
    grad_input = differentiable.avg_pool2d_backward(grad_output, ctx.input_shape, *ctx.pool_args)
    return (_in_input_layout(ctx.channels_last, grad_input, grad_output),) + (None,) * len(ctx.pool_args)


def _avg_pool2d_jvp(ctx, input_t, *_):
    return None if input_t is None else differentiable.avg_pool2d(input_t, *ctx.pool_args)


_register_autograd("avg_pool2d", _avg_pool2d_backward, _avg_pool2d_setup_context, _avg_pool2d_jvp)


def _avg_pool2d_backward_setup_context(ctx, inputs, output):
    _grad_output, _input_size, *pool_args = inputs
    ctx.pool_args = pool_args


def _avg_pool2d_backward_backward(ctx, grad_grad_input):
    return (differentiable.avg_pool2d(grad_grad_input, *ctx.pool_args),) + (None,) * 7


def _save_size_arg(ctx, inputs, output):
    ctx.size_arg = inputs[1]  # (the input's size, or the adaptive output's)
    return ()


def _avg_pool2d_backward_jvp(ctx, grad_output_t, *_):
    return None if grad_output_t is None else differentiable.avg_pool2d_backward(grad_output_t, ctx.size_arg,
                                                                                 *ctx.pool_args)


_register_autograd("avg_pool2d_backward", _avg_pool2d_backward_backward, _avg_pool2d_backward_setup_context,
                   _avg_pool2d_backward_jvp, _save_size_arg)


# adaptive_avg_pool2d --------------------------------------------------------------

def _adaptive_avg_pool2d_setup_context(ctx, inputs, output):
    ctx.input_shape = inputs[0].shape
    ctx.channels_last = _pooling_layout(inputs[0])


def _adaptive_avg_pool2d_backward(ctx, grad_output):
    grad_output = _in_pooling_layout(ctx.channels_last, grad_output)
    return differentiable.adaptive_avg_pool2d_backward(grad_output, ctx.input_shape), None


def _adaptive_avg_pool2d_jvp(ctx, input_t, _):
    return None if input_t is None else differentiable.adaptive_avg_pool2d(input_t, ctx.size_arg)


_register_autograd("adaptive_avg_pool2d", _adaptive_avg_pool2d_backward, _adaptive_avg_pool2d_setup_context,
                   _adaptive_avg_pool2d_jvp, _save_size_arg)


def _adaptive_avg_pool2d_backward_setup_context(ctx, inputs, output):
    ctx.output_size = inputs[0].shape[2:]


def _adaptive_avg_pool2d_backward_backward(ctx, grad_grad_input):
    return differentiable.adaptive_avg_pool2d(grad_grad_input, ctx.output_size), None


def _adaptive_avg_pool2d_backward_jvp(ctx, grad_output_t, _):
    return None if grad_output_t is None else differentiable.adaptive_avg_pool2d_backward(grad_output_t, ctx.size_arg)


_register_autograd("adaptive_avg_pool2d_backward", _adaptive_avg_pool2d_backward_backward,
                   _adaptive_avg_pool2d_backward_setup_context, _adaptive_avg_pool2d_backward_jvp, _save_size_arg)
