"""The book's loops: Dive into Deep Learning's convolution chapters, and the `reference` backend.

Part one is the book's code with the book's names and results (see shared/seeds). Sections
are numbered as in the PyTorch edition of d2l.ai that the seeds follow (zh.d2l.ai; the English
d2l.ai numbers each one chapter later):

    6.2 Convolutions for Images (图像卷积)             corr2d, Conv2D
    6.3 Padding and Stride (填充和步幅)                 comp_conv2d
    6.4 Multiple Input and Multiple Output Channels    corr2d_multi_in, corr2d_multi_in_out,
        (多输入多输出通道)                               corr2d_multi_in_out_1x1
    6.5 Pooling (汇聚层)                                pool2d
    7.5 Batch Normalization (批量规范化;               batch_norm
        8.5 Batch Normalization in the English edition)

Like the book they take integer tensors and give results in the default float dtype
(float32): `corr2d` and `pool2d` write into `torch.zeros`.

Part two grows the same loops into the general ops the `reference` backend runs: `conv2d`,
`max_pool2d`, `avg_pool2d` and `batch_norm_general`, with batches, padding, stride, dilation,
groups and PyTorch's exact semantics. Python loops over output positions are the point: clear
and slow, for tiny inputs. Only the window product / sum inside the loop is vectorised (over
the batch and the channels), and autograd through the loops is the backward.
"""
import torch
from torch import nn

from cnnops.shapes import output_size

# ---------------------------------------------------------------------------------------------
# Part one: the book
# ---------------------------------------------------------------------------------------------


def corr2d(X, K):
    """2-D cross-correlation, no padding, stride 1 (d2l 6.2 Convolutions for Images).

    >>> corr2d(torch.tensor([[0., 1, 2], [3, 4, 5], [6, 7, 8]]), torch.tensor([[0., 1], [2, 3]]))
    tensor([[19., 25.],
            [37., 43.]])
    """
    h, w = K.shape
    Y = torch.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1), device=X.device)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


class Conv2D(nn.Module):
    """A convolutional layer built on corr2d: a weight and a scalar bias (d2l 6.2)."""

    def __init__(self, kernel_size):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(kernel_size))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return corr2d(x, self.weight) + self.bias


def comp_conv2d(conv2d, X):
    """Runs a conv layer on an (H, W) tensor, returns its (H', W') output (d2l 6.3 Padding and
    Stride). The (1, 1) prefix is the batch size and the number of channels."""
    X = X.reshape((1, 1) + X.shape)
    Y = conv2d(X)
    return Y.reshape(Y.shape[2:])


def corr2d_multi_in(X, K):
    """Cross-correlation summed over the input channels, X (c_i, h, w), K (c_i, k_h, k_w)
    (d2l 6.4 Multiple Input and Multiple Output Channels)."""
    return sum(corr2d(x, k) for x, k in zip(X, K))


def corr2d_multi_in_out(X, K):
    """One corr2d_multi_in per output channel, stacked: K (c_o, c_i, k_h, k_w) -> (c_o, h', w')
    (d2l 6.4 Multiple Input and Multiple Output Channels)."""
    return torch.stack([corr2d_multi_in(X, k) for k in K], 0)


def corr2d_multi_in_out_1x1(X, K):
    """A 1x1 convolution as the matrix product of a fully connected layer, K (c_o, c_i, 1, 1)
    (d2l 6.4 Multiple Input and Multiple Output Channels).

    Integer input gives a float result, as corr2d does (the book's matmul would keep ints).
    """
    if not X.is_floating_point():
        X = X.to(torch.get_default_dtype())
    if not K.is_floating_point():
        K = K.to(torch.get_default_dtype())
    c_i, h, w = X.shape
    c_o = K.shape[0]
    X = X.reshape((c_i, h * w))
    K = K.reshape((c_o, c_i))
    Y = torch.matmul(K, X)
    return Y.reshape((c_o, h, w))


def pool2d(X, pool_size, mode="max"):
    """Max or average pooling of an (H, W) tensor, stride 1, no padding (d2l 6.5 Pooling)."""
    p_h, p_w = pool_size
    Y = torch.zeros((X.shape[0] - p_h + 1, X.shape[1] - p_w + 1), device=X.device)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            if mode == "max":
                Y[i, j] = X[i: i + p_h, j: j + p_w].max()
            elif mode == "avg":
                # the book's .mean() refuses integer tensors; the float mean is what it means
                Y[i, j] = X[i: i + p_h, j: j + p_w].to(Y.dtype).mean()
    return Y


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    """Batch normalization from scratch (d2l 7.5 批量规范化; 8.5 Batch Normalization in the
    English edition). Returns (Y, moving_mean, moving_var).

    The book's semantics, not F.batch_norm's: training mode is `torch.is_grad_enabled()`;
    X is (N, C) (a fully connected layer) or (N, C, H, W) (a conv layer); the variance is the
    biased one, also for the moving average; `momentum` weights the OLD moving average:
    new = momentum * old + (1 - momentum) * batch (the book's layer uses momentum=0.9).
    """
    if not torch.is_grad_enabled():
        # prediction: normalise with the moving averages
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            # fully connected: statistics per feature
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            # conv: statistics per channel (axis 1), kept 4-D to broadcast
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta
    return Y, moving_mean.data, moving_var.data


# ---------------------------------------------------------------------------------------------
# Part two: the same loops, general (the `reference` backend)
# ---------------------------------------------------------------------------------------------

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float16 / bfloat16 sum in float32 and round once at the end, as PyTorch's kernels do
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def pad2d(X, padding):
    """Zero padding the book way (d2l 6.3): a larger zeros tensor with X in its middle.

    X is (N, C, H, W); padding (p_h, p_w) rows / columns on each side.
    """
    p_h, p_w = padding
    if p_h == 0 and p_w == 0:
        return X
    n, c, h, w = X.shape
    Y = X.new_zeros((n, c, h + 2 * p_h, w + 2 * p_w))
    Y[:, :, p_h:p_h + h, p_w:p_w + w] = X
    return Y


def corr2d_batch(X, K, stride=(1, 1), dilation=(1, 1)):
    """corr2d_multi_in_out over a batch, with stride and dilation (d2l 6.2-6.4).

    X (N, c_i, H, W), K (c_o, c_i, k_h, k_w) -> (N, c_o, H', W'), no padding. At each output
    position the window (N, c_i, k_h, k_w) meets every kernel at once.
    """
    n, c_i, h, w = X.shape
    c_o, _, k_h, k_w = K.shape
    (s_h, s_w), (d_h, d_w) = stride, dilation
    span_h, span_w = d_h * (k_h - 1) + 1, d_w * (k_w - 1) + 1  # the dilated window
    Y = X.new_zeros((n, c_o, output_size(h, k_h, s_h, 0, d_h), output_size(w, k_w, s_w, 0, d_w)))
    for i in range(Y.shape[2]):
        for j in range(Y.shape[3]):
            window = X[:, :, i * s_h:i * s_h + span_h:d_h, j * s_w:j * s_w + span_w:d_w]
            Y[:, :, i, j] = (window.unsqueeze(1) * K).sum(dim=(2, 3, 4))
    return Y


def conv2d(X, K, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
           activation=None):
    """`F.conv2d` from the book's loops: pad2d, then corr2d_batch per group, then the bias.

    X (N, C_in, H, W), K (C_out, C_in / groups, k_h, k_w), bias (C_out,) or None; sizes are
    (int, int) pairs; activation None or "relu" (applied after the bias).
    """
    dtype = X.dtype
    X, K = X.to(_compute_dtype(dtype)), K.to(_compute_dtype(dtype))
    X = pad2d(X, padding)
    c_i, c_o = X.shape[1] // groups, K.shape[0] // groups  # channels per group
    Y = torch.cat([corr2d_batch(X[:, g * c_i:(g + 1) * c_i], K[g * c_o:(g + 1) * c_o],
                                stride, dilation) for g in range(groups)], dim=1)
    if bias is not None:
        Y = Y + bias.to(Y.dtype).reshape(1, -1, 1, 1)
    if activation == "relu":
        Y = torch.relu(Y)
    return Y.to(dtype)


def max_pool2d(X, kernel_size, stride, padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """pool2d "max" (d2l 6.5) as `F.max_pool2d(..., return_indices=True)`: (Y, indices).

    Padding is never a candidate: each window is clipped to the image. indices are int64 flat
    h * W + w per plane. As PyTorch scans a window: the first of equal maxima wins, and a NaN
    is larger than anything (the last NaN of the window wins).
    """
    n, c, h, w = X.shape
    (k_h, k_w), (s_h, s_w), (p_h, p_w), (d_h, d_w) = kernel_size, stride, padding, dilation
    out_h = output_size(h, k_h, s_h, p_h, d_h, ceil_mode)
    out_w = output_size(w, k_w, s_w, p_w, d_w, ceil_mode)
    Y = X.new_zeros((n, c, out_h, out_w))
    indices = torch.zeros((n, c, out_h, out_w), dtype=torch.int64, device=X.device)
    for i in range(out_h):
        rows = _window_range(i * s_h - p_h, k_h, d_h, h)
        for j in range(out_w):
            cols = _window_range(j * s_w - p_w, k_w, d_w, w)
            window = X[:, :, rows][:, :, :, cols].reshape(n, c, -1)
            if window.shape[-1] == 0:
                # a dilated window can miss a thin image: the max of nothing is -inf, and
                # PyTorch's index is the window's first position past the padding (outside
                # the image). The empty sum keeps Y in the autograd graph, gradient zero.
                Y[:, :, i, j] = window.sum(dim=-1) - float("inf")
                indices[:, :, i, j] = rows.start * w + cols.start
                continue
            best = _window_argmax(window)
            Y[:, :, i, j] = window.gather(2, best[..., None])[..., 0]
            flat = torch.tensor([r * w + q for r in rows for q in cols], device=X.device)
            indices[:, :, i, j] = flat[best]
    return Y, indices


def _window_range(start, kernel, dilation, size):
    """The image positions of a dilated window starting at `start` (negative: in the padding),
    as PyTorch walks them: from the first position past the padding to the image's end."""
    end = min(start + dilation * (kernel - 1) + 1, size)
    while start < 0:
        start += dilation
    return range(start, end, dilation)


def _window_argmax(window):
    """Position of the max along the last dim as PyTorch's pooling scan picks it: the first
    maximum, but the last NaN when there is one."""
    first_max = (window == window.amax(dim=-1, keepdim=True)).to(torch.uint8).argmax(dim=-1)
    is_nan = window.isnan()
    last_nan = window.shape[-1] - 1 - is_nan.flip(-1).to(torch.uint8).argmax(dim=-1)
    return torch.where(is_nan.any(dim=-1), last_nan, first_max)


def avg_pool2d(X, kernel_size, stride, padding=(0, 0), ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """pool2d "avg" (d2l 6.5) as `F.avg_pool2d`, with PyTorch's divisor.

    A window is first clipped to the padded input (H + p_h, W + p_w): its size there is the
    divisor with count_include_pad. It is then clipped to the image: the sum runs over that
    part, whose size is the divisor without count_include_pad. divisor_override replaces both.
    """
    n, c, h, w = X.shape
    (k_h, k_w), (s_h, s_w), (p_h, p_w) = kernel_size, stride, padding
    dtype = X.dtype
    X = X.to(_compute_dtype(dtype))
    Y = X.new_zeros((n, c, output_size(h, k_h, s_h, p_h, 1, ceil_mode),
                     output_size(w, k_w, s_w, p_w, 1, ceil_mode)))
    for i in range(Y.shape[2]):
        h0 = i * s_h - p_h
        h1 = min(h0 + k_h, h + p_h)
        for j in range(Y.shape[3]):
            w0 = j * s_w - p_w
            w1 = min(w0 + k_w, w + p_w)
            pool_size = (h1 - h0) * (w1 - w0)
            r0, r1, q0, q1 = max(h0, 0), min(h1, h), max(w0, 0), min(w1, w)
            if r0 >= r1 or q0 >= q1:
                continue  # nothing of the image in this window: 0, as PyTorch
            if divisor_override is not None:
                divisor = divisor_override
            elif count_include_pad:
                divisor = pool_size
            else:
                divisor = (r1 - r0) * (q1 - q0)
            Y[:, :, i, j] = X[:, :, r0:r1, q0:q1].sum(dim=(2, 3)) / divisor
    return Y.to(dtype)


def batch_norm_general(X, running_mean, running_var, weight, bias, training, momentum, eps):
    """`F.batch_norm` on (N, C), (N, C, L) or (N, C, H, W) input: the book's batch_norm with
    PyTorch's semantics. Returns (Y, new_running_mean, new_running_var).

    Unlike the book: `training` is an argument; `momentum` weights the NEW batch statistic,
    new = (1 - momentum) * running + momentum * batch, with the unbiased batch variance (the
    normalisation uses the biased one, as the book); weight, bias and the running statistics
    may be None. Functional, like every backend's op: nothing is updated in place; the new
    running statistics are None when there is nothing to update (eval, no running stats, or
    an empty batch, which torch also leaves alone).
    """
    dtype = X.dtype
    X = X.to(_compute_dtype(dtype))
    c = X.shape[1]
    shape = (1, c) + (1,) * (X.dim() - 2)  # per channel, broadcast over the rest
    count = X.numel() // c if c else 0  # values per channel
    new_mean = new_var = None
    if training and count == 0:
        Y = X  # an empty batch: an empty output (weight and bias still get zero gradients)
    else:
        if training:
            dims = [0] + list(range(2, X.dim()))
            mean = X.mean(dim=dims, keepdim=True)
            var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)
            if running_mean is not None:
                with torch.no_grad():
                    batch_mean = mean.reshape(c).to(running_mean.dtype)
                    unbiased_var = (var.reshape(c) * count / (count - 1)).to(running_var.dtype)
                    new_mean = (1 - momentum) * running_mean + momentum * batch_mean
                    new_var = (1 - momentum) * running_var + momentum * unbiased_var
        else:
            mean = running_mean.to(X.dtype).reshape(shape)
            var = running_var.to(X.dtype).reshape(shape)
        Y = (X - mean) / torch.sqrt(var + eps)
    if weight is not None:
        Y = Y * weight.to(X.dtype).reshape(shape)
    if bias is not None:
        Y = Y + bias.to(X.dtype).reshape(shape)
    return Y.to(dtype), new_mean, new_var
