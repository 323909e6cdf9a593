"""LeNet-5 (d2l 6.6) and LeNet with batch normalization (d2l 7.5), for 28x28 inputs."""
from torch import nn

from cnnops import nn as cnn

from ._init import book_init


def lenet(num_classes=10, in_channels=1, backend=None):
    """The book's LeNet: sigmoid activations, average pooling, a padding=2 first conv.

    1x28x28 -> 6x28x28 -> 6x14x14 -> 16x10x10 -> 16x5x5 -> 400 -> 120 -> 84 -> num_classes
    """
    model = nn.Sequential(
        cnn.Conv2d(in_channels, 6, kernel_size=5, padding=2, backend=backend), nn.Sigmoid(),
        cnn.AvgPool2d(kernel_size=2, stride=2, backend=backend),
        cnn.Conv2d(6, 16, kernel_size=5, backend=backend), nn.Sigmoid(),
        cnn.AvgPool2d(kernel_size=2, stride=2, backend=backend),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )
    return book_init(model)


def lenet_bn(num_classes=10, in_channels=1, backend=None):
    """The book's LeNet with batch normalization after every conv and hidden linear layer.

    As in the book this version has no padding on the first conv:
    1x28x28 -> 6x24x24 -> 6x12x12 -> 16x8x8 -> 16x4x4 -> 256 -> 120 -> 84 -> num_classes
    """
    model = nn.Sequential(
        cnn.Conv2d(in_channels, 6, kernel_size=5, backend=backend),
        cnn.BatchNorm2d(6, backend=backend), nn.Sigmoid(),
        cnn.AvgPool2d(kernel_size=2, stride=2, backend=backend),
        cnn.Conv2d(6, 16, kernel_size=5, backend=backend),
        cnn.BatchNorm2d(16, backend=backend), nn.Sigmoid(),
        cnn.AvgPool2d(kernel_size=2, stride=2, backend=backend),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), cnn.BatchNorm1d(120, backend=backend), nn.Sigmoid(),
        nn.Linear(120, 84), cnn.BatchNorm1d(84, backend=backend), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )
    return book_init(model)
