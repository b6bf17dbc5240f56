"""DIST (Huang et al., NeurIPS 2022): Pearson distances between softened predictions, across classes
and across the batch.

    >>> dist_loss(student_logits, teacher_logits, temperature=1.0, beta=1.0, gamma=1.0)
    >>> DIST(temperature=1.0, beta=2.0)(student_logits, teacher_logits)     # what train builds

Its options: ``--dist-beta`` (inter-class weight) and ``--dist-gamma`` (intra-class weight). All
arithmetic is float32 whatever the inputs' dtype (the 1e-8 epsilon vanishes in half precision).
This module's top imports no torch (the CLI reads its declaration); the tensor code needs none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .declarations import Loss, Option, register_loss

if TYPE_CHECKING:
    from torch import Tensor

OPTIONS = (
    Option("beta", float, 1.0, "DIST inter-class weight."),
    Option("gamma", float, 1.0, "DIST intra-class weight."),
)


def _pearson_distance(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """1 - mean over rows of the Pearson correlation between rows of a and b."""
    a = a - a.mean(1).unsqueeze(1)
    b = b - b.mean(1).unsqueeze(1)
    correlation = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1 - correlation.mean()


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """DIST: beta * inter-class + gamma * intra-class Pearson distance of softened predictions.

    The intra-class term correlates each class's column across the batch, so it depends on the
    batch a process sees (under DDP: the per-process batch) and needs at least 2 samples.
    """
    if student_logits.shape[0] < 2:
        raise ConfigError(
            "DIST needs at least 2 samples per batch: its intra-class term correlates over the batch"
        )
    p_student = (student_logits.float() / temperature).softmax(dim=1)
    p_teacher = (teacher_logits.float() / temperature).softmax(dim=1)
    inter = temperature**2 * _pearson_distance(p_student, p_teacher, eps)
    intra = temperature**2 * _pearson_distance(p_student.transpose(0, 1), p_teacher.transpose(0, 1), eps)
    return beta * inter + gamma * intra


class DIST:
    """DIST, as ``train`` calls it. Holds temperature, beta (inter-class) and gamma (intra-class)."""

    def __init__(self, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0):
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    def __call__(self, student_logits, teacher_logits, labels=None, epoch: int = 1):
        return dist_loss(student_logits, teacher_logits, self.temperature, self.beta, self.gamma)


register_loss(Loss("dist", DIST, "DIST, Pearson correlation of the predictions across classes and the batch",
                   OPTIONS, temperature=1.0, min_batch=2))  # the intra-class term correlates over the batch
