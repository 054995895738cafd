"""Everything torch does to a layer besides calling it: double backward, forward mode, autocast,
torch.func (vmap, grad, per-sample gradients, jacrev, jvp, jacfwd, hessian), against
torch.nn.functional on the same inputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap

import cuconv
import cuconv.functional as CF
from conftest import DEVICES
from cuconv._ops import differentiable
from test_ops import CONV_CASES, SmallNet, assert_matches, conv_tensors, random_pool_cases

ops = torch.ops.cuconv


# --- double backward ------------------------------------------------------------------------

def second_order_grads(fn, tensors, seed=3):
    """Gradients of a gradient penalty: with L = sum(r * fn(tensors)^2) and g = dL/dtensors
    (create_graph), the gradients of sum(s * g) w.r.t. every tensor. Every second-order term
    of fn appears: the squared output makes dL/dy depend on the tensors again."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    gen = torch.Generator().manual_seed(seed)
    out = fn(*leaves)
    r = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    first = torch.autograd.grad((r * out.square()).sum(), leaves, create_graph=True)
    penalty = sum((torch.randn(g.shape, generator=gen, dtype=torch.float64).to(g) * g).sum() for g in first)
    return torch.autograd.grad(penalty, leaves)


def assert_second_order_matches(ours, theirs, tensors):
    got, expected = second_order_grads(ours, tensors), second_order_grads(theirs, tensors)
    assert any(e.abs().max() > 0 for e in expected)  # the comparison can fail: torch's answer is not zero
    for g, e in zip(got, expected):
        assert_matches(g, e, torch.float64)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("case", CONV_CASES[:16],
                         ids=lambda c: "g{groups}k{kernel}s{stride}p{padding}d{dilation}".format(**c))
def test_conv2d_double_backward_matches_torch(case, device):
    x, w, b = conv_tensors(case, torch.float64, device)
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    if b is None:
        assert_second_order_matches(lambda x, w: CF.conv2d(x, w, None, *args),
                                    lambda x, w: F.conv2d(x, w, None, *args), [x, w])
    else:
        assert_second_order_matches(lambda x, w, b: CF.conv2d(x, w, b, *args),
                                    lambda x, w, b: F.conv2d(x, w, b, *args), [x, w, b])


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("case", random_pool_cases(10, seed=21, with_dilation=True),
                         ids=lambda c: "k{kernel}s{stride}p{padding}d{dilation}c{ceil_mode}".format(**c))
def test_max_pool2d_double_backward_matches_torch(case, device):
    x = torch.randn(case["batch"], case["channels"], *case["size"], dtype=torch.float64, device=device)
    args = (case["kernel"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"])
    assert_second_order_matches(lambda t: CF.max_pool2d(t, *args), lambda t: F.max_pool2d(t, *args), [x])


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("count_include_pad,divisor_override", [(True, None), (False, None), (True, 3)])
@pytest.mark.parametrize("case", random_pool_cases(6, seed=22, with_dilation=False),
                         ids=lambda c: "k{kernel}s{stride}p{padding}c{ceil_mode}".format(**c))
def test_avg_pool2d_double_backward_matches_torch(case, count_include_pad, divisor_override, device):
    x = torch.randn(case["batch"], case["channels"], *case["size"], dtype=torch.float64, device=device)
    args = (case["kernel"], case["stride"], case["padding"], case["ceil_mode"], count_include_pad, divisor_override)
    assert_second_order_matches(lambda t: CF.avg_pool2d(t, *args), lambda t: F.avg_pool2d(t, *args), [x])


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("in_size,out_size", [((7, 9), (3, 4)), ((8, 8), 1), ((4, 5), (7, 9))])
def test_adaptive_avg_pool2d_double_backward_matches_torch(in_size, out_size, device):
    x = torch.randn(2, 3, *in_size, dtype=torch.float64, device=device)
    assert_second_order_matches(lambda t: CF.adaptive_avg_pool2d(t, out_size),
                                lambda t: F.adaptive_avg_pool2d(t, out_size), [x])


def _gradgradcheck_cases(device):
    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)

    x, w, b, w_depthwise = rand(2, 4, 7, 6), rand(6, 2, 3, 2), rand(6), rand(8, 1, 3, 3)
    return {
        "conv2d": (lambda x, w, b: CF.conv2d(x, w, b, (2, 1), (1, 2), (2, 1), 2), (x, w, b)),
        "conv2d_depthwise": (lambda x, w: CF.conv2d(x, w, None, (1, 2), 1, (2, 1), 4), (x, w_depthwise)),
        "max_pool2d": (lambda x: CF.max_pool2d(x, (3, 2), (2, 1), 1, (1, 2), ceil_mode=True), (x,)),
        "avg_pool2d": (lambda x: CF.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (x,)),
        "avg_pool2d_divisor": (lambda x: CF.avg_pool2d(x, 2, 1, 1, divisor_override=3), (x,)),
        "adaptive_avg_pool2d": (lambda x: CF.adaptive_avg_pool2d(x, (4, 3)), (x,)),
    }


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("name", list(_gradgradcheck_cases("cpu")))
def test_gradgradcheck(name, device):
    fn, inputs = _gradgradcheck_cases(device)[name]
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_raw_backward_ops_are_differentiable(device):
    """The backward ops called directly (torch.ops.cuconv.*, their Autograd kernels) have
    gradients too: gradcheck of each w.r.t. every tensor argument."""
    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)

    conv = ([2, 1], [1, 1], [1, 2], 2)
    x, w, dy = rand(2, 4, 9, 8), rand(6, 2, 3, 3), rand(2, 6, 5, 6)
    _, idx = ops.max_pool2d(x.detach(), [3, 3], [2, 2], [1, 1], [1, 1], True)
    pool = ([3, 3], [2, 2], [1, 1], [1, 1], True)
    avg = ([3, 2], [2, 2], [1, 1], True, False, None)
    checks = [
        (lambda dy, w: ops.conv2d_backward_input(dy, w, [2, 4, 9, 8], *conv), (dy, w)),
        (lambda dy, x: ops.conv2d_backward_weight(dy, x, [6, 2, 3, 3], *conv), (dy, x)),
        (ops.conv2d_backward_bias, (dy,)),
        (lambda g: ops.max_pool2d_backward(g, idx, [2, 4, 9, 8], *pool), (rand(*idx.shape),)),
        (lambda g: ops.avg_pool2d_backward(g, [2, 4, 9, 8], *avg), (rand(2, 4, 5, 5),)),
        (lambda g: ops.adaptive_avg_pool2d_backward(g, [2, 4, 9, 8]), (rand(2, 4, 4, 3),)),
    ]
    for fn, inputs in checks:
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


# --- forward mode (jvp) ----------------------------------------------------------------------

def _forward_ad_cases(device):
    """Every op, the backward ops included, as a function of its tensor arguments (float64).
    The backward ops as cuconv's formulas call them (`differentiable`): called raw
    (torch.ops.cuconv.*), an op has torch's custom-op autograd, which has no forward mode."""
    D = differentiable
    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)

    conv = ([2, 1], [1, 1], [1, 2], 2)
    x, w, b, dy = rand(2, 4, 9, 8), rand(6, 2, 3, 3), rand(6), rand(2, 6, 5, 6)
    _, idx = ops.max_pool2d(x.detach(), [3, 3], [2, 2], [1, 1], [1, 1], True)
    pool = ([3, 3], [2, 2], [1, 1], [1, 1], True)
    avg = ([3, 2], [2, 2], [1, 1], True, False, None)
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    return {
        "conv2d": (lambda x, w, b: CF.conv2d(x, w, b, *conv), (x, w, b)),
        "conv2d_channels_last_1x1": (lambda x, w: CF.conv2d(x, w, None, 2), (x_cl, rand(5, 4, 1, 1))),
        "conv2d_depthwise": (lambda x, w: CF.conv2d(x, w, None, 1, 1, 1, 4), (x, rand(8, 1, 3, 3))),
        "conv2d_backward_input": (lambda dy, w: D.conv2d_backward_input(dy, w, [2, 4, 9, 8], *conv), (dy, w)),
        "conv2d_backward_weight": (lambda dy, x: D.conv2d_backward_weight(dy, x, [6, 2, 3, 3], *conv), (dy, x)),
        "conv2d_backward_bias": (D.conv2d_backward_bias, (dy,)),
        "max_pool2d": (lambda x: CF.max_pool2d(x, (3, 2), (2, 1), 1, (1, 2), ceil_mode=True), (x,)),
        "max_pool2d_channels_last": (lambda x: CF.max_pool2d(x, 3, 2, 1), (x_cl,)),
        "max_pool2d_backward": (lambda g: D.max_pool2d_backward(g, idx, [2, 4, 9, 8], *pool), (rand(*idx.shape),)),
        "avg_pool2d": (lambda x: CF.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (x,)),
        "avg_pool2d_backward": (lambda g: D.avg_pool2d_backward(g, [2, 4, 9, 8], *avg), (rand(2, 4, 5, 5),)),
        "adaptive_avg_pool2d": (lambda x: CF.adaptive_avg_pool2d(x, (4, 3)), (x,)),
        "adaptive_avg_pool2d_backward": (lambda g: D.adaptive_avg_pool2d_backward(g, [2, 4, 9, 8]), (rand(2, 4, 4, 3),)),
    }


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("name", list(_forward_ad_cases("cpu")))
def test_forward_ad_gradcheck(name, device):
    """Forward mode (dual tensors) against finite differences, the reverse mode checked along
    with it."""
    fn, inputs = _forward_ad_cases(device)[name]
    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True)


@pytest.mark.parametrize("name", list(_forward_ad_cases("cpu")))
def test_batched_gradients_of_autograd_s_older_vmap(name):
    """gradcheck's batched gradients, both modes, and gradgradcheck's for the layers (the backward
    ops' second derivatives are the layers' own formulas): they run autograd's older vmap
    (torch._vmap_internals, as is_grads_batched and jacobian(vectorize=True) do), which refuses
    channels_last layout queries and has no rule for flatten. On the CPU: the layout logic is
    Python's, the same for every device, and the emulated device takes minutes here."""
    fn, inputs = _forward_ad_cases("cpu")[name]
    assert torch.autograd.gradcheck(fn, inputs, check_batched_grad=True, check_forward_ad=True,
                                    check_batched_forward_grad=True)
    if "backward" not in name:
        assert torch.autograd.gradgradcheck(fn, inputs, check_batched_grad=True)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_vectorized_jacobians_and_hessians_are_torch_s(layout, device):
    """jacobian(vectorize=True) of each layer, hessian(vectorize=True) through max pooling's
    gradient, and is_grads_batched: torch's values (float64)."""
    from torch.autograd.functional import hessian, jacobian
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, device=device).contiguous(memory_format=memory_format)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device)
    layers = {
        "conv2d": lambda m: lambda a: m.conv2d(a, w, padding=1),
        "conv_transpose2d": lambda m: lambda a: m.conv_transpose2d(a, w.transpose(0, 1).contiguous(), stride=2),
        "max_pool2d": lambda m: lambda a: m.max_pool2d(a, 2, 1),
        "avg_pool2d": lambda m: lambda a: m.avg_pool2d(a, 2, 1),
        "adaptive_avg_pool2d": lambda m: lambda a: m.adaptive_avg_pool2d(a, 1),
    }
    for name, layer in layers.items():
        torch.testing.assert_close(jacobian(layer(CF), x, vectorize=True), jacobian(layer(F), x, vectorize=True),
                                   rtol=1e-12, atol=1e-12, msg=name)
    cube = lambda m: lambda a: m.max_pool2d(a, 2, 1).pow(3).sum()  # noqa: E731
    torch.testing.assert_close(hessian(cube(CF), x, vectorize=True), hessian(cube(F), x, vectorize=True),
                               rtol=1e-12, atol=1e-12)
    xs = x.clone().requires_grad_()
    y = CF.conv2d(xs, w, padding=1)
    grads = torch.randn(4, *y.shape, dtype=torch.float64, device=device)
    got, = torch.autograd.grad(y, xs, grads, is_grads_batched=True)
    xt = x.clone().requires_grad_()
    expected, = torch.autograd.grad(F.conv2d(xt, w, padding=1), xt, grads, is_grads_batched=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _dual_tangent(fn, primals, tangents, requires_grad):
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p.detach().requires_grad_(requires_grad), t) for p, t in zip(primals, tangents)]
        out = fn(*duals)
        return fwAD.unpack_dual(out).tangent


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_dual_tensors_carry_their_tangents_like_torch_s(requires_grad, device):
    """Dual tensors through each layer, with and without requires_grad (without, torch would
    skip a custom op's autograd and drop the tangent silently), each tangent alone and all
    together: torch's tangents."""
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device)
    b = torch.randn(4, dtype=torch.float64, device=device)
    tangents = [torch.randn_like(t) for t in (x, w, b)]
    layers = [
        (lambda x, w, b: CF.conv2d(x, w, b, 2, 1), lambda x, w, b: F.conv2d(x, w, b, 2, 1), 3),
        (lambda x: CF.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), 1),
        (lambda x: CF.avg_pool2d(x, 2, ceil_mode=True), lambda x: F.avg_pool2d(x, 2, ceil_mode=True), 1),
        (lambda x: CF.adaptive_avg_pool2d(x, (3, 4)), lambda x: F.adaptive_avg_pool2d(x, (3, 4)), 1),
    ]
    for ours, theirs, arity in layers:
        primals = [x, w, b][:arity]
        for which in [[i] for i in range(arity)] + [list(range(arity))]:  # one tangent at a time, then all
            ts = [t if i in which else torch.zeros_like(t) for i, t in enumerate(tangents[:arity])]
            expected = _dual_tangent(theirs, primals, ts, requires_grad)
            assert expected.abs().max() > 0
            assert_matches(_dual_tangent(ours, primals, ts, requires_grad), expected, torch.float64)


def test_jacfwd_hessians_and_jvp_of_jvp_equal_torch_s():
    """torch.func's forward-mode transforms through a small model: jacfwd, the Hessian as
    jacfwd(jacrev) (forward over reverse: the backward ops' tangents) and as jacfwd(jacfwd)
    (forward over forward: the tangents' own tangents), and jvp of jvp in every argument."""
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)

    def f(api):
        return lambda x, w, b: api.avg_pool2d(api.max_pool2d(torch.tanh(api.conv2d(x, w, b, 1, 1)), 2), 3).sum()

    ours, theirs = f(CF), f(F)
    for argnums in (0, 1, 2):
        assert_matches(jacfwd(ours, argnums)(x, w, b), jacfwd(theirs, argnums)(x, w, b), torch.float64)
        assert_matches(hessian(ours, argnums)(x, w, b), hessian(theirs, argnums)(x, w, b), torch.float64)
        forward_over_forward = lambda fn: jacfwd(jacfwd(fn, argnums), argnums)(x, w, b)  # noqa: E731
        assert_matches(forward_over_forward(ours), forward_over_forward(theirs), torch.float64)
    primals, tangents = (x, w, b), tuple(torch.randn_like(p) for p in (x, w, b))
    second = lambda fn: jvp(lambda *p: jvp(fn, p, tangents)[1], primals, tangents)[1]  # noqa: E731
    expected = second(theirs)
    assert expected.abs() > 0
    assert_matches(second(ours), expected, torch.float64)


def test_nn_module_jvp_through_a_converted_model():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 4, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    twin = cuconv.convert(model)
    x, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    results = [jvp(lambda p, x: functional_call(net, p, (x,)), (params, x), (tangents, t)) for net in (model, twin)]
    for ours, theirs in zip(results[1], results[0]):
        assert theirs.abs().max() > 0
        assert_matches(ours, theirs, torch.float64)


# --- autocast --------------------------------------------------------------------------------

@pytest.mark.parametrize("device,dtype", [("cpu", torch.bfloat16), ("cpu", torch.float16)]
                         + [pytest.param("cuda", d, marks=DEVICES[1].marks) for d in (torch.float16, torch.bfloat16)])
def test_autocast_layers_return_torch_s_dtypes(device, dtype):
    """Under torch.autocast every cuconv layer returns the dtype its torch.nn twin returns,
    the backward pass runs, and the parameters' gradients keep the parameters' dtype."""
    model = SmallNet().to(device)
    twin = cuconv.convert(model)
    x = torch.randn(2, 3, 16, 16, device=device)
    with torch.autocast(device, dtype=dtype):
        dtypes = {}
        for name, net in (("torch", model), ("cuconv", twin)):
            h, dtypes[name] = x, []
            for layer in net.features:
                h = layer(h)
                dtypes[name].append(h.dtype)
        out, ref = twin(x), model(x)
    assert dtypes["cuconv"] == dtypes["torch"]
    assert dtype in dtypes["torch"]  # autocast did change something
    assert_matches(out, ref, dtype)
    out.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == p.dtype for p in twin.parameters())


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_autocast_leaves_float64_and_raw_ops_follow_it(device):
    """float64 convolutions stay float64 under autocast (as torch's), and the raw op casts
    too, for code that calls torch.ops.cuconv.conv2d directly."""
    x64, w64 = torch.randn(1, 2, 6, 6, dtype=torch.float64, device=device), torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device)
    x, w = x64.float(), w64.float()
    with torch.autocast(device, dtype=torch.bfloat16):
        assert CF.conv2d(x64, w64).dtype == F.conv2d(x64, w64).dtype == torch.float64
        assert ops.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1).dtype == torch.bfloat16
        assert CF.max_pool2d(x, 2).dtype == F.max_pool2d(x, 2).dtype == torch.float32
    assert CF.conv2d(x, w).dtype == torch.float32  # outside the region nothing is cast


# --- torch.func -----------------------------------------------------------------------------

def per_sample_grads(model, x, target):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(params, sample, label):
        out = functional_call(model, params, (sample.unsqueeze(0),))
        return F.cross_entropy(out, label.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_per_sample_gradients_equal_torch_s(device):
    """DP-SGD's vmap(grad(loss)) over a model with every cuconv layer (grouped and 'same'
    padded convolutions, max / average / adaptive pooling) equals torch.nn's."""
    model = SmallNet().double().to(device)
    twin = cuconv.convert(model)
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64, device=device)
    target = torch.randint(0, 10, (5,), device=device)
    ours, theirs = per_sample_grads(twin, x, target), per_sample_grads(model, x, target)
    for name in theirs:
        assert ours[name].shape == (5, *dict(model.named_parameters())[name].shape)
        assert_matches(ours[name], theirs[name], torch.float64)
    # and they sum to the batch gradient (mean loss -> mean of per-sample gradients)
    F.cross_entropy(twin(x), target).backward()
    for name, p in twin.named_parameters():
        assert_matches(ours[name].mean(0), p.grad, torch.float64)


def _loop(fn, in_dims, args):
    """vmap's definition: fn applied to each slice, stacked on dim 0."""
    size = next(a.shape[d] for a, d in zip(args, in_dims) if d is not None)
    outs = [fn(*[a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]) for i in range(size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o) for o in zip(*outs))
    return torch.stack(outs)


def _vmap_cases(device):
    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device)

    conv = ([2, 1], [1, 1], [1, 2], 2)
    pool = ([3, 3], [2, 2], [1, 1], [1, 1], True)
    avg = ([3, 2], [2, 2], [1, 1], True, False, None)
    B = 3
    x, w, b = rand(B, 2, 4, 9, 8), rand(B, 6, 2, 3, 3), rand(B, 6)
    dy = rand(B, 2, 6, 5, 6)
    idx = torch.stack([ops.max_pool2d(x[i], *pool)[1] for i in range(B)])
    return [
        ("conv2d x", lambda x, w, b: ops.conv2d(x, w, b, *conv), (0, None, None), (x, w[0], b[0])),
        ("conv2d w", lambda x, w, b: ops.conv2d(x, w, b, *conv), (None, 0, None), (x[0], w, b[0])),
        ("conv2d x,w,b", lambda x, w, b: ops.conv2d(x, w, b, *conv), (0, 0, 0), (x, w, b)),
        ("conv2d b", lambda x, w, b: ops.conv2d(x, w, b, *conv), (0, None, 0), (x, w[0], b)),
        ("conv2d x on dim 2", lambda x, w: ops.conv2d(x, w, None, *conv), (2, None), (x.movedim(0, 2), w[0])),
        ("backward_input dy", lambda dy, w: ops.conv2d_backward_input(dy, w, [2, 4, 9, 8], *conv), (0, None), (dy, w[0])),
        ("backward_input w", lambda dy, w: ops.conv2d_backward_input(dy, w, [2, 4, 9, 8], *conv), (None, 0), (dy[0], w)),
        ("backward_input dy,w", lambda dy, w: ops.conv2d_backward_input(dy, w, [2, 4, 9, 8], *conv), (0, 0), (dy, w)),
        ("backward_weight dy,x", lambda dy, x: ops.conv2d_backward_weight(dy, x, [6, 2, 3, 3], *conv), (0, 0), (dy, x)),
        ("backward_weight x", lambda dy, x: ops.conv2d_backward_weight(dy, x, [6, 2, 3, 3], *conv), (None, 0), (dy[0], x)),
        ("backward_bias", ops.conv2d_backward_bias, (1,), (dy.movedim(0, 1),)),
        ("max_pool2d", lambda x: ops.max_pool2d(x, *pool), (0,), (x,)),
        ("max_pool2d_backward", lambda g, i: ops.max_pool2d_backward(g, i, [2, 4, 9, 8], *pool), (0, 0),
         (rand(*idx.shape), idx)),
        ("max_pool2d_backward shared idx", lambda g, i: ops.max_pool2d_backward(g, i, [2, 4, 9, 8], *pool), (0, None),
         (rand(*idx.shape), idx[0])),
        ("avg_pool2d", lambda x: ops.avg_pool2d(x, *avg), (0,), (x,)),
        ("avg_pool2d_backward", lambda g: ops.avg_pool2d_backward(g, [2, 4, 9, 8], *avg), (0,), (rand(B, 2, 4, 5, 5),)),
        ("adaptive_avg_pool2d", lambda x: ops.adaptive_avg_pool2d(x, [4, 3]), (0,), (x,)),
        ("adaptive_avg_pool2d_backward", lambda g: ops.adaptive_avg_pool2d_backward(g, [2, 4, 9, 8]), (0,),
         (rand(B, 2, 4, 4, 3),)),
    ]


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("index", range(len(_vmap_cases("cpu"))), ids=[c[0] for c in _vmap_cases("cpu")])
def test_vmap_rules_equal_a_loop(index, device):
    _, fn, in_dims, args = _vmap_cases(device)[index]
    got, expected = vmap(fn, in_dims=in_dims)(*args), _loop(fn, in_dims, args)
    for g, e in zip(got if isinstance(got, tuple) else (got,), expected if isinstance(expected, tuple) else (expected,)):
        assert g.shape == e.shape
        assert_matches(g, e, torch.float64) if g.is_floating_point() else torch.testing.assert_close(g, e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_vmap_of_a_half_type_bias_adds_it_before_rounding(dtype):
    """A per-copy bias on a shared weight, in a half type, goes into the kernels with the weight
    (added after them, each sum was rounded twice, and a third of bfloat16's results were not the
    nearest value): as each copy's call, float32 sums rounded once, nearly all the nearest value
    (the kernels' float32 sums are not exact; which kernel runs is measured, so the order of
    their sums, and a rare last bit, may differ from the copies' calls)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 9, 9, generator=gen).to(dtype)
    w, b = torch.randn(12, 8, 3, 3, generator=gen).to(dtype), torch.randn(4, 12, generator=gen).to(dtype)
    conv = lambda b: ops.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1)  # noqa: E731
    got = vmap(conv)(b)
    assert_matches(got, _loop(conv, (0,), (b,)), dtype)
    nearest = torch.stack([F.conv2d(x.double(), w.double(), copy.double(), 1, 1) for copy in b]).to(dtype)
    assert (got != nearest).float().mean() < 0.02


def test_vmap_of_weights_runs_one_grouped_convolution():
    """A vmapped weight is one grouped kernel call, not a Python loop over the copies."""
    x, w = torch.randn(2, 4, 8, 8), torch.randn(5, 6, 4, 3, 3)
    with torch.profiler.profile() as prof:
        vmap(lambda w: CF.conv2d(x, w), in_dims=0)(w)
    calls = [e for e in prof.events() if e.name == "cuconv::conv2d"]
    assert len(calls) == 2  # the vmapped call and the one grouped kernel call it becomes (a loop: 1 + 5)


@pytest.mark.parametrize("per_sample", [lambda t: t.transpose(2, 3), lambda t: t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)],
                         ids=["transposed", "channels_last"])
def test_vmap_of_strided_samples_equals_a_loop(per_sample):
    """Each sample a strided view (its layout read from its strides: inside vmap,
    is_contiguous takes no memory format)."""
    x, w = torch.randn(3, 2, 4, 6, 6, dtype=torch.float64), torch.randn(5, 4, 3, 3, dtype=torch.float64)
    conv = lambda t: CF.conv2d(per_sample(t), w, padding=1)  # noqa: E731
    assert_matches(vmap(conv)(x), torch.stack([conv(t) for t in x]), torch.float64)


def test_jacrev_and_hessian_vector_products_equal_torch_s():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)

    def f(conv, pool):
        return lambda x, w: pool(torch.tanh(conv(x, w, None, 1, 1)), 2).sum()

    ours, theirs = f(CF.conv2d, CF.max_pool2d), f(F.conv2d, F.max_pool2d)
    for argnums in (0, 1):
        assert_matches(jacrev(jacrev(ours, argnums), argnums)(x, w), jacrev(jacrev(theirs, argnums), argnums)(x, w),
                       torch.float64)


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_jacobians_and_hessians_of_a_channels_last_layer_equal_torch_s(op):
    """jacrev and hessian run the backward under vmap, where a tensor cannot be cloned
    channels_last: a channels_last layer's gradients keep vmap's layout there (the values are the
    same in either), with respect to the input and to the weight."""
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(*((3, 2) if op == "conv2d" else (2, 3)), 3, 3, dtype=torch.float64)
    ours, theirs = (lambda x, w, f=getattr(lib, op): f(x, w, None, 2, 1) for lib in (CF, F))
    for argnums in (0, 1):
        assert_matches(jacrev(ours, argnums)(x, w), jacrev(theirs, argnums)(x, w), torch.float64)
        loss = lambda f: lambda x, w: f(x, w).square().sum()  # noqa: E731
        assert_matches(hessian(loss(ours), argnums)(x, w), hessian(loss(theirs), argnums)(x, w), torch.float64)


def test_nn_module_double_backward_through_a_model():
    """WGAN-GP's penalty through a whole model converted to cuconv equals torch's."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(6, 4, 3, stride=2),
                          nn.Softplus(), nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    twin = cuconv.convert(model)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    results = []
    for net in (model, twin):
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(net(xi).sum(), xi, create_graph=True)
        penalty = (gx.flatten(1).norm(dim=1) - 1).square().mean()
        results.append(torch.autograd.grad(penalty, list(net.parameters())))
    for ours, theirs in zip(results[1], results[0]):
        assert theirs.abs().max() > 0
        assert_matches(ours, theirs, torch.float64)
