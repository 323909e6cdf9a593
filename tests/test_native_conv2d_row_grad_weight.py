"""The row kernel's conv2d grad_weight and grad_bias (kernels/cpu/conv2d.cpp): float64 layers
and float32 layers the blocked kernel declines (C_out < 16, groups), e.g. LeNet's conv1 1->6.

The batch is cut into chunks fixed by the shape; thin layers (few filter blocks for the
threads) run the (chunk, filter block) pairs in one parallel loop, each chunk's sums in a slot
of its own, added in chunk order; other layers run the chunks one after the other. Both give
the same bits, whatever the thread count. Values are compared with torch in float64 on the same
values, to a bound scaled by the sum of |grad_output| * |input| under each weight (so that
cancellation neither hides nor fakes an error). The row kernel has no CNNOPS_CPU_ISA variants:
its AVX2 / AVX-512 builds are target clones the loader picks.
"""
import pytest
import torch

from backend_support import native_only

pytestmark = native_only

# name: (input shape, C_out, kernel, stride, padding, dilation, groups). Batches large enough
# for several chunks (about 1 MiB of input and grad_output planes each) and for two threads.
CASES = {
    "lenet_conv1_pad2": ((256, 1, 28, 28), 6, (5, 5), (1, 1), (2, 2), (1, 1), 1),
    "lenet_bn_conv1": ((256, 1, 28, 28), 6, (5, 5), (1, 1), (0, 0), (1, 1), 1),
    "odd_batch_stride2_pad": ((97, 3, 31, 29), 5, (3, 4), (2, 2), (1, 2), (1, 1), 1),
    "stride3_dilation": ((61, 2, 23, 37), 7, (5, 7), (1, 3), (3, 1), (2, 1), 1),
    "groups": ((300, 4, 17, 9), 4, (2, 2), (1, 1), (0, 0), (1, 1), 2),
    "1x1": ((500, 1, 40, 40), 3, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "wide_kernel_generic": ((50, 2, 30, 30), 3, (9, 9), (1, 1), (4, 4), (1, 1), 1),
    # 6 filter blocks: the chunk-after-chunk driver at 1 thread, the (chunk, block) pairs at 2
    "six_blocks": ((150, 1, 20, 20), 12, (5, 5), (1, 1), (2, 2), (1, 1), 1),
    "batch_below_one_chunk": ((7, 1, 28, 28), 6, (5, 5), (1, 1), (2, 2), (1, 1), 1),
    "narrow_rows": ((400, 2, 9, 6), 5, (3, 3), (1, 1), (1, 0), (1, 1), 1),
    # rows narrower than a vector with 3-channel blocks (AVX-512) and a partial block
    "narrow_rows_5x5_cout7": ((300, 1, 8, 7), 7, (5, 5), (1, 1), (2, 1), (1, 1), 1),
}


def _make(name, dtype, seed=0):
    shape, c_out, kernel, stride, padding, dilation, groups = CASES[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn((c_out, shape[1] // groups) + kernel, generator=g,
                    dtype=torch.float64).to(dtype)
    y = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups)
    grad = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
    return x, w, grad, list(stride), list(padding), list(dilation), groups


def _torch64(grad, x, w, stride, padding, dilation, groups):
    return torch.ops.aten.convolution_backward(
        grad.double(), x.double(), w.double(), [w.shape[0]], stride, padding, dilation, False,
        [0, 0], groups, [False, True, True])[1:]


def _native(x, w, grad, stride, padding, dilation, groups, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return (torch.ops.cnnops.conv2d_grad_weight(grad, x, w, stride, padding, dilation,
                                                    groups),
                torch.ops.cnnops.conv2d_grad_bias(grad))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", CASES)
def test_matches_torch_and_same_bits_for_1_and_2_threads(name, dtype):
    x, w, grad, stride, padding, dilation, groups = _make(name, dtype)
    one = _native(x, w, grad, stride, padding, dilation, groups, threads=1)
    two = _native(x, w, grad, stride, padding, dilation, groups, threads=2)
    again = _native(x, w, grad, stride, padding, dilation, groups, threads=2)
    want = _torch64(grad, x, w, stride, padding, dilation, groups)
    scale = _torch64(grad.abs(), x.abs(), w, stride, padding, dilation, groups)
    eps = 2e-6 if dtype == torch.float32 else 1e-14
    for what, got, want_, scale_ in zip(("grad_weight", "grad_bias"), one, want, scale):
        assert got.dtype == dtype and got.shape == want_.shape
        err = (got.double() - want_).abs()
        bound = eps * scale_ + 1e-30
        assert bool((err <= bound).all()), (
            f"{what}: max |err| / bound {(err / bound).max().item():.3g} at "
            f"{(err > bound).nonzero()[:3].tolist()}")
    for what, a, b, c in zip(("grad_weight", "grad_bias"), one, two, again):
        assert torch.equal(a, b), f"{what}: 1 and 2 threads differ"
        assert torch.equal(b, c), f"{what}: two runs differ"


def test_non_finite_input_propagates_like_torch():
    """An inf in the input reaches exactly the weights whose taps read it (the padded copy made
    per chunk keeps zeros, not stale values, around each image)."""
    x, w, grad, stride, padding, dilation, groups = _make("lenet_conv1_pad2", torch.float64)
    x[100, 0, 0, 27] = float("inf")
    got = _native(x, w, grad, stride, padding, dilation, groups, threads=2)[0]
    want = _torch64(grad, x, w, stride, padding, dilation, groups)[0]
    assert torch.equal(got.isfinite(), want.isfinite())
    finite = want.isfinite()
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-12, atol=1e-12)
