"""ResNet-18 (d2l 7.6), for 96x96 single-channel inputs."""
import torch.nn.functional as F
from torch import nn

from cnnops import nn as cnn

from ._init import book_init


class Residual(nn.Module):
    """Two 3x3 conv + batch-norm layers and a shortcut: relu(bn2(conv2(relu(bn1(conv1 x)))) + x).

    With `use_1x1conv` the shortcut is a 1x1 conv (stride `stride`) so that it matches the
    changed channels and size.
    """

    def __init__(self, in_channels, out_channels, use_1x1conv=False, stride=1, backend=None):
        super().__init__()
        self.conv1 = cnn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1,
                                stride=stride, backend=backend)
        self.conv2 = cnn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1,
                                backend=backend)
        self.conv3 = (cnn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride,
                                 backend=backend) if use_1x1conv else None)
        self.bn1 = cnn.BatchNorm2d(out_channels, backend=backend)
        self.bn2 = cnn.BatchNorm2d(out_channels, backend=backend)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return F.relu(y + x)


def resnet_block(in_channels, out_channels, num_residuals, first_block=False, backend=None):
    """A stage: the first residual halves H and W and changes channels, except in stage 2."""
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(Residual(in_channels, out_channels, use_1x1conv=True, stride=2,
                                   backend=backend))
        else:
            blocks.append(Residual(out_channels, out_channels, backend=backend))
    return nn.Sequential(*blocks)


def resnet18(num_classes=10, in_channels=1, backend=None):
    """The book's ResNet-18.

    1x96x96 -> 64x24x24 -> 64x24x24 -> 128x12x12 -> 256x6x6 -> 512x3x3 -> 512 -> num_classes
    """
    b1 = nn.Sequential(
        cnn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, backend=backend),
        cnn.BatchNorm2d(64, backend=backend), nn.ReLU(),
        cnn.MaxPool2d(kernel_size=3, stride=2, padding=1, backend=backend))
    b2 = resnet_block(64, 64, 2, first_block=True, backend=backend)
    b3 = resnet_block(64, 128, 2, backend=backend)
    b4 = resnet_block(128, 256, 2, backend=backend)
    b5 = resnet_block(256, 512, 2, backend=backend)
    model = nn.Sequential(b1, b2, b3, b4, b5, cnn.GlobalAvgPool2d(backend=backend), nn.Flatten(),
                         nn.Linear(512, num_classes))
    return book_init(model)
