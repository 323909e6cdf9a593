"""Pieces shared by the model families."""
import torch
from torch import nn

import cnnops


class GlobalAvgPool2d(nn.Module):
    """Averages each channel over the whole map: `nn.AdaptiveAvgPool2d((1, 1))` on our kernels.

    The book's NiN, GoogLeNet, ResNet and DenseNet end with `nn.AdaptiveAvgPool2d((1, 1))`;
    for an output of one cell that is an average pool whose window is the input's H x W.
    """

    def __init__(self, backend=None):
        super().__init__()
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cnnops.avg_pool2d(x, kernel_size=tuple(x.shape[-2:]), backend=self.backend)

    def extra_repr(self):
        return f"backend={self.backend!r}"
