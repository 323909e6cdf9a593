"""max_pool2d and avg_pool2d, forward and backward, and their ops `cnnops_triton::*pool2d*`.

Each output element (n, c, p, q) looks at the window of input rows h = p*sh - ph + r*dh,
r < R (columns likewise) that lie inside the image; padding never wins a max and never adds
to a sum.

- max: the largest value, or NaN if the window holds one (PyTorch's rule `v > max or isnan(v)`,
  so the last NaN in scan order gives the index); the index is h*W + w in its (n, c) plane,
  int64, starting at the first in-image element of the window (all -inf windows keep it).
- avg: the sum over the in-image elements divided by, as PyTorch's kernels do,
  `divisor_override` if given, else with count_include_pad the window clipped to the padded
  input (rows p*sh - ph .. min(p*sh - ph + R, H + ph)), else the window clipped to the image.

The backward passes gather instead of scatter: one program lane per input element (h, w)
visits the R*S output windows that can contain it, (p, q) = ((h + ph - r*dh) / sh, ...) when the
division is exact and in range, and adds their gradient (max: only where the saved index is
(h, w); avg: divided by that window's divisor). No atomics, so the result is deterministic.

Tensors are read and written through their strides; outputs keep the input's memory format,
and the flat element index is decoded in that order (channels fastest for channels-last) so
neighbouring lanes touch neighbouring addresses.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from cnnops.shapes import pool2d_output_hw
from cnnops.backends.triton._launch import (INTERPRETED, accumulator_type, cdiv, kernel_op,
                                           launch)

BLOCK = 128 if INTERPRETED else 256  # elements per program: pooling is memory bound


@triton.jit
def _decode(idx, C, P, Q, CHANNELS_LAST: tl.constexpr):
    """Flat index in memory order -> (n, c, p, q)."""
    if CHANNELS_LAST:
        c = idx % C
        q = (idx // C) % Q
        p = (idx // (C * Q)) % P
        n = idx // (C * Q * P)
    else:
        q = idx % Q
        p = (idx // Q) % P
        c = (idx // (Q * P)) % C
        n = idx // (Q * P * C)
    return n, c, p, q


@triton.jit
def max_pool2d_fwd_kernel(
    x_ptr,  # input (N, C, H, W), any strides
    y_ptr,  # output (N, C, P, Q), any strides
    idx_ptr,  # int64 argmax h*W + w per output element, same strides as y
    TOTAL, C, H, W, P, Q, R, S,  # output element count, sizes, window size
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # window geometry
    sx_n, sx_c, sx_h, sx_w,  # input strides (elements)
    sy_n, sy_c, sy_p, sy_q,  # output (and index) strides (elements)
    ACC_TYPE: tl.constexpr,  # compare in float32 (float64 for float64 tensors)
    CHANNELS_LAST: tl.constexpr,  # output memory order, for coalesced lanes
    BLOCK: tl.constexpr,  # output elements per program
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, p, q = _decode(offs, C, P, Q, CHANNELS_LAST)
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    # the first in-image tap starts the argmax, as PyTorch's kernels do
    h_first = tl.where(h0 < 0, h0 + ((dil_h - 1 - h0) // dil_h) * dil_h, h0)
    w_first = tl.where(w0 < 0, w0 + ((dil_w - 1 - w0) // dil_w) * dil_w, w0)
    best_idx = (h_first * W + w_first).to(tl.int64)
    best = tl.full((BLOCK,), float("-inf"), ACC_TYPE)
    x_plane = x_ptr + n * sx_n + c * sx_c
    for r in range(R):
        h = h0 + r * dil_h
        h_ok = ok & (h >= 0) & (h < H)
        for s in range(S):
            w = w0 + s * dil_w
            tap_ok = h_ok & (w >= 0) & (w < W)
            v = tl.load(x_plane + h * sx_h + w * sx_w, mask=tap_ok, other=float("-inf"))
            v = v.to(ACC_TYPE)
            take = tap_ok & ((v > best) | (v != v))  # NaN wins
            best = tl.where(take, v, best)
            best_idx = tl.where(take, (h * W + w).to(tl.int64), best_idx)
    out = n * sy_n + c * sy_c + p * sy_p + q * sy_q
    tl.store(y_ptr + out, best.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(idx_ptr + out, best_idx, mask=ok)


@triton.jit
def max_pool2d_bwd_kernel(
    dy_ptr,  # grad of the output (N, C, P, Q), any strides
    idx_ptr,  # int64 argmax of the forward, its own strides
    dx_ptr,  # grad of the input (N, C, H, W), any strides
    TOTAL, C, H, W, P, Q, R, S,  # input element count, sizes, window size
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # window geometry
    sd_n, sd_c, sd_p, sd_q,  # dy strides (elements)
    si_n, si_c, si_p, si_q,  # index strides (elements)
    sx_n, sx_c, sx_h, sx_w,  # dx strides (elements)
    ACC_TYPE: tl.constexpr,  # sum in float32 (float64 for float64 tensors)
    CHANNELS_LAST: tl.constexpr,  # dx memory order
    BLOCK: tl.constexpr,  # input elements per program
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, h, w = _decode(offs, C, H, W, CHANNELS_LAST)
    me = (h * W + w).to(tl.int64)
    acc = tl.zeros((BLOCK,), ACC_TYPE)
    for r in range(R):
        tp = h + pad_h - r * dil_h
        p = tp // stride_h
        p_ok = ok & (tp >= 0) & (p * stride_h == tp) & (p < P)
        for s in range(S):
            tq = w + pad_w - s * dil_w
            q = tq // stride_w
            win_ok = p_ok & (tq >= 0) & (q * stride_w == tq) & (q < Q)
            argmax = tl.load(idx_ptr + n * si_n + c * si_c + p * si_p + q * si_q,
                             mask=win_ok, other=-1)
            hit = win_ok & (argmax == me)
            g = tl.load(dy_ptr + n * sd_n + c * sd_c + p * sd_p + q * sd_q, mask=hit, other=0.0)
            acc += g.to(ACC_TYPE)
    tl.store(dx_ptr + n * sx_n + c * sx_c + h * sx_h + w * sx_w,
             acc.to(dx_ptr.dtype.element_ty), mask=ok)


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
    n, c, p, q = _decode(offs, C, P, Q, CHANNELS_LAST)
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
    out = acc / d.to(ACC_TYPE)
    tl.store(y_ptr + n * sy_n + c * sy_c + p * sy_p + q * sy_q,
             out.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def avg_pool2d_bwd_kernel(
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
    n, c, h, w = _decode(offs, C, H, W, CHANNELS_LAST)
    acc = tl.zeros((BLOCK,), ACC_TYPE)
    for r in range(R):
        tp = h + pad_h - r
        p = tp // stride_h
        p_ok = ok & (tp >= 0) & (p * stride_h == tp) & (p < P)
        for s in range(S):
            tq = w + pad_w - s
            q = tq // stride_w
            win_ok = p_ok & (tq >= 0) & (q * stride_w == tq) & (q < Q)
            g = tl.load(dy_ptr + n * sd_n + c * sd_c + p * sd_p + q * sd_q, mask=win_ok, other=0.0)
            d = _avg_divisor(p, q, H, W, R, S, stride_h, stride_w, pad_h, pad_w,
                             divisor_override, HAS_OVERRIDE, COUNT_PAD)
            d = tl.where(win_ok, d, 1)
            acc += g.to(ACC_TYPE) / d.to(ACC_TYPE)
    tl.store(dx_ptr + n * sx_n + c * sx_c + h * sx_h + w * sx_w,
             acc.to(dx_ptr.dtype.element_ty), mask=ok)


def _empty_like_format(x: torch.Tensor, shape) -> torch.Tensor:
    return torch.empty(shape, dtype=x.dtype, device=x.device,
                       memory_format=suggest_memory_format(x))


def _channels_last(t: torch.Tensor) -> bool:
    return suggest_memory_format(t) == torch.channels_last


@kernel_op("cnnops_triton::max_pool2d", mutates_args=())
def max_pool2d(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               dilation: list[int], ceil_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(F.max_pool2d output, int64 indices h*W + w), both in the input's memory format."""
    n_batch, c, h, w = x.shape
    p_out, q_out = pool2d_output_hw((h, w), kernel_size, stride, padding, dilation, ceil_mode)
    y = _empty_like_format(x, (n_batch, c, p_out, q_out))
    indices = torch.empty(y.shape, dtype=torch.int64, device=x.device,
                          memory_format=suggest_memory_format(x))
    total = y.numel()
    launch(max_pool2d_fwd_kernel, (cdiv(total, BLOCK),), x, y, indices,
           total, c, h, w, p_out, q_out, *kernel_size, *stride, *padding, *dilation,
           *x.stride(), *y.stride(),
           ACC_TYPE=accumulator_type(x.dtype), CHANNELS_LAST=_channels_last(y), BLOCK=BLOCK)
    return y, indices


@kernel_op("cnnops_triton::max_pool2d_grad_input", mutates_args=())
def max_pool2d_grad_input(grad: torch.Tensor, indices: torch.Tensor, input_hw: list[int],
                        kernel_size: list[int], stride: list[int], padding: list[int],
                        dilation: list[int]) -> torch.Tensor:
    """The gradient of max_pool2d with respect to its input of size input_hw."""
    n_batch, c, p_out, q_out = grad.shape
    h, w = input_hw
    dx = _empty_like_format(grad, (n_batch, c, h, w))
    total = dx.numel()
    launch(max_pool2d_bwd_kernel, (cdiv(total, BLOCK),), grad, indices, dx,
           total, c, h, w, p_out, q_out, *kernel_size, *stride, *padding, *dilation,
           *grad.stride(), *indices.stride(), *dx.stride(),
           ACC_TYPE=accumulator_type(grad.dtype), CHANNELS_LAST=_channels_last(dx), BLOCK=BLOCK)
    return dx


@kernel_op("cnnops_triton::avg_pool2d", mutates_args=())
def avg_pool2d(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               ceil_mode: bool, count_include_pad: bool,
               divisor_override: int | None) -> torch.Tensor:
    """F.avg_pool2d, output in the input's memory format."""
    n_batch, c, h, w = x.shape
    p_out, q_out = pool2d_output_hw((h, w), kernel_size, stride, padding, (1, 1), ceil_mode)
    y = _empty_like_format(x, (n_batch, c, p_out, q_out))
    total = y.numel()
    launch(avg_pool2d_fwd_kernel, (cdiv(total, BLOCK),), x, y,
           total, c, h, w, p_out, q_out, *kernel_size, *stride, *padding,
           divisor_override or 1, *x.stride(), *y.stride(),
           HAS_OVERRIDE=divisor_override is not None, COUNT_PAD=count_include_pad,
           ACC_TYPE=accumulator_type(x.dtype), CHANNELS_LAST=_channels_last(y), BLOCK=BLOCK)
    return y


@kernel_op("cnnops_triton::avg_pool2d_grad_input", mutates_args=())
def avg_pool2d_grad_input(grad: torch.Tensor, input_hw: list[int], kernel_size: list[int],
                        stride: list[int], padding: list[int], count_include_pad: bool,
                        divisor_override: int | None) -> torch.Tensor:
    """The gradient of avg_pool2d with respect to its input of size input_hw."""
    n_batch, c, p_out, q_out = grad.shape
    h, w = input_hw
    dx = _empty_like_format(grad, (n_batch, c, h, w))
    total = dx.numel()
    launch(avg_pool2d_bwd_kernel, (cdiv(total, BLOCK),), grad, dx,
           total, c, h, w, p_out, q_out, *kernel_size, *stride, *padding,
           divisor_override or 1, *grad.stride(), *dx.stride(),
           HAS_OVERRIDE=divisor_override is not None, COUNT_PAD=count_include_pad,
           ACC_TYPE=accumulator_type(grad.dtype), CHANNELS_LAST=_channels_last(dx), BLOCK=BLOCK)
    return dx


def _max_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, _ = inputs
    _, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(indices)
    ctx.args = (list(x.shape[2:]), kernel_size, stride, padding, dilation)


def _max_backward(ctx, grad, _grad_indices):
    (indices,) = ctx.saved_tensors
    return max_pool2d_grad_input(grad, indices, *ctx.args), None, None, None, None, None


def _avg_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, _, count_include_pad, divisor_override = inputs
    ctx.args = (list(x.shape[2:]), kernel_size, stride, padding, count_include_pad,
                divisor_override)


def _avg_backward(ctx, grad):
    return avg_pool2d_grad_input(grad, *ctx.args), None, None, None, None, None, None


max_pool2d.register_autograd(_max_backward, setup_context=_max_setup_context)
avg_pool2d.register_autograd(_avg_backward, setup_context=_avg_setup_context)
