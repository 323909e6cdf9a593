"""Triton conv2d (tap-loop implicit GEMM, stride-phase grad input, split-K grad weight) against
torch in float64.

On a machine without CUDA these run through Triton's interpreter on tiny CPU tensors. On a GPU
every tensor is created on the GPU and every reference is computed on the CPU in float64 (no
TF32 in a reference, no CPU gradient fed to a CUDA backward).
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
    "channel_blocks": (1, 20, 5, 6, 18, (3, 3), 1, 1, 1, 1, True),  # C_in > BLOCK_K, uneven
}


def pair(v):
    return list(v) if isinstance(v, tuple) else [v, v]


def assert_close(actual, expected, dtype, what):
    assert_close_to(actual.detach().double().cpu(), expected.detach().double().cpu(),
                    *TOL[dtype], what)


def make(case, dtype, seed=0):
    """(x, w, b) on the Triton device in `dtype`, drawn in float64 on the CPU."""
    n, c_in, h, w, c_out, k, _, _, _, groups, bias = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(c_out, c_in // groups, *k, generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if bias else None
    return [t.to(DEVICE, dtype) if t is not None else None for t in (x, wt, b)]


def check_forward_backward(x, w, b, stride, padding, dilation, groups, activation=None,
                           via_op=False):
    """Output and every gradient against torch on CPU float64 copies of the same tensors.
    `via_op`: call the custom op directly (normalised arguments) instead of cnnops.conv2d."""
    dtype = x.dtype
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b)]
    refs = [t.detach().cpu().double().requires_grad_() if t is not None else None
            for t in (x, w, b)]
    if via_op:
        out = tconv.conv2d(*leaves, pair(stride), pair(padding), pair(dilation), groups,
                           activation == "relu")
    else:
        out = cnnops.conv2d(*leaves, stride, padding, dilation, groups, backend="triton",
                            activation=activation)
    ref = F.conv2d(*refs, stride, padding, dilation, groups)
    if activation == "relu":
        ref = F.relu(ref)
    assert out.dtype == dtype and out.device == x.device
    assert_close(out, ref, dtype, "output")
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out.backward(grad.to(out.device, dtype))
    ref.backward(grad)
    for name, t, r in zip(("grad input", "grad weight", "grad bias"), leaves, refs):
        if t is not None:
            assert t.grad.device == t.device
            assert_close(t.grad, r.grad, dtype, name)


def tf32(allowed: bool) -> None:
    """Sets cuDNN's TF32 flag until the end of the test, through torch's `flags()` context
    manager: the plain attribute is frozen once torch.testing._internal.common_utils (imported
    by the OpInfo tests in the same process) has called `torch.backends.disable_global_flags`."""
    cudnn = torch.backends.cudnn
    context = cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                          deterministic=cudnn.deterministic, allow_tf32=allowed)
    context.__enter__()
    _EXITS.append(context)


_EXITS: list = []  # flags() contexts entered by the running test, left by the fixture below


@pytest.fixture(autouse=True)
def _restore_cudnn_flags():
    yield
    while _EXITS:
        _EXITS.pop().__exit__(None, None, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CASES)
def test_conv2d_matches_torch(name, dtype, monkeypatch):
    tf32(False)
    case = CASES[name]
    x, w, b = make(case, dtype)
    check_forward_backward(x, w, b, *case[6:10], via_op=True)


def test_conv2d_relu_epilogue():
    x, w, b = make(CASES["rgb_3x3_pad1"], torch.float64)
    check_forward_backward(x, w, b, 1, 1, 1, 1, activation="relu")


# (stride, padding, dilation, kernel): every stride phase of grad input, including phases no
# tap reaches (stride > kernel, gcd(stride, dilation) > 1) and padding > dilation * (R - 1)
PHASES = {
    "stride1": ((1, 1), (1, 1), (1, 1), (3, 3)),
    "stride1_dilated_bigpad": ((1, 1), (3, 2), (2, 1), (2, 3)),
    "stride2": ((2, 2), (1, 1), (1, 1), (3, 3)),
    "stride3": ((3, 3), (1, 2), (1, 1), (3, 4)),
    "unequal": ((2, 3), (0, 1), (1, 1), (3, 3)),
    "stride2_dilation2": ((2, 2), (1, 2), (2, 2), (3, 3)),
    "stride3_dilation2": ((3, 2), (2, 1), (2, 3), (3, 2)),
    "stride_gt_kernel": ((3, 4), (0, 0), (1, 1), (2, 2)),
}


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("name", PHASES)
def test_grad_input_stride_phases(name, groups):
    stride, padding, dilation, k = PHASES[name]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 10, 11, dtype=torch.float64, generator=g)
    w = torch.randn(6, 4 // groups, *k, dtype=torch.float64, generator=g)
    y = F.conv2d(x, w, None, stride, padding, dilation, groups)
    dy = torch.randn(y.shape, dtype=torch.float64, generator=g)
    want = torch.nn.grad.conv2d_input(x.shape, w, dy, stride, padding, dilation, groups)
    got = tconv.conv2d_grad_input(dy.to(DEVICE), w.to(DEVICE), [10, 11], list(stride),
                                  list(padding), list(dilation), groups)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close(got, want, torch.float64, f"grad input, {name}")


def test_phase_taps_cover_each_tap_once():
    """Across the phases of one axis, every tap appears exactly once (no tap masked, none
    lost), and each phase's taps give the same dy rows as the direct formula."""
    for stride, pad, dil, taps in [(2, 1, 1, 3), (3, 2, 2, 4), (2, 0, 2, 3), (4, 0, 1, 2)]:
        seen = []
        for phase in range(stride):
            sub = tconv._phase_taps(phase, stride, pad, dil, taps)
            if sub is None:
                continue
            rs, d, pad_sub = sub
            seen += rs
            for i in range(3):
                h = phase + stride * i
                for t, r in enumerate(rs):
                    assert (h + pad - r * dil) % stride == 0
                    assert i - pad_sub + t * d == (h + pad - r * dil) // stride
        assert sorted(seen) == list(range(taps))


THIN = {  # first layers: C_in 1, 3 (padded to 4) and 5 (padded to 8), 7x7 / 2 and 3x3
    "cin1_5x5": (1, 1, 7, 6, 3, (5, 5), 1, 2, 1, 1, True),
    "rgb_7x7_s2": (1, 3, 13, 12, 4, (7, 7), 2, 3, 1, 1, True),
    "cin5_3x3": (1, 5, 6, 7, 3, (3, 3), 1, 1, (2, 1), 1, False),
}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("name", THIN)
def test_conv2d_thin_input_row_run(name, layout):
    case = THIN[name]
    x, w, b = make(case, torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x_cl, w_pad = tconv._pad_thin_channels(tconv._channels_last(x), w, 1)
    assert x_cl.shape[1] in (1, 2, 4, 8) and w_pad.shape[1] == x_cl.shape[1]
    assert tconv._row_run(x_cl, case[5][1], 1, pair(case[8])[1])  # the thin path is the one run
    check_forward_backward(x, w, b, *case[6:10], via_op=True)


def test_forward_split_k(monkeypatch):
    """Split-K of the forward (few output tiles): partials added in order with bias and ReLU;
    the same bits twice."""
    monkeypatch.setattr(tconv, "_FWD_SPLIT_INTERPRETED", 3)
    case = CASES["channel_blocks"]
    x, w, b = make(case, torch.float64)
    check_forward_backward(x, w, b, *case[6:10], activation="relu", via_op=True)
    first = tconv.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, True)
    assert torch.equal(first, tconv.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, True))
    x, w, b = make(CASES["stride_dilation_groups"], torch.float64)
    check_forward_backward(x, w, b, (2, 3), (1, 0), (2, 1), 2, via_op=True)


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


def test_conv2d_output_is_channels_last():
    x, w, b = make(CASES["rgb_3x3_pad1"], torch.float64)
    y = tconv.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, False)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_conv2d_padding_same_even_kernel():
    x, w, b = make((1, 3, 6, 5, 2, (4, 3), 1, 0, 1, 1, True), torch.float64)
    check_forward_backward(x, w, b, 1, "same", (1, 2), 1)


def test_conv2d_empty_batch():
    x, w, b = make((0, 3, 5, 5, 4, (3, 3), 1, 1, 1, 1, True), torch.float64)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    y = tconv.conv2d(*leaves, [1, 1], [1, 1], [1, 1], 1, False)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_grad_weight_split_k_is_used_and_deterministic():
    x, w, b = make((2, 2, 8, 8, 3, (3, 3), 1, 1, 1, 1, True), torch.float64)
    assert tconv._wgrad_split(2 * 8 * 8, 1, x.device) > 1 or ON_GPU
    grad = torch.randn(2, 3, 8, 8, dtype=torch.float64).to(x.device)
    first = tconv.conv2d_grad_weight(grad, x, list(w.shape), [1, 1], [1, 1], [1, 1], 1, True)
    second = tconv.conv2d_grad_weight(grad, x, list(w.shape), [1, 1], [1, 1], [1, 1], 1, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    want_w = torch.nn.grad.conv2d_weight(x.cpu(), w.shape, grad.cpu(), 1, 1)
    assert_close(first[0], want_w, torch.float64, "grad weight")
    assert_close(first[1], grad.cpu().sum((0, 2, 3)), torch.float64, "grad bias")


def test_conv2d_gradcheck():
    x, w, b = make((1, 2, 5, 4, 2, (3, 2), 2, 1, 1, 2, True), torch.float64)
    args = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(
        lambda x, w, b: tconv.conv2d(x, w, b, [2, 1], [1, 1], [1, 2], 2, True), args,
        fast_mode=True)


def test_conv2d_opcheck():
    x, w, b = make((1, 2, 5, 5, 2, (3, 3), 1, 1, 1, 2, True), torch.float64)
    args = [t.requires_grad_() for t in (x, w, b)]
    geometry = ([2, 1], [1, 1], [1, 1], 2)
    torch.library.opcheck(tconv.conv2d, (*args, *geometry, True))
    grad = torch.randn(1, 2, 3, 5, dtype=torch.float64).to(x.device)
    torch.library.opcheck(tconv.conv2d_grad_input, (grad, w.detach(), [5, 5], *geometry))
    torch.library.opcheck(tconv.conv2d_grad_weight,
                          (grad, x.detach(), list(w.shape), *geometry, True))


@pytest.mark.skipif(not ON_GPU, reason="float16/bfloat16 tl.dot needs a GPU (the interpreter's bf16 dot is wrong)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv2d_half_precision_gpu(dtype):
    for case in list(CASES.values()) + list(THIN.values()):
        x, w, b = make(case, dtype)
        check_forward_backward(x, w, b, *case[6:10])


@pytest.mark.skipif(not ON_GPU, reason="TF32 exists on the GPU only")
def test_conv2d_tf32_gpu(monkeypatch):
    tf32(True)
    x, w, b = make(CASES["rgb_3x3_pad1"], torch.float32)
    out = cnnops.conv2d(x, w, b, 1, 1, backend="triton")
    ref = F.conv2d(x.cpu().double(), w.cpu().double(), b.cpu().double(), 1, 1)
    torch.testing.assert_close(out.cpu().double(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not ON_GPU, reason="the autotune configs are compiled on the GPU only")
@pytest.mark.parametrize("kernel_name", ["conv2d_fwd_kernel", "conv2d_grad_weight_kernel"])
def test_every_autotune_config_gpu(kernel_name, monkeypatch):
    """Each config alone (no pruning, no timing) on a layer with uneven sizes, float32 IEEE;
    configs over the shared memory of the GPU for float32 are left out as the pruner does."""
    kernel = getattr(tconv, kernel_name)
    x, w, b = make((2, 5, 11, 13, 40, (3, 3), 2, 1, 1, 1, True), torch.float32)
    tf32(False)
    fitting = [c for c in kernel.configs
               if tconv._smem_bytes(c, "BLOCK_M", "BLOCK_N", "BLOCK_K", 4) <= tconv.SMEM_LIMIT]
    assert fitting
    for config in fitting:
        monkeypatch.setattr(kernel, "configs", [config])
        kernel.cache.clear()
        check_forward_backward(x, w, b, 2, 1, 1, 1, via_op=True)
    kernel.cache.clear()
