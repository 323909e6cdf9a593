"""The channel-blocked float32 conv2d grad_weight of the native backend (issue 14,
kernels/cpu/conv2d_blocked_grad_weight.cpp) in each of its instruction-set variants.

The kernel runs for float32, groups == 1 and C_out >= 16 (other shapes go to the row kernel of
conv2d.cpp, also checked here). Values are compared with torch computed in float64 on the same
float32 values, to a bound scaled by the sum of |grad_output| * |input| under each weight (the
float32 rounding bound of a sum of products), so that cancellation does not hide or fake an
error. The ISA variant is forced with CNNOPS_CPU_ISA (read on every call); variants the CPU lacks
are skipped. Results must be bitwise identical run to run and for 1 and 2 threads (the kernel
sums each weight in one fixed order, whatever the thread count).
"""
import pytest
import torch

from backend_support import cpu_isas, native_only

pytestmark = native_only

_ISAS = cpu_isas()


# name: (input shape, C_out, kernel (kh, kw), stride, padding, dilation). Covers one to five
# output-channel blocks and a partial last block (C_out 17, 33, 70), thin inputs (planar copy:
# C_in 1, 3), channel-blocked inputs with partial blocks (C_in 5, 6, 20), strides 1-3 (phase
# planes), dilation, asymmetric padding, batch 1, planes smaller than a pixel chunk, batches
# larger than one super-chunk, layers with many weights and few pixels (the threads split the
# items, not the pixels), and C_out < 16 (declined: the row kernel).
CASES = {
    "3x3_pad1": ((2, 16, 9, 11), 16, (3, 3), (1, 1), (1, 1), (1, 1)),
    "5x5_cin6_lenet": ((3, 6, 14, 14), 16, (5, 5), (1, 1), (0, 0), (1, 1)),
    "stride2_5blocks_partial": ((2, 5, 13, 12), 70, (3, 3), (2, 2), (1, 1), (1, 1)),
    "stride3_gt_kernel": ((1, 3, 14, 17), 17, (2, 2), (3, 3), (0, 0), (1, 1)),
    "stride21_dil23": ((2, 20, 13, 11), 33, (3, 2), (2, 1), (1, 2), (2, 3)),
    "cin1_7x7_stride2": ((2, 1, 20, 19), 64, (7, 7), (2, 2), (3, 3), (1, 1)),
    "cin1_5x5_stride32": ((3, 1, 13, 12), 20, (5, 5), (3, 2), (2, 1), (1, 1)),
    "1x1": ((2, 20, 9, 8), 80, (1, 1), (1, 1), (0, 0), (1, 1)),
    "1x1_stride2": ((2, 64, 12, 12), 128, (1, 1), (2, 2), (0, 0), (1, 1)),
    "pad_exceeds_kernel": ((2, 3, 5, 6), 16, (1, 2), (1, 1), (1, 2), (1, 1)),
    "kernel_is_input": ((2, 6, 5, 4), 24, (5, 4), (1, 1), (0, 0), (1, 1)),
    "batch1_wide": ((1, 4, 3, 41), 16, (2, 3), (1, 1), (0, 1), (1, 1)),
    "tiny_plane_many_channels": ((3, 40, 3, 3), 48, (3, 3), (1, 1), (1, 1), (1, 1)),
    "items_split_partial_block": ((4, 64, 3, 3), 80, (3, 3), (1, 1), (1, 1), (1, 1)),
    "superchunks": ((5, 64, 24, 24), 80, (3, 3), (1, 1), (1, 1), (1, 1)),
    "superchunks_stride2": ((7, 20, 30, 30), 33, (3, 3), (2, 2), (1, 1), (1, 1)),
    "cout6_declined": ((4, 1, 12, 12), 6, (5, 5), (1, 1), (2, 2), (1, 1)),
}


def _make(name, seed=0):
    shape, c_out, kernel, stride, padding, dilation = CASES[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    w = torch.randn((c_out, shape[1]) + kernel, generator=g)
    y = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation)
    grad = torch.randn(y.shape, generator=g)
    return x, w, grad, list(stride), list(padding), list(dilation)


def _native(grad, x, w, stride, padding, dilation):
    return torch.ops.cnnops.conv2d_grad_weight(grad, x, w, stride, padding, dilation, 1)


def _torch64(grad, x, w, stride, padding, dilation):
    return torch.ops.aten.convolution_backward(
        grad.double(), x.double(), w.double(), None, stride, padding, dilation, False, [0, 0],
        1, [False, True, False])[1]


def _check(got, x, w, grad, stride, padding, dilation, what):
    assert got.dtype == torch.float32 and got.shape == w.shape
    want = _torch64(grad, x, w, stride, padding, dilation)
    scale = _torch64(grad.abs(), x.abs(), w, stride, padding, dilation)
    err = (got.double() - want).abs()
    bound = 2e-6 * scale + 1e-30
    assert bool((err <= bound).all()), (
        f"{what}: max |err| / bound {(err / bound).max().item():.3g} at "
        f"{(err > bound).nonzero()[:3].tolist()}")


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("isa", _ISAS, indirect=True)
@pytest.mark.parametrize("name", CASES)
def test_matches_float64(name, isa, threads):
    x, w, grad, stride, padding, dilation = _make(name)
    got = _native(grad, x, w, stride, padding, dilation)
    _check(got, x, w, grad, stride, padding, dilation, f"{name} {isa} threads={threads}")


@pytest.mark.parametrize("isa", _ISAS, indirect=True)
@pytest.mark.parametrize("name", ["superchunks", "stride21_dil23", "cin1_7x7_stride2",
                                  "5x5_cin6_lenet", "stride2_5blocks_partial",
                                  "items_split_partial_block"])
def test_bitwise_across_runs_and_thread_counts(name, isa):
    x, w, grad, stride, padding, dilation = _make(name, seed=3)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            results.append(_native(grad, x, w, stride, padding, dilation))
            # another shape in between: the reused workspaces must not leak into the next call
            other = _make("kernel_is_input", seed=threads)
            _native(other[2], other[0], other[1], *other[3:])
    finally:
        torch.set_num_threads(before)
    for r in results[1:]:
        assert torch.equal(results[0], r)


@pytest.mark.parametrize("isa", _ISAS, indirect=True)
def test_nan_and_inf_propagate(isa):
    # an inf in the last column: with padding 1 the filter column kw = 0 never reads it (the
    # copy's columns past the output width must not enter a sum, even times a zero)
    x, w, grad, stride, padding, dilation = _make("3x3_pad1", seed=4)
    x[0, 3, 2, 10] = float("inf")
    x[1, 5, 0, 0] = float("nan")
    x[1, 9, 8, 4] = -float("inf")
    got = _native(grad, x, w, stride, padding, dilation)
    want = _torch64(grad, x, w, stride, padding, dilation)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite()
    assert finite.any() and not finite.all()
    torch.testing.assert_close(got.double()[finite], want[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("isa", _ISAS, indirect=True)
def test_through_autograd(isa):
    import cnnops

    x, w, grad, stride, padding, dilation = _make("stride2_5blocks_partial", seed=5)
    b = torch.randn(w.shape[0])
    wg = w.clone().requires_grad_()
    y = cnnops.conv2d(x, wg, b, stride=stride, padding=padding, backend="native")
    (gw,) = torch.autograd.grad(y, (wg,), grad)
    _check(gw, x, w, grad, stride, padding, dilation, f"autograd {isa}")
