"""Mixup and CutMix with cached teachers: the student's inputs and labels are mixed as usual, and
the teacher's target is the same mix of its two stored distributions.

    >>> mixer = Mixer(mixup=0.2, cutmix=1.0, temperature=4.0)
    >>> batch = mixer(inputs, labels, teacher_logits, rng)   # rng: numpy Generator of (seed, epoch)
    >>> ce = batch.cross_entropy(student_logits)            # lam * CE(y_a) + (1 - lam) * CE(y_b)
    >>> kd = loss(student_logits, batch.teacher, labels)

The stored logits are the teacher's outputs on the two unmixed images, so the mixed target
``lam * p_a + (1 - lam) * p_b`` only approximates what the teacher would say about the mixed image
(it is exactly the mixed labels' convention, applied to soft labels). Training with an online
teacher instead runs the teacher on the mixed image itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class MixedBatch:
    inputs: torch.Tensor
    labels: torch.Tensor  # y_a: the batch's own labels
    labels_b: torch.Tensor  # y_b: the labels of the samples mixed in
    lam: float  # weight of y_a (for CutMix: the share of pixels that stayed)
    teacher: torch.Tensor | None  # logits whose softmax at T is the mixed distribution

    def cross_entropy(self, student_logits: torch.Tensor) -> torch.Tensor:
        logits = student_logits.float()
        return self.lam * F.cross_entropy(logits, self.labels) + (1 - self.lam) * F.cross_entropy(logits, self.labels_b)


@dataclass
class Mixer:
    """Beta(alpha, alpha) Mixup and/or CutMix; with both, each batch uses one of them at random."""

    mixup: float = 0.0  # alpha; 0 = off
    cutmix: float = 0.0  # alpha; 0 = off
    temperature: float = 1.0  # the loss's temperature: teacher distributions are mixed at it

    @property
    def enabled(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, inputs, labels, teacher, rng: np.random.Generator) -> MixedBatch:
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or rng.random() < 0.5)
        lam = float(rng.beta(*(2 * [self.cutmix if use_cutmix else self.mixup])))
        perm = torch.from_numpy(rng.permutation(len(labels))).to(inputs.device)
        if use_cutmix:
            inputs, lam = cutmix_inputs(inputs, perm, lam, rng)
        else:
            inputs = lam * inputs + (1 - lam) * inputs[perm]
        if teacher is not None:
            teacher = mix_logits(teacher, teacher[perm], lam, self.temperature)
        return MixedBatch(inputs, labels, labels[perm], lam, teacher)


def mix_logits(a: torch.Tensor, b: torch.Tensor, lam: float, temperature: float) -> torch.Tensor:
    """Logits whose softmax at ``temperature`` is ``lam * softmax(a/T) + (1 - lam) * softmax(b/T)``."""
    probs = lam * torch.softmax(a.float() / temperature, dim=-1) + (1 - lam) * torch.softmax(b.float() / temperature, dim=-1)
    return temperature * torch.log(probs.clamp_min(torch.finfo(torch.float32).tiny))


def cutmix_inputs(inputs: torch.Tensor, perm: torch.Tensor, lam: float, rng) -> tuple[torch.Tensor, float]:
    """Paste a box of the permuted batch into (B, C, H, W) inputs; the box covers about 1 - lam
    of the image. Returns the inputs and lam corrected to the box actually pasted (after clipping)."""
    height, width = inputs.shape[2:]
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = inputs.clone()
    mixed[:, :, top:bottom, left:right] = inputs[perm, :, top:bottom, left:right]
    return mixed, 1 - (bottom - top) * (right - left) / (height * width)
