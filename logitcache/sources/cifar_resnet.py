"""CIFAR-style ResNets (He et al. 2016, section 4.2) as distillation benchmarks use them.

    >>> get_model("resnet56", num_classes=100)      # teacher in the DIST/CRD CIFAR-100 tables
    >>> get_model("resnet8x4", num_classes=100)     # 4x wider stem/stages, as in CRD and mdistiller

resnet{8,14,20,32,44,56,110}: 3 stages of (depth-2)/6 basic blocks, widths 16/32/64.
resnet8x4 / resnet32x4: stem 32, stages 64/128/256. torchvision has none of these.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def cifar_resnet(depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3):
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    blocks = (depth - 2) // 6
    stem, *stages = widths
    layers = [nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()]
    in_planes = stem
    for index, planes in enumerate(stages):
        for block in range(blocks):
            layers.append(BasicBlock(in_planes, planes, 2 if index > 0 and block == 0 else 1))
            in_planes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_planes, num_classes)]
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


def _register(name: str, depth: int, widths: tuple[int, int, int, int]):
    def builder(num_classes: int, in_channels: int = 3):
        return cifar_resnet(depth, widths, num_classes, in_channels)

    builder.__doc__ = f"CIFAR ResNet-{depth}, widths {widths}."
    register_model(name)(builder)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 16, 32, 64))
_register("resnet8x4", 8, (32, 64, 128, 256))
_register("resnet32x4", 32, (32, 64, 128, 256))
