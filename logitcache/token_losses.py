"""Token-level distillation losses: a causal LM student against a token store's teacher targets.

    >>> kl = topk_token_kl(student_logits, indices, logprobs, tail, temperature=1.0)   # (P,) per target token
    >>> sums = token_loss_sums(student_logits, labels, teacher, temperature=1.0)        # over a batch's targets
    >>> loss = sums.mean(ce_weight=1.0, kd_weight=1.0)                                  # per target token

Every function here takes the student's logits at some positions, ``(..., V)``, and the teacher's
targets for the same positions, and returns one value per position; ``token_loss_sums`` sums them
over the target positions of a batch, which its Hugging Face ``labels`` name. The training
loss is ``ce_weight * CE + kd_weight * KL``, each averaged over target tokens (not sequences).

What each stored form serves (docs/FORMAT.md, "Token stores"):

- dense logits (fp32/fp16/bf16/u8): forward KL(p_T || q_T) at any temperature T, exactly;
- ``topk:K``: the KL between the teacher's and the student's distributions coarsened to K + 1
  outcomes (the K kept tokens and one bucket for all others), exact at T = 1; at other T the kept
  tokens are tempered exactly and the tail as if its mass were spread evenly over the V - K others;
- ``sample:K[:T]``: ``sum_k w_k (log p_k - log q_k)``, an unbiased estimate of KL(p_T || q_T) and
  of its gradient, at the temperature T the tokens were drawn at, and no other.

No function builds a (positions x vocabulary) teacher tensor from sparse targets; the student's
own (P, V) logits are the only dense tensor. All arithmetic is float32; KL terms are scaled by T².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .codecs import DenseTargets, SampledTargets, Targets, TopKTargets, as_targets
from .errors import ConfigError
from .registry import Registry

IGNORE_INDEX = -100  # Hugging Face's "not a target" label


TINY_TAIL = 1e-3  # below this student tail mass, 1 - sum(top) loses digits: the tail is summed exactly


def dense_token_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(p_T || q_T) * T² per position from dense teacher logits (or log-probabilities).

    student_logits, teacher_logits: (P, V). Returns (P,)."""
    return _dense_kl(_log_q(student_logits, temperature), teacher_logits, temperature)


def topk_token_kl(student_logits: Tensor, indices: Tensor, logprobs: Tensor, tail: Tensor,
                  temperature: float = 1.0) -> Tensor:
    """KL over the K + 1 outcomes a ``topk:K`` row keeps (its K tokens and the tail bucket) * T².

    student_logits: (P, V); indices, logprobs: (P, K) the teacher's top tokens and their
    log-probabilities at T = 1; tail: (P,) the log of the rest of its mass. Returns (P,).
    Exact over what is stored at T = 1; at another T the tail is tempered as if spread evenly.
    """
    return _topk_kl(_log_q(student_logits, temperature), indices, logprobs, tail, temperature)


def sampled_token_kl(student_logits: Tensor, indices: Tensor, weights: Tensor, logprobs: Tensor,
                     temperature: float = 1.0) -> Tensor:
    """``sum_k w_k (log p_k - log q_k)`` * T² per position: unbiased for KL(p_T || q_T) when the
    tokens were drawn from p_T (w_k = count / K, padding entries weigh 0).

    student_logits: (P, V); indices, weights, logprobs: (P, K). Returns (P,)."""
    return _sampled_kl(_log_q(student_logits, temperature), indices, weights, logprobs, temperature)


def token_kl(student_logits: Tensor, teacher: Targets | dict, temperature: float = 1.0) -> Tensor:
    """The KL per position from whichever targets ``teacher`` is: ``DenseTargets``, ``TopKTargets`` or
    ``SampledTargets`` (with its ``temperature``), or their fields by name (a batch's columns,
    ``teacher_`` prefix removed: ``logits``; ``indices``, ``logprobs``, ``tail``; ``indices``,
    ``weights``, ``logprobs``, ``temperature``)."""
    return _kl(_log_q(student_logits, temperature), as_targets(teacher), temperature)


def _log_q(student_logits: Tensor, temperature: float) -> Tensor:
    return (student_logits.float() / temperature).log_softmax(-1)


def _kl(log_q: Tensor, teacher: Targets, temperature: float, picked: Tensor | None = None) -> Tensor:
    """``token_kl`` from the student's log-probabilities at T, (..., V), by the targets' type;
    ``picked``: those at the teacher's indices, if gathered already."""
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
    vocab, k = log_q.shape[-1], indices.shape[-1]
    log_q_top = log_q.gather(-1, indices) if log_q_top is None else log_q_top
    log_q_tail = _log_tail(log_q, log_q_top, indices)
    t_top, t_tail = logprobs.float(), tail.float()
    if temperature != 1.0:
        spread = math.log(vocab - k)
        t_top, t_tail = t_top / temperature, (t_tail - spread) / temperature + spread
        norm = torch.cat([t_top, t_tail[..., None]], -1).logsumexp(-1)
        t_top, t_tail = t_top - norm[..., None], t_tail - norm
    top = (t_top.exp() * (t_top - log_q_top)).sum(-1)
    rest = torch.where(t_tail > float("-inf"), t_tail.exp() * (t_tail - log_q_tail), 0.0)  # 0 log 0 = 0
    return (top + rest) * temperature**2


def _log_tail(log_q: Tensor, log_q_top: Tensor, indices: Tensor) -> Tensor:
    """log of the student's mass outside ``indices``: log(1 - sum of the top), a K-wide sum, except
    where that mass is under TINY_TAIL; those rows sum their V - K other tokens exactly."""
    top_mass = log_q_top.exp().sum(-1)
    log_tail = torch.log1p(-top_mass.clamp(max=1 - TINY_TAIL))
    tiny = top_mass > 1 - TINY_TAIL
    if tiny.any():
        log_tail = log_tail.index_put((tiny,), log_q[tiny].scatter(-1, indices[tiny], float("-inf")).logsumexp(-1))
    return log_tail


def _sampled_kl(log_q: Tensor, indices: Tensor, weights: Tensor, logprobs: Tensor, temperature: float,
                log_q_drawn: Tensor | None = None) -> Tensor:
    log_q_drawn = log_q.gather(-1, indices) if log_q_drawn is None else log_q_drawn
    return (weights.float() * (logprobs.float() - log_q_drawn)).sum(-1) * temperature**2


@dataclass
class TokenLossSums:
    """Sums over a batch's target tokens; ``mean`` divides by their count (or a global one)."""

    ce: Tensor
    kd: Tensor
    count: int

    def total(self, ce_weight: float, kd_weight: float) -> Tensor:
        return ce_weight * self.ce + kd_weight * self.kd

    def mean(self, ce_weight: float = 1.0, kd_weight: float = 1.0, count: float | None = None) -> Tensor:
        """The loss per target token; ``count``: the targets of the whole step (every rank's batch,
        every accumulated micro-batch), so a split batch averages as the whole one does."""
        return self.total(ce_weight, kd_weight) / max(self.count if count is None else count, 1)


def target_positions(labels: Tensor) -> Tensor:
    """(B, L) bool: position t is a target when ``labels[:, t + 1]`` is not -100 (Hugging Face
    labels are the tokens themselves; the model's logits at t predict label t + 1)."""
    targets = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    targets[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return targets


def token_loss_sums(student_logits: Tensor, labels: Tensor, teacher: Targets | dict | None,
                    temperature: float = 1.0) -> TokenLossSums:
    """Next-token cross-entropy and (with ``teacher``) the KL, summed over the target tokens.

    Args:
        student_logits: (B, L, V), position t predicting token t + 1.
        labels: (B, L) Hugging Face labels (-100 where the next token is not a target).
        teacher: None, or the teacher's targets for all B x L positions, typed or by field name as
            ``token_kl`` takes them (a sample store's ``temperature``: (B,)).
        temperature: the KL's temperature (the cross-entropy is at 1).
    """
    targets = target_positions(labels)  # (B, L)
    # Every position is computed and the non-targets masked, as Hugging Face's own loss does: no
    # (targets x V) copy of the logits, and packed text has almost only targets anyway.
    log_q = student_logits.float().log_softmax(-1)  # (B, L, V), shared by CE and, at T = 1, the KL
    next_tokens = torch.zeros_like(labels)
    next_tokens[:, :-1] = labels[:, 1:].clamp_min(0)
    teacher = None if teacher is None else as_targets(teacher)
    shared = temperature == 1.0 and isinstance(teacher, (TopKTargets, SampledTargets))
    # One gather for the next token and a sparse teacher's K tokens: its backward fills one (B, L, V) buffer.
    wanted = torch.cat([next_tokens[..., None], teacher.indices], -1) if shared else next_tokens[..., None]
    picked = log_q.gather(-1, wanted)
    ce = torch.where(targets, -picked[..., 0], 0.0).sum()
    kd = log_q.new_zeros(())
    if teacher is not None:
        log_q_t = log_q if temperature == 1.0 else _log_q(student_logits, temperature)
        kd_per_position = _kl(log_q_t, teacher, temperature, picked[..., 1:] if shared else None)
        kd = torch.where(targets, kd_per_position, 0.0).sum()
    return TokenLossSums(ce, kd, int(targets.sum()))


@dataclass(frozen=True)
class TokenLoss:
    """A loss ``train`` takes on token data, and what the trainer needs to know about it."""

    name: str
    needs_teacher: bool
    description: str


TOKEN_LOSSES = Registry("token loss")
for _loss in (TokenLoss("ce", False, "next-token cross-entropy alone (label-only)"),
              TokenLoss("kl", True, "forward KL to the teacher's next-token distribution, plus ce_weight * CE")):
    TOKEN_LOSSES.register(_loss.name)(_loss)


def token_loss(name: str) -> TokenLoss:
    """The token loss ``name``.

    Raises:
        ConfigError: it is not defined on token positions; the message lists the ones that are.
    """
    if name not in TOKEN_LOSSES:
        raise ConfigError(f"--loss {name} is not defined on token positions; token data trains with "
                          f"--loss {' or '.join(TOKEN_LOSSES.names())}")
    return TOKEN_LOSSES.get(name)
