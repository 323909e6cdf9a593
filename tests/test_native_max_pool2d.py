"""The native max_pool2d (kernels/{cpu,cuda}/max_pool2d.*) against torch.nn.functional.max_pool2d.

Output, indices (exactly) and gradient over the options and edges in float64 and float32 on
the CPU (ceil_mode windows wider than the input included), NaN and -inf windows, ties,
gradcheck, opcheck of the raw ops, and CUDA tests for every dtype (skipped without a GPU).
"""
import pytest
import torch
import torch.nn.functional as F

import cnnops
from differential import assert_close as _assert_close

from backend_support import cpu_isas, native_only, needs_cuda
from cnnops.shapes import pool2d_output_hw

pytestmark = native_only

# name: (input shape, kwargs of max_pool2d)
CASES = {
    "k2": ((2, 3, 8, 8), dict(kernel_size=2)),
    "k3_s2_p1": ((2, 3, 11, 9), dict(kernel_size=3, stride=2, padding=1)),
    "ceil": ((1, 2, 10, 7), dict(kernel_size=3, stride=2, ceil_mode=True)),
    "ceil_pad": ((2, 2, 6, 9), dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1),
                                    ceil_mode=True)),
    "dilation": ((2, 3, 13, 12), dict(kernel_size=3, stride=1, padding=1, dilation=(2, 3))),
    "dilation_ceil": ((1, 2, 9, 10), dict(kernel_size=2, stride=2, padding=1, dilation=2,
                                          ceil_mode=True)),
    "stride_gt_kernel": ((2, 2, 13, 11), dict(kernel_size=2, stride=3)),
    "rect": ((3, 1, 7, 13), dict(kernel_size=(1, 5), stride=(1, 2), padding=(0, 2))),
    "whole_plane": ((2, 3, 5, 4), dict(kernel_size=(5, 4))),
    "c1_batch1": ((1, 1, 5, 5), dict(kernel_size=3, stride=1, padding=1)),
    # ceil_mode with a window wider than the (padded) input: torch gives (3, 1) / (2, 1)
    "ceil_window_wider": ((2, 2, 6, 3), dict(kernel_size=(2, 4), ceil_mode=True)),
    "ceil_window_wider_pad": ((1, 2, 4, 3), dict(kernel_size=(3, 6), stride=(2, 6),
                                                 padding=(1, 1), ceil_mode=True)),
}


def _input(shape, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()


def _assert_indices_equal(got, want):
    bad = (got != want).nonzero()[:5].tolist()
    assert not bad, "indices differ from torch at " + "; ".join(
        f"{tuple(i)}: got {got[tuple(i)].item()}, want {want[tuple(i)].item()}" for i in bad)


def _compare(x, kwargs, atol=0.0, rtol=0.0):
    got, got_idx = cnnops.max_pool2d(x, **kwargs, return_indices=True, backend="native")
    want, want_idx = F.max_pool2d(x, **kwargs, return_indices=True)
    _assert_close(got, want, atol, rtol, "output")
    _assert_indices_equal(got_idx, want_idx)
    assert got.stride() == want.stride(), f"output strides {got.stride()} != {want.stride()}"
    grad = torch.randn_like(want)
    _assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0],
                  atol, rtol, "grad_input")


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch(name, dtype):
    shape, kwargs = CASES[name]
    _compare(_input(shape, dtype), kwargs, *((0, 0) if dtype == torch.float64 else (1e-6, 1e-6)))


def test_unbatched_input():
    _compare(_input((3, 9, 8)), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True))


def test_channels_last():
    x = _input((2, 5, 9, 8)).detach().contiguous(memory_format=torch.channels_last)
    _compare(x.requires_grad_(), dict(kernel_size=3, stride=2, padding=1))


def test_non_contiguous_view():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2, 6, 12, 14, dtype=torch.float64, generator=g)
    _compare(base[:, 1::2, ::2, 3:].requires_grad_(), dict(kernel_size=2, stride=1, dilation=2))


def test_ties_pick_torchs_index():
    # few distinct values: most windows hold ties, and overlapping windows share maxima
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 3, (2, 3, 9, 10), generator=g).double().requires_grad_()
    _compare(x, dict(kernel_size=3, stride=1, padding=1))
    _compare(x, dict(kernel_size=2, stride=2, ceil_mode=True))


def test_nan_wins_and_keeps_its_index():
    x = _input((1, 2, 8, 8)).detach()
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 1, 2] = float("nan")       # two NaNs in one window: torch keeps the last scanned
    x[0, 1, 5, 6] = float("nan")
    x[0, 1, 0, 0] = float("inf")
    _compare(x.requires_grad_(), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True))


def test_all_minus_inf_window():
    x = torch.full((1, 1, 6, 6), float("-inf"), dtype=torch.float64)
    x[0, 0, 4, 4] = 1.0
    _compare(x.requires_grad_(), dict(kernel_size=2, stride=2, padding=1))


def test_window_only_in_padding_is_refused():
    # W = 1, padding 1, dilation 2: the first window's taps are w = -1 and w = 1, both padding
    x = _input((1, 1, 3, 1)).detach()
    # validation refuses it (ValueError); called directly, the op's internal check does
    with pytest.raises(RuntimeError, match="internal error.*covers no input element"):
        torch.ops.cnnops.max_pool2d(x, [1, 2], [1, 1], [0, 1], [1, 2], [3, 1])


def test_output_size_that_overruns_is_refused():
    """The op takes its output size from the caller; one whose last window starts past the
    input would read out of bounds, so the binding refuses it (an internal error)."""
    x = _input((1, 1, 6, 6)).detach()
    with pytest.raises(RuntimeError, match="internal error.*does not fit"):
        torch.ops.cnnops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], [4, 3])


def test_empty_batch():
    x = _input((0, 2, 6, 6))
    out, idx = cnnops.max_pool2d(x, 2, return_indices=True, backend="native")
    assert out.shape == idx.shape == (0, 2, 3, 3) and idx.dtype == torch.int64
    assert torch.autograd.grad(out.sum(), x)[0].shape == x.shape


@pytest.mark.parametrize("name", ["k3_s2_p1", "dilation_ceil", "ceil_pad", "ceil_window_wider"])
def test_gradcheck(name):
    shape, kwargs = CASES[name]
    x = _input(shape, seed=4)
    assert torch.autograd.gradcheck(
        lambda t: cnnops.max_pool2d(t, **kwargs, backend="native"), (x,))


def test_gradgradcheck():
    x = _input((2, 3, 7, 6), seed=6)
    assert torch.autograd.gradgradcheck(
        lambda t: cnnops.max_pool2d(t, 3, 2, 1, ceil_mode=True, backend="native"), (x,))


def _raw_args(x, ceil_mode=True):
    """kernel_size, stride, padding, dilation of the raw ops, and the forward's output_size."""
    geometry = ([3, 2], [2, 1], [1, 1], [1, 2])
    return geometry, [*pool2d_output_hw(x.shape[-2:], *geometry, ceil_mode)]


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (2, 1, 4, 3)])
def test_opcheck(shape):
    x = _input(shape)
    geometry, out_hw = _raw_args(x)
    torch.library.opcheck(torch.ops.cnnops.max_pool2d.default, (x, *geometry, out_hw))
    torch.library.opcheck(torch.ops.cnnops.max_pool2d.default, (x.detach(), *geometry, out_hw))
    out, idx = torch.ops.cnnops.max_pool2d(x.detach(), *geometry, out_hw)
    torch.library.opcheck(torch.ops.cnnops.max_pool2d_grad_input.default,
                          (torch.randn_like(out), x.detach(), idx, *geometry))
    torch.library.opcheck(torch.ops.cnnops.max_pool2d_grad_input.default,
                          (torch.randn_like(out).requires_grad_(), x.detach(), idx, *geometry))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_matches_torch(name, dtype):
    shape, kwargs = CASES[name]
    # max is exact in every dtype: compare with torch's CUDA kernel on the same input; the
    # gradient sums overlapping windows, in float for half types as torch does
    tolerance = (0, 0) if dtype == torch.float64 else (1e-6, 1e-6) if dtype == torch.float32 \
        else (1e-2, 1e-2)
    _compare(_input(shape, dtype, "cuda"), kwargs, *tolerance)


@needs_cuda
def test_cuda_nan_and_channels_last():
    x = _input((2, 3, 8, 8), device="cuda").detach()
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = x[1, 2, 7, 7] = float("nan")
    _compare(x.contiguous(memory_format=torch.channels_last).requires_grad_(),
             dict(kernel_size=3, stride=2, padding=1, ceil_mode=True))


@needs_cuda
def test_cuda_opcheck():
    x = _input((2, 3, 9, 8), device="cuda").detach()
    geometry, out_hw = _raw_args(x)
    torch.library.opcheck(torch.ops.cnnops.max_pool2d.default, (x, *geometry, out_hw))
    out, idx = torch.ops.cnnops.max_pool2d(x, *geometry, out_hw)
    torch.library.opcheck(torch.ops.cnnops.max_pool2d_grad_input.default,
                          (torch.randn_like(out), x, idx, *geometry))


# ---- the row kernels per instruction set (issue 14) -----------------------------------------
# kernels/cpu/max_pool2d.cpp runs an AVX-512 or AVX2 row kernel (stride_w 1 or 2; masked chunks
# of 16 / 8 floats along the output row, borders included) and a portable one (baseline,
# other strides), picked per call by CNNOPS_CPU_ISA. Each must give torch's values
# and indices bit for bit, with and without indices (max_pool2d_values), at 1 and 2 threads.

_ISAS = cpu_isas()

# shapes that give several chunks per row (W > 32), a last chunk shifted left, rows narrower
# than a vector, wide strides and dilations, and the ResNet stem pool (reduced batch)
ROW_CASES = {
    "stem": ((2, 4, 48, 48), dict(kernel_size=3, stride=2, padding=1)),
    "stem_odd": ((1, 3, 37, 45), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "s1_wide": ((1, 2, 9, 70), dict(kernel_size=3, stride=1, padding=1)),
    "s1_k4_dil": ((2, 1, 11, 41), dict(kernel_size=(2, 4), stride=(2, 1), padding=(1, 2),
                                       dilation=(2, 3))),
    "s2_k2": ((3, 2, 28, 28), dict(kernel_size=2, stride=2)),
    "s2_k5_dil_ceil": ((1, 2, 13, 67), dict(kernel_size=5, stride=2, padding=2, dilation=(1, 2),
                                            ceil_mode=True)),
    "s2_narrow": ((2, 3, 7, 5), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "s3": ((1, 2, 10, 50), dict(kernel_size=3, stride=3, padding=1)),
    "w1": ((2, 2, 6, 1), dict(kernel_size=(3, 1), stride=(1, 2))),
    # kernel_h 3, stride_h 1: the separable AVX-512 plane kernel (row results merged by 3)
    "rows3_s2w_dil": ((2, 3, 11, 40), dict(kernel_size=3, stride=(1, 2), padding=1,
                                           dilation=(1, 2))),
    "rows3_nopad": ((1, 2, 5, 33), dict(kernel_size=3, stride=1)),
    "rows3_h3": ((2, 4, 3, 18), dict(kernel_size=3, stride=1, padding=1, ceil_mode=True)),
}


def _special_input(shape, dtype, kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        return torch.randint(0, 3, shape, generator=g).to(dtype)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if kind == "nan":
        x[torch.rand(shape, generator=g) < 0.08] = float("nan")
    elif kind == "minus_inf":
        x[torch.rand(shape, generator=g) < 0.7] = float("-inf")
        x[torch.rand(shape, generator=g) < 0.03] = float("nan")
    return x


def _pair(v):
    return list(v) if isinstance(v, tuple) else [v, v]


def _bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("isa", _ISAS)
@pytest.mark.parametrize("kind", ["randn", "ties", "nan", "minus_inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("name", list(ROW_CASES))
def test_row_kernels_bit_equal(name, layout, dtype, kind, isa, threads, monkeypatch):
    """NCHW: the row kernels; channels-last: the NHWC kernels (vector over channels), read in
    place, output and indices channels-last as torch gives them."""
    monkeypatch.setenv("CNNOPS_CPU_ISA", isa)
    shape, kwargs = ROW_CASES[name]
    if layout == "channels_last":  # channel counts around the vector widths
        shape = (shape[0], {1: 17, 2: 33, 3: 5, 4: 64}[shape[1]], *shape[2:])
    x = _special_input(shape, dtype, kind, seed=len(name))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    want, want_idx = F.max_pool2d(x, **kwargs, return_indices=True)
    got, got_idx = cnnops.max_pool2d(x, **kwargs, return_indices=True, backend="native")
    _assert_indices_equal(got_idx, want_idx)
    assert got.stride() == want.stride() and got_idx.stride() == want_idx.stride()
    assert torch.equal(_bits(got.contiguous()), _bits(want.contiguous())), \
        "values differ from torch's bits"
    k, s, p, d = (_pair(kwargs.get(key, default)) for key, default in
                  (("kernel_size", None), ("stride", kwargs["kernel_size"]), ("padding", 0),
                   ("dilation", 1)))
    out_hw = [*pool2d_output_hw(x.shape[-2:], k, s, p, d, kwargs.get("ceil_mode", False))]
    values = torch.ops.cnnops.max_pool2d_values(x, k, s, p, d, out_hw)
    assert values.stride() == want.stride()
    assert torch.equal(_bits(values.contiguous()), _bits(want.contiguous())), \
        "values-only op differs from torch's bits"


def test_values_only_backend_path():
    """need_indices=False runs max_pool2d_values where no gradient is needed, else the op
    with indices (autograd needs them)."""
    from cnnops.backends.native import BACKEND
    x = _input((2, 3, 9, 10), torch.float32)
    args = ((3, 3), (2, 2), (1, 1), (1, 1), False)
    want = F.max_pool2d(x, 3, 2, 1)
    out, idx = BACKEND.max_pool2d(x, *args, need_indices=False)
    assert idx is not None and out.grad_fn is not None  # x requires grad: indices kept
    with torch.no_grad():
        out, idx = BACKEND.max_pool2d(x, *args, need_indices=False)
    assert idx is None and torch.equal(out, want.detach())
    out, idx = BACKEND.max_pool2d(x.detach(), *args, need_indices=False)
    assert idx is None and torch.equal(out, want.detach())
    out, idx = BACKEND.max_pool2d(x.detach(), *args)
    assert idx is not None


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (2, 1, 4, 35)])
def test_values_opcheck_and_grad(shape):
    x = _input(shape)
    geometry, out_hw = _raw_args(x)
    torch.library.opcheck(torch.ops.cnnops.max_pool2d_values.default, (x, *geometry, out_hw))
    torch.library.opcheck(torch.ops.cnnops.max_pool2d_values.default,
                          (x.detach(), *geometry, out_hw))
    # a gradient through the values op (not the backend's path, but allowed) is max_pool2d's
    values = torch.ops.cnnops.max_pool2d_values(x, *geometry, out_hw)
    out, _ = torch.ops.cnnops.max_pool2d(x, *geometry, out_hw)
    grad = torch.randn_like(out)
    assert torch.equal(torch.autograd.grad(values, x, grad)[0], torch.autograd.grad(out, x, grad)[0])
    assert torch.autograd.gradcheck(
        lambda t: torch.ops.cnnops.max_pool2d_values(t, *geometry, out_hw), (x,))


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (2, 17, 5, 35)])
def test_channels_last_opcheck(shape):
    """The fakes give channels-last output and indices for a channels-last CPU input, as the
    kernels do."""
    x = _input(shape).detach().contiguous(memory_format=torch.channels_last)
    geometry, out_hw = _raw_args(x)
    torch.library.opcheck(torch.ops.cnnops.max_pool2d.default, (x.requires_grad_(), *geometry,
                                                                out_hw))
    torch.library.opcheck(torch.ops.cnnops.max_pool2d_values.default,
                          (x.detach(), *geometry, out_hw))
    out, idx = torch.ops.cnnops.max_pool2d(x.detach(), *geometry, out_hw)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert idx.is_contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.cnnops.max_pool2d_grad_input.default,
                          (torch.randn_like(out), x.detach(), idx, *geometry))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,kwargs", [((2, 17, 9, 8), dict(kernel_size=3, stride=2, padding=1)),
                                          ((3, 64, 12, 11), dict(kernel_size=3, stride=1,
                                                                 padding=1)),
                                          ((2, 33, 10, 13), dict(kernel_size=4, stride=3,
                                                                 padding=2, ceil_mode=True))])
def test_channels_last_grad_bit_equal(shape, kwargs, dtype):
    """The channels-last backward (scatter in output order, channel by channel, as ATen's)
    gives torch's gradient bit for bit, channels-last."""
    g = torch.Generator().manual_seed(shape[1])
    x = torch.randn(shape, generator=g, dtype=dtype).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    got = cnnops.max_pool2d(x, **kwargs, backend="native")
    want = F.max_pool2d(x, **kwargs)
    grad = torch.randn(want.shape, generator=g, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    got_grad = torch.autograd.grad(got, x, grad)[0]
    want_grad = torch.autograd.grad(want, x, grad)[0]
    assert got_grad.stride() == want_grad.stride()
    assert torch.equal(got_grad, want_grad)


def test_values_empty_batch():
    x = _input((0, 2, 6, 6)).detach()
    assert torch.ops.cnnops.max_pool2d_values(x, [2, 2], [2, 2], [0, 0], [1, 1],
                                              [3, 3]).shape == (0, 2, 3, 3)
