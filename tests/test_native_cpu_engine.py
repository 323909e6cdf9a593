"""The CPU engine of the native backend (issue 14): the channel-blocked float32 conv2d forward
(kernels/cpu/conv2d_blocked.cpp) in each of its instruction-set variants, and the machine-limit
probes of kernels/cpu/peak.cpp.

The blocked kernel runs for float32 and groups == 1: channel-vectorised tiles for C_out >= 16,
pixel-vectorised ("thin") tiles below. grad_input with C_in >= 16 runs as stride-phase
sub-convolutions on it (kernels/cpu/conv2d_blocked_grad_input.cpp), and a stride-1 grad_input
with C_in < 16 as one forward convolution with thin output. float32 results
are compared with torch computed in float64 on the same (float32-representable) values. The ISA
variant is forced with the environment variable CNNOPS_CPU_ISA, read by the kernel on every
call; variants the CPU lacks are skipped.
"""
import ctypes

import pytest
import torch
import torch.nn.functional as F

import cnnops
from backend_support import cpu_isas, native_only
from differential import assert_close

pytestmark = native_only


_ISAS = cpu_isas()


# name: (input shape, C_out, kernel (kh, kw), kwargs). Every one takes the blocked path
# (C_out >= 16, groups 1): 1 to 5 channel blocks (tile groups of J = 4, 3, 2, 1 and a
# partial last block), strides 1-3 (phase planes), dilation, asymmetric padding, C_in = 1,
# planes smaller than one tile, 1x1 on the input as it is.
CASES = {
    "3x3_pad1": ((2, 8, 9, 11), 16, (3, 3), dict(padding=1)),
    "5x5_pad2_3blocks": ((2, 12, 7, 6), 48, (5, 5), dict(padding=2)),
    "stride2_5blocks_partial": ((2, 5, 13, 12), 70, (3, 3), dict(stride=2, padding=1)),
    "stride3_gt_kernel": ((1, 3, 14, 17), 17, (2, 2), dict(stride=3)),
    "stride21_dil23": ((2, 4, 13, 11), 33, (3, 2), dict(stride=(2, 1), padding=(1, 2),
                                                        dilation=(2, 3))),
    "cin1_7x7_stride2": ((2, 1, 20, 19), 64, (7, 7), dict(stride=2, padding=3)),
    "1x1_direct": ((2, 20, 9, 8), 80, (1, 1), {}),
    "1x1_tiny_plane": ((3, 7, 2, 3), 16, (1, 1), {}),
    "1x1_stride2": ((2, 9, 11, 13), 32, (1, 1), dict(stride=2)),
    "pad_exceeds_kernel": ((2, 3, 5, 6), 16, (1, 2), dict(padding=(1, 2))),
    "kernel_is_input": ((2, 6, 5, 4), 24, (5, 4), {}),
    "batch1_wide": ((1, 4, 3, 41), 16, (2, 3), dict(padding=(0, 1))),
    # small planes: the batch-inner copy (a tile is P images at one output position), with
    # tiles per position (N >= P) and flat over (position, image) pixels (N < P)
    "batch_inner_3x3": ((32, 32, 3, 3), 32, (3, 3), dict(padding=1)),
    "batch_inner_partial": ((30, 20, 3, 4), 40, (3, 3), dict(padding=1)),
    "batch_inner_flat": ((8, 16, 2, 2), 48, (3, 3), dict(padding=1)),
    # taps that read only padding are skipped per tile (tile_taps): per position (batch-inner,
    # dilated), per output row and column range (tiles along rows, flat tiles across rows)
    "skip_batch_inner_dilated": ((32, 16, 4, 5), 32, (3, 3), dict(padding=2, dilation=2)),
    "skip_rows_5x5": ((2, 16, 7, 30), 32, (5, 5), dict(padding=2)),
    "skip_flat_7x7_stride2": ((3, 17, 9, 8), 16, (7, 7), dict(stride=2, padding=3)),
    # one channel block on 10-wide rows (AVX-512: the 1 x 10 tile), plus a last block of one
    "lenet_conv2_rows10": ((3, 6, 14, 14), 16, (5, 5), {}),
    "five_blocks_rows10": ((2, 20, 12, 12), 80, (3, 3), {}),
    # batch 32 on a small plane: batch-inner tiles of 3 blocks x 8 images, the 7 blocks split
    # into groups of 3 + 3 + 1 (the plan), the last block partial
    "batch_inner_groups": ((32, 16, 3, 4), 100, (3, 3), dict(padding=1)),
    # rows of 16+ values: the input copy's 16 x 16 transposes (stride 1, and stride 2 through
    # the even / odd permute), a partial channel block beside them
    "copy_transposed": ((2, 32, 5, 40), 16, (3, 3), dict(padding=1)),
    "copy_transposed_stride2": ((2, 40, 7, 45), 32, (3, 3), dict(stride=2, padding=1)),
    # a reduction longer than one weight chunk (partial sums between chunks)
    "long_reduction": ((2, 96, 6, 7), 32, (5, 5), dict(padding=2)),
    # row tiles of a channel-blocked copy skip their edge pixels' padding columns (tile_taps'
    # edge masks): half-row tiles (ResNet's 12-wide rows), whole-row tiles with both edges,
    # padding 2 (two columns of the edge pixel on padding, one run of its own), stride 2 with
    # dilation, a reduction split into chunks across the edge runs
    "edges_half_rows": ((2, 32, 12, 12), 64, (3, 3), dict(padding=1)),
    "edges_whole_rows": ((2, 16, 5, 12), 32, (3, 3), dict(padding=1)),
    "edges_pad2_5x5": ((2, 17, 9, 14), 48, (5, 5), dict(padding=2)),
    "edges_stride2_dil2": ((2, 20, 11, 25), 48, (3, 3), dict(stride=2, padding=2,
                                                               dilation=2)),
    "edges_long_reduction": ((1, 160, 8, 12), 16, (3, 3), dict(padding=1)),
    # planar (C_in < 16) stride-1 unpadded: the input read as it is, tiles along rows only
    # (direct_planar; a row at least one J = 1 tile wide: 10 on AVX-512, 12 on AVX2), rows
    # that are not a multiple of the tile, dilation, the last image's last row
    "direct_planar_dilated": ((2, 5, 13, 30), 40, (3, 3), dict(dilation=(2, 3))),
    "direct_planar_rows12": ((1, 3, 8, 16), 16, (3, 5), {}),
    "direct_planar_batch": ((5, 15, 9, 37), 70, (2, 4), {}),
}


# Thin output (C_out < 16): one tile block of C_out channels (1-8), or two (9-15); rows at
# least a vector wide (stored whole) or narrower (flat vectors, stored lane by lane).
THIN_CASES = {
    "lenet_conv1": ((3, 1, 28, 28), 6, (5, 5), dict(padding=2)),
    "c_out1_wide": ((2, 3, 5, 40), 1, (3, 3), dict(padding=1)),
    "c_out3_stride2": ((2, 5, 17, 19), 3, (3, 3), dict(stride=2, padding=1)),
    "c_out8_dil": ((1, 16, 12, 21), 8, (3, 2), dict(dilation=(2, 3), padding=(1, 0))),
    "c_out9_narrow": ((2, 4, 7, 6), 9, (2, 2), {}),
    "c_out15_1x1": ((2, 20, 9, 8), 15, (1, 1), {}),
    "c_out7_tiny": ((3, 2, 2, 3), 7, (1, 1), {}),
    "c_out12_stride3": ((1, 6, 14, 17), 12, (3, 4), dict(stride=(3, 2), padding=(2, 1))),
    # batch-inner thin tiles (VW images at one position, only the taps that reach the input):
    # small padded planes with a batch of at least a vector, N not a multiple of the vector
    "batch_inner_5x5_pad2": ((18, 3, 4, 5), 6, (5, 5), dict(padding=2)),
    "batch_inner_two_blocks_dil": ((33, 2, 5, 4), 12, (3, 3), dict(padding=2, dilation=2,
                                                                   stride=(2, 1))),
}

# grad_input by stride-phase sub-convolutions (C_in >= 16): strides above the kernel (phases
# without taps: zeros), dilation sharing a factor with the stride, padding above the reach of
# the kernel (negative sub-convolution padding), 1x1 stride 2; C_out < 16 makes the
# sub-convolutions thin.
GRAD_INPUT_CASES = {
    "3x3_stride2": ((2, 16, 12, 11), 32, (3, 3), dict(stride=2, padding=1)),
    "1x1_stride2": ((2, 20, 9, 10), 24, (1, 1), dict(stride=2)),
    "stride3_gt_kernel": ((1, 17, 14, 13), 16, (2, 2), dict(stride=3)),
    "stride2_dil2": ((2, 16, 13, 12), 18, (3, 3), dict(stride=2, dilation=2, padding=2)),
    "stride_31_dil_12": ((1, 16, 15, 9), 20, (4, 3), dict(stride=(3, 1), dilation=(1, 2),
                                                          padding=(3, 2))),
    "thin_sub": ((2, 32, 10, 10), 5, (3, 3), dict(stride=2, padding=1)),
    "stride1_pad_gt_reach": ((1, 16, 6, 7), 16, (2, 2), dict(padding=(1, 1))),
    "thin_c_in_stride1": ((2, 6, 14, 14), 16, (5, 5), {}),
    "batch_inner_3x3": ((32, 32, 3, 3), 48, (3, 3), dict(padding=1)),
    "batch_inner_stride2": ((29, 16, 6, 6), 32, (3, 3), dict(stride=2, padding=1)),
    "batch_inner_5x5_pad2": ((32, 16, 4, 4), 16, (5, 5), dict(padding=2)),
    "batch_inner_groups": ((32, 112, 3, 3), 16, (3, 3), dict(padding=1)),
    "thin_c_in_pad": ((3, 6, 10, 10), 16, (5, 5), dict(padding=2)),
    "thin_batch_inner_lenet_conv2": ((72, 6, 10, 10), 16, (5, 5), {}),
    # planar sub-convolutions (C_out 1) whose output phase is narrower than the input's
    # reach (Wq != W): they must go through the copy, not read grad_output as it is
    "planar_sub_narrow_phase": ((2, 32, 6, 38), 1, (1, 3), dict(stride=(3, 2), padding=(0, 1))),
}


def _make(input_shape, c_out, kernel, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape, generator=g)
    w = torch.randn((c_out, input_shape[1]) + kernel, generator=g)
    b = torch.randn(c_out, generator=g) if bias else None
    return x, w, b


def _want(x, w, b, kwargs, activation=None):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), **kwargs)
    return F.relu(y) if activation == "relu" else y


def _tol(x, w):
    # float32 sums of C_in * KH * KW products of N(0, 1) values: error ~ eps * sqrt(terms) * |y|
    terms = w[0].numel()
    return 1e-5 * terms ** 0.5, 1e-4


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("isa", _ISAS, indirect=True)
@pytest.mark.parametrize("name", CASES)
def test_forward_matches_torch(name, isa, threads):
    input_shape, c_out, kernel, kwargs = CASES[name]
    x, w, b = _make(input_shape, c_out, kernel)
    for activation in (None, "relu"):
        got = cnnops.conv2d(x, w, b, **kwargs, backend="native", activation=activation)
        assert got.dtype == torch.float32
        assert_close(got.double(), _want(x, w, b, kwargs, activation), *_tol(x, w),
                     f"{name} {isa} threads={threads} activation={activation}")


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("isa", _ISAS, indirect=True)
@pytest.mark.parametrize("name", THIN_CASES)
def test_thin_forward_matches_torch(name, isa, threads):
    input_shape, c_out, kernel, kwargs = THIN_CASES[name]
    x, w, b = _make(input_shape, c_out, kernel)
    for activation in (None, "relu"):
        for bias in (b, None):
            got = cnnops.conv2d(x, w, bias, **kwargs, backend="native", activation=activation)
            assert_close(got.double(), _want(x, w, bias, kwargs, activation), *_tol(x, w),
                         f"{name} {isa} threads={threads} activation={activation}")


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("isa", _ISAS, indirect=True)
@pytest.mark.parametrize("name", GRAD_INPUT_CASES)
def test_grad_input_matches_torch(name, isa, threads):
    input_shape, c_out, kernel, kwargs = GRAD_INPUT_CASES[name]
    x, w, _ = _make(input_shape, c_out, kernel)
    y = F.conv2d(x, w, None, **kwargs)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    stride = list(kwargs.get("stride", (1, 1)) if not isinstance(kwargs.get("stride"), int)
                  else (kwargs["stride"],) * 2)
    padding = kwargs.get("padding", (0, 0))
    padding = list(padding if not isinstance(padding, int) else (padding,) * 2)
    dilation = kwargs.get("dilation", (1, 1))
    dilation = list(dilation if not isinstance(dilation, int) else (dilation,) * 2)
    got = torch.ops.cnnops.conv2d_grad_input(grad, x, w, stride, padding, dilation, 1)
    want = torch.ops.aten.convolution_backward(
        grad.double(), x.double(), w.double(), None, stride, padding, dilation, False, [0, 0],
        1, [True, False, False])[0]
    terms = c_out * kernel[0] * kernel[1]
    assert_close(got.double(), want, 1e-5 * terms ** 0.5, 1e-4, f"{name} {isa} threads={threads}")


@pytest.mark.parametrize("isa", _ISAS, indirect=True)
@pytest.mark.parametrize("name", ["skip_batch_inner_dilated", "skip_flat_7x7_stride2",
                                  "batch_inner_3x3"])
def test_every_tap_computed_matches(name, isa, monkeypatch):
    # CNNOPS_CPU_SKIP_PAD=0 computes the taps that read padding too (zero-filled copies)
    monkeypatch.setenv("CNNOPS_CPU_SKIP_PAD", "0")
    for cases in (CASES, THIN_CASES):
        key = name if name in cases else "batch_inner_5x5_pad2"
        input_shape, c_out, kernel, kwargs = cases[key]
        x, w, b = _make(input_shape, c_out, kernel)
        got = cnnops.conv2d(x, w, b, **kwargs, backend="native")
        assert_close(got.double(), _want(x, w, b, kwargs), *_tol(x, w), f"{key} {isa} no skip")


@pytest.mark.parametrize("isa", _ISAS, indirect=True)
@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("edges_")])
def test_edge_columns_computed_matches(name, isa, monkeypatch):
    # CNNOPS_CPU_SKIP_EDGES=0: row tiles compute their edge pixels' padding columns; the same
    # values either way (skipped products are zeros), both against torch
    input_shape, c_out, kernel, kwargs = CASES[name]
    x, w, b = _make(input_shape, c_out, kernel)
    skipped = cnnops.conv2d(x, w, b, **kwargs, backend="native")
    monkeypatch.setenv("CNNOPS_CPU_SKIP_EDGES", "0")
    computed = cnnops.conv2d(x, w, b, **kwargs, backend="native")
    want = _want(x, w, b, kwargs)
    assert_close(skipped.double(), want, *_tol(x, w), f"{name} {isa} edges skipped")
    assert_close(computed.double(), want, *_tol(x, w), f"{name} {isa} edges computed")


@pytest.mark.parametrize("isa", _ISAS, indirect=True)
def test_no_bias_channels_last_and_views(isa):
    x, w, _ = _make((2, 16, 10, 9), 32, (3, 3))
    want = _want(x, w, None, dict(padding=1))
    xs = [x.contiguous(memory_format=torch.channels_last),
          torch.randn(2, 32, 10, 18)[:, ::2, :, ::2].copy_(x)]  # a strided view
    for xi in xs:
        got = cnnops.conv2d(xi, w, None, padding=1, backend="native")
        assert_close(got.double(), want, *_tol(x, w), "no bias / layout")
        assert got.is_contiguous(memory_format=torch.channels_last) == xi.is_contiguous(
            memory_format=torch.channels_last) or not xi.is_contiguous()


def test_unbatched_and_empty_batch():
    x, w, b = _make((1, 5, 8, 8), 16, (3, 3))
    got = cnnops.conv2d(x[0], w, b, padding=1, backend="native")
    assert_close(got.double(), _want(x[0], w, b, dict(padding=1)), *_tol(x, w), "3-D input")
    e = cnnops.conv2d(torch.empty(0, 5, 8, 8), w, b, padding=1, backend="native")
    assert e.shape == (0, 16, 8, 8)


def test_nan_and_inf_propagate():
    x, w, b = _make((1, 4, 6, 7), 16, (3, 3))
    x[0, 1, 2, 3] = float("nan")
    x[0, 2, 5, 6] = float("inf")
    got = cnnops.conv2d(x, w, b, padding=1, backend="native")
    want = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite()
    assert_close(got.double()[finite], want[finite], *_tol(x, w), "finite part")


@pytest.mark.parametrize("isa", _ISAS, indirect=True)
@pytest.mark.parametrize("stride", [1, 2])
def test_backward_float32(isa, stride):
    # stride 1 with C_in >= 16: grad_input runs as a blocked forward convolution
    x, w, b = _make((2, 16, 9, 8), 24, (3, 3))
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    got = cnnops.conv2d(xg, wg, bg, stride=stride, padding=1, backend="native")
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    want = F.conv2d(x64, w64, b64, stride=stride, padding=1)
    grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(5))
    got_g = torch.autograd.grad(got, (xg, wg, bg), grad)
    want_g = torch.autograd.grad(want, (x64, w64, b64), grad.double())
    for name, g1, g2 in zip(("grad_input", "grad_weight", "grad_bias"), got_g, want_g):
        assert_close(g1.double(), g2, 1e-3, 1e-4, f"{name} {isa} stride {stride}")


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_bitwise_deterministic(threads):
    x, w, b = _make((3, 16, 11, 10), 40, (3, 3), seed=7)
    grad = torch.randn(3, 40, 11, 10, generator=torch.Generator().manual_seed(8))
    results = []
    for _ in range(3):
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = cnnops.conv2d(xg, wg, b, padding=1, backend="native")
        gi, gw = torch.autograd.grad(y, (xg, wg), grad)
        results.append((y, gi, gw))
    for r in results[1:]:
        for a, c in zip(results[0], r):
            assert torch.equal(a, c)


def test_isa_variants_agree_closely(monkeypatch):
    # the variants differ only in the order of the float32 sums, never in what they sum (an
    # ISA the CPU lacks falls back to the best one it has)
    x, w, b = _make((2, 16, 12, 12), 48, (3, 3), seed=2)
    outs = {}
    for name in ("avx512", "avx2", "baseline", "no-such-isa"):
        monkeypatch.setenv("CNNOPS_CPU_ISA", name)
        outs[name] = cnnops.conv2d(x, w, b, padding=1, backend="native")
    want = _want(x, w, b, dict(padding=1))
    for name, y in outs.items():
        assert_close(y.double(), want, *_tol(x, w), name)


def _lib():
    import cnnops._C as ext
    lib = ctypes.CDLL(ext.__file__)
    for fn in (lib.cnnops_cpu_fma_peak_gflops, lib.cnnops_cpu_copy_gbps):
        fn.restype = ctypes.c_double
        fn.argtypes = [ctypes.c_int, ctypes.c_double]
    return lib


def test_peak_probes_exported():
    lib = _lib()
    one = lib.cnnops_cpu_fma_peak_gflops(1, 0.02)
    # any CPU of the last 15 years does > 2 GFLOP/s float32 on one core; none does 1000
    assert 2.0 < one < 1000.0
    gbps = lib.cnnops_cpu_copy_gbps(1, 0.0)
    assert 0.5 < gbps < 2000.0


def test_opcheck_float32_blocked():
    # the op's registration (schema, fake, autograd) on a float32 call that takes the blocked
    # kernel, forward and the stride-1 grad_input through it
    from cnnops.shapes import conv2d_output_hw
    x, w, b = _make((2, 16, 6, 5), 32, (3, 3))
    for stride, padding in (([1, 1], [1, 1]), ([2, 1], [0, 1])):
        out_hw = list(conv2d_output_hw(x.shape[-2:], w.shape[-2:], stride, padding, [1, 1]))
        args = (x, w, b, stride, padding, [1, 1], 1, out_hw, False, 0)
        torch.library.opcheck(torch.ops.cnnops.conv2d.default, args)
        grad = torch.randn(2, 32, *out_hw)
        torch.library.opcheck(torch.ops.cnnops.conv2d_grad_input.default,
                              (grad, x, w, stride, padding, [1, 1], 1))


@pytest.mark.parametrize("isa", _ISAS, indirect=True)
def test_weights_changed_in_place(isa):
    # the repacked weights are cached per weight address; an in-place update (an optimizer
    # step) at the same address must be seen, down to one element
    x, w, b = _make((2, 16, 7, 6), 32, (3, 3), seed=4)
    for step in range(3):
        got = cnnops.conv2d(x, w, b, padding=1, backend="native")
        assert_close(got.double(), _want(x, w, b, dict(padding=1)), *_tol(x, w), f"step {step}")
        with torch.no_grad():
            w.mul_(0.9)
    with torch.no_grad():
        w.view(-1)[-1] += 1.0  # the last element only
    got = cnnops.conv2d(x, w, b, padding=1, backend="native")
    assert_close(got.double(), _want(x, w, b, dict(padding=1)), *_tol(x, w), "last element")
    # more layers than cache entries, twice round
    ws = [torch.randn(16, 16, 1, 1, generator=torch.Generator().manual_seed(i)) for i in range(40)]
    for _ in range(2):
        for wi in ws:
            got = cnnops.conv2d(x, wi, None, backend="native")
            assert_close(got.double(), _want(x, wi, None, {}), *_tol(x, wi), "many layers")


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_weight_cache_follows_in_place_updates(threads):
    # The repacked weights are cached per thread while their bytes are unchanged; weights
    # written every call (an optimizer step) are repacked without the compare for 15 calls,
    # then checked again. Every call must see the weights it was given: updated in place,
    # constant again, and set back to values of an earlier call while unchecked.
    x, w, b = _make((2, 16, 7, 6), 32, (3, 3))
    values = [w.clone(), w + 0.5]
    for step in range(80):
        if step < 40:
            # alternating values: a checked call after 15 unchecked ones (16 apart, even) meets
            # the values of the previous checked call while the packed copy holds the others
            w.copy_(values[step % 2])
        elif step < 50:
            w.add_(0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(step)))
        got = cnnops.conv2d(x, w, b, padding=1, backend="native")
        assert_close(got.double(), _want(x, w, b, dict(padding=1)), *_tol(x, w), f"step {step}")
