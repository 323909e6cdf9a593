"""conv2d in Triton, forward and backward, and its custom ops `cnnops_triton::conv2d*`.

Layout: everything runs channels-last. The input is read as (N, H, W, C) with unit channel
stride (an NCHW input is converted once inside the op, and that copy is part of the op's
time); the weight is made (C_out, R, S, C_in / G) contiguous; outputs are channels-last.

Forward (one group g; x is (N, H, W, C_in), w is (C_out, R, S, C_in / G)):

    y[n, p, q, k] = b[k] + sum_{r, s} sum_c x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c] w[k, r, s, c]

an implicit GEMM Y[M, K] = X[M, J] @ W[J, K], rows m = (n, p, q), columns k. The reduction is
walked tap by tap: the outer reduction loop is over the taps (r, s), the inner one over a
contiguous block of BLOCK_K channels. Within a tap, the X tile of a row is BLOCK_K consecutive
elements of memory (16-byte loads, cp.async), the row's validity (is the tap inside the image)
is one 1-D mask, and moving to the next step adds a scalar to one offset. The two loops are
flattened into one (the software pipeliner overlaps loads across tap boundaries) whose scalar
counters (channel block, tap, its offsets) are carried and wrapped with selects: no division
or modulo in the main loop; (n, p, q) are decoded once per program.

Thin first layers (groups 1, C_in < 16, no horizontal dilation): the S taps of one filter row
read S * C_in consecutive elements of a channels-last row, so the inner reduction runs over
that run (the "row run", ROW_RUN) instead of over channels: a 7x7 RGB stem reduces 7 runs of
28 (C_in padded to 4 for 8-byte loads) instead of 49 taps padded from 3 to 16 channels.

Few output tiles (late layers: 7x7 pixels, 512 channels): split-K over the flattened taps x
channel blocks, SPLIT programs per tile writing float32 partials that a second kernel adds in
a fixed order (deterministic) with the bias and ReLU.

Backward, with dy (N, P, Q, C_out):
- grad input is a forward convolution of dy with the transposed, flipped weight. For stride 1
  it is one launch of the forward kernel (padding dh (R - 1) - ph). For stride s > 1 it is
  split by stride phase: the input rows h = ph_h + s_h i (and columns likewise) receive taps
  r with r dh = h + ph (mod s_h) only, so each of the s_h s_w phases is a dense stride-1
  convolution over the phase's rows with a sub-filter, written straight into its phase of dx
  (a strided view): no masked taps, no atomics. A phase that no tap reaches is zero.
- grad weight dw[k, (r, s, c)] = sum_{n, p, q} dy[n, p, q, k] x[n, p*sh - ph + r*dh, ...]:
  rows k, columns (r, s, c), reduction over the N*P*Q pixels, split into SPLIT chunks (split-K)
  written to separate partial sums and added in a fixed order (deterministic, no atomics).
- grad bias db[k] = sum_{n, p, q} dy[n, p, q, k], a column sum of dy by its own small kernel
  (out of the grad-weight main loop).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from cnnops.shapes import conv2d_output_hw
from cnnops.backends.triton._launch import (INTERPRETED, accumulator_type, autotune_top_k, cdiv, configs,
                                           dot_precision, kernel_op, launch)

SMEM_LIMIT = 227 * 1024  # shared memory per block on sm_90 (H100/H200)


@triton.jit
def _mma(a, b, acc, ACC_TYPE: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b on the tensor cores. float64 too: on sm_90 Triton >= 3.6 lowers a float64
    tl.dot to mma.sync f64 (DMMA) without spills, where a broadcast multiply-and-sum spilled
    12-13 KB per thread."""
    if ACC_TYPE == tl.float64:
        return tl.dot(a.to(tl.float64), b.to(tl.float64), acc, input_precision="ieee",
                      out_dtype=tl.float64)
    return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_TYPE)


def _smem_bytes(cfg: triton.Config, m: str, n: str, k: str, elem: int) -> int:
    """Shared memory of a pipelined tl.dot: one (M x K) and one (K x N) tile per stage."""
    kw = cfg.kwargs
    return cfg.num_stages * (kw[m] * kw[k] + kw[k] * kw[n]) * elem


def _prune(block_m: str, block_n: str, block_k: str, rows: str, cols: str, red: str,
           elem_of: str):
    """early_config_prune: drop tiles over the shared memory of sm_90 (for the element size
    of tensor `elem_of`), tiles much larger than the problem, and float64 tiles whose
    accumulator would not fit the registers (keeps at least one config)."""
    def prune(config_list, named_args, **kwargs):
        sizes = {n: named_args.get(n, kwargs.get(n)) for n in (rows, cols, red)}
        t = named_args.get(elem_of, kwargs.get(elem_of))
        elem = t.element_size() if isinstance(t, torch.Tensor) else 2
        kept = []
        for c in config_list:
            kw = c.kwargs
            if _smem_bytes(c, block_m, block_n, block_k, elem) > SMEM_LIMIT:
                continue
            if kw[block_n] > max(32, triton.next_power_of_2(sizes[cols])):
                continue
            if kw[block_k] > max(32, triton.next_power_of_2(sizes[red])):
                continue
            if kw[block_m] > max(64, triton.next_power_of_2(sizes[rows])):
                continue
            if elem == 8 and kw[block_m] * kw[block_n] > 64 * 64:
                continue  # float64 accumulators: 2 registers per element
            kept.append(c)
        return autotune_top_k(kept) or [min(
            config_list, key=lambda c: c.kwargs[block_m] * c.kwargs[block_n] * c.kwargs[block_k])]
    return prune


def _gemm_configs(m: str, n: str, k: str) -> list[triton.Config]:
    """Hopper-sized tiles (BLOCK_K up to 128, 3-5 stages); `_prune` drops those over 227 KB
    of shared memory for the dtype at hand (e.g. 128x256x64 x 4 stages in float32)."""
    shapes = [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
        (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 128, 8, 3),
        (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 32, 8, 5), (64, 64, 64, 4, 5),
        (64, 64, 128, 4, 3), (128, 32, 64, 4, 4), (64, 32, 32, 4, 5),
    ]
    return [triton.Config({m: bm, n: bn, k: bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in shapes]


# Forward: autotuned per (rows, output channels per group, reduction run, taps, split).
CONV2D_FWD_CONFIGS = configs(_gemm_configs("BLOCK_M", "BLOCK_N", "BLOCK_K"),
                             triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}))
CONV2D_FWD_KEY = ["NPQ", "C_OUT_G", "C_RUN", "R", "S_LOOP", "SPLIT"]
GROUP_M = tl.constexpr(8)  # row tiles per band of the grouped launch order (L2 reuse of the weight tiles)


@triton.autotune(configs=CONV2D_FWD_CONFIGS, key=CONV2D_FWD_KEY,
                 prune_configs_by={"early_config_prune": _prune(
                     "BLOCK_M", "BLOCK_N", "BLOCK_K", "NPQ", "C_OUT_G", "C_RUN", "x_ptr")})
@triton.heuristics({"EVEN_K": lambda a: a["C_RUN"] % a["BLOCK_K"] == 0})
@triton.jit
def conv2d_fwd_kernel(
    x_ptr,  # input, channels-last: (n, h, w, c) at n*sx_n + h*sx_h + w*sx_w + c
    w_ptr,  # weight, contiguous (C_out, R, S, C_in / G)
    b_ptr,  # bias (C_out,); unused without HAS_BIAS
    y_ptr,  # output (N, C_out, P, Q), any strides; float32 partials (SPLIT, NPQ, C_out) if SPLIT > 1
    NPQ, C_OUT_G, C_IN_G, H, W, P, Q, R,  # rows N*P*Q, channels per group, sizes
    C_RUN, S_LOOP,  # inner reduction length and taps per filter row: (C_in/G, S), or (S*C_in, 1) for ROW_RUN
    SPLIT,  # split-K: programs sharing one output tile (1: none)
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # the convolution's geometry
    sx_n, sx_h, sx_w,  # input strides (elements; the channel stride is 1)
    sy_n, sy_c, sy_p, sy_q,  # output strides (elements)
    HAS_BIAS: tl.constexpr,  # add b[k] in the epilogue
    RELU: tl.constexpr,  # max(., 0) after the bias (NaN kept, as F.relu)
    ROW_RUN: tl.constexpr,  # thin input: 0, or C_in when reducing over the S * C_in consecutive elements of a filter row
    ACC_TYPE: tl.constexpr,  # tl.float32, or tl.float64 for float64 tensors
    PRECISION: tl.constexpr,  # tl.dot input_precision: "tf32" or "ieee"
    EVEN_K: tl.constexpr,  # C_RUN % BLOCK_K == 0: no channel mask, no offset jump between taps
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # tile of Y, reduction step
):
    # grouped launch order: GROUP_M row tiles share each weight tile while it is in L2
    pid = tl.program_id(0)
    group = tl.program_id(1)
    num_m = tl.cdiv(NPQ, BLOCK_M)
    num_n = tl.cdiv(C_OUT_G, BLOCK_N)
    band = pid // (GROUP_M * num_n)
    first_m = band * GROUP_M
    band_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % band_m)
    pid_n = (pid % (GROUP_M * num_n)) // band_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # m = (n, p, q), decoded once
    row_ok = rows < NPQ
    n = rows // (P * Q)
    p = (rows // Q) % P
    q = rows % Q
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    x_off = n * sx_n + h0 * sx_h + w0 * sx_w + group * C_IN_G  # tap (0, 0), channel 0
    if ROW_RUN:  # whole pixels of ROW_RUN channels: vector loads of one pixel each
        x_off = tl.multiple_of(x_off, ROW_RUN)
    x_row = x_ptr + x_off
    h0 = tl.where(row_ok, h0, H)  # rows past the end: no tap is inside the image
    h_lim = H.to(tl.uint32)
    w_lim = W.to(tl.uint32)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # k within the group
    col_ok = cols < C_OUT_G
    # columns past the end read the last column again (never stored): no mask on the weight
    w_col = w_ptr + (group * C_OUT_G + tl.minimum(cols, C_OUT_G - 1)) * (R * S_LOOP * C_RUN)
    kk = tl.arange(0, BLOCK_K)
    if ROW_RUN:  # the run of a filter row starts at (h, w0): its pixels -w0 .. W-1-w0 are inside
        run_lo = -w0
        run_hi = W - w0

    # this program's share of the flattened reduction (taps x channel blocks); the scalar
    # divisions below run once, before the loop
    k_blocks = tl.cdiv(C_RUN, BLOCK_K)
    steps = R * S_LOOP * k_blocks
    per_split = tl.cdiv(steps, SPLIT)
    t0 = tl.program_id(2) * per_split
    t1 = tl.minimum(t0 + per_split, steps)
    tap = t0 // k_blocks
    c0 = (t0 % k_blocks) * BLOCK_K  # channel (or run element) of this step
    s = tap % S_LOOP
    r = tap // S_LOOP
    dr = r * dil_h  # vertical offset of the tap
    ds = s * dil_w  # horizontal offset of the tap
    tap_w = tap * C_RUN  # the tap's offset in a weight row
    x_tap = dr * sx_h + ds * sx_w  # the tap's offset in the input

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    for _ in range(t0, t1):
        # 1-D validity of the tap for each row (0 <= h < H as one unsigned compare), and of
        # the channels (or run elements)
        ok = (h0 + dr).to(tl.uint32, bitcast=True) < h_lim
        if not ROW_RUN:
            ok = ok & ((w0 + ds).to(tl.uint32, bitcast=True) < w_lim)
        c = c0 + kk
        a_ok = ok[:, None]
        if ROW_RUN:
            # masks in whole pixels (constant over each pixel's ROW_RUN channels): vector loads
            pix = (c // ROW_RUN)[None, :]
            a_ok = a_ok & (pix >= run_lo[:, None]) & (pix < run_hi[:, None]) \
                & (pix < C_RUN // ROW_RUN)
        elif not EVEN_K:
            a_ok = a_ok & (c < C_RUN)[None, :]
        a = tl.load(x_row[:, None] + (x_tap + c)[None, :], mask=a_ok, other=0.0)
        if EVEN_K:
            b = tl.load(w_col[None, :] + (tap_w + c)[:, None])
        else:
            b = tl.load(w_col[None, :] + (tap_w + c)[:, None], mask=(c < C_RUN)[:, None],
                        other=0.0)
        acc = _mma(a, b, acc, ACC_TYPE, PRECISION)
        # next step: the next channel block, or the first block of the next tap
        c0 += BLOCK_K
        wrap = c0 >= C_RUN
        c0 = tl.where(wrap, 0, c0)
        tap_w = tl.where(wrap, tap_w + C_RUN, tap_w)
        s = tl.where(wrap, s + 1, s)
        row_end = s == S_LOOP
        s = tl.where(row_end, 0, s)
        ds = tl.where(wrap, tl.where(row_end, 0, ds + dil_w), ds)
        dr = tl.where(row_end, dr + dil_h, dr)
        x_tap = dr * sx_h + ds * sx_w

    if SPLIT > 1:  # float32/64 partials (SPLIT, NPQ, C_out), added by _split_sum_kernel
        c_out = tl.num_programs(1) * C_OUT_G
        part = y_ptr + (tl.program_id(2) * NPQ + rows)[:, None] * c_out \
            + (group * C_OUT_G + cols)[None, :]
        tl.store(part, acc, mask=row_ok[:, None] & col_ok[None, :])
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + group * C_OUT_G + cols, mask=col_ok,
                           other=0.0).to(ACC_TYPE)[None, :]
        if RELU:
            acc = tl.where(acc < 0, 0.0, acc)
        y = y_ptr + (n * sy_n + p * sy_p + q * sy_q)[:, None] \
            + ((group * C_OUT_G + cols) * sy_c)[None, :]
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _split_sum_kernel(
    part_ptr,  # partials (SPLIT, NPQ, C_out), contiguous
    b_ptr, y_ptr,  # bias (C_out,) or unused; output (N, C_out, P, Q), any strides
    NPQ, C_OUT, P, Q, SPLIT,
    sy_n, sy_c, sy_p, sy_q,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """y = relu(sum_s part[s] + b), the split-K partials added in the order s = 0, 1, ...
    (the same every run: deterministic)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (rows < NPQ)[:, None] & (cols < C_OUT)[None, :]
    offs = rows[:, None] * C_OUT + cols[None, :]
    acc = tl.load(part_ptr + offs, mask=ok, other=0.0)
    for s in range(1, SPLIT):
        acc += tl.load(part_ptr + s * NPQ * C_OUT + offs, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < C_OUT, other=0.0).to(acc.dtype)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    n = rows // (P * Q)
    p = (rows // Q) % P
    q = rows % Q
    y = y_ptr + (n * sy_n + p * sy_p + q * sy_q)[:, None] + (cols * sy_c)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=ok)


# Grad weight: autotuned per (channels per group, batch, output size, kernel size, split).
CONV2D_WGRAD_CONFIGS = configs(_gemm_configs("BLOCK_M", "BLOCK_N", "BLOCK_K"),
                               triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}))
CONV2D_WGRAD_KEY = ["C_OUT_G", "C_IN_G", "N", "P", "Q", "R", "S", "SPLIT"]


@triton.autotune(configs=CONV2D_WGRAD_CONFIGS, key=CONV2D_WGRAD_KEY,
                 prune_configs_by={"early_config_prune": _prune(
                     "BLOCK_M", "BLOCK_N", "BLOCK_K", "C_OUT_G", "C_IN_G", "NPQ", "x_ptr")})
@triton.heuristics({"BLOCK_Q": lambda a: min(triton.next_power_of_2(a["Q"]), a["BLOCK_K"]),
                    "EVEN_MN": lambda a: a["C_OUT_G"] % a["BLOCK_M"] == 0
                    and a["C_IN_G"] % a["BLOCK_N"] == 0})
@triton.jit
def conv2d_grad_weight_kernel(
    dy_ptr,  # grad of the output, channels-last contiguous: (n, p, q, k) at ((n*P + p)*Q + q)*C_out + k
    x_ptr,  # input, channels-last: (n, h, w, c) at n*sx_n + h*sx_h + w*sx_w + c
    dw_ptr,  # partial grad weight (SPLIT, C_out, R*S*C_in/G) in ACC_TYPE, one slab per split
    C_OUT_G, C_IN_G, NPQ, SPLIT,  # GEMM rows C_out/G, columns C_in/G (one tap), pixels, split-K
    N, H, W, P, Q, R, S,  # batch, input, output and kernel sizes
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # the forward convolution's geometry
    sx_n, sx_h, sx_w,  # x strides (elements; the channel stride is 1)
    ACC_TYPE: tl.constexpr,  # tl.float32, or tl.float64 for float64 tensors
    PRECISION: tl.constexpr,  # tl.dot input_precision: "tf32" or "ieee"
    BLOCK_Q: tl.constexpr,  # pixels of one output row per step (a power of 2); BLOCK_K / BLOCK_Q rows
    EVEN_MN: tl.constexpr,  # the channel tiles divide C_out/G and C_in/G: no channel masks
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # tile of dW, pixels per step
):
    """dw[k, tap, c] = sum over the pixels of dy[pixel, k] x[pixel moved by the tap, c].

    One tap (r, s) per program (grid axis 1 = tap * G + group), so the x tile of a step is
    BLOCK_K pixels x BLOCK_N consecutive channels (16-byte loads) and the dy tile BLOCK_K
    pixels x BLOCK_M consecutive channels. A step's pixels are a (BLOCK_K / BLOCK_Q) x BLOCK_Q
    patch of output rows and columns: their offsets from the patch corner are computed once
    (shifts: BLOCK_Q is a power of 2), and the corner (n, p0, q0) is carried from step to step
    with scalar wraps: no division in the loop. The steps are cut into SPLIT contiguous ranges
    (grid axis 2), each written to its own slab of partial sums."""
    BLOCK_P: tl.constexpr = BLOCK_K // BLOCK_Q
    pid = tl.program_id(0)
    groups = tl.num_programs(1) // (R * S)
    tap = tl.program_id(1) // groups
    group = tl.program_id(1) % groups
    num_n = tl.cdiv(C_IN_G, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    c_out = groups * C_OUT_G
    r = tap // S
    s = tap % S

    ks = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channel within the group
    k_ok = ks < C_OUT_G
    cs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channel within the group
    c_ok = cs < C_IN_G
    dy_k = dy_ptr + group * C_OUT_G + ks
    x_c = x_ptr + group * C_IN_G + cs

    # the step's pixels relative to the patch corner, computed once
    kk = tl.arange(0, BLOCK_K)
    dp = kk // BLOCK_Q
    dq = kk % BLOCK_Q
    dy_rel = (dp * Q + dq) * c_out
    x_rel = dp * (stride_h * sx_h) + dq * (stride_w * sx_w)
    h_rel = dp * stride_h
    w_rel = dq * stride_w
    h_lim = H.to(tl.uint32)
    w_lim = W.to(tl.uint32)

    # this split's range of steps over (n, row patch, column patch); divisions before the loop
    q_blocks = tl.cdiv(Q, BLOCK_Q)
    p_blocks = tl.cdiv(P, BLOCK_P)
    steps = N * p_blocks * q_blocks
    per_split = tl.cdiv(steps, SPLIT)
    t0 = tl.program_id(2) * per_split
    t1 = tl.minimum(t0 + per_split, steps)
    q0 = (t0 % q_blocks) * BLOCK_Q
    p0 = ((t0 // q_blocks) % p_blocks) * BLOCK_P
    n = t0 // (q_blocks * p_blocks)
    h_tap = r * dil_h - pad_h
    w_tap = s * dil_w - pad_w

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    for _ in range(t0, t1):
        pix_ok = (dp < P - p0) & (dq < Q - q0)
        h0 = p0 * stride_h + h_tap
        w0 = q0 * stride_w + w_tap
        x_ok = pix_ok & ((h0 + h_rel).to(tl.uint32, bitcast=True) < h_lim) \
            & ((w0 + w_rel).to(tl.uint32, bitcast=True) < w_lim)
        a_ok = pix_ok[None, :]
        b_ok = x_ok[:, None]
        if not EVEN_MN:
            a_ok = a_ok & k_ok[:, None]
            b_ok = b_ok & c_ok[None, :]
        a = tl.load(dy_k[:, None] + (((n * P + p0) * Q + q0) * c_out + dy_rel)[None, :],
                    mask=a_ok, other=0.0)
        b = tl.load(x_c[None, :] + (n * sx_n + h0 * sx_h + w0 * sx_w + x_rel)[:, None],
                    mask=b_ok, other=0.0)
        acc = _mma(a, b, acc, ACC_TYPE, PRECISION)
        # next patch: along the row, then the next rows, then the next image
        q0 += BLOCK_Q
        wrap = q0 >= Q
        q0 = tl.where(wrap, 0, q0)
        p0 = tl.where(wrap, p0 + BLOCK_P, p0)
        wrap = p0 >= P
        p0 = tl.where(wrap, 0, p0)
        n = tl.where(wrap, n + 1, n)

    j_cols = R * S * C_IN_G
    out = dw_ptr + (tl.program_id(2) * c_out + group * C_OUT_G + ks)[:, None] * j_cols \
        + (tap * C_IN_G + cs)[None, :]
    tl.store(out, acc, mask=k_ok[:, None] & c_ok[None, :])


@triton.jit
def conv2d_grad_bias_kernel(
    dy_ptr,  # grad of the output, channels-last contiguous (N*P*Q, C_out)
    db_ptr,  # partial grad bias (SPLIT, C_out) in ACC_TYPE
    NPQ, C_OUT, CHUNK,
    ACC_TYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """db[k] = sum over the pixels of this split of dy[pixel, k], rows summed in order."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(1)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, NPQ)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    for i0 in range(start, end, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        acc += tl.load(dy_ptr + rows[:, None] * C_OUT + cols[None, :],
                       mask=(rows < end)[:, None] & (cols < C_OUT)[None, :], other=0.0).to(ACC_TYPE)
    tl.store(db_ptr + split * C_OUT + cols, tl.sum(acc, axis=0), mask=cols < C_OUT)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """t as (N, C, H, W) with unit channel stride and dense pixels: a copy unless it is one
    already (an NCHW tensor is converted once here; the copy is part of the op's time)."""
    return t.contiguous(memory_format=torch.channels_last)


def _num_sms(device: torch.device) -> int:
    """SMs of the GPU; 132 (H100/H200) for meta tensors, where the AOT compile
    (benchmarks/aot_sm90.py) records the launches an sm_90 run would make."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _fwd_split(tiles: int, steps: int, device: torch.device) -> int:
    """Split-K of the forward: when the (128 x 128-estimated) output tiles do not fill the GPU
    once, cut the reduction so that about 2 programs per SM run, keeping >= 8 steps each."""
    if INTERPRETED or device.type == "cpu":
        return _FWD_SPLIT_INTERPRETED
    sms = _num_sms(device)
    if tiles >= sms:
        return 1
    return max(1, min(cdiv(2 * sms, tiles), steps // 8))


_FWD_SPLIT_INTERPRETED = 1  # tests set it to run the split-K path in the interpreter


def _wgrad_split(pixels: int, tiles: int, device: torch.device) -> int:
    """How many chunks the grad-weight reduction over N*P*Q is cut into.

    Enough programs to fill the GPU (2 waves), but chunks of at least 256 pixels so the
    partial sums stay a small fraction of the work. The interpreter uses tiny chunks so
    tests on tiny shapes run split-K too.
    """
    if INTERPRETED or device.type == "cpu":
        return max(1, min(4, pixels // 32))
    return max(1, min(cdiv(2 * _num_sms(device), tiles), pixels // 256))


def _split_sum(parts: torch.Tensor, bias, out: torch.Tensor, rows: int, cols: int, p: int,
               q: int, out_strides, relu: bool) -> None:
    """out (rows = (n, p, q), cols) = relu(sum_s parts[s] + bias), in the order s = 0, 1, ..."""
    block_m, block_n = (16, 16) if INTERPRETED else (64, 64)
    launch(_split_sum_kernel, (cdiv(rows, block_m), cdiv(cols, block_n)),
           parts, bias if bias is not None else parts, out, rows, cols, p, q, parts.shape[0],
           *out_strides, HAS_BIAS=bias is not None, RELU=relu, BLOCK_M=block_m,
           BLOCK_N=block_n)


def _row_run(x_cl: torch.Tensor, s: int, groups: int, dil_w: int) -> bool:
    """Thin input (C_in < 16, one group, no horizontal dilation, a kernel wider than 1): the S
    taps of a filter row read S * C_in consecutive elements of a channels-last row, so the
    inner reduction runs over that run instead of over C_in channels padded to BLOCK_K."""
    c_in = x_cl.shape[1]
    return groups == 1 and c_in < 16 and dil_w == 1 and s > 1 and x_cl.stride(3) == c_in


def _forward(x_cl: torch.Tensor, w_cl: torch.Tensor, bias, y: torch.Tensor, p_out: int,
             q_out: int, stride, padding, dilation, groups: int, relu: bool) -> None:
    """y (N, C_out, p_out, q_out, any strides) = conv2d of the channels-last input x_cl with
    the (C_out, R, S, C_in / G) contiguous weight w_cl; the forward and every grad-input
    phase run through here."""
    n_batch, _, h_in, w_in = x_cl.shape
    c_out, r, s, c_in_g = w_cl.shape
    npq, c_out_g = n_batch * p_out * q_out, c_out // groups
    if npq == 0 or c_out == 0:
        return
    row_run = _row_run(x_cl, s, groups, dilation[1])
    c_run, s_loop = (s * c_in_g, 1) if row_run else (c_in_g, s)
    steps = r * s_loop * cdiv(c_run, 64)
    split = _fwd_split(cdiv(npq, 128) * cdiv(c_out_g, 128) * groups, steps, x_cl.device)
    acc_dtype = torch.float64 if x_cl.dtype == torch.float64 else torch.float32
    target = torch.empty((split, npq, c_out), dtype=acc_dtype, device=x_cl.device) \
        if split > 1 else y

    def grid(meta):
        return (cdiv(npq, meta["BLOCK_M"]) * cdiv(c_out_g, meta["BLOCK_N"]), groups, split)

    launch(conv2d_fwd_kernel, grid,
           x_cl, w_cl, bias if bias is not None else w_cl, target,
           npq, c_out_g, c_in_g, h_in, w_in, p_out, q_out, r, c_run, s_loop, split,
           stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
           x_cl.stride(0), x_cl.stride(2), x_cl.stride(3), *y.stride(),
           HAS_BIAS=bias is not None, RELU=relu, ROW_RUN=c_in_g if row_run else 0,
           ACC_TYPE=accumulator_type(x_cl.dtype), PRECISION=dot_precision(x_cl.dtype))
    if split > 1:
        _split_sum(target, bias, y, npq, c_out, p_out, q_out, y.stride(), relu)


def _pad_thin_channels(x_cl: torch.Tensor, weight: torch.Tensor, groups: int):
    """C_in 3 (or 5-7) of a first layer padded with zero channels to 4 (8): the row run of
    each pixel is then 8- (16-) byte aligned for vector loads; the zero channels add
    nothing to the sums. Others are returned as they are."""
    c_in = x_cl.shape[1]
    if groups != 1 or c_in in (1, 2, 4) or c_in >= 8:
        return x_cl, weight
    c_pad = 4 if c_in < 4 else 8
    n, _, h, w = x_cl.shape
    xp = x_cl.new_zeros((n, h, w, c_pad)).permute(0, 3, 1, 2)  # channels-last (N, C, H, W)
    xp[:, :c_in] = x_cl
    wp = weight.new_zeros((weight.shape[0], c_pad, *weight.shape[2:]))
    wp[:, :c_in] = weight
    return xp, wp


@kernel_op("cnnops_triton::conv2d", mutates_args=())
def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
           padding: list[int], dilation: list[int], groups: int, relu: bool) -> torch.Tensor:
    """F.conv2d (then F.relu when `relu`), output channels-last."""
    n_batch, _, h_in, w_in = x.shape
    c_out, _, r, s = weight.shape
    p_out, q_out = conv2d_output_hw((h_in, w_in), (r, s), stride, padding, dilation)
    y = torch.empty((n_batch, c_out, p_out, q_out), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last)
    x_cl, w = _pad_thin_channels(_channels_last(x), weight, groups)
    w_cl = w.permute(0, 2, 3, 1).contiguous()  # (C_out, R, S, C_in/G)
    _forward(x_cl, w_cl, bias, y, p_out, q_out, stride, padding, dilation, groups, relu)
    return y


def _phase_taps(phase: int, stride: int, pad: int, dil: int, taps: int):
    """The sub-filter of one stride phase of grad input, along one axis.

    Input rows h = phase + stride * i receive dy[p] w[r] where p * stride = h + pad - r * dil,
    i.e. the taps r with r * dil = phase + pad (mod stride): r = r0, r0 + L, r0 + 2L, ...
    (L = stride / gcd(stride, dil)). With those taps reversed, p = i - pad' + t * D
    (D = L * dil / stride): a stride-1 convolution with dilation D and padding pad'.
    Returns (tap indices in the order t = 0, 1, ..., D, pad'), or None when no tap reaches
    this phase (its gradient is zero).
    """
    step = stride // math.gcd(stride, dil)
    first = next((r for r in range(min(step, taps)) if (r * dil - phase - pad) % stride == 0),
                 None)
    if first is None:
        return None
    rs = list(range(first, taps, step))[::-1]
    d = step * dil // stride
    base = (phase + pad - first * dil) // stride  # p - i of the first tap
    return rs, d, (len(rs) - 1) * d - base


@kernel_op("cnnops_triton::conv2d_grad_input", mutates_args=())
def conv2d_grad_input(grad: torch.Tensor, weight: torch.Tensor, input_hw: list[int],
                      stride: list[int], padding: list[int], dilation: list[int],
                      groups: int) -> torch.Tensor:
    """The gradient of conv2d with respect to its input (H, W) = input_hw; channels-last.

    A forward convolution of dy with the transposed, flipped weight, one stride-1 launch per
    stride phase (see the module docstring)."""
    n_batch, c_out, _, _ = grad.shape
    _, c_in_g, r, s = weight.shape
    h_in, w_in = input_hw
    c_out_g = c_out // groups
    dx = torch.empty((n_batch, c_in_g * groups, h_in, w_in), dtype=grad.dtype,
                     device=grad.device, memory_format=torch.channels_last)
    dy_cl = _channels_last(grad)
    # (G, C_out/G, C_in/G, R, S) -> (G, C_in/G, R, S, C_out/G): per group, the transpose
    w_t = weight.view(groups, c_out_g, c_in_g, r, s).permute(0, 2, 3, 4, 1)
    for ph in range(stride[0]):
        for pw in range(stride[1]):
            view = dx[:, :, ph::stride[0], pw::stride[1]]
            rows = _phase_taps(ph, stride[0], padding[0], dilation[0], r)
            cols = _phase_taps(pw, stride[1], padding[1], dilation[1], s)
            if rows is None or cols is None:
                view.zero_()  # no tap lands on these pixels
                continue
            (rr, dr, pad_r), (ss, ds, pad_s) = rows, cols
            sub = w_t[:, :, rr][:, :, :, ss].reshape(groups * c_in_g, len(rr), len(ss), c_out_g)
            _forward(dy_cl, sub.contiguous(), None, view, view.shape[2], view.shape[3],
                     (1, 1), (pad_r, pad_s), (dr, ds), groups, False)
    return dx


@kernel_op("cnnops_triton::conv2d_grad_weight", mutates_args=())
def conv2d_grad_weight(grad: torch.Tensor, x: torch.Tensor, weight_shape: list[int],
                       stride: list[int], padding: list[int], dilation: list[int], groups: int,
                       with_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad weight, grad bias) of conv2d; grad bias is empty when not `with_bias`."""
    n_batch, c_out, p_out, q_out = grad.shape
    h_in, w_in = x.shape[2:]
    _, c_in_g, r, s = weight_shape
    c_out_g, npq = c_out // groups, n_batch * p_out * q_out
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dy_cl = _channels_last(grad)
    x_cl = _channels_last(x)
    split = _wgrad_split(npq, groups * r * s * cdiv(c_out_g, 128) * cdiv(c_in_g, 128),
                         x.device)
    chunk = max(1, cdiv(npq, split))
    # every element of every split's slab is written by one program (zeros only for N*P*Q = 0)
    alloc = torch.empty if npq > 0 else torch.zeros
    dw_parts = alloc((split, c_out, r * s * c_in_g), dtype=acc_dtype, device=x.device)

    def grid(meta):
        return (cdiv(c_out_g, meta["BLOCK_M"]) * cdiv(c_in_g, meta["BLOCK_N"]),
                r * s * groups, split)

    if npq > 0:
        launch(conv2d_grad_weight_kernel, grid,
               dy_cl, x_cl, dw_parts, c_out_g, c_in_g, npq, split, n_batch, h_in, w_in, p_out,
               q_out, r, s, stride[0], stride[1], padding[0], padding[1], dilation[0],
               dilation[1],
               x_cl.stride(0), x_cl.stride(2), x_cl.stride(3),
               ACC_TYPE=accumulator_type(x.dtype), PRECISION=dot_precision(x.dtype))
    dw = torch.empty((c_out, r, s, c_in_g), dtype=x.dtype, device=x.device)
    _split_sum(dw_parts, None, dw, c_out, r * s * c_in_g, 1, 1, (r * s * c_in_g, 1, 0, 0),
               False)
    db = grad.new_empty((0,))
    if with_bias:
        db_parts = alloc((split, c_out), dtype=acc_dtype, device=x.device)
        block = 16 if INTERPRETED else 64
        if npq > 0:
            launch(conv2d_grad_bias_kernel, (cdiv(c_out, block), split),
                   dy_cl, db_parts, npq, c_out, chunk, ACC_TYPE=accumulator_type(x.dtype),
                   BLOCK_M=block, BLOCK_N=block)
        db = torch.empty((c_out,), dtype=x.dtype, device=x.device)
        _split_sum(db_parts, None, db, 1, c_out, 1, 1, (0, 1, 0, 0), False)
    return dw.permute(0, 3, 1, 2), db


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
