"""Decoupled KD (Zhao et al., CVPR 2022): the target class's KL and the other classes' KL, weighed apart.

    >>> dkd_loss(student_logits, teacher_logits, labels, alpha=1.0, beta=8.0, temperature=4.0)
    >>> DKD(warmup=20)(student_logits, teacher_logits, labels, epoch=5)    # a quarter of it, warming up

Its options: ``--dkd-alpha`` (TCKD), ``--dkd-beta`` (NCKD), ``--dkd-warmup`` (epochs of the paper's
linear ramp). It splits the target class from the rest, so it takes one class per sample: no
Mixup/CutMix. All arithmetic is float32. This module's top imports no torch; the tensor code does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .declarations import Loss, Option, register_loss

if TYPE_CHECKING:
    from torch import Tensor

OPTIONS = (
    Option("alpha", float, 1.0, "DKD target-class (TCKD) weight."),
    Option("beta", float, 8.0, "DKD non-target-class (NCKD) weight."),
    Option("warmup", int, 20, "Epochs of DKD warm-up."),
)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD: alpha * TCKD + beta * NCKD, times T^2, batch mean.

    TCKD is the KL between binary (target, all others) probabilities; NCKD the KL between the
    distributions over the non-target classes alone. Non-target classes are masked out with -inf
    rather than a large constant, and their 0 * log 0 terms are zeroed explicitly.
    """
    import torch
    import torch.nn.functional as F

    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    target = F.one_hot(labels, s.shape[1]).bool()
    p_s, p_t = s.softmax(1), t.softmax(1)
    b_s = torch.stack([p_s[target], (p_s * ~target).sum(1)], dim=1)  # (B, 2)
    b_t = torch.stack([p_t[target], (p_t * ~target).sum(1)], dim=1)
    tckd = (b_t * (b_t.clamp_min(1e-30).log() - b_s.clamp_min(1e-30).log())).sum(1)
    log_q_s = s.masked_fill(target, float("-inf")).log_softmax(1)
    log_q_t = t.masked_fill(target, float("-inf")).log_softmax(1)
    nckd = torch.where(target, 0.0, log_q_t.exp() * (log_q_t - log_q_s)).sum(1)
    return (alpha * tckd + beta * nckd).mean() * temperature**2


class DKD:
    """DKD with the paper's linear warm-up: the loss is scaled by min(epoch / warmup, 1)."""

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0, warmup: int = 20):
        self.temperature, self.alpha, self.beta, self.warmup = temperature, alpha, beta, warmup

    def __call__(self, student_logits, teacher_logits, labels, epoch: int = 1):
        ramp = min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        return ramp * dkd_loss(student_logits, teacher_logits, labels, self.alpha, self.beta, self.temperature)


register_loss(Loss("dkd", DKD, "decoupled KD: target-class and non-target-class KL, weighed apart", OPTIONS,
                   temperature=4.0, mixes=False,  # splits the target class from the rest: one per sample
                   warmup="warmup"))
