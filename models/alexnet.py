"""AlexNet (d2l 7.1), for 224x224 single-channel inputs."""
from torch import nn

from cnnops import nn as cnn

from ._init import book_init


def alexnet(num_classes=10, in_channels=1, backend=None, dropout=0.5):
    """The book's AlexNet for Fashion-MNIST resized to 224x224.

    1x224x224 -> 96x54x54 -> 96x26x26 -> 256x26x26 -> 256x12x12 -> 384x12x12 -> 384x12x12
    -> 256x12x12 -> 256x5x5 -> 6400 -> 4096 -> 4096 -> num_classes
    """
    model = nn.Sequential(
        # A large 11x11 window with stride 4 to shrink the image quickly.
        cnn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1, backend=backend),
        nn.ReLU(),
        cnn.MaxPool2d(kernel_size=3, stride=2, backend=backend),
        cnn.Conv2d(96, 256, kernel_size=5, padding=2, backend=backend), nn.ReLU(),
        cnn.MaxPool2d(kernel_size=3, stride=2, backend=backend),
        cnn.Conv2d(256, 384, kernel_size=3, padding=1, backend=backend), nn.ReLU(),
        cnn.Conv2d(384, 384, kernel_size=3, padding=1, backend=backend), nn.ReLU(),
        cnn.Conv2d(384, 256, kernel_size=3, padding=1, backend=backend), nn.ReLU(),
        cnn.MaxPool2d(kernel_size=3, stride=2, backend=backend),
        nn.Flatten(),
        nn.Linear(256 * 5 * 5, 4096), nn.ReLU(), nn.Dropout(p=dropout),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=dropout),
        nn.Linear(4096, num_classes),
    )
    return book_init(model)
