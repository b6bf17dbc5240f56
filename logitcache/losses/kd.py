"""Hinton KD, ``kl``: KL(teacher_T || student_T) * T² from dense logits, ``topk:K`` rows or ``sample:K``
draws, for images (B, C: one value, the batch mean) and token positions (..., V: one value each).

    >>> kd_loss(student_logits, teacher_logits, temperature=4.0)                      # images, dense
    >>> topk_kd_loss(student_logits, indices, logprobs, tail, 4.0)                     # images, topk:K
    >>> sampled_kd_loss(student_logits, indices, weights, logprobs, 2.0)              # images, sample:K
    >>> dense_token_kl(student_logits, teacher_logits, 1.0)                           # (P,) per position
    >>> token_kl(student_logits, {"indices": ..., "logprobs": ..., "tail": ...}, 1.0) # per position, any form

What each stored form serves (docs/FORMAT.md):

- dense logits: KL(p_T || q_T) at any temperature T, exactly;
- ``topk:K``: the KL between the distributions coarsened to K + 1 outcomes (the K kept classes and one
  bucket for the rest), exact at T = 1; at other T the kept classes are tempered exactly and the tail
  as if its mass were spread evenly over the others (``_tempered_topk``, one formula for both shapes);
- ``sample:K[:T]``: ``sum_k w_k (log p_k - log q_k)`` (``_sampled_sums``, one formula for both
  shapes), an unbiased estimate of KL(p_T || q_T) and its gradient at the T the classes were drawn at.

Two formulas stay written twice, because unifying them would change the bits of one path: the dense
KL (images: ``F.kl_div`` and a hand-written gradient, as the reference computes it; tokens: from
log-softmaxes) and the student's side of the top-k KL (images: the tail's mass summed exactly on
every row; tokens: ``1 - sum(top)``, summed exactly only below TINY_TAIL, and a teacher at T = 1 used
as stored). No function builds a dense teacher from sparse targets. All arithmetic is float32.
This module's top imports no torch (the CLI reads its declaration); the tensor code imports it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .declarations import Loss, register_loss

if TYPE_CHECKING:
    from torch import Tensor

TINY_TAIL = 1e-3  # below this student tail mass, 1 - sum(top) loses digits: the tail is summed exactly


# -- images: (B, C) logits, one value (the batch mean) ------------------------------------------------

def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2, batch mean.

    The value is computed exactly as the reference does (log_softmax, softmax, ``kl_div``), and its
    gradient in one pass, ``T * (q - p) / B`` (``_kd_gradient.KDivergence``), instead of autograd back
    through ``kl_div`` and ``log_softmax``: a third less time, the same value to the bit."""
    from ._kd_gradient import KDivergence, kd_value

    student, teacher = student_logits.float(), teacher_logits.float()
    if teacher.requires_grad:  # a teacher that learns too: let autograd give it its gradient
        return kd_value(student, teacher, temperature)
    return KDivergence.apply(student, teacher, temperature)


def topk_kd_loss(student_logits: Tensor, indices: Tensor, logprobs: Tensor, tail: Tensor,
                 temperature: float = 1.0) -> Tensor:
    """KD from a ``topk:K`` store without a dense teacher: KL(teacher || student) with both
    distributions coarsened to the teacher's K classes plus one tail bucket, times T^2.

    indices, logprobs: (B, K) the teacher's top classes and log-probabilities; tail: (B,) log of
    the remaining mass.
    """
    s = student_logits.float() / temperature
    norm_s = s.logsumexp(1)
    log_q_top = s.gather(1, indices) - norm_s[:, None]
    log_q_tail = s.scatter(1, indices, float("-inf")).logsumexp(1) - norm_s
    log_p_top, log_p_tail = _tempered_topk(logprobs, tail, student_logits.shape[1], temperature)
    kl = (log_p_top.exp() * (log_p_top - log_q_top)).sum(1) + log_p_tail.exp() * (log_p_tail - log_q_tail)
    return kl.mean() * temperature**2


def sampled_kd_loss(student_logits: Tensor, indices: Tensor, weights: Tensor, logprobs: Tensor,
                    temperature: float = 1.0) -> Tensor:
    """KD from a ``sample:K`` store: ``sum_k w_k (log p_k - log q_k)``, an unbiased estimate of
    KL(p_T || q_T) (and of its gradient), where the classes were drawn from p_T and w_k = count/K.

    indices, weights, logprobs: (B, K); padding entries have weight 0. ``temperature`` must be the
    one the samples were drawn at (train checks this at start-up).
    """
    log_q = _log_q(student_logits, temperature).gather(1, indices)
    return _sampled_sums(log_q, weights, logprobs).mean() * temperature**2


def kd_from_targets(student_logits: Tensor, targets, temperature: float) -> Tensor:
    """Hinton KD from dense teacher logits (a tensor, or ``DenseTargets``), or from a sparse codec's
    typed targets (``TopKTargets``, ``SampledTargets``), by their type."""
    from ..codecs import DenseTargets, SampledTargets, Targets, TopKTargets  # numpy: not at the CLI's import

    match targets:
        case TopKTargets():
            return topk_kd_loss(student_logits, targets.indices, targets.logprobs, targets.tail, temperature)
        case SampledTargets():
            return sampled_kd_loss(student_logits, targets.indices, targets.weights, targets.logprobs, temperature)
        case DenseTargets():
            return kd_loss(student_logits, targets.logits, temperature)
        case Targets():
            raise TypeError(f"KD has no form for {type(targets).__name__} targets")
    return kd_loss(student_logits, targets, temperature)


# -- tokens: (..., V) logits, one value per position --------------------------------------------------

def dense_token_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(p_T || q_T) * T² per position from dense teacher logits (or log-probabilities).

    student_logits, teacher_logits: (P, V). Returns (P,)."""
    return _dense_kl(_log_q(student_logits, temperature), teacher_logits, temperature)


def topk_token_kl(student_logits: Tensor, indices: Tensor, logprobs: Tensor, tail: Tensor,
                  temperature: float = 1.0) -> Tensor:
    """KL over the K + 1 outcomes a ``topk:K`` row keeps (its K tokens and the tail bucket) * T².

    student_logits: (P, V); indices, logprobs: (P, K) the teacher's top tokens and their
    log-probabilities at T = 1; tail: (P,) the log of the rest of its mass. Returns (P,).
    """
    return _topk_kl(_log_q(student_logits, temperature), indices, logprobs, tail, temperature)


def sampled_token_kl(student_logits: Tensor, indices: Tensor, weights: Tensor, logprobs: Tensor,
                     temperature: float = 1.0) -> Tensor:
    """``sum_k w_k (log p_k - log q_k)`` * T² per position: unbiased for KL(p_T || q_T) when the
    tokens were drawn from p_T (w_k = count / K, padding entries weigh 0).

    student_logits: (P, V); indices, weights, logprobs: (P, K). Returns (P,)."""
    return _sampled_kl(_log_q(student_logits, temperature), indices, weights, logprobs, temperature)


def token_kl(student_logits: Tensor, teacher, temperature: float = 1.0) -> Tensor:
    """The KL per position from whichever targets ``teacher`` is: ``DenseTargets``, ``TopKTargets`` or
    ``SampledTargets`` (with its ``temperature``), or their fields by name (a batch's columns,
    ``teacher_`` prefix removed: ``logits``; ``indices``, ``logprobs``, ``tail``; ``indices``,
    ``weights``, ``logprobs``, ``temperature``)."""
    from ..codecs import as_targets

    return _kl(_log_q(student_logits, temperature), as_targets(teacher), temperature)


def _log_q(student_logits: Tensor, temperature: float) -> Tensor:
    return (student_logits.float() / temperature).log_softmax(-1)


def _kl(log_q: Tensor, teacher, temperature: float, picked: Tensor | None = None) -> Tensor:
    """``token_kl`` from the student's log-probabilities at T, (..., V), by the targets' type;
    ``picked``: those at the teacher's indices, if gathered already."""
    import torch

    from ..codecs import DenseTargets, SampledTargets, TopKTargets

    match teacher:
        case DenseTargets():
            return _dense_kl(log_q, teacher.logits, temperature)
        case TopKTargets():
            return _topk_kl(log_q, teacher.indices, teacher.logprobs, teacher.tail, temperature, picked)
        case SampledTargets():
            drawn_at = teacher.temperature
            if drawn_at is not None and not torch.all(drawn_at == temperature):
                raise ConfigError(f"temperature {temperature:g} differs from the temperature "
                                  f"{float(drawn_at.flatten()[0]):g} the teacher's tokens were sampled at; sampled "
                                  "targets estimate the KL at that temperature only")
            return _sampled_kl(log_q, teacher.indices, teacher.weights, teacher.logprobs, temperature, picked)
    raise TypeError(f"the token KL has no form for {type(teacher).__name__} targets")


def _dense_kl(log_q: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    log_p = (teacher_logits.float() / temperature).log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2


def _topk_kl(log_q: Tensor, indices: Tensor, logprobs: Tensor, tail: Tensor, temperature: float,
             log_q_top: Tensor | None = None) -> Tensor:
    import torch

    log_q_top = log_q.gather(-1, indices) if log_q_top is None else log_q_top
    log_q_tail = _log_tail(log_q, log_q_top, indices)
    t_top, t_tail = logprobs.float(), tail.float()
    if temperature != 1.0:
        t_top, t_tail = _tempered_topk(logprobs, tail, log_q.shape[-1], temperature)
    top = (t_top.exp() * (t_top - log_q_top)).sum(-1)
    rest = torch.where(t_tail > float("-inf"), t_tail.exp() * (t_tail - log_q_tail), 0.0)  # 0 log 0 = 0
    return (top + rest) * temperature**2


def _log_tail(log_q: Tensor, log_q_top: Tensor, indices: Tensor) -> Tensor:
    """log of the student's mass outside ``indices``: log(1 - sum of the top), a K-wide sum, except
    where that mass is under TINY_TAIL; those rows sum their V - K other tokens exactly."""
    import torch

    top_mass = log_q_top.exp().sum(-1)
    log_tail = torch.log1p(-top_mass.clamp(max=1 - TINY_TAIL))
    tiny = top_mass > 1 - TINY_TAIL
    if tiny.any():
        log_tail = log_tail.index_put((tiny,), log_q[tiny].scatter(-1, indices[tiny], float("-inf")).logsumexp(-1))
    return log_tail


def _sampled_kl(log_q: Tensor, indices: Tensor, weights: Tensor, logprobs: Tensor, temperature: float,
                log_q_drawn: Tensor | None = None) -> Tensor:
    log_q_drawn = log_q.gather(-1, indices) if log_q_drawn is None else log_q_drawn
    return _sampled_sums(log_q_drawn, weights, logprobs) * temperature**2


# -- both shapes --------------------------------------------------------------------------------------

def _tempered_topk(logprobs: Tensor, tail: Tensor, vocab: int, temperature: float) -> tuple[Tensor, Tensor]:
    """A ``topk:K`` teacher at T, renormalised over its K kept classes and its tail bucket: the kept
    classes tempered exactly, the tail as if its mass were spread evenly over the other V - K."""
    import torch

    spread = math.log(vocab - logprobs.shape[-1])
    t_top = logprobs.float() / temperature
    t_tail = (tail.float() - spread) / temperature + spread
    norm = torch.cat([t_top, t_tail[..., None]], -1).logsumexp(-1)
    return t_top - norm[..., None], t_tail - norm


def _sampled_sums(log_q_drawn: Tensor, weights: Tensor, logprobs: Tensor) -> Tensor:
    """``sum_k w_k (log p_k - log q_k)`` over the last axis: the sampled KL before T²."""
    return (weights.float() * (logprobs.float() - log_q_drawn)).sum(-1)


class KLDiv:
    """Hinton KD, as ``train`` calls it: holds the temperature; dense or sparse targets."""

    def __init__(self, temperature: float = 4.0):
        self.temperature = temperature

    def __call__(self, student_logits, teacher_logits, labels=None, epoch: int = 1):
        return kd_from_targets(student_logits, teacher_logits, self.temperature)


register_loss(Loss("kl", KLDiv, "Hinton KD, KL(teacher || student) at --temperature", temperature=4.0,
                   reads_sparse=True, tokens=True))
