"""Triton max_pool2d, forward (values and indices) and backward, against torch.

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

from cnnops.backends.triton import max_pool2d as tmax  # noqa: E402

TOL = {torch.float32: (1e-6, 1e-5), torch.float64: (1e-13, 1e-12),
       torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)}

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
CASES = {
    "3x3_s2_pad1_ceil": (2, 3, 7, 9, (3, 3), 2, 1, 1, True),
    "rect_dilated": (1, 2, 8, 7, (2, 3), (3, 1), 1, (2, 1), False),
    "stride_gt_kernel_ceil": (2, 2, 5, 5, (2, 2), 3, (0, 1), 1, True),
    "ceil_drops_last_window": (1, 1, 6, 6, (3, 3), 2, 1, 1, True),
    "global": (2, 5, 4, 3, (4, 3), None, 0, 1, False),
    "prime": (1, 3, 7, 5, (3, 2), (2, 3), 1, 1, False),
    "window_wider_than_input_ceil": (1, 2, 6, 3, (2, 4), None, 0, 1, True),
}


def assert_close(actual, expected, dtype, what):
    assert_close_to(actual.double().cpu(), expected.double().cpu(), *TOL[dtype], what)


def make_input(shape, dtype, layout="contiguous", seed=0):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x = x.to(DEVICE, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided_view":
        # same values: every other element of a wider tensor, with H and W strides swapped
        t = x.transpose(2, 3)
        x = torch.stack([t, t], dim=-1)[..., 0].transpose(2, 3)
    return x


def random_grad(shape, dtype, device=DEVICE):
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return g.to(device, dtype)


def check_max(x, kernel, stride, padding, dilation, ceil_mode):
    leaf = x.detach().requires_grad_()
    ref_leaf = x.detach().cpu().double().requires_grad_()
    out, idx = cnnops.max_pool2d(leaf, kernel, stride, padding, dilation, ceil_mode,
                                 return_indices=True, backend="triton")
    ref, ref_idx = F.max_pool2d(ref_leaf, kernel, stride, padding, dilation, ceil_mode,
                                return_indices=True)
    assert out.device == x.device and out.shape == ref.shape
    assert_close(out, ref, x.dtype, "max output")
    assert idx.dtype == torch.int64
    mismatch = (idx.cpu() != ref_idx).nonzero()[:5].tolist()
    assert not mismatch, f"indices differ at {mismatch}"
    assert out.is_contiguous(memory_format=torch.channels_last) == \
        ref.is_contiguous(memory_format=torch.channels_last)
    grad = random_grad(ref.shape, x.dtype)  # on the triton call's device
    out.backward(grad)
    ref.backward(grad.cpu().double())
    assert_close(leaf.grad, ref_leaf.grad, x.dtype, "max grad input")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CASES)
def test_max_pool2d_matches_torch(name, dtype):
    n, c, h, w, *geometry = CASES[name]
    check_max(make_input((n, c, h, w), dtype), *geometry)


@pytest.mark.parametrize("layout", ["channels_last", "strided_view"])
def test_max_pool2d_layouts(layout):
    n, c, h, w, *geometry = CASES["3x3_s2_pad1_ceil"]
    check_max(make_input((n, c, h, w), torch.float64, layout), *geometry)


def test_max_pool2d_unbatched_and_single_channel():
    check_max(make_input((3, 7, 6), torch.float64), (3, 2), 2, 1, 1, True)
    check_max(make_input((1, 1, 5, 4), torch.float32), 2, 1, 0, 1, False)


def test_max_pool2d_empty_batch(monkeypatch):
    """N = 0 as torch; no kernel is launched (an empty grid is an invalid launch on the GPU)."""
    launches = []
    monkeypatch.setattr(tmax, "launch", lambda kernel, *a, **k: launches.append(kernel))
    shape = (0, 3, 6, 5)
    check_max(make_input(shape, torch.float64), 3, 2, 1, 1, False)
    assert launches == []


def test_max_pool2d_nan_and_inf_windows():
    x = make_input((1, 2, 6, 7), torch.float32)
    x[0, 0, 1, 1] = float("nan")  # a NaN wins its windows
    x[0, 0, 1, 2] = float("nan")  # two NaNs in one window: PyTorch keeps the last
    x[0, 1, :3, :3] = float("-inf")  # an all -inf window keeps its first in-image element
    check_max(x, 3, 2, 1, 1, False)
    check_max(x, 2, 1, 0, 2, True)


def test_max_pool2d_gradcheck():
    x = make_input((1, 2, 5, 6), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: cnnops.max_pool2d(t, (3, 2), (2, 1), 1, (1, 2), True, backend="triton"),
        (x,), fast_mode=True)


def test_max_pool2d_opcheck():
    x = make_input((1, 2, 5, 6), torch.float64).requires_grad_()
    torch.library.opcheck(tmax.max_pool2d, (x, [3, 2], [2, 1], [1, 1], [1, 2], True))
    out, idx = tmax.max_pool2d(x.detach(), [2, 2], [2, 2], [1, 1], [1, 1], False)
    grad = random_grad(out.shape, x.dtype)
    torch.library.opcheck(tmax.max_pool2d_grad_input, (grad, idx, [5, 6], [2, 2], [2, 2],
                                                        [1, 1], [1, 1]))
    assert torch.ops.cnnops_triton.max_pool2d_grad_input is not None  # the op name


@pytest.mark.skipif(not ON_GPU, reason="float16/bfloat16 run on the GPU only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_max_pool2d_half_precision_gpu(dtype):
    for n, c, h, w, *geometry in CASES.values():
        check_max(make_input((n, c, h, w), dtype), *geometry)
