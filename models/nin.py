"""Network in Network (d2l 7.3), for 224x224 single-channel inputs."""
from torch import nn

from cnnops import nn as cnn

from ._init import book_init


def nin_block(in_channels, out_channels, kernel_size, stride, padding, backend=None):
    """A conv followed by two 1x1 convs: a per-pixel fully connected layer."""
    return nn.Sequential(
        cnn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, backend=backend),
        nn.ReLU(),
        cnn.Conv2d(out_channels, out_channels, kernel_size=1, backend=backend), nn.ReLU(),
        cnn.Conv2d(out_channels, out_channels, kernel_size=1, backend=backend), nn.ReLU(),
    )


def nin(num_classes=10, in_channels=1, backend=None, dropout=0.5):
    """The book's NiN: no fully connected layer; the last block has one channel per class.

    1x224x224 -> 96x54x54 -> 96x26x26 -> 256x26x26 -> 256x12x12 -> 384x12x12 -> 384x5x5
    -> num_classes x5x5 -> global average pool -> num_classes
    """
    model = nn.Sequential(
        nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0, backend=backend),
        cnn.MaxPool2d(3, stride=2, backend=backend),
        nin_block(96, 256, kernel_size=5, stride=1, padding=2, backend=backend),
        cnn.MaxPool2d(3, stride=2, backend=backend),
        nin_block(256, 384, kernel_size=3, stride=1, padding=1, backend=backend),
        cnn.MaxPool2d(3, stride=2, backend=backend),
        nn.Dropout(dropout),
        nin_block(384, num_classes, kernel_size=3, stride=1, padding=1, backend=backend),
        cnn.GlobalAvgPool2d(backend=backend),
        nn.Flatten(),
    )
    return book_init(model)
