"""Drop-in layers: the torch.nn classes of the same name, computing through cnnops.

Same constructor arguments, parameters, buffers and state_dict keys as torch.nn, plus a
keyword `backend=None` (None: the current default, see `cnnops.use_backend`).
"""
import torch.nn.functional as F
from torch import nn

from cnnops import _validate, functional


class Conv2d(nn.Conv2d):
    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def _conv_forward(self, input, weight, bias):
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d: pad by mode, then convolve unpadded
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return functional.conv2d(input, weight, bias, self.stride, padding, self.dilation,
                                 self.groups, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


class MaxPool2d(nn.MaxPool2d):
    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input):
        return functional.max_pool2d(input, self.kernel_size, self.stride, self.padding,
                                     self.dilation, ceil_mode=self.ceil_mode,
                                     return_indices=self.return_indices, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


class AvgPool2d(nn.AvgPool2d):
    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input):
        return functional.avg_pool2d(input, self.kernel_size, self.stride, self.padding,
                                     self.ceil_mode, self.count_include_pad,
                                     self.divisor_override, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


class _BatchNormForward:
    """torch.nn.modules.batchnorm._BatchNorm.forward, with cnnops.batch_norm as the op."""

    _DIMS: tuple[int, ...] = ()  # the input ranks the layer takes

    def forward(self, input):
        _validate.batch_norm_layer_input(type(self).__name__, input, self._DIMS)
        # momentum=None: cumulative moving average, as torch.nn
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return functional.batch_norm(
            input, self.running_mean if track else None, self.running_var if track else None,
            self.weight, self.bias, use_batch_stats, factor, self.eps, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


class BatchNorm2d(_BatchNormForward, nn.BatchNorm2d):
    _DIMS = (4,)

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend


class BatchNorm1d(_BatchNormForward, nn.BatchNorm1d):
    _DIMS = (2, 3)

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend


class GlobalAvgPool2d(nn.Module):
    """Averages each channel over the whole map: `nn.AdaptiveAvgPool2d((1, 1))` on cnnops.

    The book's NiN, GoogLeNet, ResNet and DenseNet end with `nn.AdaptiveAvgPool2d((1, 1))`;
    for an output of one cell that is an average pool whose window is the input's H x W.
    """

    def __init__(self, backend=None):
        super().__init__()
        self.backend = backend

    def forward(self, input):
        return functional.avg_pool2d(input, kernel_size=tuple(input.shape[-2:]),
                                     backend=self.backend)

    def extra_repr(self):
        return f"backend={self.backend!r}"
