"""conv2d as an implicit GEMM, forward and backward, and its custom ops `cnnops_triton::conv2d*`.

Forward (one group g; x is (N, C_in, H, W), w is (C_out, C_in / G, R, S)):

    y[n, k, p, q] = b[k] + sum_{r, s, c} x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k, c, r, s]

is a matrix product Y[M, K] = X[M, J] @ W[J, K] with rows m = (n, p, q) (M = N*P*Q), columns k
(the group's output channels) and reduction j = (r, s, c) (J = R*S*C_in/G, c innermost). X is never
built (no im2col): each tile of it is gathered from x by decoding m and j, with zeros outside the
image (the padding). The reduction is flattened over (r, s, c), so a 3-channel RGB input fills a
16-wide reduction tile with 5 taps of 3 channels instead of one tap padded with 13 zero channels.

Backward, with dy of shape (N, C_out, P, Q):
- grad input  dx[n, c, h, w] = sum_{r, s, k} dy[n, k, (h + ph - r*dh) / sh, (w + pw - s*dw) / sw] w[k, c, r, s]
  a transposed convolution: rows (n, h, w), columns c, reduction (r, s, k). A term exists only
  where the division is exact and lands inside (P, Q): the stride remainders (and the input rows
  no window reaches, PyTorch's "output padding") are masked out per element.
- grad weight dw[k, (r, s, c)] = sum_{n, p, q} dy[n, k, p, q] x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw]
  rows k, columns (r, s, c), reduction over the N*P*Q pixels, split into SPLIT chunks (split-K)
  written to separate partial sums and added afterwards (deterministic, no atomics).
- grad bias   db[k] = sum_{n, p, q} dy[n, k, p, q], summed in the grad-weight kernel from the
  dy tiles it loads anyway.

Every kernel reads its tensors through their strides: contiguous and channels-last inputs
are both read in place. Weights are made channels-last (C_out, R, S, C_in / G) so that the
reduction axis j is contiguous; outputs are written channels-last.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cnnops.shapes import conv2d_output_hw
from cnnops.backends.triton._launch import (INTERPRETED, accumulator_type, cdiv, configs,
                                           dot_precision, kernel_op, launch)


def _prune(block_m: str, block_n: str, block_k: str, rows: str, cols: str, red: str):
    """An early_config_prune that drops tiles much larger than the problem (keeps >= 1)."""
    def prune(config_list, named_args, **kwargs):
        sizes = {n: named_args.get(n, kwargs.get(n)) for n in (rows, cols, red)}
        tensors = [v for v in named_args.values() if isinstance(v, torch.Tensor)]
        fp64 = bool(tensors) and tensors[0].dtype == torch.float64
        kept = []
        for c in config_list:
            kw = c.kwargs
            if kw[block_n] > max(16, triton.next_power_of_2(sizes[cols])):
                continue
            if kw[block_k] > max(16, triton.next_power_of_2(sizes[red])):
                continue
            if kw[block_m] > max(16, triton.next_power_of_2(sizes[rows])):
                continue
            if fp64 and kw[block_m] * kw[block_n] * kw[block_k] > 32 * 32 * 32:
                continue  # fp64 multiplies a 3-D (M, K, N) tile in registers (see _mma)
            kept.append(c)
        return kept or [min(config_list, key=lambda c: c.kwargs[block_m] * c.kwargs[block_n]
                            * c.kwargs[block_k])]
    return prune


@triton.jit
def _mma(a, b, acc, ACC_TYPE: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b. tl.dot for fp16/bf16/fp32; float64 takes a broadcast multiply-and-sum:
    fp64 tl.dot is not lowered on every GPU by every Triton >= 3.6 (fp64 MMA landed for
    some architectures only), and float64 convolutions are for checking, not speed."""
    if ACC_TYPE == tl.float64:
        acc += tl.sum(a.to(tl.float64)[:, :, None] * b.to(tl.float64)[None, :, :], axis=1)
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_TYPE)
    return acc


def _gemm_configs(m: str, n: str, k: str) -> list[triton.Config]:
    shapes = [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
        (128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4),
        (128, 32, 32, 4, 4), (64, 32, 32, 4, 4), (256, 64, 32, 8, 3), (64, 64, 64, 4, 3),
        (128, 16, 16, 4, 4), (32, 32, 32, 4, 2),
    ]
    return [triton.Config({m: bm, n: bn, k: bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in shapes]


# Forward: autotuned per (rows, output channels per group, reduction length).
CONV2D_FWD_CONFIGS = configs(_gemm_configs("BLOCK_M", "BLOCK_N", "BLOCK_K"),
                             triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}))
CONV2D_FWD_KEY = ["NPQ", "C_OUT_G", "J_RED", "R", "S"]


@triton.autotune(configs=CONV2D_FWD_CONFIGS, key=CONV2D_FWD_KEY,
                 prune_configs_by={"early_config_prune": _prune(
                     "BLOCK_M", "BLOCK_N", "BLOCK_K", "NPQ", "C_OUT_G", "J_RED")})
@triton.jit
def conv2d_fwd_kernel(
    x_ptr,  # input (N, C_in, H, W), any strides
    w_ptr,  # weight, channels-last contiguous (C_out, R, S, C_in / G)
    b_ptr,  # bias (C_out,); unused when HAS_BIAS is false
    y_ptr,  # output (N, C_out, P, Q), any strides
    NPQ, C_OUT_G, J_RED,  # GEMM sizes: rows N*P*Q, columns C_out / G, reduction R*S*C_in/G
    C_IN_G, H, W, P, Q, R, S,  # per-group input channels, input, output and kernel sizes
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # the convolution's geometry
    sx_n, sx_c, sx_h, sx_w,  # input strides (elements)
    sy_n, sy_c, sy_p, sy_q,  # output strides (elements)
    HAS_BIAS: tl.constexpr,  # add b[k] in the epilogue
    RELU: tl.constexpr,  # max(., 0) after the bias (NaN kept, as F.relu)
    ACC_TYPE: tl.constexpr,  # tl.float32, or tl.float64 for float64 tensors
    PRECISION: tl.constexpr,  # tl.dot input_precision: "tf32" or "ieee"
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # tile of Y, reduction step
):
    pid = tl.program_id(0)
    group = tl.program_id(1)
    num_n = tl.cdiv(C_OUT_G, BLOCK_N)
    pid_m = pid // num_n  # neighbouring programs share the same X tile
    pid_n = pid % num_n

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # m = (n, p, q)
    row_ok = rows < NPQ
    n = rows // (P * Q)
    p = (rows // Q) % P
    q = rows % Q
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    x_row = x_ptr + n * sx_n + group * C_IN_G * sx_c

    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # k within the group
    col_ok = cols < C_OUT_G
    w_col = w_ptr + (group * C_OUT_G + cols) * J_RED

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    for j0 in range(0, J_RED, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)  # j = (r, s, c), c innermost
        j_ok = j < J_RED
        c = j % C_IN_G
        s = (j // C_IN_G) % S
        r = j // (C_IN_G * S)
        h = h0[:, None] + r[None, :] * dil_h
        w = w0[:, None] + s[None, :] * dil_w
        a_ok = row_ok[:, None] & j_ok[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        a = tl.load(x_row[:, None] + c[None, :] * sx_c + h * sx_h + w * sx_w, mask=a_ok, other=0.0)
        b = tl.load(w_col[None, :] + j[:, None], mask=j_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _mma(a, b, acc, ACC_TYPE, PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + group * C_OUT_G + cols, mask=col_ok, other=0.0).to(ACC_TYPE)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    y = y_ptr + n[:, None] * sy_n + (group * C_OUT_G + cols)[None, :] * sy_c \
        + p[:, None] * sy_p + q[:, None] * sy_q
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# Grad input: autotuned per (input pixels, input channels per group, reduction length).
CONV2D_DGRAD_CONFIGS = configs(_gemm_configs("BLOCK_M", "BLOCK_N", "BLOCK_K"),
                               triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}))
CONV2D_DGRAD_KEY = ["NHW", "C_IN_G", "J_RED", "stride_h", "stride_w"]


@triton.autotune(configs=CONV2D_DGRAD_CONFIGS, key=CONV2D_DGRAD_KEY,
                 prune_configs_by={"early_config_prune": _prune(
                     "BLOCK_M", "BLOCK_N", "BLOCK_K", "NHW", "C_IN_G", "J_RED")})
@triton.jit
def conv2d_grad_input_kernel(
    dy_ptr,  # grad of the output (N, C_out, P, Q), any strides
    w_ptr,  # weight, channels-last contiguous (C_out, R, S, C_in / G)
    dx_ptr,  # grad of the input (N, C_in, H, W), any strides
    NHW, C_IN_G, J_RED,  # GEMM sizes: rows N*H*W, columns C_in / G, reduction R*S*C_out/G
    C_OUT_G, H, W, P, Q, R, S,  # per-group output channels, input, output and kernel sizes
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # the forward convolution's geometry
    sd_n, sd_c, sd_p, sd_q,  # dy strides (elements)
    sx_n, sx_c, sx_h, sx_w,  # dx strides (elements)
    ACC_TYPE: tl.constexpr,  # tl.float32, or tl.float64 for float64 tensors
    PRECISION: tl.constexpr,  # tl.dot input_precision: "tf32" or "ieee"
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # tile of dX, reduction step
):
    pid = tl.program_id(0)
    group = tl.program_id(1)
    num_n = tl.cdiv(C_IN_G, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # m = (n, h, w)
    row_ok = rows < NHW
    n = rows // (H * W)
    h = (rows // W) % H
    w = rows % W
    dy_row = dy_ptr + n * sd_n + group * C_OUT_G * sd_c

    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # c within the group
    col_ok = cols < C_IN_G
    rsc = R * S * C_IN_G  # weight row length

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    for j0 in range(0, J_RED, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)  # j = (r, s, k), k innermost
        j_ok = j < J_RED
        k = j % C_OUT_G
        s = (j // C_OUT_G) % S
        r = j // (C_OUT_G * S)
        # the output pixel whose window puts tap (r, s) on (h, w), if the stride allows one
        tp = h[:, None] + pad_h - r[None, :] * dil_h
        tq = w[:, None] + pad_w - s[None, :] * dil_w
        p = tp // stride_h
        q = tq // stride_w
        a_ok = row_ok[:, None] & j_ok[None, :] & (tp >= 0) & (tq >= 0) \
            & (p * stride_h == tp) & (q * stride_w == tq) & (p < P) & (q < Q)
        a = tl.load(dy_row[:, None] + k[None, :] * sd_c + p * sd_p + q * sd_q, mask=a_ok, other=0.0)
        b_ptrs = w_ptr + (group * C_OUT_G + k)[:, None] * rsc + ((r * S + s) * C_IN_G)[:, None] \
            + cols[None, :]
        b = tl.load(b_ptrs, mask=j_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _mma(a, b, acc, ACC_TYPE, PRECISION)

    dx = dx_ptr + n[:, None] * sx_n + (group * C_IN_G + cols)[None, :] * sx_c \
        + h[:, None] * sx_h + w[:, None] * sx_w
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# Grad weight: autotuned per (output channels per group, R*S*C_in/G, pixels per split).
CONV2D_WGRAD_CONFIGS = configs(_gemm_configs("BLOCK_M", "BLOCK_N", "BLOCK_K"),
                               triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}))
CONV2D_WGRAD_KEY = ["C_OUT_G", "J_COLS", "CHUNK"]


@triton.autotune(configs=CONV2D_WGRAD_CONFIGS, key=CONV2D_WGRAD_KEY,
                 prune_configs_by={"early_config_prune": _prune(
                     "BLOCK_M", "BLOCK_N", "BLOCK_K", "C_OUT_G", "J_COLS", "CHUNK")})
@triton.jit
def conv2d_grad_weight_kernel(
    dy_ptr,  # grad of the output (N, C_out, P, Q), any strides
    x_ptr,  # input (N, C_in, H, W), any strides
    dw_ptr,  # partial grad weight (SPLIT, C_out, R*S*C_in/G) in ACC_TYPE, one slab per split
    db_ptr,  # partial grad bias (SPLIT, C_out) in ACC_TYPE; unused without HAS_BIAS
    C_OUT_G, J_COLS, NPQ, CHUNK,  # GEMM sizes: rows C_out/G, columns R*S*C_in/G, reduction N*P*Q in chunks
    C_IN_G, H, W, P, Q, S,  # per-group input channels, input and output sizes, kernel width
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # the forward convolution's geometry
    sd_n, sd_c, sd_p, sd_q,  # dy strides (elements)
    sx_n, sx_c, sx_h, sx_w,  # x strides (elements)
    HAS_BIAS: tl.constexpr,  # also sum dy into the bias partials (programs of the first column tile)
    ACC_TYPE: tl.constexpr,  # tl.float32, or tl.float64 for float64 tensors
    PRECISION: tl.constexpr,  # tl.dot input_precision: "tf32" or "ieee"
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # tile of dW, reduction step
):
    pid = tl.program_id(0)
    group = tl.program_id(1)
    split = tl.program_id(2)
    num_n = tl.cdiv(J_COLS, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    C_OUT = tl.num_programs(1) * C_OUT_G

    ks = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channel within the group
    k_ok = ks < C_OUT_G
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (r, s, c), c innermost
    col_ok = cols < J_COLS
    c = cols % C_IN_G
    s = (cols // C_IN_G) % S
    r = cols // (C_IN_G * S)
    dy_k = dy_ptr + (group * C_OUT_G + ks) * sd_c
    x_c = x_ptr + (group * C_IN_G + c) * sx_c

    start = split * CHUNK
    end = tl.minimum(start + CHUNK, NPQ)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    bias_acc = tl.zeros((BLOCK_M,), dtype=ACC_TYPE)
    for i0 in range(start, end, BLOCK_K):
        i = i0 + tl.arange(0, BLOCK_K)  # pixel (n, p, q)
        i_ok = i < end
        n = i // (P * Q)
        p = (i // Q) % P
        q = i % Q
        a = tl.load(dy_k[:, None] + (n * sd_n + p * sd_p + q * sd_q)[None, :],
                    mask=k_ok[:, None] & i_ok[None, :], other=0.0)
        h = (p * stride_h - pad_h)[:, None] + r[None, :] * dil_h
        w = (q * stride_w - pad_w)[:, None] + s[None, :] * dil_w
        b_ok = i_ok[:, None] & col_ok[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        b = tl.load(x_c[None, :] + (n * sx_n)[:, None] + h * sx_h + w * sx_w, mask=b_ok, other=0.0)
        acc = _mma(a, b, acc, ACC_TYPE, PRECISION)
        if HAS_BIAS:
            bias_acc += tl.sum(a.to(ACC_TYPE), axis=1)

    out = dw_ptr + (split * C_OUT + group * C_OUT_G + ks)[:, None] * J_COLS + cols[None, :]
    tl.store(out, acc, mask=k_ok[:, None] & col_ok[None, :])
    if HAS_BIAS:
        if pid_n == 0:
            tl.store(db_ptr + split * C_OUT + group * C_OUT_G + ks, bias_acc, mask=k_ok)


def _split_k(pixels: int, tiles: int, device: torch.device) -> int:
    """How many chunks the grad-weight reduction over N*P*Q is cut into.

    Enough programs to fill the GPU (2 waves), but chunks of at least 256 pixels so the
    partial sums stay a small fraction of the work. The interpreter uses tiny chunks so
    tests on tiny shapes run split-K too.
    """
    if INTERPRETED or device.type != "cuda":
        return max(1, min(4, pixels // 32))
    target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(cdiv(target, tiles), pixels // 256))


@kernel_op("cnnops_triton::conv2d", mutates_args=())
def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
           padding: list[int], dilation: list[int], groups: int, relu: bool) -> torch.Tensor:
    """F.conv2d (then F.relu when `relu`), output channels-last."""
    n_batch, c_in, h_in, w_in = x.shape
    c_out, c_in_g, r, s = weight.shape
    p_out, q_out = conv2d_output_hw((h_in, w_in), (r, s), stride, padding, dilation)
    w_cl = weight.permute(0, 2, 3, 1).contiguous()  # (C_out, R, S, C_in/G)
    y = torch.empty((n_batch, c_out, p_out, q_out), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last)
    npq, c_out_g, j_red = n_batch * p_out * q_out, c_out // groups, r * s * c_in_g

    def grid(meta):
        return (cdiv(npq, meta["BLOCK_M"]) * cdiv(c_out_g, meta["BLOCK_N"]), groups)

    launch(conv2d_fwd_kernel, grid,
           x, w_cl, bias if bias is not None else w_cl, y,
           npq, c_out_g, j_red, c_in_g, h_in, w_in, p_out, q_out, r, s,
           stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
           *x.stride(), *y.stride(),
           HAS_BIAS=bias is not None, RELU=relu, ACC_TYPE=accumulator_type(x.dtype),
           PRECISION=dot_precision(x.dtype))
    return y


@kernel_op("cnnops_triton::conv2d_grad_input", mutates_args=())
def conv2d_grad_input(grad: torch.Tensor, weight: torch.Tensor, input_hw: list[int],
                      stride: list[int], padding: list[int], dilation: list[int],
                      groups: int) -> torch.Tensor:
    """The gradient of conv2d with respect to its input (H, W) = input_hw; channels-last."""
    n_batch, c_out, p_out, q_out = grad.shape
    _, c_in_g, r, s = weight.shape
    h_in, w_in = input_hw
    w_cl = weight.permute(0, 2, 3, 1).contiguous()
    dx = torch.empty((n_batch, c_in_g * groups, h_in, w_in), dtype=grad.dtype,
                     device=grad.device, memory_format=torch.channels_last)
    nhw, c_out_g = n_batch * h_in * w_in, c_out // groups

    def grid(meta):
        return (cdiv(nhw, meta["BLOCK_M"]) * cdiv(c_in_g, meta["BLOCK_N"]), groups)

    launch(conv2d_grad_input_kernel, grid,
           grad, w_cl, dx, nhw, c_in_g, r * s * c_out_g, c_out_g, h_in, w_in, p_out, q_out, r, s,
           stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
           *grad.stride(), *dx.stride(),
           ACC_TYPE=accumulator_type(grad.dtype), PRECISION=dot_precision(grad.dtype))
    return dx


@kernel_op("cnnops_triton::conv2d_grad_weight", mutates_args=())
def conv2d_grad_weight(grad: torch.Tensor, x: torch.Tensor, weight_shape: list[int],
                       stride: list[int], padding: list[int], dilation: list[int], groups: int,
                       with_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad weight, grad bias) of conv2d; grad bias is empty when not `with_bias`."""
    n_batch, c_out, p_out, q_out = grad.shape
    h_in, w_in = x.shape[2:]
    _, c_in_g, r, s = weight_shape
    c_out_g, j_cols, npq = c_out // groups, r * s * c_in_g, n_batch * p_out * q_out
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    split = _split_k(npq, groups * cdiv(c_out_g, 64) * cdiv(j_cols, 64), x.device)
    chunk = cdiv(npq, split)
    dw_parts = torch.empty((split, c_out, j_cols), dtype=acc_dtype, device=x.device)
    db_parts = torch.empty((split, c_out) if with_bias else (0,), dtype=acc_dtype,
                           device=x.device)

    def grid(meta):
        return (cdiv(c_out_g, meta["BLOCK_M"]) * cdiv(j_cols, meta["BLOCK_N"]), groups, split)

    launch(conv2d_grad_weight_kernel, grid,
           grad, x, dw_parts, db_parts if with_bias else dw_parts,
           c_out_g, j_cols, npq, chunk, c_in_g, h_in, w_in, p_out, q_out, s,
           stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
           *grad.stride(), *x.stride(),
           HAS_BIAS=with_bias, ACC_TYPE=accumulator_type(x.dtype),
           PRECISION=dot_precision(x.dtype))
    # the split-K partials are added in a fixed order: deterministic
    dw = dw_parts.sum(0).to(x.dtype).view(c_out, r, s, c_in_g).permute(0, 3, 1, 2)
    db = db_parts.sum(0).to(x.dtype) if with_bias else grad.new_empty((0,))
    return dw, db


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, relu = inputs
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.geometry = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight, y = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.geometry
    if y is not None:  # ReLU's backward; a NaN output lets no gradient through, as F.relu
        grad = torch.where(y > 0, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = conv2d_grad_input(grad, weight, list(x.shape[2:]), stride, padding, dilation,
                               groups)
    if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
        dw, db = conv2d_grad_weight(grad, x, list(weight.shape), stride, padding, dilation,
                                    groups, ctx.has_bias)
        if not ctx.has_bias:
            db = None
    return dx, dw, db, None, None, None, None, None


conv2d.register_autograd(_backward, setup_context=_setup_context)
