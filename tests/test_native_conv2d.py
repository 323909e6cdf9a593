"""The native conv2d (kernels/conv2d_*.{cpp,cu}) against torch.nn.functional.conv2d.

Forward and every gradient in float64 on the CPU over the options and edges, float32 with a
tolerance, gradcheck, opcheck of the raw ops, torch.compile, and CUDA tests for every dtype and
both forward kernels (skipped without a GPU).
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

import cnnops
from cnnops.shapes import conv2d_output_hw
from differential import assert_close as _assert_close

from backend_support import NATIVE, native_only, needs_cuda

pytestmark = native_only

# (dtype, atol, rtol)
FLOAT64 = (torch.float64, 1e-10, 1e-10)
FLOAT32 = (torch.float32, 1e-4, 1e-4)
CUDA_TOLERANCES = [(torch.float32, 1e-4, 1e-4), (torch.float64, 1e-10, 1e-10),
                   (torch.float16, 2e-2, 2e-2), (torch.bfloat16, 1e-1, 5e-2)]

# name: (input shape, weight shape, bias, kwargs of conv2d)
CASES = {
    "basic": ((2, 3, 8, 9), (4, 3, 3, 3), True, dict(padding=1)),
    "stride_pad_dilation": ((2, 4, 13, 11), (5, 4, 3, 2), True,
                            dict(stride=(2, 1), padding=(1, 2), dilation=(2, 3))),
    "groups": ((2, 6, 9, 7), (4, 3, 3, 3), True, dict(groups=2, padding=1)),
    "depthwise": ((1, 5, 7, 7), (10, 1, 3, 3), False, dict(groups=5, stride=2)),
    "stride_gt_kernel": ((2, 3, 11, 13), (2, 3, 2, 2), True, dict(stride=3)),
    "cin1_batch1": ((1, 1, 7, 5), (3, 1, 3, 3), True, {}),
    "kernel_1x1": ((3, 7, 5, 6), (2, 7, 1, 1), True, {}),
    "odd_kernel": ((2, 3, 13, 7), (3, 3, 3, 5), False, dict(padding=(0, 2))),
    "kernel_is_input": ((2, 2, 5, 4), (3, 2, 5, 4), True, {}),
    "big_padding": ((1, 2, 4, 3), (2, 2, 2, 2), True, dict(padding=3, stride=2)),
    # stride 1 but padding > dilation * (kernel - 1): grad_input takes the scatter path
    "pad_exceeds_kernel": ((2, 3, 5, 6), (4, 3, 1, 2), True, dict(padding=(1, 2))),
    "wide_rows": ((1, 2, 3, 41), (5, 2, 2, 3), True, dict(padding=(0, 1))),
    "stride2_wide": ((2, 3, 9, 45), (5, 3, 3, 3), True, dict(stride=2, padding=1)),
    "stride2_no_pad": ((1, 2, 5, 40), (3, 2, 2, 2), False, dict(stride=(1, 2))),
    "stride4_wide": ((1, 2, 12, 75), (4, 2, 5, 3), True, dict(stride=(3, 4), dilation=(1, 2))),
    "same_even_kernel": ((2, 3, 7, 8), (2, 3, 4, 2), True, dict(padding="same")),
    "same_dilated": ((1, 2, 9, 9), (3, 2, 3, 3), False, dict(padding="same", dilation=2)),
    "valid": ((2, 2, 6, 6), (2, 2, 3, 3), True, dict(padding="valid")),
}


def _inputs(input_shape, weight_shape, bias, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape, generator=g, dtype=torch.float64)
    w = torch.randn(weight_shape, generator=g, dtype=torch.float64)
    b = torch.randn(weight_shape[0], generator=g, dtype=torch.float64) if bias else None
    move = lambda t: None if t is None else t.to(device, dtype).requires_grad_()  # noqa: E731
    return move(x), move(w), move(b)


def _compare(x, w, b, kwargs, atol, rtol, activation=None):
    """Forward, output layout and all gradients of cnnops (native) against torch."""
    got = cnnops.conv2d(x, w, b, **kwargs, backend="native", activation=activation)
    with warnings.catch_warnings():  # torch's note on padding="same" with an even kernel
        warnings.simplefilter("ignore")
        want = F.conv2d(x, w, b, **kwargs)
    if activation == "relu":
        want = F.relu(want)
    _assert_close(got, want, atol, rtol, "output")
    assert got.is_contiguous(memory_format=torch.channels_last) == want.is_contiguous(
        memory_format=torch.channels_last) or got.dim() == 3, "output memory format"
    grad = torch.randn_like(want)
    tensors = [t for t in (x, w, b) if t is not None]
    got_grads = torch.autograd.grad(got, tensors, grad)
    want_grads = torch.autograd.grad(want, tensors, grad)
    for name, g1, g2 in zip(("grad_input", "grad_weight", "grad_bias"), got_grads, want_grads):
        _assert_close(g1, g2, atol, rtol, name)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype,atol,rtol", [FLOAT64, FLOAT32])
def test_matches_torch(name, dtype, atol, rtol):
    input_shape, weight_shape, bias, kwargs = CASES[name]
    x, w, b = _inputs(input_shape, weight_shape, bias, dtype)
    _compare(x, w, b, kwargs, atol, rtol)


@pytest.mark.parametrize("name", ["basic", "groups", "stride_pad_dilation"])
def test_fused_relu(name):
    input_shape, weight_shape, bias, kwargs = CASES[name]
    x, w, b = _inputs(input_shape, weight_shape, bias)
    _compare(x, w, b, kwargs, *FLOAT64[1:], activation="relu")


def test_unbatched_input():
    x, w, b = _inputs((3, 7, 6), (2, 3, 3, 3), True)
    _compare(x, w, b, dict(padding=1, stride=2), *FLOAT64[1:])


@pytest.mark.parametrize("which", ["input", "weight", "both"])
def test_channels_last(which):
    x, w, b = _inputs((2, 5, 8, 7), (4, 5, 3, 3), True)
    with torch.no_grad():
        if which in ("input", "both"):
            x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        if which in ("weight", "both"):
            w = w.contiguous(memory_format=torch.channels_last).requires_grad_()
    _compare(x, w, b, dict(padding=1), *FLOAT64[1:])


def test_non_contiguous_views():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 6, 10, 14, generator=g, dtype=torch.float64)
    x = base[:, ::2, 1:, ::2].requires_grad_()                       # strided view
    w = torch.randn(3, 3, 4, 3, generator=g, dtype=torch.float64).transpose(2, 3)
    w.requires_grad_()                                               # (3, 3, 3, 4) transposed
    _compare(x, w, None, dict(padding=(1, 0)), *FLOAT64[1:])


def test_nan_propagates():
    x, w, b = _inputs((1, 2, 6, 6), (3, 2, 3, 3), True)
    with torch.no_grad():
        x[0, 1, 2, 3] = float("nan")
    got = cnnops.conv2d(x, w, b, padding=1, backend="native")
    want = F.conv2d(x, w, b, padding=1)
    assert torch.equal(got.isnan(), want.isnan())
    _assert_close(got, want, 1e-10, 1e-10, "output")


def test_empty_batch():
    x, w, b = _inputs((0, 3, 5, 5), (2, 3, 3, 3), True)
    out = cnnops.conv2d(x, w, b, backend="native")
    assert out.shape == (0, 2, 3, 3)
    gw, gb = torch.autograd.grad(out.sum(), (w, b))
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


@pytest.mark.parametrize("name,activation", [("stride_pad_dilation", None), ("groups", "relu"),
                                             ("cin1_batch1", None)])
def test_gradcheck(name, activation):
    input_shape, weight_shape, bias, kwargs = CASES[name]
    shrink = lambda s: (min(s[0], 2),) + tuple(s[1:])  # noqa: E731
    x, w, b = _inputs(shrink(input_shape), weight_shape, bias, seed=3)
    args = (x, w) + ((b,) if b is not None else ())

    def conv(*t):
        return cnnops.conv2d(*t, **kwargs, backend="native", activation=activation)

    assert torch.autograd.gradcheck(conv, args)


def test_gradgradcheck():
    """Double backward (e.g. a gradient penalty) through the backward ops' own autograd."""
    x, w, b = _inputs((2, 4, 6, 7), (6, 2, 3, 2), True, seed=5)

    def conv(*t):
        return cnnops.conv2d(*t, stride=(2, 1), padding=1, dilation=(1, 2), groups=2,
                             backend="native", activation="relu")

    assert torch.autograd.gradgradcheck(conv, (x, w, b))


def _raw_args(x, w, b, stride, padding, dilation, groups, relu, algo):
    """The op's arguments, with the output size the caller computes (cnnops.shapes)."""
    out_hw = list(conv2d_output_hw(x.shape[-2:], w.shape[-2:], stride, padding, dilation))
    return (x, w, b, stride, padding, dilation, groups, out_hw, relu, algo)


def _raw_samples():
    x, w, b = _inputs((2, 4, 7, 6), (6, 2, 3, 2), True)
    return [
        _raw_args(x, w, b, [2, 1], [1, 1], [1, 2], 2, False, 0),
        _raw_args(x.detach(), w.detach(), None, [1, 1], [0, 0], [1, 1], 2, True, 0),
        _raw_args(x, w, b, [1, 2], [2, 0], [1, 1], 2, True, 0),
    ]


@pytest.mark.parametrize("i", range(3))
def test_opcheck_conv2d(i):
    torch.library.opcheck(torch.ops.cnnops.conv2d.default, _raw_samples()[i])


def test_opcheck_backward_ops():
    x, w, _ = _inputs((2, 4, 7, 6), (6, 2, 3, 2), False)
    x, w = x.detach(), w.detach()
    conv_args = ([2, 1], [1, 1], [1, 2], 2)
    grad = torch.randn_like(torch.ops.cnnops.conv2d(*_raw_args(x, w, None, *conv_args, False, 0)))
    torch.library.opcheck(torch.ops.cnnops.conv2d_grad_input.default, (grad, x, w, *conv_args))
    torch.library.opcheck(torch.ops.cnnops.conv2d_grad_weight.default, (grad, x, w, *conv_args))
    torch.library.opcheck(torch.ops.cnnops.conv2d_grad_bias.default, (grad,))
    # with requires_grad: the backward ops' own autograd (double backward)
    x, w, grad = (t.clone().requires_grad_() for t in (x, w, grad))
    torch.library.opcheck(torch.ops.cnnops.conv2d_grad_input.default, (grad, x, w, *conv_args))
    torch.library.opcheck(torch.ops.cnnops.conv2d_grad_weight.default, (grad, x, w, *conv_args))
    torch.library.opcheck(torch.ops.cnnops.conv2d_grad_bias.default, (grad,))


class TinyNet(torch.nn.Module):
    """conv+relu, max pool, conv, avg pool: every native op in one graph."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, stride=2, groups=2)

    def forward(self, x):
        x = cnnops.conv2d(x, self.conv1.weight, self.conv1.bias, padding=1, activation="relu",
                          backend="native")
        x = cnnops.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, backend="native")
        x = cnnops.conv2d(x, self.conv2.weight, self.conv2.bias, stride=2, groups=2,
                          backend="native")
        return cnnops.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False,
                                 backend="native").sum(dim=(1, 2, 3))


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    model = TinyNet().double()
    x = torch.randn(2, 1, 17, 15, dtype=torch.float64)
    want = model(x)
    want_grads = torch.autograd.grad(want.sum(), list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    got_grads = torch.autograd.grad(got.sum(), list(model.parameters()))
    _assert_close(got, want, 1e-10, 1e-10, "compiled output")
    for g1, g2 in zip(got_grads, want_grads):
        _assert_close(g1, g2, 1e-10, 1e-10, "compiled gradient")


def test_conv_algo_env(monkeypatch):
    monkeypatch.setenv("CNNOPS_CONV_ALGO", "winograd")
    x, w, _ = _inputs((1, 1, 4, 4), (1, 1, 3, 3), False)
    with pytest.raises(ValueError, match="CNNOPS_CONV_ALGO"):
        cnnops.conv2d(x, w, backend="native")


def test_cuda_reason_when_built_without_cuda():
    from cnnops import _C
    if not _C.with_cuda:
        assert "without CUDA" in NATIVE.unavailable_reason(torch.device("cuda"))


@needs_cuda
@pytest.mark.parametrize("algo", ["naive", "tiled", "auto"])
@pytest.mark.parametrize("dtype,atol,rtol", CUDA_TOLERANCES)
@pytest.mark.parametrize("name", ["basic", "stride_pad_dilation", "groups", "depthwise",
                                  "stride_gt_kernel", "cin1_batch1", "odd_kernel"])
def test_cuda_matches_torch(name, dtype, atol, rtol, algo, monkeypatch):
    monkeypatch.setenv("CNNOPS_CONV_ALGO", algo)
    input_shape, weight_shape, bias, kwargs = CASES[name]
    x, w, b = _inputs(input_shape, weight_shape, bias, dtype, "cuda")
    # the reference: float64 on the same inputs, so half-type tolerances measure our rounding
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    # fused ReLU in float64 only: in half types rounding may flip its mask near zero
    activation = "relu" if dtype == torch.float64 else None
    got = cnnops.conv2d(x, w, b, **kwargs, backend="native", activation=activation)
    want = F.conv2d(x64, w64, b64, **kwargs)
    want = F.relu(want) if activation else want
    _assert_close(got.double(), want, atol, rtol, "output")
    grad = torch.randn_like(got)
    tensors, tensors64 = [t for t in (x, w, b) if t is not None], [
        t for t in (x64, w64, b64) if t is not None]
    got_grads = torch.autograd.grad(got, tensors, grad)
    want_grads = torch.autograd.grad(want, tensors64, grad.double())
    for name_, g1, g2 in zip(("grad_input", "grad_weight", "grad_bias"), got_grads, want_grads):
        scale = max(1.0, g2.abs().max().item())
        _assert_close(g1.double(), g2, atol * scale, rtol, name_)


@needs_cuda
@pytest.mark.parametrize("algo", ["naive", "tiled"])
def test_cuda_channels_last_and_big_batch(algo, monkeypatch):
    monkeypatch.setenv("CNNOPS_CONV_ALGO", algo)
    x, w, b = _inputs((33, 20, 37, 29), (24, 20, 3, 3), True, torch.float64, "cuda")
    x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    _compare(x, w, b, dict(padding=1, stride=(1, 2)), *FLOAT64[1:])


@needs_cuda
def test_cuda_tiled_too_large_is_an_error(monkeypatch):
    monkeypatch.setenv("CNNOPS_CONV_ALGO", "tiled")
    x, w, _ = _inputs((1, 1, 400, 400), (1, 1, 3, 3), False, torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="shared memory"):
        cnnops.conv2d(x, w, dilation=60, backend="native")
    monkeypatch.setenv("CNNOPS_CONV_ALGO", "auto")  # auto falls back to the naive kernel
    # the reference in float64: a float32 cuDNN reference would use TF32 (10-bit mantissa)
    _assert_close(cnnops.conv2d(x, w, dilation=60, backend="native").double(),
                  F.conv2d(x.double(), w.double(), dilation=60), 1e-4, 1e-4, "output")


@needs_cuda
def test_cuda_opcheck():
    x, w, b = (t.detach() for t in _inputs((2, 4, 7, 6), (6, 2, 3, 2), True, device="cuda"))
    for algo in (1, 2):
        torch.library.opcheck(torch.ops.cnnops.conv2d.default,
                              _raw_args(x, w, b, [2, 1], [1, 1], [1, 2], 2, True, algo))
