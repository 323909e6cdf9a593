"""DenseNet (d2l 7.7), for 96x96 single-channel inputs."""
import torch
from torch import nn

from cnnops import nn as cnn

from ._init import book_init


def conv_block(in_channels, out_channels, backend=None):
    """Batch norm, ReLU, 3x3 conv: the "BN-ReLU-conv" order of the later ResNet paper."""
    return nn.Sequential(
        cnn.BatchNorm2d(in_channels, backend=backend), nn.ReLU(),
        cnn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, backend=backend))


class DenseBlock(nn.Module):
    """`num_convs` conv blocks; each one's input and output are concatenated on channels,
    so the block adds `num_convs * growth_rate` channels."""

    def __init__(self, num_convs, in_channels, growth_rate, backend=None):
        super().__init__()
        self.net = nn.Sequential(*(
            conv_block(in_channels + i * growth_rate, growth_rate, backend)
            for i in range(num_convs)))

    def forward(self, x):
        for block in self.net:
            x = torch.cat((x, block(x)), dim=1)
        return x


def transition_block(in_channels, out_channels, backend=None):
    """Cuts channels with a 1x1 conv and halves H and W with a 2x2 average pool."""
    return nn.Sequential(
        cnn.BatchNorm2d(in_channels, backend=backend), nn.ReLU(),
        cnn.Conv2d(in_channels, out_channels, kernel_size=1, backend=backend),
        cnn.AvgPool2d(kernel_size=2, stride=2, backend=backend))


def densenet(num_classes=10, in_channels=1, backend=None, growth_rate=32,
             num_convs_in_dense_blocks=(4, 4, 4, 4)):
    """The book's DenseNet: four dense blocks of four convs, growth rate 32.

    1x96x96 -> 64x24x24 -> 192x24x24 -> 96x12x12 -> 224x12x12 -> 112x6x6 -> 240x6x6
    -> 120x3x3 -> 248x3x3 -> 248 -> num_classes
    """
    b1 = nn.Sequential(
        cnn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, backend=backend),
        cnn.BatchNorm2d(64, backend=backend), nn.ReLU(),
        cnn.MaxPool2d(kernel_size=3, stride=2, padding=1, backend=backend))
    blocks, num_channels = [], 64
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blocks.append(DenseBlock(num_convs, num_channels, growth_rate, backend))
        num_channels += num_convs * growth_rate
        # Between dense blocks a transition layer halves the channels.
        if i != len(num_convs_in_dense_blocks) - 1:
            blocks.append(transition_block(num_channels, num_channels // 2, backend))
            num_channels //= 2
    model = nn.Sequential(
        b1, *blocks,
        cnn.BatchNorm2d(num_channels, backend=backend), nn.ReLU(),
        cnn.GlobalAvgPool2d(backend=backend), nn.Flatten(),
        nn.Linear(num_channels, num_classes))
    return book_init(model)
