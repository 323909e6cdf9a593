"""batch_norm forward and backward, and its ops `cnnops_triton::batch_norm*`.

The input (N, C, *) is viewed as (N, C, L); per channel c the statistics run over the
M = N*L values x[:, c, :]:

    y = (x - mean) * invstd * weight + bias,      invstd = 1 / sqrt(var + eps)

training uses the batch's mean and biased variance, eval the running estimates. Training
updates running_mean <- (1 - momentum) * running_mean + momentum * mean and running_var likewise
with the unbiased variance var * M / (M - 1), as PyTorch.

Statistics in one pass over x: each tile of BLOCK_R rows gives a tile mean and a tile sum of
squared deviations (exact, from registers), merged into the running (mean, M2, count) with Chan's
parallel formula (the pairwise form of Welford's update). The rows are cut into SPLIT chunks
whose partial (mean, M2, count) a second, small kernel merges; that kernel (not autotuned, one
launch) is also the only place that updates the running statistics, so autotuning the
statistics kernel can never apply the update twice.

Backward, with xhat = (x - mean) * invstd and sums over the M values of a channel:

    grad bias = sum(dy),  grad weight = sum(dy * xhat)
    training:  dx = weight * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
    eval:      dx = weight * invstd * dy

The sums run split over row chunks like the statistics; their SPLIT partials are added in a
fixed order (deterministic).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from cnnops.backends.triton._launch import (INTERPRETED, accumulator_type, cdiv, configs,
                                           kernel_op, launch)

# Tiles (rows of (n, l), channels): tall for (N, C, L) layouts, wide for channels-last.
BN_CONFIGS = configs(
    [triton.Config({"BLOCK_R": br, "BLOCK_C": bc}, num_warps=w)
     for br, bc, w in [(256, 1, 4), (512, 1, 4), (128, 4, 4), (64, 16, 4), (32, 32, 4),
                       (16, 64, 4), (8, 128, 4), (32, 64, 8)]],
    triton.Config({"BLOCK_R": 16, "BLOCK_C": 4}))
BN_KEY = ["M", "C", "sx_c"]  # sx_c == 1 for channels-last: another best tile


def _split(rows: int, channels: int, device: torch.device) -> int:
    """Row chunks: enough programs to fill the GPU, at least 1024 rows each."""
    if INTERPRETED or device.type != "cuda":
        return max(1, min(3, rows // 16))
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(cdiv(target, cdiv(channels, 16)), rows // 1024))


@triton.jit
def _load_tile(x_ptr, rows, chans, row_ok, chan_ok, L, s_n, s_c, s_l, ACC_TYPE: tl.constexpr):
    """x[n, c, l] for rows (n, l) x channels; zeros outside."""
    n = rows // L
    l = rows % L
    ptrs = x_ptr + (n * s_n + l * s_l)[:, None] + (chans * s_c)[None, :]
    return tl.load(ptrs, mask=row_ok[:, None] & chan_ok[None, :], other=0.0).to(ACC_TYPE)


@triton.autotune(configs=BN_CONFIGS, key=BN_KEY)
@triton.jit
def batch_norm_stats_kernel(
    x_ptr,  # input viewed as (N, C, L), any strides
    mean_ptr, m2_ptr, count_ptr,  # partial (SPLIT, C) mean, sum of squared deviations, count
    M, C, L, CHUNK,  # rows N*L, channels, L, rows per split
    sx_n, sx_c, sx_l,  # input strides (elements)
    ACC_TYPE: tl.constexpr,  # float32, or float64 for float64 tensors
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # tile: rows x channels
):
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    split = tl.program_id(1)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, M)
    mean = tl.zeros((BLOCK_C,), ACC_TYPE)
    m2 = tl.zeros((BLOCK_C,), ACC_TYPE)
    count = tl.zeros((BLOCK_C,), ACC_TYPE)
    for r0 in range(start, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_ok = rows < end
        x = _load_tile(x_ptr, rows, chans, row_ok, chan_ok, L, sx_n, sx_c, sx_l, ACC_TYPE)
        tile_count = tl.sum(row_ok.to(ACC_TYPE), axis=0)
        tile_mean = tl.sum(x, axis=0) / tile_count
        dev = tl.where(row_ok[:, None], x - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(dev * dev, axis=0)
        # Chan et al.: merge (mean, m2, count) with the tile's
        new_count = count + tile_count
        delta = tile_mean - mean
        mean += delta * (tile_count / new_count)
        m2 += tile_m2 + delta * delta * (count * tile_count / new_count)
        count = new_count
    out = split * C + chans
    tl.store(mean_ptr + out, mean, mask=chan_ok)
    tl.store(m2_ptr + out, m2, mask=chan_ok)
    tl.store(count_ptr + out, count, mask=chan_ok)


@triton.jit
def batch_norm_finalize_kernel(
    mean_ptr, m2_ptr, count_ptr,  # partial (SPLIT, C) statistics from batch_norm_stats_kernel
    save_mean_ptr, save_invstd_ptr,  # out (C,): batch mean and 1/sqrt(biased var + eps)
    running_mean_ptr, running_var_ptr,  # (C,) running estimates, updated when UPDATE_RUNNING
    C, SPLIT, eps, momentum,  # channels, partials per channel, BN's eps and momentum
    UPDATE_RUNNING: tl.constexpr,  # apply the momentum update (exactly once: no autotune here)
    ACC_TYPE: tl.constexpr,  # float32, or float64 for float64 tensors
    BLOCK_C: tl.constexpr,  # channels per program
):
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = chans < C
    mean = tl.zeros((BLOCK_C,), ACC_TYPE)
    m2 = tl.zeros((BLOCK_C,), ACC_TYPE)
    count = tl.zeros((BLOCK_C,), ACC_TYPE)
    for split in range(SPLIT):
        part_count = tl.load(count_ptr + split * C + chans, mask=ok, other=0.0)
        part_mean = tl.load(mean_ptr + split * C + chans, mask=ok, other=0.0)
        part_m2 = tl.load(m2_ptr + split * C + chans, mask=ok, other=0.0)
        new_count = count + part_count
        weight = tl.where(new_count > 0, part_count / tl.maximum(new_count, 1.0), 0.0)
        delta = part_mean - mean
        mean += delta * weight
        m2 += part_m2 + delta * delta * count * weight
        count = new_count
    count = tl.where(ok, count, 2.0)  # lanes past C: keep their (unstored) math finite
    var = m2 / count
    tl.store(save_mean_ptr + chans, mean, mask=ok)
    tl.store(save_invstd_ptr + chans, 1.0 / tl.sqrt(var + eps), mask=ok)
    if UPDATE_RUNNING:
        rm = tl.load(running_mean_ptr + chans, mask=ok, other=0.0).to(ACC_TYPE)
        rv = tl.load(running_var_ptr + chans, mask=ok, other=0.0).to(ACC_TYPE)
        unbiased = m2 / (count - 1.0)
        rm = (1.0 - momentum) * rm + momentum * mean
        rv = (1.0 - momentum) * rv + momentum * unbiased
        tl.store(running_mean_ptr + chans, rm.to(running_mean_ptr.dtype.element_ty), mask=ok)
        tl.store(running_var_ptr + chans, rv.to(running_var_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _channel_scale(mean_ptr, stat_ptr, w_ptr, chans, chan_ok, eps,
                   STAT_IS_VAR: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC_TYPE: tl.constexpr):
    """(mean, invstd, weight) of the channels; stat is invstd (training) or the running var."""
    mean = tl.load(mean_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE)
    stat = tl.load(stat_ptr + chans, mask=chan_ok, other=1.0).to(ACC_TYPE)
    if STAT_IS_VAR:
        invstd = 1.0 / tl.sqrt(stat + eps)
    else:
        invstd = stat
    if HAS_WEIGHT:
        weight = tl.load(w_ptr + chans, mask=chan_ok, other=1.0).to(ACC_TYPE)
    else:
        weight = tl.zeros_like(mean) + 1.0
    return mean, invstd, weight


@triton.autotune(configs=BN_CONFIGS, key=BN_KEY)
@triton.jit
def batch_norm_apply_kernel(
    x_ptr,  # input viewed as (N, C, L), any strides
    y_ptr,  # output, same shape, any strides
    mean_ptr, stat_ptr,  # (C,) mean, and invstd (training) or running var (eval)
    w_ptr, b_ptr,  # (C,) weight and bias; unused without HAS_WEIGHT / HAS_BIAS
    M, C, L, eps,  # rows N*L, channels, L, eps (eval)
    sx_n, sx_c, sx_l,  # input strides (elements)
    sy_n, sy_c, sy_l,  # output strides (elements)
    STAT_IS_VAR: tl.constexpr,  # eval: invstd = 1/sqrt(stat + eps)
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,  # affine parts given
    ACC_TYPE: tl.constexpr,  # float32, or float64 for float64 tensors
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # tile: rows x channels
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    chan_ok = chans < C
    mean, invstd, weight = _channel_scale(mean_ptr, stat_ptr, w_ptr, chans, chan_ok, eps,
                                          STAT_IS_VAR, HAS_WEIGHT, ACC_TYPE)
    x = _load_tile(x_ptr, rows, chans, row_ok, chan_ok, L, sx_n, sx_c, sx_l, ACC_TYPE)
    y = (x - mean[None, :]) * (invstd * weight)[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE)[None, :]
    n = rows // L
    l = rows % L
    ptrs = y_ptr + (n * sy_n + l * sy_l)[:, None] + (chans * sy_c)[None, :]
    tl.store(ptrs, y.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & chan_ok[None, :])


@triton.autotune(configs=BN_CONFIGS, key=BN_KEY)
@triton.jit
def batch_norm_bwd_reduce_kernel(
    dy_ptr,  # grad of the output viewed as (N, C, L), any strides
    x_ptr,  # input, any strides
    mean_ptr, stat_ptr,  # (C,) mean, and invstd (training) or running var (eval)
    sum_dy_ptr, sum_dy_xhat_ptr,  # out: partial (SPLIT, C) sums of dy and dy * xhat
    M, C, L, CHUNK, eps,  # rows N*L, channels, L, rows per split, eps (eval)
    sd_n, sd_c, sd_l,  # dy strides (elements)
    sx_n, sx_c, sx_l,  # input strides (elements)
    STAT_IS_VAR: tl.constexpr,  # eval: invstd = 1/sqrt(stat + eps)
    ACC_TYPE: tl.constexpr,  # float32, or float64 for float64 tensors
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # tile: rows x channels
):
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    split = tl.program_id(1)
    mean, invstd, _ = _channel_scale(mean_ptr, stat_ptr, mean_ptr, chans, chan_ok, eps,
                                     STAT_IS_VAR, False, ACC_TYPE)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, M)
    sum_dy = tl.zeros((BLOCK_C,), ACC_TYPE)
    sum_dy_xhat = tl.zeros((BLOCK_C,), ACC_TYPE)
    for r0 in range(start, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_ok = rows < end
        dy = _load_tile(dy_ptr, rows, chans, row_ok, chan_ok, L, sd_n, sd_c, sd_l, ACC_TYPE)
        x = _load_tile(x_ptr, rows, chans, row_ok, chan_ok, L, sx_n, sx_c, sx_l, ACC_TYPE)
        sum_dy += tl.sum(dy, axis=0)
        sum_dy_xhat += tl.sum(dy * (x - mean[None, :]), axis=0) * invstd
    tl.store(sum_dy_ptr + split * C + chans, sum_dy, mask=chan_ok)
    tl.store(sum_dy_xhat_ptr + split * C + chans, sum_dy_xhat, mask=chan_ok)


@triton.autotune(configs=BN_CONFIGS, key=BN_KEY)
@triton.jit
def batch_norm_bwd_input_kernel(
    dy_ptr,  # grad of the output viewed as (N, C, L), any strides
    x_ptr,  # input, any strides (read in training only)
    dx_ptr,  # out: grad of the input, any strides
    mean_ptr, stat_ptr,  # (C,) mean, and invstd (training) or running var (eval)
    w_ptr,  # (C,) weight; unused without HAS_WEIGHT
    sum_dy_ptr, sum_dy_xhat_ptr,  # (C,) full sums (training only)
    M, C, L, eps,  # rows N*L, channels, L, eps (eval)
    sd_n, sd_c, sd_l,  # dy strides (elements)
    sx_n, sx_c, sx_l,  # input strides (elements)
    sg_n, sg_c, sg_l,  # dx strides (elements)
    TRAINING: tl.constexpr,  # batch statistics: subtract the mean terms
    HAS_WEIGHT: tl.constexpr,  # weight given
    ACC_TYPE: tl.constexpr,  # float32, or float64 for float64 tensors
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # tile: rows x channels
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    chan_ok = chans < C
    mean, invstd, weight = _channel_scale(mean_ptr, stat_ptr, w_ptr, chans, chan_ok, eps,
                                          not TRAINING, HAS_WEIGHT, ACC_TYPE)
    dy = _load_tile(dy_ptr, rows, chans, row_ok, chan_ok, L, sd_n, sd_c, sd_l, ACC_TYPE)
    if TRAINING:
        x = _load_tile(x_ptr, rows, chans, row_ok, chan_ok, L, sx_n, sx_c, sx_l, ACC_TYPE)
        mean_dy = tl.load(sum_dy_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE) / M
        mean_dy_xhat = tl.load(sum_dy_xhat_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE) / M
        xhat = (x - mean[None, :]) * invstd[None, :]
        dy = dy - mean_dy[None, :] - xhat * mean_dy_xhat[None, :]
    dx = dy * (invstd * weight)[None, :]
    n = rows // L
    l = rows % L
    ptrs = dx_ptr + (n * sg_n + l * sg_l)[:, None] + (chans * sg_c)[None, :]
    tl.store(ptrs, dx.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & chan_ok[None, :])


def _as_ncl(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t dense in its memory format, a (N, C, L) view of it)."""
    if t.dim() == 4 and suggest_memory_format(t) == torch.channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    else:
        t = t.contiguous()
    return t, t.view(t.shape[0], t.shape[1], -1)


def _tile_grid(m: int, c: int):
    return lambda meta: (cdiv(m, meta["BLOCK_R"]), cdiv(c, meta["BLOCK_C"]))


@kernel_op("cnnops_triton::batch_norm_stats",
                         mutates_args=("running_mean", "running_var"))
def batch_norm_stats(x: torch.Tensor, running_mean: torch.Tensor | None,
                     running_var: torch.Tensor | None, momentum: float,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, invstd) per channel of x (N, C, *), in float32 (float64 for float64 x); updates
    running_mean / running_var in place when given. Not differentiable: `batch_norm`'s
    backward accounts for the statistics' dependence on x."""
    _, x3 = _as_ncl(x)
    n_batch, c, length = x3.shape
    rows = n_batch * length
    acc = accumulator_type(x.dtype)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    split = _split(rows, c, x.device)
    parts = torch.empty((3, split, c), dtype=acc_dtype, device=x.device)
    launch(batch_norm_stats_kernel, lambda meta: (cdiv(c, meta["BLOCK_C"]), split),
           x3, parts[0], parts[1], parts[2], rows, c, length, cdiv(rows, split),
           *x3.stride(), ACC_TYPE=acc)
    mean = torch.empty((c,), dtype=acc_dtype, device=x.device)
    invstd = torch.empty_like(mean)
    update = running_mean is not None and running_var is not None
    launch(batch_norm_finalize_kernel, (cdiv(c, 128),), parts[0], parts[1], parts[2],
           mean, invstd, running_mean if update else mean, running_var if update else mean,
           c, split, eps, momentum, UPDATE_RUNNING=update, ACC_TYPE=acc, BLOCK_C=128)
    return mean, invstd


@kernel_op("cnnops_triton::batch_norm", mutates_args=())
def batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               mean: torch.Tensor, stat: torch.Tensor, training: bool,
               eps: float) -> torch.Tensor:
    """(x - mean) * invstd * weight + bias per channel of x (N, C, *).

    training: `mean`, `stat` are the batch statistics (mean, invstd) of x from
    `batch_norm_stats`, and the backward differentiates through them; eval: they are the
    running mean and variance (invstd = 1/sqrt(stat + eps)), constants for the backward."""
    x, x3 = _as_ncl(x)
    n_batch, c, length = x3.shape
    rows = n_batch * length
    y = torch.empty_like(x)
    y3 = y.view(n_batch, c, length)
    launch(batch_norm_apply_kernel, _tile_grid(rows, c), x3, y3, mean, stat,
           weight if weight is not None else mean, bias if bias is not None else mean,
           rows, c, length, eps, *x3.stride(), *y3.stride(),
           STAT_IS_VAR=not training, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
           ACC_TYPE=accumulator_type(x.dtype))
    return y


@kernel_op("cnnops_triton::batch_norm_backward", mutates_args=())
def batch_norm_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                        mean: torch.Tensor, stat: torch.Tensor, training: bool, eps: float,
                        need_input: bool, need_affine: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad input, grad weight, grad bias) of `batch_norm`; unrequested ones are empty."""
    x, x3 = _as_ncl(x)
    grad, grad3 = _as_ncl(grad)
    n_batch, c, length = x3.shape
    rows = n_batch * length
    acc = accumulator_type(x.dtype)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dw, db, dx = x.new_empty((0,)), x.new_empty((0,)), x.new_empty((0,))  # outputs never alias
    sum_dy = sum_dy_xhat = mean  # placeholders when the sums are not needed
    if need_affine or (need_input and training):
        split = _split(rows, c, x.device)
        parts = torch.empty((2, split, c), dtype=acc_dtype, device=x.device)
        launch(batch_norm_bwd_reduce_kernel, lambda meta: (cdiv(c, meta["BLOCK_C"]), split),
               grad3, x3, mean, stat, parts[0], parts[1], rows, c, length, cdiv(rows, split),
               eps, *grad3.stride(), *x3.stride(), STAT_IS_VAR=not training, ACC_TYPE=acc)
        # split partials added in a fixed order: deterministic
        sum_dy, sum_dy_xhat = parts[0].sum(0), parts[1].sum(0)
        if need_affine:
            db, dw = sum_dy.to(x.dtype, copy=True), sum_dy_xhat.to(x.dtype, copy=True)
    if need_input:
        dx = torch.empty_like(x)
        dx3 = dx.view(n_batch, c, length)
        launch(batch_norm_bwd_input_kernel, _tile_grid(rows, c), grad3, x3, dx3, mean, stat,
               weight if weight is not None else mean, sum_dy, sum_dy_xhat,
               rows, c, length, eps, *grad3.stride(), *x3.stride(), *dx3.stride(),
               TRAINING=training, HAS_WEIGHT=weight is not None, ACC_TYPE=acc)
    return dx, dw, db


def _setup_context(ctx, inputs, output):
    x, weight, bias, mean, stat, training, eps = inputs
    ctx.save_for_backward(x, weight, mean, stat)
    ctx.args = (training, eps, weight is not None, bias is not None)


def _backward(ctx, grad):
    x, weight, mean, stat = ctx.saved_tensors
    training, eps, has_weight, has_bias = ctx.args
    need_input = ctx.needs_input_grad[0]
    need_affine = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    dx, dw, db = batch_norm_backward(grad, x, weight, mean, stat, training, eps, need_input,
                                     need_affine)
    return (dx if need_input else None,
            dw if has_weight and ctx.needs_input_grad[1] else None,
            db if has_bias and ctx.needs_input_grad[2] else None,
            None, None, None, None)


batch_norm.register_autograd(_backward, setup_context=_setup_context)
