"""Bitwise determinism of the Triton backward ops: the same inputs twice give the same bits.

The pooling backward kernels gather (one lane per input element, a fixed visiting order, no
atomics); batch norm's backward sums split row chunks into partials that a kernel adds in a
fixed order. Shapes are chosen so batch norm uses several chunks (rows >= 32 in the
interpreter). On the GPU the same holds for every autotune config once it is chosen.
"""

import pytest
import torch

from backend_support import TRITON_DEVICE as DEVICE, skip_module_without_triton

skip_module_without_triton()

from cnnops.backends.triton import avg_pool2d as tavg  # noqa: E402
from cnnops.backends.triton import batch_norm as tbn  # noqa: E402
from cnnops.backends.triton import max_pool2d as tmax  # noqa: E402


def randn(shape, seed, dtype=torch.float32):
    t = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return t.to(DEVICE, dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().view(-1).view(torch.uint8)


def assert_same_bits(run):
    first, second = run(), run()
    for a, b in zip(first, second):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(bits(a), bits(b)), "two runs on the same inputs differ"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_max_pool2d_grad_input_is_deterministic(channels_last):
    x = randn((2, 3, 9, 8), 0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # overlapping windows (stride < kernel): an input element gets several windows' gradient
    _, idx = tmax.max_pool2d(x, [3, 3], [1, 2], [1, 1], [1, 1], True)
    grad = randn(idx.shape, 1)
    assert_same_bits(lambda: (tmax.max_pool2d_grad_input(grad, idx, [9, 8], [3, 3], [1, 2],
                                                         [1, 1], [1, 1]),))


@pytest.mark.parametrize("divisor_override", [None, 5])
def test_avg_pool2d_grad_input_is_deterministic(divisor_override):
    grad = randn((2, 3, 8, 4), 1)
    assert_same_bits(lambda: (tavg.avg_pool2d_grad_input(grad, [9, 8], [3, 3], [1, 2], [1, 1],
                                                         True, divisor_override),))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_batch_norm_grad_is_deterministic(training, channels_last):
    x = randn((4, 3, 5, 6), 0) * 2 + 1  # 120 rows per channel: several split chunks
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = randn(3, 2)
    rm, rv = randn(3, 3), randn(3, 4).abs() + 0.5
    _, mean, invstd, _, _ = tbn.batch_norm(x, w, None, rm, rv, training, 0.1, 1e-5)
    assert tbn._split(4 * 5 * 6, 3, x.device) > 1 or x.is_cuda  # the fixed-order merge runs
    grad = randn(x.shape, 5)
    assert_same_bits(lambda: tbn.batch_norm_grad(grad, x, w, mean, invstd, training,
                                                 [True, True, True]))


def test_backward_through_autograd_is_deterministic():
    """The same through cnnops and autograd (the path training takes)."""
    import cnnops

    def run():
        x = randn((2, 3, 6, 5), 0).requires_grad_()
        w = randn(3, 2).requires_grad_()
        y = cnnops.batch_norm(x, None, None, w, None, True, backend="triton")
        y = cnnops.max_pool2d(y, 3, 1, 1, backend="triton")
        y = cnnops.avg_pool2d(y, 2, 1, 0, backend="triton")
        y.backward(randn(y.shape, 7))
        return x.grad, w.grad

    assert_same_bits(run)
