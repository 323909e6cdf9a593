"""Triton avg_pool2d, forward and backward, against torch.

References are torch.nn.functional on CPU float64 copies (exact, no TF32, whatever the device
of the triton call). Without CUDA these run in Triton's interpreter on tiny CPU tensors.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnops
from differential import assert_close as assert_close_to
from backend_support import ON_GPU, TRITON_DEVICE as DEVICE, skip_module_without_triton

skip_module_without_triton()

from cnnops.backends.triton import avg_pool2d as tavg  # noqa: E402

TOL = {torch.float32: (1e-6, 1e-5), torch.float64: (1e-13, 1e-12),
       torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)}

# (N, C, H, W, kernel, stride, padding, ceil_mode)
CASES = {
    "3x3_s2_pad1_ceil": (2, 3, 7, 9, (3, 3), 2, 1, True),
    "stride_gt_kernel_ceil": (2, 2, 5, 5, (2, 2), 3, (0, 1), True),
    "ceil_drops_last_window": (1, 1, 6, 6, (3, 3), 2, 1, True),
    "global": (2, 5, 4, 3, (4, 3), None, 0, False),
    "prime": (1, 3, 7, 5, (3, 2), (2, 3), 1, False),
    "window_wider_than_input_ceil": (1, 2, 6, 3, (2, 4), None, 0, True),
}


def assert_close(actual, expected, dtype, what):
    assert_close_to(actual.double().cpu(), expected.double().cpu(), *TOL[dtype], what)


def make_input(shape, dtype, layout="contiguous", seed=0):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x = x.to(DEVICE, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided_view":
        t = x.transpose(2, 3)
        x = torch.stack([t, t], dim=-1)[..., 0].transpose(2, 3)
    return x


def random_grad(shape, dtype, device=DEVICE):
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return g.to(device, dtype)


def check_avg(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    leaf = x.detach().requires_grad_()
    ref_leaf = x.detach().cpu().double().requires_grad_()
    out = cnnops.avg_pool2d(leaf, kernel, stride, padding, ceil_mode, count_include_pad,
                            divisor_override, backend="triton")
    ref = F.avg_pool2d(ref_leaf, kernel, stride, padding, ceil_mode, count_include_pad,
                       divisor_override)
    assert out.device == x.device and out.shape == ref.shape
    assert_close(out, ref, x.dtype, "avg output")
    assert out.is_contiguous(memory_format=torch.channels_last) == \
        ref.is_contiguous(memory_format=torch.channels_last)
    grad = random_grad(ref.shape, x.dtype)  # on the triton call's device
    out.backward(grad)
    ref.backward(grad.cpu().double())
    assert_close(leaf.grad, ref_leaf.grad, x.dtype, "avg grad input")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("count_include_pad,divisor_override",
                         [(True, None), (False, None), (True, 5), (False, 2)])
def test_avg_pool2d_matches_torch(name, dtype, count_include_pad, divisor_override):
    n, c, h, w, kernel, stride, padding, ceil_mode = CASES[name]
    check_avg(make_input((n, c, h, w), dtype), kernel, stride, padding, ceil_mode,
              count_include_pad, divisor_override)


@pytest.mark.parametrize("layout", ["channels_last", "strided_view"])
def test_avg_pool2d_layouts(layout):
    check_avg(make_input((2, 3, 7, 9), torch.float64, layout), 3, 2, 1, True, False, None)


def test_avg_pool2d_unbatched_single_channel_and_nan():
    x = make_input((3, 7, 6), torch.float64)
    x[1, 2, 3] = float("nan")
    check_avg(x, (3, 2), 2, 1, True, True, None)
    check_avg(make_input((1, 1, 5, 4), torch.float32), 2, 1, 0, False, True, None)


def test_avg_pool2d_empty_batch(monkeypatch):
    """N = 0 as torch; no kernel is launched (an empty grid is an invalid launch on the GPU)."""
    launches = []
    monkeypatch.setattr(tavg, "launch", lambda kernel, *a, **k: launches.append(kernel))
    shape = (0, 3, 6, 5)
    check_avg(make_input(shape, torch.float64), 3, 2, 1, False, True, None)
    assert launches == []


def test_avg_pool2d_divides_exactly():
    """Sums of small integers (exact in any precision) divided by 3 and by 7 must be the
    correctly rounded float32 quotients, bit for bit. On the GPU this fails with Triton's
    default `/` (div.full.f32, up to 2 ulp off); the kernels use div_rn. (In the interpreter
    both are numpy's exact division: there the test checks the divisor logic only.)"""
    x = torch.arange(1, 3 * 64 + 1, dtype=torch.float32).reshape(1, 1, 3, 64).to(DEVICE)
    for kernel, divisor in (((1, 3), None), ((3, 1), 7)):
        out = cnnops.avg_pool2d(x, kernel, 1, 0, False, True, divisor, backend="triton")
        sums = F.avg_pool2d(x.cpu().double(), kernel, 1, 0, False, True, 1)
        want = (sums / (divisor or 3)).float()  # one rounding of the exact quotient
        assert torch.equal(out.cpu(), want)


def test_avg_pool2d_gradcheck():
    x = make_input((1, 2, 5, 6), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: cnnops.avg_pool2d(t, 3, 2, 1, True, False, None, backend="triton"),
        (x,), fast_mode=True)


def test_avg_pool2d_opcheck():
    x = make_input((1, 2, 5, 6), torch.float64).requires_grad_()
    torch.library.opcheck(tavg.avg_pool2d, (x, [3, 3], [2, 2], [1, 1], True, False, 4))
    grad = random_grad((1, 2, 3, 4), x.dtype)
    torch.library.opcheck(tavg.avg_pool2d_grad_input, (grad, [5, 6], [2, 2], [2, 2], [1, 1],
                                                        False, None))
    assert torch.ops.cnnops_triton.avg_pool2d_grad_input is not None  # the op name


@pytest.mark.skipif(not ON_GPU, reason="float16/bfloat16 run on the GPU only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_avg_pool2d_half_precision_gpu(dtype):
    for n, c, h, w, kernel, stride, padding, ceil_mode in CASES.values():
        check_avg(make_input((n, c, h, w), dtype), kernel, stride, padding, ceil_mode, False,
                  None)
