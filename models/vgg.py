"""VGG-11 (d2l 7.2), for 224x224 single-channel inputs."""
from torch import nn

from cnnops import nn as cnn

from ._init import book_init

# (number of 3x3 convs, output channels) of each block: VGG-11.
VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg_block(num_convs, in_channels, out_channels, backend=None):
    """`num_convs` 3x3 convs with padding 1 (size kept), then a 2x2 max pool (size halved)."""
    layers = []
    for _ in range(num_convs):
        layers += [cnn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1,
                              backend=backend), nn.ReLU()]
        in_channels = out_channels
    layers.append(cnn.MaxPool2d(kernel_size=2, stride=2, backend=backend))
    return nn.Sequential(*layers)


def vgg11(num_classes=10, in_channels=1, backend=None, ratio=1, dropout=0.5):
    """The book's VGG-11; `ratio` divides every conv's channels (the book trains ratio=4).

    ratio 1: 1x224x224 -> 64x112x112 -> 128x56x56 -> 256x28x28 -> 512x14x14 -> 512x7x7
    -> 25088 -> 4096 -> 4096 -> num_classes
    """
    if not isinstance(ratio, int) or ratio < 1 or 64 % ratio:
        raise ValueError(f"ratio must be a positive int that divides 64, got {ratio!r}")
    blocks = []
    for num_convs, out_channels in VGG11_ARCH:
        blocks.append(vgg_block(num_convs, in_channels, out_channels // ratio, backend))
        in_channels = out_channels // ratio
    model = nn.Sequential(
        *blocks, nn.Flatten(),
        # Five 2x2 pools take 224x224 to 7x7.
        nn.Linear(in_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(4096, num_classes),
    )
    return book_init(model)
