"""GoogLeNet (d2l 7.4), for 96x96 single-channel inputs."""
import torch
import torch.nn.functional as F
from torch import nn

from cnnops import nn as cnn

from ._init import book_init


class Inception(nn.Module):
    """Four parallel paths whose outputs are concatenated on the channel axis; H and W kept.

    c1: channels of the 1x1 path; c2, c3: (1x1 reduction, output) of the 3x3 and 5x5
    paths; c4: channels of the 1x1 conv after the 3x3 max pool.
    """

    def __init__(self, in_channels, c1, c2, c3, c4, backend=None):
        super().__init__()
        self.p1_1 = cnn.Conv2d(in_channels, c1, kernel_size=1, backend=backend)
        self.p2_1 = cnn.Conv2d(in_channels, c2[0], kernel_size=1, backend=backend)
        self.p2_2 = cnn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1, backend=backend)
        self.p3_1 = cnn.Conv2d(in_channels, c3[0], kernel_size=1, backend=backend)
        self.p3_2 = cnn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2, backend=backend)
        self.p4_1 = cnn.MaxPool2d(kernel_size=3, stride=1, padding=1, backend=backend)
        self.p4_2 = cnn.Conv2d(in_channels, c4, kernel_size=1, backend=backend)

    def forward(self, x):
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


def googlenet(num_classes=10, in_channels=1, backend=None):
    """The book's GoogLeNet: five stages, nine Inception blocks, global average pooling.

    1x96x96 -> 64x24x24 -> 192x12x12 -> 480x6x6 -> 832x3x3 -> 1024 -> num_classes
    """
    b = backend
    stage1 = nn.Sequential(
        cnn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, backend=b), nn.ReLU(),
        cnn.MaxPool2d(kernel_size=3, stride=2, padding=1, backend=b))
    stage2 = nn.Sequential(
        cnn.Conv2d(64, 64, kernel_size=1, backend=b), nn.ReLU(),
        cnn.Conv2d(64, 192, kernel_size=3, padding=1, backend=b), nn.ReLU(),
        cnn.MaxPool2d(kernel_size=3, stride=2, padding=1, backend=b))
    stage3 = nn.Sequential(
        Inception(192, 64, (96, 128), (16, 32), 32, backend=b),
        Inception(256, 128, (128, 192), (32, 96), 64, backend=b),
        cnn.MaxPool2d(kernel_size=3, stride=2, padding=1, backend=b))
    stage4 = nn.Sequential(
        Inception(480, 192, (96, 208), (16, 48), 64, backend=b),
        Inception(512, 160, (112, 224), (24, 64), 64, backend=b),
        Inception(512, 128, (128, 256), (24, 64), 64, backend=b),
        Inception(512, 112, (144, 288), (32, 64), 64, backend=b),
        Inception(528, 256, (160, 320), (32, 128), 128, backend=b),
        cnn.MaxPool2d(kernel_size=3, stride=2, padding=1, backend=b))
    stage5 = nn.Sequential(
        Inception(832, 256, (160, 320), (32, 128), 128, backend=b),
        Inception(832, 384, (192, 384), (48, 128), 128, backend=b),
        cnn.GlobalAvgPool2d(backend=b), nn.Flatten())
    model = nn.Sequential(stage1, stage2, stage3, stage4, stage5, nn.Linear(1024, num_classes))
    return book_init(model)
