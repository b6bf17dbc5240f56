"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR: ``wrn_DEPTH_WIDTH``.

    >>> get_model("wrn_40_2", num_classes=100)   # the usual CIFAR-100 distillation teacher

Pre-activation blocks, (depth-4)/6 blocks per stage, stage widths 16k/32k/64k.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._registry import register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


def wide_resnet(depth: int, width: int, num_classes: int, in_channels: int = 3):
    if (depth - 4) % 6:
        raise ValueError(f"Wide ResNet depth must be 6n+4, got {depth}")
    blocks = (depth - 4) // 6
    layers = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)]
    in_planes = 16
    for index, planes in enumerate((16 * width, 32 * width, 64 * width)):
        for block in range(blocks):
            layers.append(WideBlock(in_planes, planes, 2 if index > 0 and block == 0 else 1))
            in_planes = planes
    layers += [nn.BatchNorm2d(in_planes), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(in_planes, num_classes)]
    return nn.Sequential(*layers)


def _register(depth: int, width: int):
    def builder(num_classes: int, in_channels: int = 3):
        return wide_resnet(depth, width, num_classes, in_channels)

    builder.__doc__ = f"WRN-{depth}-{width}."
    register_model(f"wrn_{depth}_{width}")(builder)


for _depth, _width in ((16, 1), (16, 2), (40, 1), (40, 2), (28, 10)):
    _register(_depth, _width)
