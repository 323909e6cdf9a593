"""max_pool2d forward and backward, and the ops `cnnops_triton::max_pool2d` and
`cnnops_triton::max_pool2d_grad_input`.

Each output element (n, c, p, q) looks at the window of input rows h = p*sh - ph + r*dh,
r < R (columns likewise) that lie inside the image; padding never wins. The output is the
largest value, or NaN if the window holds one (PyTorch's rule `v > max or isnan(v)`, so the last
NaN in scan order gives the index); the index is h*W + w in its (n, c) plane, int64, starting at
the first in-image element of the window (an all -inf window keeps it).

The backward gathers instead of scattering: one program lane per input element (h, w) visits
the R*S output windows that can contain it, (p, q) = ((h + ph - r*dh) / sh, ...) when the
division is exact and in range, and adds the gradient of those whose saved index is (h, w).
No atomics, and a fixed visiting order: the result is bitwise deterministic.

Tensors are read and written through their strides; outputs keep the input's memory format,
and the flat element index is decoded in that order (channels fastest for channels-last).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cnnops.shapes import pool2d_output_hw
from cnnops.backends.triton._launch import (INTERPRETED, accumulator_type, cdiv, decode_nchw,
                                           empty_like_format, is_channels_last, kernel_op,
                                           launch)

BLOCK = 128 if INTERPRETED else 256  # elements per program: pooling is memory bound


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
    n, c, p, q = decode_nchw(offs, C, P, Q, CHANNELS_LAST)
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
def max_pool2d_grad_input_kernel(
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
    n, c, h, w = decode_nchw(offs, C, H, W, CHANNELS_LAST)
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


def _max_pool2d(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                dilation: list[int], ceil_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(F.max_pool2d output, int64 indices h*W + w), both in the input's memory format."""
    n_batch, c, h, w = x.shape
    p_out, q_out = pool2d_output_hw((h, w), kernel_size, stride, padding, dilation, ceil_mode)
    y = empty_like_format(x, (n_batch, c, p_out, q_out))
    indices = empty_like_format(x, (n_batch, c, p_out, q_out), torch.int64)
    total = y.numel()
    if total:  # an empty grid is an invalid launch on the GPU
        launch(max_pool2d_fwd_kernel, (cdiv(total, BLOCK),), x, y, indices,
               total, c, h, w, p_out, q_out, *kernel_size, *stride, *padding, *dilation,
               *x.stride(), *y.stride(),
               ACC_TYPE=accumulator_type(x.dtype), CHANNELS_LAST=is_channels_last(y),
               BLOCK=BLOCK)
    return y, indices


def _max_pool2d_grad_input(grad: torch.Tensor, indices: torch.Tensor, input_hw: list[int],
                           kernel_size: list[int], stride: list[int], padding: list[int],
                           dilation: list[int]) -> torch.Tensor:
    """The gradient of max_pool2d with respect to its input of size input_hw."""
    n_batch, c, p_out, q_out = grad.shape
    h, w = input_hw
    dx = empty_like_format(grad, (n_batch, c, h, w))
    total = dx.numel()
    if total:
        launch(max_pool2d_grad_input_kernel, (cdiv(total, BLOCK),), grad, indices, dx,
               total, c, h, w, p_out, q_out, *kernel_size, *stride, *padding, *dilation,
               *grad.stride(), *indices.stride(), *dx.stride(),
               ACC_TYPE=accumulator_type(grad.dtype), CHANNELS_LAST=is_channels_last(dx),
               BLOCK=BLOCK)
    return dx


def _setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, _ = inputs
    _, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(indices)
    ctx.args = (list(x.shape[2:]), kernel_size, stride, padding, dilation)


def register(namespace: str = "cnnops_triton", use_triton_op: bool | None = None):
    """The two ops under `namespace`, forward with autograd: (max_pool2d,
    max_pool2d_grad_input). Called once at import; tests call it again under another
    namespace to force the triton_op branch."""
    grad_input = kernel_op(f"{namespace}::max_pool2d_grad_input", mutates_args=(),
                           use_triton_op=use_triton_op)(_max_pool2d_grad_input)
    forward = kernel_op(f"{namespace}::max_pool2d", mutates_args=(),
                        use_triton_op=use_triton_op)(_max_pool2d)

    def backward(ctx, grad, _grad_indices):
        (indices,) = ctx.saved_tensors
        return grad_input(grad, indices, *ctx.args), None, None, None, None, None

    forward.register_autograd(backward, setup_context=_setup_context)
    return forward, grad_input


max_pool2d, max_pool2d_grad_input = register()
