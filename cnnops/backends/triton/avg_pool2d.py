"""avg_pool2d forward and backward, and the ops `cnnops_triton::avg_pool2d` and
`cnnops_triton::avg_pool2d_grad_input`.

Each output element (n, c, p, q) sums the in-image elements of its window (rows
h = p*sh - ph + r, r < R; columns likewise; padding adds nothing) and divides, as PyTorch's
kernels do, by `divisor_override` if given, else with count_include_pad by the window clipped
to the padded input (rows p*sh - ph .. min(p*sh - ph + R, H + ph)), else by the window clipped
to the image. The division is IEEE round-to-nearest (`div_rn`), not the GPU's approximate one.

The backward gathers: one lane per input element (h, w) visits the R*S windows that may hold
it ((h + ph - r) / sh exact and in range) and adds their gradient divided by that window's
divisor. No atomics, a fixed order: bitwise deterministic.

Tensors are read and written through their strides; outputs keep the input's memory format.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cnnops.shapes import pool2d_output_hw
from cnnops.backends.triton._launch import (INTERPRETED, accumulator_type, cdiv, decode_nchw,
                                           div_rn, empty_like_format, is_channels_last,
                                           kernel_op, launch)

BLOCK = 128 if INTERPRETED else 256  # elements per program: pooling is memory bound


@triton.jit
def _avg_divisor(p, q, H, W, R, S, stride_h, stride_w, pad_h, pad_w, divisor_override,
                 HAS_OVERRIDE: tl.constexpr, COUNT_PAD: tl.constexpr):
    """PyTorch's avg_pool2d divisor of window (p, q)."""
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    h1 = tl.minimum(h0 + R, H + pad_h)
    w1 = tl.minimum(w0 + S, W + pad_w)
    if HAS_OVERRIDE:
        d = tl.zeros_like(p) + divisor_override
    elif COUNT_PAD:
        d = (h1 - h0) * (w1 - w0)
    else:
        d = (tl.minimum(h1, H) - tl.maximum(h0, 0)) * (tl.minimum(w1, W) - tl.maximum(w0, 0))
    return d


@triton.jit
def avg_pool2d_fwd_kernel(
    x_ptr,  # input (N, C, H, W), any strides
    y_ptr,  # output (N, C, P, Q), any strides
    TOTAL, C, H, W, P, Q, R, S,  # output element count, sizes, window size
    stride_h, stride_w, pad_h, pad_w,  # window geometry
    divisor_override,  # used when HAS_OVERRIDE
    sx_n, sx_c, sx_h, sx_w,  # input strides (elements)
    sy_n, sy_c, sy_p, sy_q,  # output strides (elements)
    HAS_OVERRIDE: tl.constexpr,  # divide by divisor_override
    COUNT_PAD: tl.constexpr,  # count_include_pad
    ACC_TYPE: tl.constexpr,  # sum in float32 (float64 for float64 tensors)
    CHANNELS_LAST: tl.constexpr,  # output memory order
    BLOCK: tl.constexpr,  # output elements per program
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, p, q = decode_nchw(offs, C, P, Q, CHANNELS_LAST)
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    x_plane = x_ptr + n * sx_n + c * sx_c
    acc = tl.zeros((BLOCK,), ACC_TYPE)
    for r in range(R):
        h = h0 + r
        h_ok = ok & (h >= 0) & (h < H)
        for s in range(S):
            w = w0 + s
            tap_ok = h_ok & (w >= 0) & (w < W)
            acc += tl.load(x_plane + h * sx_h + w * sx_w, mask=tap_ok, other=0.0).to(ACC_TYPE)
    d = _avg_divisor(p, q, H, W, R, S, stride_h, stride_w, pad_h, pad_w, divisor_override,
                     HAS_OVERRIDE, COUNT_PAD)
    d = tl.where(ok, d, 1)  # lanes past the end: keep their (unstored) math finite
    out = div_rn(acc, d.to(ACC_TYPE), ACC_TYPE)
    tl.store(y_ptr + n * sy_n + c * sy_c + p * sy_p + q * sy_q,
             out.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def avg_pool2d_grad_input_kernel(
    dy_ptr,  # grad of the output (N, C, P, Q), any strides
    dx_ptr,  # grad of the input (N, C, H, W), any strides
    TOTAL, C, H, W, P, Q, R, S,  # input element count, sizes, window size
    stride_h, stride_w, pad_h, pad_w,  # window geometry
    divisor_override,  # used when HAS_OVERRIDE
    sd_n, sd_c, sd_p, sd_q,  # dy strides (elements)
    sx_n, sx_c, sx_h, sx_w,  # dx strides (elements)
    HAS_OVERRIDE: tl.constexpr,  # divide by divisor_override
    COUNT_PAD: tl.constexpr,  # count_include_pad
    ACC_TYPE: tl.constexpr,  # sum in float32 (float64 for float64 tensors)
    CHANNELS_LAST: tl.constexpr,  # dx memory order
    BLOCK: tl.constexpr,  # input elements per program
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, h, w = decode_nchw(offs, C, H, W, CHANNELS_LAST)
    acc = tl.zeros((BLOCK,), ACC_TYPE)
    for r in range(R):
        tp = h + pad_h - r
        p = tp // stride_h
        p_ok = ok & (tp >= 0) & (p * stride_h == tp) & (p < P)
        for s in range(S):
            tq = w + pad_w - s
            q = tq // stride_w
            win_ok = p_ok & (tq >= 0) & (q * stride_w == tq) & (q < Q)
            g = tl.load(dy_ptr + n * sd_n + c * sd_c + p * sd_p + q * sd_q, mask=win_ok,
                        other=0.0)
            d = _avg_divisor(p, q, H, W, R, S, stride_h, stride_w, pad_h, pad_w,
                             divisor_override, HAS_OVERRIDE, COUNT_PAD)
            d = tl.where(win_ok, d, 1)
            acc += div_rn(g.to(ACC_TYPE), d.to(ACC_TYPE), ACC_TYPE)
    tl.store(dx_ptr + n * sx_n + c * sx_c + h * sx_h + w * sx_w,
             acc.to(dx_ptr.dtype.element_ty), mask=ok)


def _avg_pool2d(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                ceil_mode: bool, count_include_pad: bool,
                divisor_override: int | None) -> torch.Tensor:
    """F.avg_pool2d, output in the input's memory format."""
    n_batch, c, h, w = x.shape
    p_out, q_out = pool2d_output_hw((h, w), kernel_size, stride, padding, (1, 1), ceil_mode)
    y = empty_like_format(x, (n_batch, c, p_out, q_out))
    total = y.numel()
    if total:  # an empty grid is an invalid launch on the GPU
        launch(avg_pool2d_fwd_kernel, (cdiv(total, BLOCK),), x, y,
               total, c, h, w, p_out, q_out, *kernel_size, *stride, *padding,
               divisor_override or 1, *x.stride(), *y.stride(),
               HAS_OVERRIDE=divisor_override is not None, COUNT_PAD=count_include_pad,
               ACC_TYPE=accumulator_type(x.dtype), CHANNELS_LAST=is_channels_last(y),
               BLOCK=BLOCK)
    return y


def _avg_pool2d_grad_input(grad: torch.Tensor, input_hw: list[int], kernel_size: list[int],
                           stride: list[int], padding: list[int], count_include_pad: bool,
                           divisor_override: int | None) -> torch.Tensor:
    """The gradient of avg_pool2d with respect to its input of size input_hw."""
    n_batch, c, p_out, q_out = grad.shape
    h, w = input_hw
    dx = empty_like_format(grad, (n_batch, c, h, w))
    total = dx.numel()
    if total:
        launch(avg_pool2d_grad_input_kernel, (cdiv(total, BLOCK),), grad, dx,
               total, c, h, w, p_out, q_out, *kernel_size, *stride, *padding,
               divisor_override or 1, *grad.stride(), *dx.stride(),
               HAS_OVERRIDE=divisor_override is not None, COUNT_PAD=count_include_pad,
               ACC_TYPE=accumulator_type(grad.dtype), CHANNELS_LAST=is_channels_last(dx),
               BLOCK=BLOCK)
    return dx


def _setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, _, count_include_pad, divisor_override = inputs
    ctx.args = (list(x.shape[2:]), kernel_size, stride, padding, count_include_pad,
                divisor_override)


def register(namespace: str = "cnnops_triton", use_triton_op: bool | None = None):
    """The two ops under `namespace`, forward with autograd: (avg_pool2d,
    avg_pool2d_grad_input). Called once at import; tests call it again under another
    namespace to force the triton_op branch."""
    grad_input = kernel_op(f"{namespace}::avg_pool2d_grad_input", mutates_args=(),
                           use_triton_op=use_triton_op)(_avg_pool2d_grad_input)
    forward = kernel_op(f"{namespace}::avg_pool2d", mutates_args=(),
                        use_triton_op=use_triton_op)(_avg_pool2d)

    def backward(ctx, grad):
        return grad_input(grad, *ctx.args), None, None, None, None, None, None

    forward.register_autograd(backward, setup_context=_setup_context)
    return forward, grad_input


avg_pool2d, avg_pool2d_grad_input = register()
