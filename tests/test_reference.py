"""cnnops.reference: the book's worked examples (shared/seeds) with their printed outputs, and
the general loops of the `reference` backend against torch.nn.functional in float64, forward
and backward (autograd through the loops against PyTorch's gradients)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnops
import cnnops.nn
from cnnops import reference as R
from cnnops.backends.reference import ReferenceBackend

F64 = (torch.float64, 1e-12, 1e-12)  # (dtype, atol, rtol) of the float64 comparisons


def assert_close(got, want, atol, rtol, what=""):
    """Equal within tolerance (NaN == NaN); on failure list the first mismatching positions."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    bad = ~torch.isclose(got, want, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        first = [(tuple(i), got[tuple(i)].item(), want[tuple(i)].item())
                 for i in bad.nonzero()[:5].tolist()]
        pytest.fail(f"{what}: {int(bad.sum())} of {bad.numel()} differ; first "
                    f"(index, got, want): {first}")


def randn(*shape, seed, dtype=torch.float64, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


# --- d2l 6.2 Convolutions for Images -----------------------------------------------------------

BOOK_X = [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
BOOK_K = [[0.0, 1.0], [2.0, 3.0]]


def test_corr2d_book_example():
    Y = R.corr2d(torch.tensor(BOOK_X), torch.tensor(BOOK_K))
    assert Y.dtype == torch.float32
    assert torch.equal(Y, torch.tensor([[19.0, 25.0], [37.0, 43.0]]))


def test_corr2d_takes_integers_and_returns_float32():
    Y = R.corr2d(torch.tensor(BOOK_X).long(), torch.tensor(BOOK_K).long())
    assert Y.dtype == torch.float32
    assert torch.equal(Y, torch.tensor([[19.0, 25.0], [37.0, 43.0]]))


def edge_image():
    X = torch.ones((6, 8))
    X[:, 2:6] = 0  # black (0) stripe in a white (1) image
    return X


def test_corr2d_detects_vertical_edges():
    Y = R.corr2d(edge_image(), torch.tensor([[1.0, -1.0]]))
    assert torch.equal(Y, torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0]]).expand(6, 7))
    # the book: the same kernel sees no edge in the transposed image (horizontal edges)
    assert torch.equal(R.corr2d(edge_image().t(), torch.tensor([[1.0, -1.0]])), torch.zeros(8, 5))


def test_conv2d_layer_of_the_book():
    torch.manual_seed(0)
    layer = R.Conv2D(kernel_size=(1, 2))
    X = edge_image()
    assert torch.equal(layer(X), R.corr2d(X, layer.weight) + layer.bias)
    layer(X).sum().backward()  # the parameters are trainable through the loop
    assert layer.weight.grad is not None and layer.bias.grad.item() == 42.0


def test_learning_the_edge_kernel():
    """The book learns K = [[1, -1]] from (X, Y) in 10 epochs of lr 3e-2 (seed printed loss
    1.184, 0.199, 0.034, 0.006, 0.001 and kernel [0.9935, -0.9952]); here through the
    reference conv2d loops, from nn.Conv2d's initialisation under a fixed seed."""
    X = edge_image().reshape(1, 1, 6, 8)
    Y = R.corr2d(edge_image(), torch.tensor([[1.0, -1.0]])).reshape(1, 1, 6, 7)
    g = torch.Generator().manual_seed(1)
    bound = 1 / math.sqrt(2)  # nn.Conv2d's default init for fan_in = 1 * 1 * 2
    weight = ((torch.rand((1, 1, 1, 2), generator=g) * 2 - 1) * bound).requires_grad_(True)
    losses = []
    for epoch in range(10):
        loss = ((R.conv2d(X, weight) - Y) ** 2).sum()
        weight.grad = None
        loss.backward()
        with torch.no_grad():
            weight -= 3e-2 * weight.grad
        if (epoch + 1) % 2 == 0:
            losses.append(loss.item())
    assert all(a > b for a, b in zip(losses, losses[1:])), f"loss does not decrease: {losses}"
    assert losses[-1] < 0.01, losses
    assert_close(weight.detach().reshape(2), torch.tensor([1.0, -1.0]), 0.05, 0, "kernel")


# --- d2l 6.3 Padding and Stride ----------------------------------------------------------------

COMP_CONV2D = [  # (nn.Conv2d arguments, printed output shape)
    (dict(kernel_size=3, padding=1), (8, 8)),
    (dict(kernel_size=(5, 3), padding=(2, 1)), (8, 8)),
    (dict(kernel_size=3, padding=1, stride=2), (4, 4)),
    (dict(kernel_size=(3, 5), padding=(0, 1), stride=(3, 4)), (2, 2)),
]


@pytest.mark.parametrize("layer_type", [nn.Conv2d, cnnops.nn.Conv2d], ids=["torch.nn", "cnnops.nn"])
@pytest.mark.parametrize("args,shape", COMP_CONV2D)
def test_comp_conv2d_shapes(layer_type, args, shape):
    torch.manual_seed(0)
    X = torch.rand(size=(8, 8))
    extra = {"backend": "reference"} if layer_type is cnnops.nn.Conv2d else {}
    conv = layer_type(1, 1, **args, **extra)
    Y = R.comp_conv2d(conv, X)
    assert Y.shape == torch.Size(shape)
    twin = nn.Conv2d(1, 1, **args)  # the same weights in torch.nn.Conv2d
    twin.load_state_dict(conv.state_dict())
    assert_close(Y, R.comp_conv2d(twin, X), 1e-6, 1e-5, "vs nn.Conv2d")


# --- d2l 6.4 Multiple Input and Multiple Output Channels ---------------------------------------

BOOK_X2 = [[[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]]
BOOK_K2 = [[[0, 1], [2, 3]], [[1, 2], [3, 4]]]


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])  # seed 003 ints, seed 000 floats
def test_corr2d_multi_in_book_example(dtype):
    Y = R.corr2d_multi_in(torch.tensor(BOOK_X2, dtype=dtype), torch.tensor(BOOK_K2, dtype=dtype))
    assert Y.dtype == torch.float32
    assert torch.equal(Y, torch.tensor([[56.0, 72.0], [104.0, 120.0]]))


def test_corr2d_multi_in_out_book_example():
    K = torch.tensor(BOOK_K2)
    K = torch.stack((K, K + 1, K + 2), 0)
    assert K.shape == (3, 2, 2, 2)
    Y = R.corr2d_multi_in_out(torch.tensor(BOOK_X2), K)
    assert torch.equal(Y, torch.tensor([[[56.0, 72.0], [104.0, 120.0]],
                                        [[76.0, 100.0], [148.0, 172.0]],
                                        [[96.0, 128.0], [192.0, 224.0]]]))


def test_1x1_convolution_is_a_matrix_product():
    torch.manual_seed(0)
    X = torch.normal(0, 1, (3, 3, 3))
    K = torch.normal(0, 1, (2, 3, 1, 1))
    Y1 = R.corr2d_multi_in_out_1x1(X, K)
    Y2 = R.corr2d_multi_in_out(X, K)
    assert float(torch.abs(Y1 - Y2).sum()) < 1e-6
    Y3 = R.corr2d_multi_in_out_1x1(X.long(), K.long() + 1)  # integers: a float32 result
    assert Y3.dtype == torch.float32
    assert torch.equal(Y3, R.corr2d_multi_in_out(X.long(), K.long() + 1))


# --- d2l 6.5 Pooling ---------------------------------------------------------------------------

def test_pool2d_book_example():
    X = torch.tensor(BOOK_X)
    assert torch.equal(R.pool2d(X, (2, 2)), torch.tensor([[4.0, 5.0], [7.0, 8.0]]))
    assert torch.equal(R.pool2d(X, (2, 2), "avg"), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    Y = R.pool2d(X.long(), (2, 2), "avg")
    assert Y.dtype == torch.float32 and torch.equal(Y, torch.tensor([[2.0, 3.0], [5.0, 6.0]]))


BOOK_MAXPOOL = [  # nn.MaxPool2d arguments on arange(16).reshape(1, 1, 4, 4), printed output
    (dict(kernel_size=3), [[10.0]]),
    (dict(kernel_size=3, padding=1, stride=2), [[5.0, 7.0], [13.0, 15.0]]),
    # not printed in the seeds; the book's output, worked out by hand
    (dict(kernel_size=(2, 3), stride=(2, 3), padding=(0, 1)), [[5.0, 7.0], [13.0, 15.0]]),
]


@pytest.mark.parametrize("args,want", BOOK_MAXPOOL)
def test_max_pool_padding_and_stride_book_examples(args, want):
    X = torch.arange(16, dtype=torch.float32).reshape((1, 1, 4, 4))
    want = torch.tensor(want).reshape(1, 1, *torch.tensor(want).shape)
    assert torch.equal(nn.MaxPool2d(**args)(X), want)
    assert torch.equal(cnnops.nn.MaxPool2d(**args, backend="reference")(X), want)


def test_max_pool_multiple_channels_book_example():
    X = torch.arange(16, dtype=torch.float32).reshape((1, 1, 4, 4))
    X = torch.cat((X, X + 1), 1)
    assert X.shape == (1, 2, 4, 4)
    Y, _ = R.max_pool2d(X, (3, 3), (2, 2), (1, 1))
    assert torch.equal(Y, torch.tensor([[[[5.0, 7.0], [13.0, 15.0]], [[6.0, 8.0], [14.0, 16.0]]]]))


def test_lenet_shapes_of_the_book():
    """The printed LeNet shapes (d2l 6.6) through the reference loops."""
    X = randn(1, 1, 28, 28, seed=0, dtype=torch.float32, requires_grad=False)
    shapes = []
    for weight, padding in ((randn(6, 1, 5, 5, seed=1, dtype=torch.float32), 2),
                            (randn(16, 6, 5, 5, seed=2, dtype=torch.float32), 0)):
        X = torch.sigmoid(R.conv2d(X, weight, padding=(padding, padding)))
        shapes.append(tuple(X.shape))
        X = R.avg_pool2d(X, (2, 2), (2, 2))
        shapes.append(tuple(X.shape))
    assert shapes == [(1, 6, 28, 28), (1, 6, 14, 14), (1, 16, 10, 10), (1, 16, 5, 5)]


# --- d2l 7.5 Batch Normalization (8.5 in the English edition) ----------------------------------

@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2, 3)], ids=["fully-connected", "conv"])
def test_book_batch_norm_training_matches_the_formula(shape):
    X = randn(*shape, seed=3, dtype=torch.float32, requires_grad=False)
    param_shape = (1, shape[1]) + (1,) * (len(shape) - 2)
    gamma = randn(*param_shape, seed=4, dtype=torch.float32)
    beta = randn(*param_shape, seed=5, dtype=torch.float32)
    moving_mean, moving_var = torch.zeros(param_shape), torch.ones(param_shape)
    Y, new_mean, new_var = R.batch_norm(X, gamma, beta, moving_mean, moving_var, 1e-5, 0.9)
    dims = (0,) if len(shape) == 2 else (0, 2, 3)
    mean = X.mean(dim=dims, keepdim=True)
    var = X.var(dim=dims, unbiased=False, keepdim=True)  # biased, as the book
    assert_close(Y, gamma * (X - mean) / torch.sqrt(var + 1e-5) + beta, 1e-5, 1e-5, "Y")
    # momentum weights the OLD moving average
    assert_close(new_mean, (0.9 * moving_mean + 0.1 * mean).reshape(new_mean.shape), 1e-6, 1e-6)
    assert_close(new_var, (0.9 * moving_var + 0.1 * var).reshape(new_var.shape), 1e-6, 1e-6)
    assert not new_mean.requires_grad and not new_var.requires_grad
    # its normalisation is F.batch_norm's in training
    flat = F.batch_norm(X, None, None, gamma.reshape(-1), beta.reshape(-1), True, 0.1, 1e-5)
    assert_close(Y, flat, 1e-5, 1e-5, "vs F.batch_norm")
    Y.sum().backward()
    assert gamma.grad is not None and beta.grad is not None


def test_book_batch_norm_predicts_with_the_moving_statistics():
    X = randn(4, 3, 2, 2, seed=6, dtype=torch.float32, requires_grad=False)
    gamma, beta = torch.full((1, 3, 1, 1), 2.0), torch.full((1, 3, 1, 1), 0.5)
    mean, var = torch.tensor([0.1, -0.2, 0.3]).reshape(1, 3, 1, 1), torch.full((1, 3, 1, 1), 4.0)
    with torch.no_grad():
        Y, out_mean, out_var = R.batch_norm(X, gamma, beta, mean, var, 1e-5, 0.9)
    assert_close(Y, 2.0 * (X - mean) / torch.sqrt(var + 1e-5) + 0.5, 1e-6, 1e-6, "Y")
    assert torch.equal(out_mean, mean) and torch.equal(out_var, var)  # unchanged


def test_book_batch_norm_takes_only_2d_or_4d_in_training():
    with pytest.raises(AssertionError):
        R.batch_norm(torch.ones(2, 3, 4), torch.ones(1, 3, 1), torch.zeros(1, 3, 1),
                     torch.zeros(1, 3, 1), torch.ones(1, 3, 1), 1e-5, 0.9)


# --- the general loops against torch.nn.functional, float64 ------------------------------------

CONV_CASES = [  # (input shape, weight shape, stride, padding, dilation, groups, bias, activation)
    ((1, 1, 7, 11), (3, 1, 3, 3), (1, 1), (1, 1), (1, 1), 1, True, None),      # C_in 1, batch 1
    ((2, 3, 9, 8), (4, 3, 2, 2), (3, 4), (0, 0), (1, 1), 1, False, None),      # stride > kernel
    ((2, 3, 9, 9), (2, 3, 3, 2), (1, 2), (2, 1), (2, 3), 1, True, "relu"),     # dilation, relu
    ((2, 6, 7, 5), (6, 1, 3, 3), (1, 1), (1, 1), (1, 1), 6, True, None),       # depthwise
    ((1, 4, 6, 7), (6, 2, 2, 3), (2, 1), (1, 0), (1, 1), 2, True, "relu"),     # groups 2
    ((2, 3, 5, 5), (2, 3, 5, 5), (1, 1), (0, 0), (1, 1), 1, True, None),       # kernel = input
    ((1, 2, 5, 6), (3, 2, 1, 1), (2, 2), (1, 2), (1, 1), 1, False, None),      # 1x1, padded
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-g{c[5]}")
def test_conv2d_matches_torch_forward_and_backward(case):
    in_shape, w_shape, stride, padding, dilation, groups, has_bias, activation = case
    x, w = randn(*in_shape, seed=10), randn(*w_shape, seed=11)
    b = randn(w_shape[0], seed=12) if has_bias else None
    got = R.conv2d(x, w, b, stride, padding, dilation, groups, activation)
    want = F.conv2d(x, w, b, stride, padding, dilation, groups)
    want = F.relu(want) if activation == "relu" else want
    _, atol, rtol = F64
    assert got.dtype == torch.float64
    assert_close(got, want, atol, rtol, "forward")
    grad = randn(*want.shape, seed=13, requires_grad=False)
    inputs = [t for t in (x, w, b) if t is not None]
    for name, g, t in zip("xwb", torch.autograd.grad(got, inputs, grad),
                          torch.autograd.grad(want, inputs, grad)):
        assert_close(g, t, atol, rtol, f"grad {name}")


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_conv2d_takes_any_strides(layout):
    x, w = randn(2, 3, 12, 10, seed=14, requires_grad=False), randn(4, 3, 3, 3, seed=15)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.detach().contiguous(memory_format=torch.channels_last)
    else:
        x = x[:, :, ::2, 1::2]  # a non-contiguous view
    got = R.conv2d(x, w, None, (1, 1), (1, 1))
    assert_close(got, F.conv2d(x, w, None, 1, 1), 1e-12, 1e-12, layout)


POOL_CASES = [  # (input shape, kernel, stride, padding, dilation, ceil_mode)
    ((1, 1, 7, 7), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((2, 3, 8, 7), (3, 2), (2, 2), (1, 1), (1, 1), True),       # ceil_mode
    ((2, 2, 9, 10), (2, 2), (3, 4), (0, 1), (1, 1), True),      # stride > kernel
    ((1, 3, 10, 9), (3, 3), (2, 1), (1, 0), (2, 3), True),      # dilation
    ((2, 1, 5, 6), (5, 2), (1, 2), (2, 1), (1, 1), False),      # window = input height
    ((1, 2, 6, 6), (4, 4), (3, 3), (2, 2), (1, 1), True),       # ceil_mode drops a window
]


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-k{c[1]}")
def test_max_pool2d_matches_torch_with_indices(case):
    in_shape, kernel, stride, padding, dilation, ceil_mode = case
    x = randn(*in_shape, seed=20)
    got, got_idx = R.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    want, want_idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode,
                                  return_indices=True)
    assert_close(got, want, 0, 0, "forward")
    assert got_idx.dtype == torch.int64 and torch.equal(got_idx, want_idx)
    grad = randn(*want.shape, seed=21, requires_grad=False)
    assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0],
                 1e-12, 1e-12, "grad")


def test_max_pool2d_ties_take_the_first_maximum():
    g = torch.Generator().manual_seed(22)
    x = torch.randint(0, 3, (2, 2, 7, 7), generator=g).double().requires_grad_(True)
    got, got_idx = R.max_pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1), True)
    want, want_idx = F.max_pool2d(x, 3, 2, 1, 1, True, return_indices=True)
    assert torch.equal(got, want) and torch.equal(got_idx, want_idx)
    grad = randn(*want.shape, seed=23, requires_grad=False)
    assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0],
                 1e-12, 1e-12, "grad with ties")


def test_max_pool2d_propagates_nan_and_takes_its_index():
    x = randn(1, 2, 5, 5, seed=24, requires_grad=False)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 1, 3] = float("nan")  # two NaNs in one window: PyTorch keeps the last
    x[0, 1, 4, 0] = float("nan")
    x[0, 1, 0, 4] = float("-inf")
    x.requires_grad_(True)
    got, got_idx = R.max_pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1), False)
    want, want_idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert got.isnan().sum() >= 3
    assert_close(got, want, 0, 0, "forward with NaN")
    assert torch.equal(got_idx, want_idx)
    grad = randn(*want.shape, seed=25, requires_grad=False)
    assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0],
                 0, 0, "grad with NaN")


def test_max_pool2d_window_that_misses_the_image():
    """Dilation can put a whole window outside a thin image (here W = 1: positions -1 and 1).
    PyTorch gives -inf and the index of the window's first position past the padding, which
    lies outside the image (its backward then writes out of the plane: not compared)."""
    x = randn(2, 2, 5, 1, seed=26)
    got, got_idx = R.max_pool2d(x, (1, 2), (1, 3), (0, 1), (2, 2), True)
    want, want_idx = F.max_pool2d(x, (1, 2), (1, 3), (0, 1), (2, 2), True, return_indices=True)
    assert torch.equal(got, want) and torch.equal(got_idx, want_idx)
    assert got.isneginf().all()
    # still differentiable, as PyTorch's output: nothing of the image reaches it
    assert torch.equal(torch.autograd.grad(got.sum(), x)[0], torch.zeros_like(x))


AVG_CASES = [  # (input shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    ((1, 1, 7, 7), (3, 3), (2, 2), (1, 1), False, True, None),
    ((2, 3, 8, 7), (3, 2), (2, 2), (1, 1), True, True, None),   # ceil_mode, pad counted
    ((2, 3, 8, 7), (3, 2), (2, 2), (1, 1), True, False, None),  # ceil_mode, pad not counted
    ((2, 2, 9, 10), (2, 3), (3, 4), (1, 1), True, True, None),  # stride > kernel
    ((1, 2, 7, 6), (3, 3), (2, 2), (1, 1), True, True, 5),      # divisor_override
    ((1, 2, 7, 6), (3, 3), (2, 2), (1, 1), False, False, -2),   # negative divisor: torch takes it
    ((1, 2, 6, 6), (4, 4), (3, 3), (2, 2), True, False, None),  # ceil_mode drops a window
    ((2, 1, 3, 3), (2, 2), (2, 2), (0, 0), True, True, None),   # last window past the image
]


@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-k{c[1]}"
                         f"-c{int(c[4])}{int(c[5])}-d{c[6]}")
def test_avg_pool2d_matches_torch(case):
    in_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor = case
    x = randn(*in_shape, seed=30)
    got = R.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    want = F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    assert_close(got, want, 1e-12, 1e-12, "forward")
    grad = randn(*want.shape, seed=31, requires_grad=False)
    assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0],
                 1e-12, 1e-12, "grad")


BN_SHAPES = [(6, 4), (3, 4, 5), (2, 3, 4, 5), (1, 2, 3, 1)]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_batch_norm_training_matches_torch_and_updates_running_stats(shape, affine):
    c = shape[1]
    x = randn(*shape, seed=40)
    w, b = (randn(c, seed=41), randn(c, seed=42)) if affine else (None, None)
    stats = [randn(c, seed=43, requires_grad=False), randn(c, seed=44, requires_grad=False).abs()]
    torch_stats = [s.clone() for s in stats]
    kept = [s.clone() for s in stats]
    got, new_mean, new_var = R.batch_norm_general(x, *stats, w, b, True, 0.3, 1e-3)
    want = F.batch_norm(x, *torch_stats, w, b, True, 0.3, 1e-3)
    assert_close(got, want, 1e-12, 1e-12, "forward")
    assert_close(new_mean, torch_stats[0], 1e-12, 1e-12, "running_mean")
    assert_close(new_var, torch_stats[1], 1e-12, 1e-12, "running_var (unbiased)")
    # functional: the new stats are returned, the given ones are left alone
    assert torch.equal(stats[0], kept[0]) and torch.equal(stats[1], kept[1])
    grad = randn(*shape, seed=45, requires_grad=False)
    inputs = [t for t in (x, w, b) if t is not None]
    for name, g, t in zip("xwb", torch.autograd.grad(got, inputs, grad),
                          torch.autograd.grad(want, inputs, grad)):
        assert_close(g, t, 1e-10, 1e-10, f"grad {name}")


@pytest.mark.parametrize("shape", BN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_batch_norm_eval_and_without_running_stats(shape):
    c = shape[1]
    x, w, b = randn(*shape, seed=46), randn(c, seed=47), randn(c, seed=48)
    mean, var = randn(c, seed=49, requires_grad=False), randn(c, seed=50, requires_grad=False).abs()
    kept = (mean.clone(), var.clone())
    for running, training in (((mean, var), False), ((None, None), True)):
        got, new_mean, new_var = R.batch_norm_general(x, *running, w, b, training, 0.1, 1e-5)
        assert new_mean is None and new_var is None  # nothing to update
        want = F.batch_norm(x, *running, w, b, training, 0.1, 1e-5)
        assert_close(got, want, 1e-12, 1e-12, f"forward training={training}")
        grad = randn(*shape, seed=51, requires_grad=False)
        for name, g, t in zip("xwb", torch.autograd.grad(got, (x, w, b), grad),
                              torch.autograd.grad(want, (x, w, b), grad)):
            assert_close(g, t, 1e-10, 1e-10, f"grad {name} training={training}")
    assert torch.equal(mean, kept[0]) and torch.equal(var, kept[1])  # eval leaves them alone


def test_gradcheck_through_the_loops():
    x = randn(1, 2, 4, 5, seed=60)
    w, b = randn(2, 1, 2, 3, seed=61), randn(2, seed=62)
    assert torch.autograd.gradcheck(
        lambda x, w, b: R.conv2d(x, w, b, (2, 1), (1, 1), (1, 2), 2, "relu"), (x, w, b))
    assert torch.autograd.gradcheck(
        lambda x: R.max_pool2d(x, (2, 3), (1, 2), (1, 1), (1, 1), True)[0], (x,))
    assert torch.autograd.gradcheck(
        lambda x: R.avg_pool2d(x, (3, 2), (2, 2), (1, 1), True, False, None), (x,))
    assert torch.autograd.gradcheck(
        lambda x, w, b: R.batch_norm_general(x, None, None, w, b, True, 0.1, 1e-5)[0],
        (x, randn(2, seed=63), randn(2, seed=64)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_keeps_the_dtype_and_sums_in_float32(dtype):
    x = randn(2, 3, 6, 6, seed=70, requires_grad=False).to(dtype)
    w = randn(4, 3, 3, 3, seed=71, requires_grad=False).to(dtype)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    runs = {  # name: (reference op, float64 torch op)
        "conv2d": (lambda x: R.conv2d(x, w.to(x.dtype), None, (1, 1), (1, 1)),
                   lambda x: F.conv2d(x, w.double(), None, 1, 1)),
        "avg_pool2d": (lambda x: R.avg_pool2d(x, (3, 3), (2, 2), (1, 1), True, False, None),
                       lambda x: F.avg_pool2d(x, 3, 2, 1, True, False)),
        "max_pool2d": (lambda x: R.max_pool2d(x, (2, 2), (2, 2))[0], lambda x: F.max_pool2d(x, 2)),
        "batch_norm": (lambda x: R.batch_norm_general(x, None, None, None, None, True, 0.1,
                                                      1e-5)[0],
                       lambda x: F.batch_norm(x, None, None, None, None, True)),
    }
    for name, (op, torch_op) in runs.items():
        out = op(x)
        assert out.dtype == dtype, name
        # computed in float32 from the rounded inputs, rounded once at the end
        assert torch.equal(out, op(x.float()).to(dtype)), name
        assert_close(out, torch_op(x.double()).to(dtype), tol, tol, name)


# --- through the public dispatch -----------------------------------------------------------

def test_reference_backend_is_registered():
    backend = cnnops.get_backend("reference")
    assert isinstance(backend, ReferenceBackend)
    assert "reference" in cnnops.available_backends("cpu")
    assert set(backend.dtypes["cpu"]) == set(backend.dtypes["cuda"]) == {
        torch.float32, torch.float64, torch.float16, torch.bfloat16}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_public_ops_with_backend_reference():
    x, w, b = randn(3, 7, 6, seed=80), randn(4, 3, 4, 3, seed=81), randn(4, seed=82)
    # unbatched input, padding="same" with an even kernel (extra bottom/right row), relu
    got = cnnops.conv2d(x, w, b, padding="same", dilation=(1, 2), activation="relu",
                        backend="reference")
    want = F.relu(F.conv2d(x, w, b, padding="same", dilation=(1, 2)))
    assert_close(got, want, 1e-12, 1e-12, "conv2d")
    grad = randn(*want.shape, seed=83, requires_grad=False)
    for name, g, t in zip("xwb", torch.autograd.grad(got, (x, w, b), grad),
                          torch.autograd.grad(want, (x, w, b), grad)):
        assert_close(g, t, 1e-12, 1e-12, f"conv2d grad {name}")

    x4 = randn(2, 3, 7, 8, seed=84, requires_grad=False)
    x4 = x4.contiguous(memory_format=torch.channels_last)
    with cnnops.use_backend("reference"):
        out, idx = cnnops.max_pool2d(x4, 3, 2, 1, ceil_mode=True, return_indices=True)
        avg = cnnops.avg_pool2d(x4, (2, 3), padding=1, count_include_pad=False)
    want, want_idx = F.max_pool2d(x4, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert torch.equal(out, want) and torch.equal(idx, want_idx)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(avg, F.avg_pool2d(x4, (2, 3), padding=1, count_include_pad=False), 1e-12, 1e-12)

    running = [torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)]
    bn = cnnops.nn.BatchNorm2d(3, backend="reference").double()
    ref_bn = nn.BatchNorm2d(3).double()
    assert_close(bn(x4), ref_bn(x4), 1e-12, 1e-12, "BatchNorm2d")
    assert_close(bn.running_var, ref_bn.running_var, 1e-12, 1e-12, "running_var")
    out = cnnops.batch_norm(x4, *running, training=True, momentum=0.5, backend="reference")
    assert_close(out, F.batch_norm(x4, torch.zeros(3, dtype=torch.float64),
                                   torch.ones(3, dtype=torch.float64), training=True,
                                   momentum=0.5), 1e-12, 1e-12, "batch_norm")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reference_runs_on_cuda_like_torch():
    x, w, b = randn(2, 4, 7, 6, seed=90), randn(6, 2, 3, 3, seed=91), randn(6, seed=92)
    x, w, b = (t.detach().cuda().requires_grad_(True) for t in (x, w, b))
    got = cnnops.conv2d(x, w, b, padding=1, groups=2, activation="relu", backend="reference")
    want = F.relu(F.conv2d(x, w, b, padding=1, groups=2))
    assert got.device == x.device
    assert_close(got, want, 1e-10, 1e-10, "conv2d on cuda")
    gx, gw, _ = torch.autograd.grad(got.sum(), (x, w, b))
    tx, tw, _ = torch.autograd.grad(want.sum(), (x, w, b))
    assert_close(gx, tx, 1e-10, 1e-10, "grad x on cuda")
    assert_close(gw, tw, 1e-10, 1e-10, "grad w on cuda")
    out, idx = cnnops.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True,
                                 backend="reference")
    want, want_idx = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert torch.equal(out, want) and torch.equal(idx, want_idx)
    avg = cnnops.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False,
                            backend="reference")
    assert_close(avg, F.avg_pool2d(x, 3, 2, 1, True, False), 1e-12, 1e-12, "avg on cuda")
    stats = [torch.zeros(4, device="cuda", dtype=torch.float64),
             torch.ones(4, device="cuda", dtype=torch.float64)]
    torch_stats = [s.clone() for s in stats]
    out = cnnops.batch_norm(x, *stats, training=True, backend="reference")
    assert_close(out, F.batch_norm(x, *torch_stats, training=True), 1e-12, 1e-12, "bn on cuda")
    assert_close(stats[1], torch_stats[1], 1e-12, 1e-12, "running_var on cuda")
    book = R.corr2d(torch.tensor(BOOK_X, device="cuda"), torch.tensor(BOOK_K, device="cuda"))
    assert book.device.type == "cuda"
    assert torch.equal(book.cpu(), torch.tensor([[19.0, 25.0], [37.0, 43.0]]))
