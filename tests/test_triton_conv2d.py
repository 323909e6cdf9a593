"""Triton conv2d (implicit GEMM): forward, grad input, grad weight, grad bias against torch.

On a machine without CUDA these run through Triton's interpreter on tiny CPU tensors.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnops
from differential import assert_close as assert_close_to
from backend_support import ON_GPU, TRITON_DEVICE as DEVICE, skip_module_without_triton

skip_module_without_triton()

from cnnops.backends.triton import conv2d as tconv  # noqa: E402

TOL = {torch.float32: (2e-5, 1e-4), torch.float64: (1e-12, 1e-10),
       torch.float16: (2e-2, 2e-2), torch.bfloat16: (1e-1, 5e-2)}

# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups, bias)
CASES = {
    "rgb_3x3_pad1": (2, 3, 7, 9, 4, (3, 3), 1, 1, 1, 1, True),
    "cin1_batch1": (1, 1, 5, 5, 2, (2, 2), 1, 0, 1, 1, False),
    "stride_dilation_groups": (2, 4, 9, 8, 6, (3, 2), (2, 3), (1, 0), (2, 1), 2, True),
    "depthwise_stride2": (1, 5, 6, 7, 5, (3, 3), 2, 1, 1, 5, True),
    "pointwise": (2, 4, 5, 3, 3, (1, 1), 1, 0, 1, 1, True),
    "stride_gt_kernel": (1, 2, 9, 9, 3, (2, 2), 3, 0, 1, 1, True),
    "prime_wide_kernel": (1, 2, 7, 11, 17, (1, 5), (1, 2), (0, 2), 1, 1, True),
}


def assert_close(actual, expected, dtype, what):
    assert_close_to(actual.double().cpu(), expected.double().cpu(), *TOL[dtype], what)


def make(case, dtype, seed=0):
    n, c_in, h, w, c_out, k, _, _, _, groups, bias = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(c_out, c_in // groups, *k, generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if bias else None
    return [t.to(DEVICE, dtype) if t is not None else None for t in (x, wt, b)]


def check_forward_backward(x, w, b, stride, padding, dilation, groups, activation=None):
    dtype = x.dtype
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b)]
    refs = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = cnnops.conv2d(*leaves, stride, padding, dilation, groups, backend="triton",
                        activation=activation)
    ref = F.conv2d(*refs, stride, padding, dilation, groups)
    if activation == "relu":
        ref = F.relu(ref)
    assert out.dtype == dtype
    assert_close(out, ref, dtype, "output")
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out.backward(grad.to(out.device, dtype))
    ref.backward(grad)
    for name, t, r in zip(("grad input", "grad weight", "grad bias"), leaves, refs):
        if t is not None:
            assert_close(t.grad, r.grad, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CASES)
def test_conv2d_matches_torch(name, dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    case = CASES[name]
    x, w, b = make(case, dtype)
    check_forward_backward(x, w, b, *case[6:10])


def test_conv2d_relu_epilogue():
    x, w, b = make(CASES["rgb_3x3_pad1"], torch.float64)
    check_forward_backward(x, w, b, 1, 1, 1, 1, activation="relu")


@pytest.mark.parametrize("layout", ["channels_last_input", "channels_last_weight",
                                    "strided_view", "unbatched"])
def test_conv2d_layouts(layout):
    x, w, b = make(CASES["stride_dilation_groups"], torch.float64)
    if layout == "channels_last_input":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "channels_last_weight":
        w = w.contiguous(memory_format=torch.channels_last)
    elif layout == "strided_view":  # every other column of a wider tensor, and transposed H/W
        x = torch.cat([x, x], dim=3)[..., ::2].transpose(2, 3)
    else:
        x = x[0]
    check_forward_backward(x, w, b, (2, 3), (1, 0), (2, 1), 2)


def test_conv2d_padding_same_even_kernel():
    x, w, b = make((1, 3, 6, 5, 2, (4, 3), 1, 0, 1, 1, True), torch.float64)
    check_forward_backward(x, w, b, 1, "same", (1, 2), 1)


def test_grad_weight_split_k_is_used_and_deterministic():
    x, w, b = make((2, 2, 8, 8, 3, (3, 3), 1, 1, 1, 1, True), torch.float64)
    assert tconv._split_k(2 * 8 * 8, 1, x.device) > 1 or ON_GPU
    grad = torch.randn(2, 3, 8, 8, dtype=x.dtype, device=x.device)
    first = tconv.conv2d_grad_weight(grad, x, list(w.shape), [1, 1], [1, 1], [1, 1], 1, True)
    second = tconv.conv2d_grad_weight(grad, x, list(w.shape), [1, 1], [1, 1], [1, 1], 1, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_conv2d_gradcheck():
    x, w, b = make((1, 2, 5, 4, 2, (3, 2), 2, 1, 1, 2, True), torch.float64)
    args = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(
        lambda x, w, b: cnnops.conv2d(x, w, b, (2, 1), 1, (1, 2), 2, backend="triton",
                                      activation="relu"), args, fast_mode=True)


def test_conv2d_opcheck():
    x, w, b = make((1, 2, 5, 5, 2, (3, 3), 1, 1, 1, 2, True), torch.float64)
    args = [t.requires_grad_() for t in (x, w, b)]
    geometry = ([2, 1], [1, 1], [1, 1], 2)
    torch.library.opcheck(tconv.conv2d, (*args, *geometry, True))
    grad = torch.randn(1, 2, 3, 5, dtype=x.dtype, device=x.device)
    torch.library.opcheck(tconv.conv2d_grad_input, (grad, w.detach(), [5, 5], *geometry))
    torch.library.opcheck(tconv.conv2d_grad_weight,
                          (grad, x.detach(), list(w.shape), *geometry, True))


@pytest.mark.skipif(not ON_GPU, reason="float16/bfloat16 tl.dot needs a GPU (the interpreter's bf16 dot is wrong)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv2d_half_precision_gpu(dtype):
    for case in CASES.values():
        x, w, b = make(case, dtype)
        check_forward_backward(x, w, b, *case[6:10])


@pytest.mark.skipif(not ON_GPU, reason="TF32 exists on the GPU only")
def test_conv2d_tf32_gpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    x, w, b = make(CASES["rgb_3x3_pad1"], torch.float32)
    out = cnnops.conv2d(x, w, b, 1, 1, backend="triton")
    ref = F.conv2d(x.double(), w.double(), b.double(), 1, 1)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not ON_GPU, reason="the autotune configs are compiled on the GPU only")
@pytest.mark.parametrize("kernel_name", ["conv2d_fwd_kernel", "conv2d_grad_input_kernel",
                                         "conv2d_grad_weight_kernel"])
def test_every_autotune_config_gpu(kernel_name, monkeypatch):
    kernel = getattr(tconv, kernel_name)
    x, w, b = make((2, 5, 11, 13, 40, (3, 3), 2, 1, 1, 1, True), torch.float32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    for config in list(kernel.configs):
        monkeypatch.setattr(kernel, "configs", [config])  # one config: no pruning, no timing
        kernel.cache.clear()
        check_forward_backward(x, w, b, 2, 1, 1, 1)
    kernel.cache.clear()
