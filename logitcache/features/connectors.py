"""The learned connectors feature losses put between a student's features and a teacher's, where shapes
differ. They train with the student, are saved in its checkpoints (``connectors``), and are never part
of the exported student.

    >>> HintRegressor((32, 16, 16), (64, 8, 8))     # FitNet's regressor: student map -> teacher map
    >>> ChannelEmbed(32, 64)                         # ICKD's 1x1 embedding to the teacher's channels
    >>> AttentionFusion(64, 128, 256, fuse=True)     # ReviewKD's ABF (attention-based fusion)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


class HintRegressor(nn.Module):
    """FitNets' regressor (Romero et al. 2015) as CIFAR distillation code builds it: a convolution that
    maps the student's (Cs, Hs, Ws) map onto the teacher's (Ct, Ht, Wt), then batch norm and ReLU.
    Halving the side is a stride-2 3x3 convolution, doubling it a stride-2 4x4 transposed one, and a
    larger student map shrinks through a valid convolution of kernel (1 + Hs - Ht, 1 + Ws - Wt)."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        (cs, hs, ws), (ct, ht, wt) = student_shape, teacher_shape
        if hs == 2 * ht and ws == 2 * wt:
            self.conv = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
        elif 2 * hs == ht and 2 * ws == wt:
            self.conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
        elif hs >= ht and ws >= wt:
            self.conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
        else:
            raise ConfigError(f"a FitNet hint cannot map the student's {hs}x{ws} map onto the teacher's {ht}x{wt}: "
                              "pick student and teacher layers of equal size, twice or half it, or a larger student map")
        self.bn = nn.BatchNorm2d(ct)

    def forward(self, student_map: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(student_map)))


class ChannelEmbed(nn.Module):
    """ICKD's embedding: a 1x1 convolution (no bias) from the student's channels to the teacher's, then
    batch norm, so both Gram matrices are C x C with the teacher's C."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(teacher_channels)

    def forward(self, student_map: Tensor) -> Tensor:
        return self.bn(self.conv(student_map))


class AttentionFusion(nn.Module):
    """ReviewKD's attention-based fusion (Chen et al., CVPR 2021): a 1x1 convolution to ``mid`` channels;
    on every level but the deepest, a fusion with the level below, weighted by two learned attention maps;
    then a 3x3 convolution to the teacher's channels. Returns (output, the fused map handed upwards)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.out = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        for conv in (self.reduce[0], self.out[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, student_map: Tensor, below: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.reduce(student_map)
        if self.attention is not None:
            below = F.interpolate(below, size=x.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([x, below], dim=1))  # (B, 2, H, W)
            x = x * weights[:, :1] + below * weights[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.out(x), x
