"""Feature losses: pure tensor functions, the modules that hold their settings and connectors, and their
entries in the one loss registry (``losses/declarations.py``, kind ``feature``). They live here, beside the
connectors, extractors and cached features they need. Each reads the teacher's cached (or live)
features and the student's own.

    >>> at_loss([student_map], [teacher_attention])              # Attention Transfer, Zagoruyko & Komodakis 2017
    >>> rkd_loss(student_embedding, teacher_embedding)           # Relational KD, Park et al. 2019
    >>> fitnet_loss(regressor(student_map), teacher_map)         # FitNets, Romero et al. 2015
    >>> ickd_loss(embed(student_map), teacher_gram)              # ICKD, Liu et al. 2021
    >>> hcl_loss(fused_student_maps, teacher_maps)               # ReviewKD's HCL, Chen et al. 2021
    >>> feature_loss_spec("at").weight, feature_loss_spec("at").accepts    # 1000.0, ('attention', 'map')

Defaults are the papers' as the reference code runs them on CIFAR-100 (mdistiller; ICKD's official
code): AT p=2 weight 1000; RKD distance 25, angle 50, weight 1; FitNet weight 100; ICKD weight 2.5;
ReviewKD weight 5 with a 20-epoch linear warm-up. All arithmetic is float32. AT's loss is a mean over
positions, so it scales as 1/(H·W): its 1000 suits CIFAR's 32x32 to 8x8 maps, and smaller maps want a
smaller weight (``--feature-loss at=50`` on 8x8 digits; benchmarks/RESULTS.md).

A loss module is built from its *levels*: one per feature it learns from, each with the student's
per-sample shape and the teacher's cached reduce and shape, so connectors are sized (and impossible
pairs refused, in one line) before the first step. ``forward(student, teacher, epoch)`` takes the lists
of (B, ...) tensors in level order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.declarations import entry_of, names_of, register_loss
from .connectors import AttentionFusion, ChannelEmbed, HintRegressor
from .extract import attention, gram, pool


def at_loss(student_maps: list[Tensor], teacher_attention: list[Tensor], p: float = 2.0) -> Tensor:
    """Sum over levels of the mean squared difference of L2-normalised attention maps. A student map larger
    than the teacher's attention is average-pooled to its size first. Maps (B, C, H, W); attention (B, H, W)."""
    total = torch.zeros(())
    for student_map, teacher in zip(student_maps, teacher_attention):
        student_map = student_map.float()
        if tuple(student_map.shape[-2:]) != tuple(teacher.shape[-2:]):
            student_map = F.adaptive_avg_pool2d(student_map, tuple(teacher.shape[-2:]))
        total = total + (attention(student_map, p) - teacher.float()).pow(2).mean()
    return total


def _distances(embedding: Tensor, eps: float) -> Tensor:
    """(B, D) -> (B, B) Euclidean distances, zero on the diagonal (squared distances clamped at ``eps``)."""
    squares = embedding.pow(2).sum(1)
    distances = (squares[:, None] + squares[None, :] - 2 * embedding @ embedding.t()).clamp_min(eps).sqrt()
    return distances * (1 - torch.eye(len(embedding), device=embedding.device, dtype=embedding.dtype))


def _angles(embedding: Tensor) -> Tensor:
    """(B, D) -> (B, B, B): cos of the angle at vertex i between e_j - e_i and e_k - e_i (0 where j or k is i)."""
    directions = F.normalize(embedding[None, :, :] - embedding[:, None, :], p=2, dim=2)  # [i, j] = e_j - e_i
    return torch.bmm(directions, directions.transpose(1, 2))


def rkd_loss(student_embedding: Tensor, teacher_embedding: Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0, eps: float = 1e-12) -> Tensor:
    """RKD-D and RKD-A: Huber (smooth L1) losses between the students' and the teacher's pairwise distances
    (each divided by its mean over distinct pairs) and between their triplet angles. Embeddings (B, D).

    Raises:
        ConfigError: fewer than 2 samples (no pair to relate).
    """
    if len(student_embedding) < 2:
        raise ConfigError("RKD needs at least 2 samples per batch: it relates pairs and triplets of samples")
    student, teacher = student_embedding.float().flatten(1), teacher_embedding.float().flatten(1)
    with torch.no_grad():
        teacher_d = _distances(teacher, eps)
        teacher_d = teacher_d / teacher_d[teacher_d > 0].mean()
        teacher_a = _angles(teacher)
    student_d = _distances(student, eps)
    student_d = student_d / student_d[student_d > 0].mean()
    loss_d = F.smooth_l1_loss(student_d, teacher_d)
    loss_a = F.smooth_l1_loss(_angles(student), teacher_a)
    return distance_weight * loss_d + angle_weight * loss_a


def fitnet_loss(regressed: Tensor, teacher_map: Tensor) -> Tensor:
    """FitNet's hint loss: the mean squared error between the regressed student map and the teacher's."""
    return F.mse_loss(regressed.float(), teacher_map.float())


def ickd_loss(embedded: Tensor, teacher_gram: Tensor) -> Tensor:
    """ICKD: squared Frobenius distance of the row-normalised channel Grams, divided by C·B.
    embedded: the student's map after its 1x1 embedding, (B, C, H, W); teacher_gram: (B, C, C)."""
    batch, channels = embedded.shape[:2]
    return (gram(embedded.float()) - teacher_gram.float()).pow(2).sum() / (channels * batch)


def hcl_loss(student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
    """ReviewKD's hierarchical context loss: per level, the MSE of the maps plus the MSEs of their 4x4, 2x2
    and 1x1 average pools (those smaller than the map), weighted 1/2, 1/4, 1/8 and normalised; summed."""
    total = torch.zeros(())
    for student_map, teacher_map in zip(student_maps, teacher_maps):
        student_map, teacher_map = student_map.float(), teacher_map.float()
        level, weight, weights = F.mse_loss(student_map, teacher_map), 1.0, 1.0
        for side in (4, 2, 1):
            if side >= student_map.shape[2]:
                continue
            weight /= 2
            level = level + weight * F.mse_loss(F.adaptive_avg_pool2d(student_map, side),
                                                F.adaptive_avg_pool2d(teacher_map, side))
            weights += weight
        total = total + level / weights
    return total


@dataclass(frozen=True)
class Level:
    """One feature a loss learns from: its name, the student's per-sample shape, the teacher's cached reduce
    and per-sample shape."""

    name: str
    student_shape: tuple[int, ...]
    teacher_reduce: str
    teacher_shape: tuple[int, ...]

    def require_map(self, loss: str) -> None:
        if len(self.student_shape) != 3:
            raise ConfigError(f"--feature-loss {loss}: the student's feature {self.name!r} is {self.student_shape} "
                              "per sample; it needs a (channels, height, width) map: name a convolutional layer")


class AT(nn.Module):
    """Attention transfer on every level; a cached ``map`` gives its attention after pooling the larger of
    the two maps to the smaller one's size, as the reference code does."""

    def __init__(self, levels: list[Level], p: float = 2.0):
        super().__init__()
        self.levels, self.p = levels, p
        for level in levels:
            level.require_map("at")
            if level.teacher_reduce == "attention" and any(
                    s < t for s, t in zip(level.student_shape[1:], level.teacher_shape)):
                raise ConfigError(f"--feature-loss at: the student's {level.name!r} map is {level.student_shape[1:]} "
                                  f"but the teacher's cached attention is {level.teacher_shape}; a cached attention "
                                  "cannot be pooled: dump it as 'map', or pick a larger student layer")

    def forward(self, student: list[Tensor], teacher: list[Tensor], epoch: int = 1) -> Tensor:
        student_maps, attentions = [], []
        for level, student_map, cached in zip(self.levels, student, teacher):
            if level.teacher_reduce == "map":
                side = tuple(min(s, t) for s, t in zip(student_map.shape[-2:], cached.shape[-2:]))
                cached = attention(F.adaptive_avg_pool2d(cached.float(), side), self.p)
            student_maps.append(student_map)
            attentions.append(cached)
        return at_loss(student_maps, attentions, self.p)


class RKD(nn.Module):
    """Relational KD on pooled embeddings (a cached ``map`` or a student map is pooled first); levels add."""

    def __init__(self, levels: list[Level], distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def forward(self, student: list[Tensor], teacher: list[Tensor], epoch: int = 1) -> Tensor:
        return sum(rkd_loss(pool(s.float()), pool(t.float()), self.distance_weight, self.angle_weight)
                   for s, t in zip(student, teacher))


class FitNet(nn.Module):
    """FitNet hints: one learned regressor per level, student map -> teacher map, and their MSE; levels add."""

    def __init__(self, levels: list[Level]):
        super().__init__()
        for level in levels:
            level.require_map("fitnet")
        self.regressors = nn.ModuleList(HintRegressor(lv.student_shape, lv.teacher_shape) for lv in levels)

    def forward(self, student: list[Tensor], teacher: list[Tensor], epoch: int = 1) -> Tensor:
        return sum(fitnet_loss(regress(s.float()), t) for regress, s, t in zip(self.regressors, student, teacher))


class ICKD(nn.Module):
    """ICKD on every level: the student's map embedded to the teacher's channels, Grams compared (a cached
    ``map`` gives its Gram here, which is smaller to store than the Gram whenever C > H·W)."""

    def __init__(self, levels: list[Level]):
        super().__init__()
        for level in levels:
            level.require_map("ickd")
        self.reduces = [lv.teacher_reduce for lv in levels]
        self.embeds = nn.ModuleList(ChannelEmbed(lv.student_shape[0], lv.teacher_shape[0]) for lv in levels)

    def forward(self, student: list[Tensor], teacher: list[Tensor], epoch: int = 1) -> Tensor:
        return sum(ickd_loss(embed(s.float()), gram(t.float()) if how == "map" else t)
                   for embed, how, s, t in zip(self.embeds, self.reduces, student, teacher))


class ReviewKD(nn.Module):
    """ReviewKD over the levels in order, shallow to deep: ABF fuses each student level with the one below,
    HCL compares each fused map with the teacher's (a ``pool`` level is a 1x1 map, as the reference's last
    level is). Scaled by min(epoch / warmup, 1)."""

    def __init__(self, levels: list[Level], warmup: int = 20, max_mid_channels: int = 512):
        super().__init__()
        self.warmup = warmup
        self.sizes = [tuple(lv.teacher_shape[1:]) if len(lv.teacher_shape) == 3 else (1, 1) for lv in levels]
        mid = min(max_mid_channels, levels[-1].student_shape[0])
        self.fusions = nn.ModuleList(
            AttentionFusion(lv.student_shape[0], mid, lv.teacher_shape[0], fuse=i < len(levels) - 1)
            for i, lv in enumerate(levels))

    def forward(self, student: list[Tensor], teacher: list[Tensor], epoch: int = 1) -> Tensor:
        student = [s.float() if s.ndim == 4 else s.float()[:, :, None, None] for s in student]
        teacher = [t.float() if t.ndim == 4 else t.float()[:, :, None, None] for t in teacher]
        fused, below = [None] * len(student), None
        for i in reversed(range(len(student))):  # deepest first: each level fuses the one below it
            fused[i], below = self.fusions[i](student[i], below, self.sizes[i])
        ramp = min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        return ramp * hcl_loss(fused, teacher)


@dataclass(frozen=True)
class FeatureLoss:
    """A feature loss ``train --feature-loss`` takes, and what the trainer needs to know about it; it
    registers in the one loss registry (``losses/declarations.py``) under kind ``feature``."""

    name: str
    module: type[nn.Module]
    weight: float  # the paper's loss weight, used unless --feature-loss NAME=WEIGHT gives another
    accepts: tuple[str, ...]  # the cached reduces it learns from, preferred first
    min_batch: int = 2  # BatchNorm in the connectors and RKD's pairs need two samples
    kind = "feature"

    def build(self, levels: list[Level]) -> nn.Module:
        if not levels:
            raise ConfigError(f"--feature-loss {self.name} learns from {' or '.join(self.accepts)} features, but "
                              "--student-features names none of those")
        return self.module(levels)


for _loss in (
    FeatureLoss("at", AT, 1000.0, ("attention", "map")),
    FeatureLoss("rkd", RKD, 1.0, ("pool", "map")),
    FeatureLoss("fitnet", FitNet, 100.0, ("map",)),
    FeatureLoss("ickd", ICKD, 2.5, ("gram", "map")),
    FeatureLoss("reviewkd", ReviewKD, 5.0, ("map", "pool")),
):
    register_loss(_loss)


def feature_loss_spec(name: str) -> FeatureLoss:
    """The registered feature loss ``name`` (SpecError listing the known ones if there is none)."""
    return entry_of("feature", name, "feature loss")


def list_feature_losses(pattern: str = "*") -> list[str]:
    return names_of("feature", pattern)
