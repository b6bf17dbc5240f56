"""Token losses over a batch: the next-token cross-entropy and the KL, summed over the target tokens.

    >>> sums = token_loss_sums(student_logits, labels, teacher, temperature=1.0)   # (B, L, V), (B, L), targets
    >>> loss = sums.mean(ce_weight=1.0, kd_weight=1.0)                             # per target token

``labels`` are Hugging Face's (-100 where the next token is not a target); the per-position KL is
``kd.py``'s, whichever form the teacher's targets take. The training loss is
``ce_weight * CE + kd_weight * KL``, each averaged over target tokens (not sequences). No function
builds a (positions x vocabulary) teacher tensor from sparse targets; the student's own (B, L, V)
logits are the only dense tensor. This module's top imports no torch; the tensor code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ModelError
from .kd import _kl, _log_q

if TYPE_CHECKING:
    from torch import Tensor

IGNORE_INDEX = -100  # Hugging Face's "not a target" label


@dataclass
class TokenLossSums:
    """Sums over a batch's target tokens; ``mean`` divides by their count (or a global one)."""

    ce: Tensor
    kd: Tensor
    count: int
    # ((ce_weight, kd_weight), their weighted sum): a chunked loss (chunked.py) carries the gradient
    # in that sum alone, having computed it in its forward for those weights; ce and kd are values
    weighted: tuple[tuple[float, float], Tensor] | None = None

    def total(self, ce_weight: float, kd_weight: float) -> Tensor:
        if self.weighted is None:
            return ce_weight * self.ce + kd_weight * self.kd
        weights, total = self.weighted
        if weights != (ce_weight, kd_weight):
            raise ValueError(f"these sums were weighted (ce, kd) = {weights} when they were computed, not "
                             f"{(ce_weight, kd_weight)}")
        return total

    def mean(self, ce_weight: float = 1.0, kd_weight: float = 1.0, count: float | None = None) -> Tensor:
        """The loss per target token; ``count``: the targets of the whole step (every rank's batch,
        every accumulated micro-batch), so a split batch averages as the whole one does."""
        return self.total(ce_weight, kd_weight) / max(self.count if count is None else count, 1)


def target_positions(labels: Tensor) -> Tensor:
    """(B, L) bool: position t is a target when ``labels[:, t + 1]`` is not -100 (Hugging Face
    labels are the tokens themselves; the model's logits at t predict label t + 1)."""
    import torch

    targets = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    targets[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return targets


def next_token_targets(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L) the token each position predicts (0 where none) and (B, L) whether it is a target."""
    import torch

    next_tokens = torch.zeros_like(labels)
    next_tokens[:, :-1] = labels[:, 1:].clamp_min(0)
    return next_tokens, target_positions(labels)


def token_loss_sums(student_logits: Tensor, labels: Tensor, teacher,
                    temperature: float = 1.0) -> TokenLossSums:
    """Next-token cross-entropy and (with ``teacher``) the KL, summed over the target tokens.

    Args:
        student_logits: (B, L, V), position t predicting token t + 1.
        labels: (B, L) Hugging Face labels (-100 where the next token is not a target).
        teacher: None, or the teacher's targets for all B x L positions, typed or by field name as
            ``token_kl`` takes them (a sample store's ``temperature``: (B,)).
        temperature: the KL's temperature (the cross-entropy is at 1).
    """
    from ..codecs import as_targets

    next_tokens, targets = next_token_targets(labels)  # (B, L) each
    teacher = None if teacher is None else as_targets(teacher)
    check_student_vocabulary(teacher, student_logits.shape[-1])
    ce, kd = position_loss_sums(student_logits, next_tokens, targets, teacher, temperature)
    return TokenLossSums(ce, kd, int(targets.sum()))


def check_student_vocabulary(teacher, student_vocab: int) -> None:
    """The student's head predicts the teacher's vocabulary: a dense teacher's width, or the
    ``vocab_size`` a token store's sparse targets carry (without it a wider head would train).

    Raises:
        ModelError: they differ (``vocabulary_mismatch``'s line, as ``train`` says it before step 0)."""
    from ..codecs import DenseTargets

    vocab = teacher.logits.shape[-1] if isinstance(teacher, DenseTargets) else getattr(teacher, "vocab_size", None)
    if vocab is not None and not isinstance(vocab, int):
        vocab = int(vocab.flatten()[0])
    if vocab is not None and vocab != student_vocab:
        raise ModelError(vocabulary_mismatch(student_vocab, vocab))


def vocabulary_mismatch(student_vocab: int, vocab: int) -> str:
    return (f"the student predicts {student_vocab} tokens per position, but the training data's vocabulary is "
            f"{vocab} (the teacher head's width): build the student with that vocabulary")


def position_loss_sums(student_logits: Tensor, next_tokens: Tensor, targets: Tensor, teacher,
                       temperature: float) -> tuple[Tensor, Tensor]:
    """(CE, KL) summed over the target positions of any block of positions: a whole batch's, or one
    chunk's (``chunked.py``). student_logits: (..., V); next_tokens, targets: (...); teacher: typed
    targets for the same positions, or None (then the KL is 0)."""
    import torch

    from ..codecs import SampledTargets, TopKTargets

    # Every position is computed and the non-targets masked, as Hugging Face's own loss does: no
    # (targets x V) copy of the logits, and packed text has almost only targets anyway.
    log_q = student_logits.float().log_softmax(-1)  # (..., V), shared by CE and, at T = 1, the KL
    shared = temperature == 1.0 and isinstance(teacher, (TopKTargets, SampledTargets))
    # One gather for the next token and a sparse teacher's K tokens: its backward fills one (..., V) buffer.
    wanted = torch.cat([next_tokens[..., None], teacher.indices], -1) if shared else next_tokens[..., None]
    picked = log_q.gather(-1, wanted)
    ce = torch.where(targets, -picked[..., 0], 0.0).sum()
    kd = log_q.new_zeros(())
    if teacher is not None:
        log_q_t = log_q if temperature == 1.0 else _log_q(student_logits, temperature)
        kd_per_position = _kl(log_q_t, teacher, temperature, picked[..., 1:] if shared else None)
        kd = torch.where(targets, kd_per_position, 0.0).sum()
    return ce, kd
