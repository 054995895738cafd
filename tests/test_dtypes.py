"""Tensors beyond the floating-point types, where torch's ops take them: complex convolution and
adaptive average pooling (computed by cuconv.functional from the real and imaginary parts, on
cuconv's real kernels), integer max pooling (cuconv's kernels, CPU and CUDA) and integer
convolution (the CPU's)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
import torch.nn.functional as F

import cuconv
import cuconv.functional as CF
import emulated_cuda
from conftest import DEVICES
from test_ops import compare_with_torch, conv_fns, conv_tensors, random_conv_cases, random_pool_cases

ops = torch.ops.cuconv

# --- complex tensors --------------------------------------------------------------------------

COMPLEX_DTYPES = [torch.complex64, torch.complex128]


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", COMPLEX_DTYPES, ids=str)
@pytest.mark.parametrize("case", random_conv_cases(10, seed=77),
                         ids=lambda c: "g{groups}k{kernel}s{stride}p{padding}d{dilation}".format(**c))
def test_complex_conv2d_matches_torch(case, dtype, device):
    """Forward and the gradients of input, weight and bias (torch's complex convention: the
    conjugate Wirtinger derivative of a real loss), over the whole parameter space."""
    x, w, b = conv_tensors(case, dtype, device)
    ours, theirs = conv_fns(case, b is not None)
    compare_with_torch(ours, theirs, [t for t in (x, w, b) if t is not None], dtype)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex_conv2d_of_conjugates_layouts_and_unbatched_input(device):
    """Conjugate views (lazily conjugated: their imaginary parts are lazily negated views), a
    channels_last input (a channels_last result, as torch's), padding='same', an unbatched
    input and complex32 (torch's experimental complex half) give torch's results."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, 7, dtype=torch.complex128, generator=gen).to(device)
    w = torch.randn(6, 4, 3, 2, dtype=torch.complex128, generator=gen).to(device)
    b = torch.randn(6, dtype=torch.complex128, generator=gen).to(device)
    for args in [(x.conj(), w, b), (x, w.conj(), b.conj()), (x.conj(), w.conj(), None)]:
        assert args[0].is_conj() or args[1].is_conj()
        torch.testing.assert_close(CF.conv2d(*args, padding=1), F.conv2d(*args, padding=1), rtol=1e-10, atol=1e-10)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = CF.conv2d(x_cl, w, b, stride=2)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.conv2d(x, w, b, stride=2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(CF.conv2d(x[0], w, b, padding="same"), F.conv2d(x[0], w, b, padding="same"),
                               rtol=1e-10, atol=1e-10)
    half_x, half_w = x.to(torch.complex64).to(torch.complex32), w.to(torch.complex64).to(torch.complex32)
    y = CF.conv2d(half_x, half_w)
    assert y.dtype == torch.complex32
    torch.testing.assert_close(y.to(torch.complex64), F.conv2d(half_x, half_w).to(torch.complex64), rtol=2e-3, atol=2e-2)


def test_complex_conv2d_gradcheck_gradgradcheck_module_and_autocast():
    gen = torch.Generator().manual_seed(4)
    x, w, b = (torch.randn(*shape, dtype=torch.complex128, generator=gen, requires_grad=True)
               for shape in [(2, 4, 6, 5), (4, 2, 3, 2), (4,)])
    conv = lambda x, w, b: CF.conv2d(x, w, b, (1, 2), 1, (2, 1), 2)  # noqa: E731
    assert torch.autograd.gradcheck(conv, (x, w, b))
    assert torch.autograd.gradgradcheck(conv, (x, w, b))
    layer = cuconv.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", dtype=torch.complex64)
    twin = torch.nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", dtype=torch.complex64)
    twin.load_state_dict(layer.state_dict())
    x64 = x.detach().to(torch.complex64)
    torch.testing.assert_close(layer(x64), twin(x64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # leaves complex convolutions alone, as torch's
        assert layer(x64).dtype == twin(x64).dtype == torch.complex64
        torch.testing.assert_close(layer(x64), twin(x64))
    compiled = torch.compile(lambda t: CF.conv2d(t, layer.weight, layer.bias, padding=1), fullgraph=True)
    torch.testing.assert_close(compiled(x64), F.conv2d(x64, layer.weight, layer.bias, padding=1))
    vmapped = torch.func.vmap(lambda t: CF.conv2d(t, layer.weight, padding=1))(x64.unsqueeze(1))
    torch.testing.assert_close(vmapped.squeeze(1), F.conv2d(x64, layer.weight, padding=1))


def test_complex_conv2d_refuses_mixed_dtypes():
    x, w = torch.randn(1, 2, 5, 5, dtype=torch.complex64), torch.randn(3, 2, 3, 3)
    with pytest.raises(TypeError, match=r"weight to have the dtype of input \(torch\.complex64\), but got Float"):
        CF.conv2d(x, w)
    with pytest.raises(TypeError, match=r"weight to have the dtype of input \(Float\), but got torch\.complex64"):
        CF.conv2d(w, x)
    with pytest.raises(TypeError, match=r"bias to have the dtype of input \(torch\.complex64\), but got Float"):
        CF.conv2d(x, w.to(torch.complex64), torch.randn(3))
    with pytest.raises(RuntimeError, match=r"input to be a floating-point or integer tensor, but got ComplexFloat"):
        ops.conv2d(x, w.to(torch.complex64), None, [1, 1], [0, 0], [1, 1], 1)  # (the raw op: real tensors only)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", COMPLEX_DTYPES, ids=str)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("in_size,out_size", [((7, 9), (3, 4)), ((8, 8), 1), ((4, 5), (7, 9)), ((13, 3), (4, None))])
def test_complex_adaptive_avg_pool2d_is_the_mean_of_each_part(in_size, out_size, layout, dtype, device):
    """torch takes complex tensors for a global average only (other output sizes and channels_last
    inputs it refuses): there it is the reference, elsewhere the real and imaginary parts pooled apart."""
    x = torch.randn(2, 3, *in_size, dtype=dtype, device=device).contiguous(memory_format=layout)
    if out_size == 1 and layout == torch.contiguous_format:
        reference = lambda t: F.adaptive_avg_pool2d(t, out_size)  # noqa: E731
    else:
        reference = lambda t: torch.complex(F.adaptive_avg_pool2d(t.real, out_size),  # noqa: E731
                                            F.adaptive_avg_pool2d(t.imag, out_size))
    compare_with_torch(lambda t: CF.adaptive_avg_pool2d(t, out_size), reference, [x], dtype)
    unbatched = CF.adaptive_avg_pool2d(x[0].conj(), out_size)
    torch.testing.assert_close(unbatched, reference(x[0].conj().resolve_conj()))


def test_complex_adaptive_avg_pool2d_gradcheck_and_module():
    x = torch.randn(2, 3, 6, 5, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: CF.adaptive_avg_pool2d(t, (4, 3)), (x,))
    assert torch.autograd.gradgradcheck(lambda t: CF.adaptive_avg_pool2d(t, (4, 3)), (x,))
    torch.testing.assert_close(cuconv.AdaptiveAvgPool2d(1)(x), torch.nn.AdaptiveAvgPool2d(1)(x))


@pytest.mark.parametrize("pool", [lambda t: CF.max_pool2d(t, 2), lambda t: CF.avg_pool2d(t, 2)], ids=["max", "avg"])
def test_window_pooling_refuses_complex_tensors_as_torch(pool):
    with pytest.raises(TypeError, match=r"input to be a floating-point.*tensor, but got torch\.complex64"):
        pool(torch.randn(1, 2, 4, 4, dtype=torch.complex64))


# --- integer tensors ---------------------------------------------------------------------------

INTEGER_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]


def random_integers(shape, dtype, ties, seed):
    """Values over the dtype's whole range (its lowest and highest among them), or from a few
    values, so that windows hold ties."""
    gen = torch.Generator().manual_seed(seed)
    info = torch.iinfo(dtype)
    low, high = (info.min, info.max) if not ties else (max(info.min, -2), 2)
    x = torch.randint(low, high, shape, generator=gen, dtype=torch.int64).to(dtype)
    x.view(-1)[:: 7] = info.min
    x.view(-1)[3:: 11] = info.max
    return x


# Max pooling of integer tensors (a label map, uint8 images), as torch's CPU max pooling: the same
# values and indices, on the CPU's plane kernels (general, tiled 2x2 with short and long rows,
# separable stride 2), its NHWC kernel, and the CUDA kernel. (torch's reference is computed NCHW on
# the CPU: its CUDA max pooling takes no integers, and its NHWC kernel refuses int8 and uint8 planes
# of more than 127 pixels.)
@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["whole-range", "ties"])
def test_max_pool2d_of_integers_matches_torch(ties, dtype, layout, device):
    configs = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
               dict(kernel_size=(2, 3), stride=2, padding=(1, 1)), dict(kernel_size=(3, 2), dilation=2, ceil_mode=True)]
    configs += [dict(kernel_size=c["kernel"], stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                     ceil_mode=c["ceil_mode"]) for c in random_pool_cases(6, seed=5, with_dilation=True)]
    compared = 0
    for size in [(8, 10), (9, 7), (6, 40), (12, 12)]:
        x = random_integers((2, 3, *size), dtype, ties, seed=sum(size))
        for config in configs:
            try:
                ref, ref_idx = F.max_pool2d(x, return_indices=True, **config)
            except RuntimeError:  # (a random window larger than this input)
                continue
            compared += 1
            out, idx = CF.max_pool2d(x.to(device).contiguous(memory_format=layout), return_indices=True, **config)
            assert out.dtype == dtype and out.is_contiguous(memory_format=layout), config
            assert torch.equal(out.cpu(), ref) and torch.equal(idx.cpu(), ref_idx), config
    assert compared >= 4 * 4  # (every fixed config on every size, and random ones)
    unbatched = CF.max_pool2d(x[0].to(device), 3, 2, 1)  # (C, H, W), as torch's
    assert torch.equal(unbatched.cpu(), F.max_pool2d(x[0], 3, 2, 1))


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_max_pool2d_of_integers_through_module_compile_and_opcheck(dtype):
    """The module, torch.compile and the op's registration (fake kernel, schema) take integers too;
    no gradient is recorded."""
    x = random_integers((2, 3, 10, 10), dtype, ties=True, seed=1)
    expected = F.max_pool2d(x, 3, 2, 1)
    assert torch.equal(cuconv.MaxPool2d(3, 2, 1)(x), expected)
    assert torch.equal(torch.compile(lambda t: CF.max_pool2d(t, 3, 2, 1), fullgraph=True)(x), expected)
    torch.library.opcheck(ops.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], False))




def integer_conv_cases(count, seed):
    """random_conv_cases with output channels per group from 1 to 17: the CPU's two loop orders
    (rows below 8 per group, channel vectors from 8)."""
    cases = random_conv_cases(count, seed)
    for case, per_group in zip(cases, [1, 8, 3, 17, 2, 9, 1, 16] * count):
        case["out_channels"] = case["groups"] * per_group
    return cases


# Integer convolution, as torch's CPU convolution (which takes integers, dilated ones in int64
# only): overflow wraps around, so the reference is torch's int64 convolution truncated to the
# dtype, and where torch takes the dtype itself, its own result is that too. Every layout of the
# input (NCHW, channels_last, strided), the result in the input's layout.
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_conv2d_of_integers_matches_torch_modulo_the_dtype(dtype, layout):
    for index, case in enumerate(integer_conv_cases(16, seed=31)):
        x, w, b = (random_integers(t.shape, dtype, ties=False, seed=index * 3 + k) if t is not None else None
                   for k, t in enumerate(conv_tensors(case, torch.float32, "cpu")))
        args = (case["stride"], case["padding"], case["dilation"], case["groups"])
        expected = F.conv2d(x.long(), w.long(), b.long() if b is not None else None, *args).to(dtype)
        if dtype == torch.int64 or case["dilation"] == (1, 1):
            assert torch.equal(F.conv2d(x, w, b, *args), expected)  # (torch wraps around too)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":
            x = x.transpose(2, 3).contiguous().transpose(2, 3)[:, :, :, :]
        y = CF.conv2d(x, w, b, *args)
        assert y.dtype == dtype and torch.equal(y, expected), case
        torch_y = F.conv2d(x.double(), w.double(), None, *args)  # (the layout torch gives)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            assert y.is_contiguous(memory_format=memory_format) == torch_y.is_contiguous(memory_format=memory_format)


def test_conv2d_of_integers_unbatched_same_padding_compile_and_opcheck():
    """(No module: torch.nn's parameters cannot be integer tensors.)"""
    x = random_integers((2, 4, 9, 8), torch.uint8, ties=False, seed=5)
    w = random_integers((8, 2, 3, 2), torch.uint8, ties=False, seed=6)
    expected = F.conv2d(x, w, padding="same", groups=2)
    assert torch.equal(CF.conv2d(x, w, padding="same", groups=2), expected)
    assert torch.equal(CF.conv2d(x[1], w, padding="same", groups=2), expected[1])
    compiled = torch.compile(lambda t, k: CF.conv2d(t, k, None, 2, 1, 1, 2), fullgraph=True)
    assert torch.equal(compiled(x.int(), w.int()), F.conv2d(x.int(), w.int(), None, 2, 1, 1, 2))
    torch.library.opcheck(ops.conv2d.default, (x.to(torch.int16), w.to(torch.int16), None, [1, 2], [1, 0], [2, 1], 2))


def test_conv2d_of_integers_refused_by_the_cuda_kernels_and_bool_everywhere():
    """torch's CUDA convolution takes no integers, and cuconv's CUDA kernels neither (on the emulated
    device here: cuconv.functional refuses them for a CUDA tensor before, with a TypeError)."""
    x, w = random_integers((1, 2, 5, 5), torch.int32, ties=False, seed=1), random_integers((3, 2, 3, 3), torch.int32, False, 2)
    with pytest.raises(TypeError, match=r"floating-point, integer or complex tensor, but got Bool"):
        CF.conv2d(x > 0, w > 0)
    with FakeTensorMode(), pytest.raises(
            TypeError, match=r"floating-point or complex tensor, but got Int \(integer tensors: on the CPU only"):
        CF.conv2d(torch.empty(x.shape, dtype=x.dtype, device="cuda"), torch.empty(w.shape, dtype=w.dtype, device="cuda"))
        # (cuconv.functional's check of a CUDA tensor; fake tensors: no GPU needed)
    if not emulated_cuda.AVAILABLE:
        pytest.skip("the emulated CUDA device is not built")
    with emulated_cuda.routed(), pytest.raises(
            RuntimeError, match=r"input to be a floating-point tensor, but got Int \(integer tensors: on the CPU only"):
        ops.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1)


def random_int64(shape, seed):
    """int64 values of both signs up to 2^40 (sums of a window do not overflow: torch's would be
    undefined behaviour), with exact multiples of small divisors among them."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-2**40, 2**40, shape, generator=gen, dtype=torch.int64)
    x.view(-1)[::5] = torch.randint(-12, 13, x.view(-1)[::5].shape, generator=gen) * 36
    return x


# int64 average pooling, as torch's CPU average pooling (which takes int64 among the integer
# types): each window's sum divided by its divisor, rounding toward zero (C++ integer division).
# The general plane kernel, the tiled 2x2 one, whole-plane windows and the NHWC kernel.
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_avg_pool2d_of_int64_matches_torch(layout):
    configs = [dict(kernel_size=2), dict(kernel_size=(8, 10)), dict(kernel_size=3, stride=2, padding=1),
               dict(kernel_size=3, stride=1, padding=1, count_include_pad=False, ceil_mode=True),
               dict(kernel_size=(2, 3), divisor_override=-7)]
    configs += [dict(kernel_size=c["kernel"], stride=c["stride"], padding=c["padding"], ceil_mode=c["ceil_mode"],
                     count_include_pad=index % 2 == 0, divisor_override=[None, 3, None, -2][index % 4])
                for index, c in enumerate(random_pool_cases(8, seed=13, with_dilation=False))]
    compared = 0
    for size in [(8, 10), (9, 7), (12, 12)]:
        x = random_int64((2, 3, *size), seed=sum(size))
        for config in configs:
            try:
                expected = F.avg_pool2d(x, **config)
            except RuntimeError:  # (a random window larger than this input)
                continue
            compared += 1
            y = CF.avg_pool2d(x.contiguous(memory_format=layout), **config)
            assert y.dtype == torch.int64 and y.is_contiguous(memory_format=layout), config
            assert torch.equal(y, expected), config
    assert compared >= 3 * 5
    assert torch.equal(CF.avg_pool2d(x[0], 3, 2, 1), F.avg_pool2d(x[0], 3, 2, 1))  # (C, H, W), as torch's
    negative = torch.tensor([[[[-7, 0], [0, 0]]]])  # (-7 / 4 rounds toward zero: -1, not -2; -7 / 2: -3)
    assert CF.avg_pool2d(negative, 2).item() == F.avg_pool2d(negative, 2).item() == -1
    assert CF.avg_pool2d(negative[..., :1, :], (1, 2)).item() == F.avg_pool2d(negative[..., :1, :], (1, 2)).item() == -3


def test_avg_pool2d_of_int64_through_module_compile_and_opcheck():
    x = random_int64((2, 3, 10, 10), seed=1)
    expected = F.avg_pool2d(x, 3, 2, 1)
    assert torch.equal(cuconv.AvgPool2d(3, 2, 1)(x), expected)
    assert torch.equal(torch.compile(lambda t: CF.avg_pool2d(t, 3, 2, 1), fullgraph=True)(x), expected)
    torch.library.opcheck(ops.avg_pool2d.default, (x, [3, 3], [2, 2], [1, 1], False, True, None))


def test_integer_convolution_and_int64_average_pooling_on_the_meta_device():
    """The meta device (shapes without data: deferred initialisation, shape inference) takes the
    CPU's dtypes, as torch's meta kernels take them; the result's layout is the CPU's."""
    x, w = torch.empty(2, 4, 9, 8, dtype=torch.uint8, device="meta"), torch.empty(6, 2, 3, 2, dtype=torch.uint8, device="meta")
    for layout in (torch.contiguous_format, torch.channels_last):
        y = CF.conv2d(x.contiguous(memory_format=layout), w, None, 2, 1, 1, 2)
        assert (y.device.type, y.dtype, y.shape) == ("meta", torch.uint8, (2, 6, 5, 5))
        assert y.is_contiguous(memory_format=layout)
    y = cuconv.AvgPool2d(3, 2, 1)(x.long())
    assert (y.device.type, y.dtype, y.shape) == ("meta", torch.int64, (2, 4, 5, 4))
    with pytest.raises(TypeError, match=r"floating-point or int64 tensor, but got Byte"):
        CF.avg_pool2d(x, 2)


def test_avg_pool2d_refuses_other_integers_and_the_cuda_kernels_int64():
    """torch's average pooling takes int64 alone among the integer types, and on the CPU only; so does
    cuconv's (its CUDA kernels on the emulated device here)."""
    with pytest.raises(TypeError, match=r"floating-point or int64 tensor, but got Int"):
        CF.avg_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int32), 2)
    with FakeTensorMode(), pytest.raises(
            TypeError, match=r"floating-point tensor, but got Long \(integer tensors: on the CPU only"):
        CF.avg_pool2d(torch.empty(1, 1, 4, 4, dtype=torch.int64, device="cuda"), 2)
    if not emulated_cuda.AVAILABLE:
        pytest.skip("the emulated CUDA device is not built")
    with emulated_cuda.routed(), pytest.raises(
            RuntimeError, match=r"input to be a floating-point tensor, but got Long \(integer tensors: on the CPU only"):
        ops.avg_pool2d(random_int64((1, 1, 4, 4), seed=2), [2, 2], [2, 2], [0, 0], False, True, None)
