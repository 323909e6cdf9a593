"""The native avg_pool2d (kernels/{cpu,cuda}/avg_pool2d.*) against torch.nn.functional.avg_pool2d.

Every combination of ceil_mode, count_include_pad and divisor_override over windows that
clip differently at the edges, in float64 and float32 on the CPU, layouts and views,
gradcheck, opcheck of the raw ops, and CUDA tests for every dtype (skipped without a GPU).
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

import cnnops
from differential import assert_close as _assert_close

from backend_support import cpu_isas, native_only, needs_cuda
from cnnops.shapes import pool2d_output_hw

pytestmark = native_only

# name: (input shape, kernel_size, stride, padding); chosen so that ceil_mode adds a last
# window that runs past the padding (the divisor clipping of ATen) in at least one axis
GEOMETRIES = {
    "k2": ((2, 3, 8, 8), 2, None, 0),
    "k3_s2_p1": ((2, 2, 10, 9), 3, 2, 1),
    "k3_s2_p1_odd": ((1, 3, 7, 6), 3, 2, 1),
    "rect": ((2, 2, 9, 11), (3, 2), (2, 3), (1, 1)),
    "stride_gt_kernel": ((1, 2, 13, 11), 2, 3, 1),
    "k5_s3_p2": ((2, 1, 12, 8), 5, 3, 2),
    "whole_plane": ((2, 2, 5, 4), (5, 4), None, 0),
    # windows wider than the (padded) input: only with ceil_mode (test_ceil_window_wider)
    "window_wider": ((2, 2, 6, 3), (2, 4), None, 0),
    "window_wider_pad": ((1, 2, 4, 3), (3, 6), (2, 6), (1, 1)),
}
WIDE = ("window_wider", "window_wider_pad")
OPTIONS = list(itertools.product([False, True], [True, False], [None, 3, -2]))  # ceil, cip, div


def _input(shape, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()


def _compare(x, kwargs, atol, rtol, x_ref=None):
    """cnnops (native) on x against torch on x_ref (x unless given), output and gradient."""
    x_ref = x if x_ref is None else x_ref
    got = cnnops.avg_pool2d(x, **kwargs, backend="native")
    want = F.avg_pool2d(x_ref, **kwargs)
    _assert_close(got.to(want.dtype), want, atol, rtol, "output")
    if x.dim() == 4 and x_ref is x:
        assert got.stride() == want.stride(), f"output strides {got.stride()} != {want.stride()}"
    grad = torch.randn_like(want)
    got_grad = torch.autograd.grad(got, x, grad.to(got.dtype))[0]
    want_grad = torch.autograd.grad(want, x_ref, grad)[0]
    _assert_close(got_grad.to(want.dtype), want_grad, atol, rtol, "grad_input")


def _kwargs(geometry, options):
    _, kernel_size, stride, padding = GEOMETRIES[geometry]
    ceil_mode, count_include_pad, divisor_override = options
    return dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                count_include_pad=count_include_pad, divisor_override=divisor_override)


def _option_id(options):
    ceil_mode, count_include_pad, divisor = options
    return f"ceil{int(ceil_mode)}-cip{int(count_include_pad)}-div{divisor}"


@pytest.mark.parametrize("options", OPTIONS, ids=_option_id)
@pytest.mark.parametrize("geometry", [g for g in GEOMETRIES if g not in WIDE])
def test_matches_torch_float64(geometry, options):
    _compare(_input(GEOMETRIES[geometry][0]), _kwargs(geometry, options), 1e-12, 1e-12)


@pytest.mark.parametrize("options", OPTIONS[::3], ids=_option_id)
@pytest.mark.parametrize("geometry", ["k3_s2_p1", "rect", "k5_s3_p2"])
def test_matches_torch_float32(geometry, options):
    x = _input(GEOMETRIES[geometry][0], torch.float32)
    _compare(x, _kwargs(geometry, options), 1e-6, 1e-5)


@pytest.mark.parametrize("options", [o for o in OPTIONS if o[0]], ids=_option_id)
@pytest.mark.parametrize("geometry", WIDE)
def test_ceil_window_wider(geometry, options):
    """ceil_mode with a window wider than the input: torch gives one clipped window (e.g. a
    (6, 3) plane, kernel (2, 4) -> (3, 1))."""
    _compare(_input(GEOMETRIES[geometry][0]), _kwargs(geometry, options), 1e-12, 1e-12)


def test_unbatched_input():
    _compare(_input((3, 9, 8)), _kwargs("k3_s2_p1", (True, False, None)), 1e-12, 1e-12)


def test_channels_last():
    x = _input((2, 5, 9, 8)).detach().contiguous(memory_format=torch.channels_last)
    _compare(x.requires_grad_(), _kwargs("k3_s2_p1", (True, True, None)), 1e-12, 1e-12)


def test_non_contiguous_view():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2, 6, 12, 14, dtype=torch.float64, generator=g)
    _compare(base[:, 1::2, ::2, 3:].requires_grad_(), _kwargs("rect", (True, False, None)),
             1e-12, 1e-12)


def test_nan_and_inf_propagate():
    x = _input((1, 2, 8, 8)).detach()
    x[0, 0, 2, 3] = float("nan")
    x[0, 1, 5, 5] = float("inf")
    _compare(x.requires_grad_(), _kwargs("k3_s2_p1", (True, False, None)), 1e-12, 1e-12)


def test_empty_batch():
    x = _input((0, 2, 6, 6))
    out = cnnops.avg_pool2d(x, 2, backend="native")
    assert out.shape == (0, 2, 3, 3)
    assert torch.autograd.grad(out.sum(), x)[0].shape == x.shape


@pytest.mark.parametrize("options", [(True, False, None), (False, True, 5), (True, True, None)],
                         ids=_option_id)
def test_gradcheck(options):
    kwargs = _kwargs("k3_s2_p1_odd", options)
    x = _input(GEOMETRIES["k3_s2_p1_odd"][0], seed=4)
    assert torch.autograd.gradcheck(lambda t: cnnops.avg_pool2d(t, **kwargs, backend="native"),
                                    (x,))


def test_gradgradcheck():
    kwargs = _kwargs("k3_s2_p1_odd", (True, False, 2))
    x = _input(GEOMETRIES["k3_s2_p1_odd"][0], seed=6)
    assert torch.autograd.gradgradcheck(
        lambda t: cnnops.avg_pool2d(t, **kwargs, backend="native"), (x,))


def _raw_args(x, divisor_override=None, shape=((3, 2), (2, 1), (1, 1))):
    """The raw ops' arguments after the tensors (kernel_size, stride, padding,
    count_include_pad, divisor_override), and the forward's output_size (ceil_mode)."""
    out_hw = [*pool2d_output_hw(x.shape[-2:], *shape, (1, 1), True)]
    return ([*shape[0]], [*shape[1]], [*shape[2]], False, divisor_override), out_hw


@pytest.mark.parametrize("divisor_override", [None, 4])
@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (1, 2, 4, 1)])
def test_opcheck(divisor_override, shape):
    x = _input(shape)
    args, out_hw = _raw_args(x, divisor_override)
    torch.library.opcheck(torch.ops.cnnops.avg_pool2d.default, (x, *args, out_hw))
    torch.library.opcheck(torch.ops.cnnops.avg_pool2d.default, (x.detach(), *args, out_hw))
    out = torch.ops.cnnops.avg_pool2d(x.detach(), *args, out_hw)
    torch.library.opcheck(torch.ops.cnnops.avg_pool2d_grad_input.default,
                          (torch.randn_like(out), x.detach(), *args))
    torch.library.opcheck(torch.ops.cnnops.avg_pool2d_grad_input.default,
                          (torch.randn_like(out).requires_grad_(), x.detach(), *args))


@needs_cuda
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-5, 1e-5),
                                             (torch.float64, 1e-12, 1e-12),
                                             (torch.float16, 2e-3, 2e-3),
                                             (torch.bfloat16, 2e-2, 2e-2)])
@pytest.mark.parametrize("options", OPTIONS, ids=_option_id)
@pytest.mark.parametrize("geometry", ["k3_s2_p1", "rect", "stride_gt_kernel", "k5_s3_p2"])
def test_cuda_matches_torch(geometry, options, dtype, atol, rtol):
    x = _input(GEOMETRIES[geometry][0], dtype, "cuda")
    # reference in float64 on the same (rounded) values: measures our rounding only
    x_ref = x.detach().double().requires_grad_()
    _compare(x, _kwargs(geometry, options), atol, rtol, x_ref=x_ref)


@needs_cuda
def test_cuda_channels_last_and_opcheck():
    x = _input((2, 5, 9, 8), device="cuda").detach()
    _compare(x.contiguous(memory_format=torch.channels_last).requires_grad_(),
             _kwargs("k3_s2_p1", (True, False, None)), 1e-12, 1e-12)
    args, out_hw = _raw_args(x)
    torch.library.opcheck(torch.ops.cnnops.avg_pool2d.default, (x, *args, out_hw))
    out = torch.ops.cnnops.avg_pool2d(x, *args, out_hw)
    torch.library.opcheck(torch.ops.cnnops.avg_pool2d_grad_input.default,
                          (torch.randn_like(out), x, *args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 2, 28, 28), (2, 3, 11, 9), (1, 1, 1, 5), (2, 2, 10, 1)])
@pytest.mark.parametrize("divisor_override", [None, 3])
def test_2x2_stride_2_bit_equal(shape, dtype, divisor_override):
    """The whole-window 2x2, stride 2 forward and backward (one pass each; an odd last row or
    column gets no gradient) give torch's bits."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=dtype)
    if shape[-1] < 2 or shape[-2] < 2:
        x = F.pad(x, (0, max(0, 2 - shape[-1]), 0, max(0, 2 - shape[-2])))
    want = F.avg_pool2d(x, 2, divisor_override=divisor_override)
    got = cnnops.avg_pool2d(x, 2, divisor_override=divisor_override, backend="native")
    assert torch.equal(got, want)
    grad = torch.randn(want.shape, generator=g, dtype=dtype)
    want_grad = torch.ops.aten.avg_pool2d_backward(grad, x, [2, 2], [2, 2], [0, 0], False,
                                                   True, divisor_override)
    got_grad = torch.ops.cnnops.avg_pool2d_grad_input(grad, x, [2, 2], [2, 2], [0, 0], True,
                                                      divisor_override)
    assert torch.equal(got_grad, want_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 37, 3, 3), (1, 16, 7, 7), (3, 5, 1, 1), (2, 20, 6, 4)])
@pytest.mark.parametrize("divisor_override", [None, 3])
def test_global_bit_equal(shape, dtype, divisor_override):
    """Global pooling (GlobalAvgPool2d: one window = the plane), vectorised across planes, sums
    each plane in torch's order: torch's bits."""
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g, dtype=dtype) * 100).requires_grad_()
    kwargs = dict(kernel_size=shape[-2:], divisor_override=divisor_override)
    want = F.avg_pool2d(x, **kwargs)
    got = cnnops.avg_pool2d(x, **kwargs, backend="native")
    assert torch.equal(got, want)
    grad = torch.randn(want.shape, generator=g, dtype=dtype)
    _assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0],
                  0, 0, "grad_input")


_ISAS = cpu_isas("avx512", "baseline")  # avg_pool2d has no AVX2 variant


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", _ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [(False, True, None), (True, False, None), (True, True, 3)])
@pytest.mark.parametrize("shape,kernel_size,stride,padding", [
    ((2, 3, 19, 40), 3, 1, 1), ((1, 2, 23, 37), 3, 2, 1), ((2, 2, 12, 9), (2, 4), (1, 2), (1, 2)),
    ((1, 1, 30, 70), 5, 2, 2), ((3, 2, 6, 5), 3, 1, 0)])
def test_forward_row_kernels_bit_equal(shape, kernel_size, stride, padding, options, dtype, isa,
                                       threads, monkeypatch):
    """The AVX-512 forward (masked chunks along the row, rows summed 4 / 2 / 1 in lockstep) and
    the portable one give ATen's bits: the same tap order per output, one division."""
    monkeypatch.setenv("CNNOPS_CPU_ISA", isa)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ceil_mode, count_include_pad, divisor_override = options
        g = torch.Generator().manual_seed(sum(shape))
        x = torch.randn(shape, generator=g, dtype=dtype)
        kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                      ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                      divisor_override=divisor_override)
        assert torch.equal(cnnops.avg_pool2d(x, **kwargs, backend="native"),
                           F.avg_pool2d(x, **kwargs))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [(False, True, None), (True, False, None), (True, True, 3)])
@pytest.mark.parametrize("shape,kernel_size,stride,padding", [
    ((2, 17, 9, 8), 3, 2, 1), ((3, 64, 12, 11), 3, 1, 1), ((2, 5, 10, 13), (2, 4), (3, 2), (1, 2)),
    ((2, 33, 8, 8), 2, 2, 0), ((2, 20, 7, 7), 7, 7, 0)])
def test_channels_last_bit_equal(shape, kernel_size, stride, padding, options, dtype):
    """Channels-last input is read in place (the vector over channels): output and grad_input
    channels-last with torch's strides and bits (sums in ATen's tap order; the backward adds
    in output order)."""
    ceil_mode, count_include_pad, divisor_override = options
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=dtype).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad, divisor_override=divisor_override)
    got = cnnops.avg_pool2d(x, **kwargs, backend="native")
    want = F.avg_pool2d(x, **kwargs)
    assert got.stride() == want.stride() and torch.equal(got, want)
    grad = torch.randn(want.shape, generator=g, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    got_grad = torch.autograd.grad(got, x, grad)[0]
    want_grad = torch.autograd.grad(want, x, grad)[0]
    assert got_grad.stride() == want_grad.stride() and torch.equal(got_grad, want_grad)


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (2, 17, 5, 6)])
def test_channels_last_opcheck(shape):
    """The fakes give channels-last output and grad_input for a channels-last CPU input."""
    x = _input(shape).detach().contiguous(memory_format=torch.channels_last)
    args, out_hw = _raw_args(x, 3)
    torch.library.opcheck(torch.ops.cnnops.avg_pool2d.default,
                          (x.requires_grad_(), *args, out_hw))
    out = torch.ops.cnnops.avg_pool2d(x.detach(), *args, out_hw)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.library.opcheck(torch.ops.cnnops.avg_pool2d_grad_input.default,
                          (torch.randn_like(out), x.detach(), *args))


@pytest.mark.parametrize("isa", _ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [(False, True, None), (True, False, None), (True, True, 3)])
@pytest.mark.parametrize("shape,kernel_size,stride,padding", [
    ((2, 3, 19, 40), 3, 1, 1), ((1, 2, 23, 37), (3, 4), (2, 1), (1, 2)), ((2, 2, 12, 9), (3, 1), (2, 1), (1, 0)),
    ((1, 1, 8, 70), 5, 1, 2), ((3, 2, 6, 5), 3, 1, 0)])
def test_grad_stride_w_1_bit_equal(shape, kernel_size, stride, padding, options, dtype, isa,
                                   monkeypatch):
    """The stride_w 1 backward (AVX-512: a gather, each input summing the outputs that cover it
    in output order) gives ATen's bits; the portable kernel its values."""
    monkeypatch.setenv("CNNOPS_CPU_ISA", isa)
    ceil_mode, count_include_pad, divisor_override = options
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=dtype)
    want = F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override)
    grad = torch.randn(want.shape, generator=g, dtype=dtype)
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    args = (pair(kernel_size), pair(stride), pair(padding))
    want_grad = torch.ops.aten.avg_pool2d_backward(grad, x, *args, ceil_mode, count_include_pad,
                                                   divisor_override)
    got_grad = torch.ops.cnnops.avg_pool2d_grad_input(grad, x, *args, count_include_pad,
                                                      divisor_override)
    if isa == "avx512":
        assert torch.equal(got_grad, want_grad)
    else:  # the portable scatter adds tap by tap: the same terms in another order
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        _assert_close(got_grad, want_grad, tol, tol, "grad_input")
