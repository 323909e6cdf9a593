"""batch_norm forward and backward, and the ops `cnnops_triton::batch_norm` and
`cnnops_triton::batch_norm_grad`.

The input (N, C, *) is viewed as (N, C, L); per channel c the statistics run over the
M = N*L values x[:, c, :]:

    y = (x - mean) * invstd * weight + bias,      invstd = 1 / sqrt(var + eps)

training uses the batch's mean and biased variance, eval the running estimates. The ops are
functional (nothing is mutated): in training with running statistics `batch_norm` returns the
new estimates, (1 - momentum) * running + momentum * batch value, with the unbiased variance
var * M / (M - 1) as PyTorch, and the backend copies them into the caller's buffers.

Statistics in one pass over x: each tile of BLOCK_R rows gives a tile mean and a tile sum of
squared deviations (exact, from registers), merged into the running (mean, M2, count) with Chan's
parallel formula (the pairwise form of Welford's update). The rows are cut into SPLIT chunks
whose partial (mean, M2, count) a second, small kernel merges in a fixed order; that kernel (not
autotuned, one launch) is also the only one computing the new running statistics, so autotuning
(which runs a kernel once per config) can never apply the update twice. In eval the same kernel
turns the running variance into invstd, so both modes hand (mean, invstd) to the same apply and
backward kernels.

Backward, with xhat = (x - mean) * invstd and sums over the M values of a channel:

    grad bias = sum(dy),  grad weight = sum(dy * xhat)
    training:  dx = weight * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
    eval:      dx = weight * invstd * dy

The sums run split over row chunks like the statistics; a small kernel adds their SPLIT
partials in a fixed order (bitwise deterministic, no atomics).

Divisions and square roots are IEEE round-to-nearest (`div_rn`, `sqrt_rn`), not the GPU's
approximate instructions. An empty batch (M = 0) launches nothing: the output is empty, the
running statistics come back unchanged, grad weight and grad bias are zero (as PyTorch).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from cnnops.backends.triton._launch import (INTERPRETED, accumulator_type, cdiv, configs,
                                           div_rn, kernel_op, launch, sqrt_rn)

# Tiles (rows of (n, l) x channels). When the rows are the contiguous dimension (NCHW,
# (N, C, L) with L > 1) a tall tile reads runs of one channel; when the channels are
# (channels-last, or (N, C)) a wide tile reads runs of channels.
BN_TALL_CONFIGS = [triton.Config({"BLOCK_R": br, "BLOCK_C": bc}, num_warps=w)
                   for br, bc, w in [(256, 1, 4), (512, 1, 4), (128, 4, 4), (64, 16, 4)]]
BN_WIDE_CONFIGS = [triton.Config({"BLOCK_R": br, "BLOCK_C": bc}, num_warps=w)
                   for br, bc, w in [(32, 32, 4), (16, 64, 4), (8, 128, 4), (32, 64, 8)]]
BN_CONFIGS = configs(BN_TALL_CONFIGS + BN_WIDE_CONFIGS,
                     triton.Config({"BLOCK_R": 16, "BLOCK_C": 4}))
# The autotune key is one bucket per (rows, channels, layout) class, not the exact sizes: a new
# batch size or image size in the same power-of-two bucket reuses the tuned config.
BN_KEY = ["TUNE_KEY"]
BN_MAX_CANDIDATES = 2  # configs timed per new key and kernel (4 kernels: at most 8 runs)
FINALIZE_BLOCK_C = 128  # channels per program of the (not autotuned) merge kernels


def _bucket(n: int) -> int:
    return max(1, n - 1).bit_length()  # ceil(log2(n)): 1 and 2 -> 1, 3..4 -> 2, ...


def tune_key(rows: int, channels: int, channels_inner: bool) -> int:
    """The autotune key of a (rows, channels, layout) problem: log2 buckets and the layout.

    A multiple of 16 (never 0 or 1), so Triton gives every key the same integer
    specialisation and a new key costs no compile, only the timing of its candidates."""
    return 16 * (1 + (_bucket(rows) * 64 + _bucket(channels)) * 2 + int(channels_inner))


def _prune(config_list, named_args, **kwargs):
    """early_config_prune: at most BN_MAX_CANDIDATES tiles that fit the problem, those made
    for the input's layout first (each list is ordered best guess first); keeps >= 1."""
    if len(config_list) <= 1:
        return config_list
    key = named_args["TUNE_KEY"] // 16 - 1
    channels_inner = bool(key % 2)
    rows = 2 ** (key // 2 // 64)
    channels = 2 ** (key // 2 % 64)
    order = (BN_WIDE_CONFIGS + BN_TALL_CONFIGS if channels_inner
             else BN_TALL_CONFIGS + BN_WIDE_CONFIGS)
    kept = [c for c in order if c in config_list
            and c.kwargs["BLOCK_C"] <= channels and c.kwargs["BLOCK_R"] <= max(16, rows)]
    if not kept:  # a problem smaller than every tile: the smallest tile
        kept = [min(config_list, key=lambda c: c.kwargs["BLOCK_R"] * c.kwargs["BLOCK_C"])]
    return kept[:BN_MAX_CANDIDATES]


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


@triton.autotune(configs=BN_CONFIGS, key=BN_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def batch_norm_stats_kernel(
    x_ptr,  # input viewed as (N, C, L), any strides
    mean_ptr, m2_ptr, count_ptr,  # out: partial (SPLIT, C) mean, sum of sq. deviations, count
    M, C, L, CHUNK,  # rows N*L, channels, L, rows per split
    sx_n, sx_c, sx_l,  # input strides (elements)
    TUNE_KEY,  # autotune key only (see tune_key); unused by the body
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
        tile_count = tl.sum(row_ok.to(ACC_TYPE), axis=0)  # >= 1: r0 < end
        tile_mean = div_rn(tl.sum(x, axis=0), tile_count, ACC_TYPE)
        dev = tl.where(row_ok[:, None], x - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(dev * dev, axis=0)
        # Chan et al.: merge (mean, m2, count) with the tile's
        new_count = count + tile_count
        delta = tile_mean - mean
        frac = div_rn(tile_count + tl.zeros_like(mean), new_count, ACC_TYPE)
        mean += delta * frac
        m2 += tile_m2 + delta * delta * count * frac
        count = new_count
    out = split * C + chans
    tl.store(mean_ptr + out, mean, mask=chan_ok)
    tl.store(m2_ptr + out, m2, mask=chan_ok)
    tl.store(count_ptr + out, count, mask=chan_ok)


@triton.jit
def batch_norm_finalize_kernel(
    mean_ptr, m2_ptr, count_ptr,  # partial (SPLIT, C) statistics (training only)
    running_mean_ptr, running_var_ptr,  # (C,) running estimates (read only)
    save_mean_ptr, save_invstd_ptr,  # out (C,): the mean and invstd the apply kernel uses
    new_mean_ptr, new_var_ptr,  # out (C,): new running estimates (training with running stats)
    C, SPLIT, eps, momentum,  # channels, partials per channel, BN's eps and momentum
    TRAINING: tl.constexpr,  # merge the partials; else invstd from the running variance
    UPDATE_RUNNING: tl.constexpr,  # write the momentum update (no autotune: exactly once)
    ACC_TYPE: tl.constexpr,  # float32, or float64 for float64 tensors
    BLOCK_C: tl.constexpr,  # channels per program
):
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = chans < C
    if TRAINING:
        mean = tl.zeros((BLOCK_C,), ACC_TYPE)
        m2 = tl.zeros((BLOCK_C,), ACC_TYPE)
        count = tl.zeros((BLOCK_C,), ACC_TYPE)
        for split in range(SPLIT):  # a fixed order: deterministic
            part_count = tl.load(count_ptr + split * C + chans, mask=ok, other=0.0)
            part_mean = tl.load(mean_ptr + split * C + chans, mask=ok, other=0.0)
            part_m2 = tl.load(m2_ptr + split * C + chans, mask=ok, other=0.0)
            new_count = count + part_count
            # an empty chunk (count 0) adds nothing
            frac = tl.where(new_count > 0,
                            div_rn(part_count, tl.maximum(new_count, 1.0), ACC_TYPE), 0.0)
            delta = part_mean - mean
            mean += delta * frac
            m2 += part_m2 + delta * delta * count * frac
            count = new_count
        count = tl.where(ok, count, 2.0)  # lanes past C: keep their (unstored) math finite
        var = div_rn(m2, count, ACC_TYPE)
    else:
        mean = tl.load(running_mean_ptr + chans, mask=ok, other=0.0).to(ACC_TYPE)
        var = tl.load(running_var_ptr + chans, mask=ok, other=1.0).to(ACC_TYPE)
    invstd = div_rn(1.0 + tl.zeros_like(var), sqrt_rn(var + eps, ACC_TYPE), ACC_TYPE)
    tl.store(save_mean_ptr + chans, mean, mask=ok)
    tl.store(save_invstd_ptr + chans, invstd, mask=ok)
    if UPDATE_RUNNING:
        rm = tl.load(running_mean_ptr + chans, mask=ok, other=0.0).to(ACC_TYPE)
        rv = tl.load(running_var_ptr + chans, mask=ok, other=0.0).to(ACC_TYPE)
        unbiased = div_rn(m2, count - 1.0, ACC_TYPE)  # count >= 2: validated
        tl.store(new_mean_ptr + chans, (1.0 - momentum) * rm + momentum * mean, mask=ok)
        tl.store(new_var_ptr + chans, (1.0 - momentum) * rv + momentum * unbiased, mask=ok)


@triton.autotune(configs=BN_CONFIGS, key=BN_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def batch_norm_apply_kernel(
    x_ptr,  # input viewed as (N, C, L), any strides
    y_ptr,  # output, same shape, any strides
    mean_ptr, invstd_ptr,  # (C,) from the finalize kernel, ACC_TYPE
    w_ptr, b_ptr,  # (C,) weight and bias; unused without HAS_WEIGHT / HAS_BIAS
    M, C, L,  # rows N*L, channels, L
    sx_n, sx_c, sx_l,  # input strides (elements)
    sy_n, sy_c, sy_l,  # output strides (elements)
    TUNE_KEY,  # autotune key only (see tune_key); unused by the body
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,  # affine parts given
    ACC_TYPE: tl.constexpr,  # float32, or float64 for float64 tensors
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # tile: rows x channels
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    chan_ok = chans < C
    mean = tl.load(mean_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE)
    scale = tl.load(invstd_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE)
    if HAS_WEIGHT:
        scale *= tl.load(w_ptr + chans, mask=chan_ok, other=1.0).to(ACC_TYPE)
    x = _load_tile(x_ptr, rows, chans, row_ok, chan_ok, L, sx_n, sx_c, sx_l, ACC_TYPE)
    y = (x - mean[None, :]) * scale[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE)[None, :]
    n = rows // L
    l = rows % L
    ptrs = y_ptr + (n * sy_n + l * sy_l)[:, None] + (chans * sy_c)[None, :]
    tl.store(ptrs, y.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & chan_ok[None, :])


@triton.autotune(configs=BN_CONFIGS, key=BN_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def batch_norm_grad_reduce_kernel(
    dy_ptr,  # grad of the output viewed as (N, C, L), any strides
    x_ptr,  # input, any strides
    mean_ptr, invstd_ptr,  # (C,) the statistics the forward used, ACC_TYPE
    sum_dy_ptr, sum_dy_xhat_ptr,  # out: partial (SPLIT, C) sums of dy and dy * xhat
    M, C, L, CHUNK,  # rows N*L, channels, L, rows per split
    sd_n, sd_c, sd_l,  # dy strides (elements)
    sx_n, sx_c, sx_l,  # input strides (elements)
    TUNE_KEY,  # autotune key only (see tune_key); unused by the body
    ACC_TYPE: tl.constexpr,  # float32, or float64 for float64 tensors
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # tile: rows x channels
):
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_ok = chans < C
    split = tl.program_id(1)
    mean = tl.load(mean_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE)
    invstd = tl.load(invstd_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, M)
    sum_dy = tl.zeros((BLOCK_C,), ACC_TYPE)
    sum_dy_xc = tl.zeros((BLOCK_C,), ACC_TYPE)
    for r0 in range(start, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_ok = rows < end
        dy = _load_tile(dy_ptr, rows, chans, row_ok, chan_ok, L, sd_n, sd_c, sd_l, ACC_TYPE)
        x = _load_tile(x_ptr, rows, chans, row_ok, chan_ok, L, sx_n, sx_c, sx_l, ACC_TYPE)
        sum_dy += tl.sum(dy, axis=0)
        sum_dy_xc += tl.sum(dy * tl.where(row_ok[:, None], x - mean[None, :], 0.0), axis=0)
    tl.store(sum_dy_ptr + split * C + chans, sum_dy, mask=chan_ok)
    tl.store(sum_dy_xhat_ptr + split * C + chans, sum_dy_xc * invstd, mask=chan_ok)


@triton.jit
def batch_norm_grad_sums_kernel(
    part_dy_ptr, part_dy_xhat_ptr,  # partial (SPLIT, C) sums from the reduce kernel
    sum_dy_ptr, sum_dy_xhat_ptr,  # out (C,): their totals, ACC_TYPE
    C, SPLIT,  # channels, partials per channel
    ACC_TYPE: tl.constexpr,  # float32, or float64 for float64 tensors
    BLOCK_C: tl.constexpr,  # channels per program
):
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = chans < C
    sum_dy = tl.zeros((BLOCK_C,), ACC_TYPE)
    sum_dy_xhat = tl.zeros((BLOCK_C,), ACC_TYPE)
    for split in range(SPLIT):  # a fixed order: deterministic
        sum_dy += tl.load(part_dy_ptr + split * C + chans, mask=ok, other=0.0)
        sum_dy_xhat += tl.load(part_dy_xhat_ptr + split * C + chans, mask=ok, other=0.0)
    tl.store(sum_dy_ptr + chans, sum_dy, mask=ok)
    tl.store(sum_dy_xhat_ptr + chans, sum_dy_xhat, mask=ok)


@triton.autotune(configs=BN_CONFIGS, key=BN_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def batch_norm_grad_input_kernel(
    dy_ptr,  # grad of the output viewed as (N, C, L), any strides
    x_ptr,  # input, any strides (read in training only)
    dx_ptr,  # out: grad of the input, any strides
    mean_ptr, invstd_ptr,  # (C,) the statistics the forward used, ACC_TYPE
    w_ptr,  # (C,) weight; unused without HAS_WEIGHT
    sum_dy_ptr, sum_dy_xhat_ptr,  # (C,) full sums (training only)
    M, C, L,  # rows N*L, channels, L
    sd_n, sd_c, sd_l,  # dy strides (elements)
    sx_n, sx_c, sx_l,  # input strides (elements)
    sg_n, sg_c, sg_l,  # dx strides (elements)
    TUNE_KEY,  # autotune key only (see tune_key); unused by the body
    TRAINING: tl.constexpr,  # batch statistics: subtract the mean terms
    HAS_WEIGHT: tl.constexpr,  # weight given
    ACC_TYPE: tl.constexpr,  # float32, or float64 for float64 tensors
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # tile: rows x channels
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    chan_ok = chans < C
    invstd = tl.load(invstd_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE)
    scale = invstd
    if HAS_WEIGHT:
        scale = scale * tl.load(w_ptr + chans, mask=chan_ok, other=1.0).to(ACC_TYPE)
    dy = _load_tile(dy_ptr, rows, chans, row_ok, chan_ok, L, sd_n, sd_c, sd_l, ACC_TYPE)
    if TRAINING:
        mean = tl.load(mean_ptr + chans, mask=chan_ok, other=0.0).to(ACC_TYPE)
        x = _load_tile(x_ptr, rows, chans, row_ok, chan_ok, L, sx_n, sx_c, sx_l, ACC_TYPE)
        total = M + tl.zeros_like(invstd)
        mean_dy = div_rn(tl.load(sum_dy_ptr + chans, mask=chan_ok, other=0.0), total, ACC_TYPE)
        mean_dy_xhat = div_rn(tl.load(sum_dy_xhat_ptr + chans, mask=chan_ok, other=0.0),
                              total, ACC_TYPE)
        xhat = (x - mean[None, :]) * invstd[None, :]
        dy = dy - mean_dy[None, :] - xhat * mean_dy_xhat[None, :]
    dx = dy * scale[None, :]
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
    length = 1
    for size in t.shape[2:]:
        length *= size
    return t, t.view(t.shape[0], t.shape[1], length)  # not -1: ambiguous for 0 elements


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tile_grid(m: int, c: int):
    return lambda meta: (cdiv(m, meta["BLOCK_R"]), cdiv(c, meta["BLOCK_C"]))


def _channels_inner(x3: torch.Tensor) -> bool:
    """Whether the channels, not the rows, are the contiguous dimension of (N, C, L)."""
    return x3.stride(1) == 1


def _batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                training: bool, momentum: float, eps: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, save_mean, save_invstd, new_running_mean, new_running_var).

    save_mean / save_invstd (C,) are the statistics used (batch's in training, running ones in
    eval), in float32 (float64 for float64 input); the new running estimates are (C,) in that
    dtype in training with running statistics, else (0,). Nothing is mutated."""
    x, x3 = _as_ncl(x)
    n_batch, c, length = x3.shape
    rows = n_batch * length
    acc, acc_dtype = accumulator_type(x.dtype), _acc_dtype(x.dtype)
    update = training and running_mean is not None
    y = torch.empty_like(x)
    save_mean = torch.empty((c,), dtype=acc_dtype, device=x.device)
    save_invstd = torch.empty_like(save_mean)
    new_mean = torch.empty((c if update else 0,), dtype=acc_dtype, device=x.device)
    new_var = torch.empty_like(new_mean)
    if c == 0:
        return y, save_mean, save_invstd, new_mean, new_var
    if training and rows == 0:
        # torch: an empty output, running statistics unchanged; no kernel has work to do
        save_mean.zero_()
        save_invstd.zero_()
        if update:
            new_mean.copy_(running_mean)
            new_var.copy_(running_var)
        return y, save_mean, save_invstd, new_mean, new_var
    key = tune_key(rows, c, _channels_inner(x3))
    parts = (save_mean,) * 3  # placeholders: eval has no partials
    split = 1
    if training:
        split = _split(rows, c, x.device)
        parts = torch.empty((3, split, c), dtype=acc_dtype, device=x.device)
        launch(batch_norm_stats_kernel, lambda meta: (cdiv(c, meta["BLOCK_C"]), split),
               x3, parts[0], parts[1], parts[2], rows, c, length, cdiv(rows, split),
               *x3.stride(), key, ACC_TYPE=acc)
    launch(batch_norm_finalize_kernel, (cdiv(c, FINALIZE_BLOCK_C),),
           parts[0], parts[1], parts[2],
           running_mean if running_mean is not None else save_mean,
           running_var if running_var is not None else save_mean,
           save_mean, save_invstd,
           new_mean if update else save_mean, new_var if update else save_mean,
           c, split, eps, momentum, TRAINING=training, UPDATE_RUNNING=update, ACC_TYPE=acc,
           BLOCK_C=FINALIZE_BLOCK_C)
    if rows:
        y3 = y.view(n_batch, c, length)
        launch(batch_norm_apply_kernel, _tile_grid(rows, c), x3, y3, save_mean, save_invstd,
               weight if weight is not None else save_mean,
               bias if bias is not None else save_mean,
               rows, c, length, *x3.stride(), *y3.stride(), key,
               HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, ACC_TYPE=acc)
    return y, save_mean, save_invstd, new_mean, new_var


def _batch_norm_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                     save_mean: torch.Tensor, save_invstd: torch.Tensor, training: bool,
                     output_mask: list[bool]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad input, grad weight, grad bias) of `batch_norm` given its save_mean and
    save_invstd; grad weight and grad bias (C,) in the accumulation dtype. An output whose
    output_mask entry is False is (0,) and not computed."""
    x, x3 = _as_ncl(x)
    grad, grad3 = _as_ncl(grad)
    n_batch, c, length = x3.shape
    rows = n_batch * length
    acc, acc_dtype = accumulator_type(x.dtype), _acc_dtype(x.dtype)
    need_input, need_weight, need_bias = output_mask
    dx = torch.empty_like(x) if need_input else x.new_empty((0,))
    sums = torch.zeros((2, c), dtype=acc_dtype, device=x.device)  # sum(dy), sum(dy * xhat)
    dw = torch.empty((c if need_weight else 0,), dtype=acc_dtype, device=x.device)
    db = torch.empty((c if need_bias else 0,), dtype=acc_dtype, device=x.device)
    if rows == 0 or c == 0:  # empty sums are zero; no kernel has work to do
        return dx, dw.zero_(), db.zero_()
    key = tune_key(rows, c, _channels_inner(x3))
    if need_weight or need_bias or (need_input and training):
        split = _split(rows, c, x.device)
        parts = torch.empty((2, split, c), dtype=acc_dtype, device=x.device)
        launch(batch_norm_grad_reduce_kernel, lambda meta: (cdiv(c, meta["BLOCK_C"]), split),
               grad3, x3, save_mean, save_invstd, parts[0], parts[1], rows, c, length,
               cdiv(rows, split), *grad3.stride(), *x3.stride(), key, ACC_TYPE=acc)
        launch(batch_norm_grad_sums_kernel, (cdiv(c, FINALIZE_BLOCK_C),), parts[0], parts[1],
               sums[0], sums[1], c, split, ACC_TYPE=acc, BLOCK_C=FINALIZE_BLOCK_C)
        if need_bias:
            db.copy_(sums[0])
        if need_weight:
            dw.copy_(sums[1])
    if need_input:
        dx3 = dx.view(n_batch, c, length)
        launch(batch_norm_grad_input_kernel, _tile_grid(rows, c), grad3, x3, dx3, save_mean,
               save_invstd, weight if weight is not None else save_mean, sums[0], sums[1],
               rows, c, length, *grad3.stride(), *x3.stride(), *dx3.stride(), key,
               TRAINING=training, HAS_WEIGHT=weight is not None, ACC_TYPE=acc)
    return dx, dw, db


def _setup_context(ctx, inputs, output):
    x, weight, bias, _running_mean, _running_var, training, _momentum, _eps = inputs
    _, save_mean, save_invstd, new_mean, new_var = output
    ctx.mark_non_differentiable(save_mean, save_invstd, new_mean, new_var)
    ctx.save_for_backward(x, weight, save_mean, save_invstd)
    ctx.training = training
    ctx.dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)


def register(namespace: str = "cnnops_triton", use_triton_op: bool | None = None):
    """The two ops under `namespace`, forward with autograd: (batch_norm, batch_norm_grad).
    Called once at import; tests call it again under another namespace to force the
    triton_op branch."""
    grad_op = kernel_op(f"{namespace}::batch_norm_grad", mutates_args=(),
                        use_triton_op=use_triton_op)(_batch_norm_grad)
    forward = kernel_op(f"{namespace}::batch_norm", mutates_args=(),
                        use_triton_op=use_triton_op)(_batch_norm)

    def backward(ctx, grad, _save_mean, _save_invstd, _new_mean, _new_var):
        x, weight, save_mean, save_invstd = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        mask = [ctx.needs_input_grad[0],
                weight_dtype is not None and ctx.needs_input_grad[1],
                bias_dtype is not None and ctx.needs_input_grad[2]]
        dx, dw, db = grad_op(grad, x, weight, save_mean, save_invstd, ctx.training, mask)
        return (dx if mask[0] else None, dw.to(weight_dtype) if mask[1] else None,
                db.to(bias_dtype) if mask[2] else None, None, None, None, None, None)

    forward.register_autograd(backward, setup_context=_setup_context)
    return forward, grad_op


batch_norm, batch_norm_grad = register()
