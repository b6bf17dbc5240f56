"""The token losses with their gradient w.r.t. the logits written out: the chunked loss's fast path
(``chunked.py``), which then needs only the head's own backward.

    >>> ce, kd, grad = written_gradient(logits, next_tokens, targets, teacher, ce_weight=1.0, kd_weight=1.0)
    >>> torch.autograd.grad(logits, [hidden, *head.parameters], grad)   # what autograd would have given

With q = softmax(z) over a row of logits z, the gradient of each summand is q times a number per
row, less a few entries: ``-log q_y`` gives q - e_y; a sampled row ``sum_k w_k (log p_k - log q_k)``
gives (sum_k w_k) q - sum_k w_k e_k; a dense teacher (sum p) q - p; a ``topk:K`` row, whose tail
term reads the student's tail mass Q = 1 - sum_k q_k, gives (sum_k p_k + p_tail - p_tail / Q) q
plus (p_tail q_k / Q - p_k) at each kept class k (an entry for each slot, so a class named twice
is counted twice, as the formula counts it). At a temperature T the KL's terms read
q_T = softmax(z / T) and their gradient w.r.t. z is T times the same expressions (of T² KL(p_T || q_T)), the teacher's
side tempered as ``kd.py`` tempers it. So one (positions, V) buffer is exponentiated in place
(two at T != 1: q and q_T), scaled per row and corrected by a scatter, where autograd's
log-softmax, gather and their backward passes write several such tensors (benchmarks/RESULTS.md,
"written gradients").

The values are ``token_sums.position_loss_sums``'s formulas on the same log q, so the two agree to
float32 rounding. Not written out (``None``: the caller differentiates the formulas): a sample
store drawn at another temperature than the loss's (the formulas refuse it), and a ``topk`` chunk
with a row whose student tail is under ``kd.TINY_TAIL`` (summed exactly there, where
``1 - sum_k q_k`` would lose its digits).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..codecs import DenseTargets, SampledTargets, TopKTargets
from .kd import TINY_TAIL, _tempered_topk


def written_gradient(logits: Tensor, next_tokens: Tensor, targets: Tensor, teacher, ce_weight: float,
                     kd_weight: float, temperature: float = 1.0,
                     buffer: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
    """(CE sum, KL sum, gradient of ``ce_weight * CE + kd_weight * KL`` w.r.t. ``logits``) over the
    target positions, the KL at ``temperature`` (times T², as ``position_loss_sums``), or None
    where the gradient is not written out (module doc).

    Args:
        logits: (..., V) the student's, any float dtype (the gradient comes back in it).
        next_tokens, targets: (...) the token each position predicts and whether it is a target.
        teacher: typed targets for the same positions, or None.
        buffer: float32 storage of at least ``buffer_size(logits, temperature)`` elements on their
            device, reused (a fresh (P, V) tensor each chunk costs its pages being mapped anew).
    """
    if not _written_out(teacher, temperature):
        return None
    with torch.autocast(logits.device.type, enabled=False):  # float32 throughout, as the formulas' path
        return _written(logits, next_tokens, targets, teacher, ce_weight, kd_weight, temperature, buffer)


def _written(logits: Tensor, next_tokens: Tensor, targets: Tensor, teacher, ce_weight: float, kd_weight: float,
             temperature: float, buffer: Tensor | None) -> tuple[Tensor, Tensor, Tensor] | None:
    """``written_gradient``'s work, autocast off (it would run ``vecdot`` in bfloat16)."""
    vocab = logits.shape[-1]
    z = logits.detach().float().reshape(-1, vocab)  # never written to: the head's backward may hold it
    target, next_tokens = targets.reshape(-1), next_tokens.reshape(-1, 1)
    spaces = iter(_views(buffer, z.shape, 2))
    grad, sums, log_norm = _scaled_softmax(z, 1.0, next(spaces))  # grad: q times the row's sum, for now
    kept = teacher.indices.reshape(-1, teacher.indices.shape[-1]) if _is_sparse(teacher) else None  # (P, K)
    picked = z.gather(-1, next_tokens if kept is None else torch.cat([next_tokens, kept], -1))
    ce = torch.where(target, log_norm[:, 0] - picked[:, 0], 0.0).sum()
    entries, amounts = [next_tokens], [torch.where(target, -ce_weight, 0.0)[:, None]]
    scale = torch.where(target, ce_weight, 0.0)  # of q, per row
    kd, addends = z.new_zeros(()), []  # (P, V) terms beside q's: q_T's at T != 1, a dense teacher's -p_T
    if teacher is not None:
        at_t = (grad, sums, log_norm) if temperature == 1.0 else _scaled_softmax(z, temperature, next(spaces))
        terms = _kd_terms(teacher, z, picked[:, 1:] / temperature - at_t[2], at_t[2], target, temperature)
        if terms is None:
            return None
        kd, kd_scale, kd_extra = terms
        kd, factor = kd * temperature**2, kd_weight * temperature  # d/dz of T² KL(q_T) is T d/d(z/T)
        if temperature == 1.0:
            scale = scale + factor * kd_scale
        else:
            addends.append(at_t[0].mul_((factor * kd_scale)[:, None] / at_t[1]))
        if isinstance(teacher, DenseTargets):
            addends.append(kd_extra.mul_(factor))
        else:
            entries.append(kept)
            amounts.append(factor * kd_extra)
    grad.mul_(scale[:, None] / sums)
    for addend in addends:
        grad.add_(addend)
    grad.scatter_add_(-1, torch.cat(entries, -1), torch.cat(amounts, -1))
    return ce, kd, grad.reshape(logits.shape).to(logits.dtype)


def buffer_size(logits: Tensor, temperature: float) -> int:
    """The float32 elements ``written_gradient``'s ``buffer`` needs for these logits."""
    return logits.numel() * (1 if temperature == 1.0 else 2)


def _written_out(teacher, temperature: float) -> bool:
    if not (teacher is None or isinstance(teacher, (DenseTargets, SampledTargets, TopKTargets))):
        return False
    drawn_at = teacher.temperature if isinstance(teacher, SampledTargets) else None
    return drawn_at is None or not bool((drawn_at != temperature).any())  # else the formulas refuse it


def _views(buffer: Tensor | None, shape: torch.Size, count: int) -> list[Tensor | None]:
    """``count`` (P, V) float32 views of consecutive parts of ``buffer`` (as far as it reaches; None
    where it does not: a fresh tensor)."""
    size = shape[0] * shape[1]
    if buffer is None:
        return [None] * count
    flat = buffer.view(-1)
    return [flat[i * size:(i + 1) * size].view(shape) if flat.numel() >= (i + 1) * size else None
            for i in range(count)]


def _scaled_softmax(z: Tensor, temperature: float, out: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """exp((z - max) / T) into ``out``, its row sums (P, 1), and log of softmax's norm at T (P, 1):
    log q_T = z / T - that."""
    top = z.amax(-1, keepdim=True)
    shifted = torch.sub(z, top, out=out)
    if temperature != 1.0:
        shifted.div_(temperature)
    shifted.exp_()
    sums = shifted.sum(-1, keepdim=True)
    return shifted, sums, top / temperature + sums.log()


def _is_sparse(teacher) -> bool:
    return isinstance(teacher, (SampledTargets, TopKTargets))


def _kd_terms(teacher, z: Tensor, log_q_kept: Tensor, log_norm: Tensor, target: Tensor,
              temperature: float) -> tuple[Tensor, Tensor, Tensor] | None:
    """The KL sum at T before T², the per-row scale of q_T, and what is added besides: (P, K) amounts
    at a sparse teacher's classes, or a dense teacher's -p_T (P, V); None: not written out."""
    if isinstance(teacher, DenseTargets):
        log_p = (teacher.logits.reshape(z.shape).float() / temperature).log_softmax(-1)
        p = log_p.exp()
        # sum p (log p - log q_T), log q_T = z / T - log_norm, without a (P, V) log q_T
        rows = torch.linalg.vecdot(p, log_p) - torch.linalg.vecdot(p, z) / temperature + log_norm[:, 0] * p.sum(-1)
        return (torch.where(target, rows, 0.0).sum(), torch.where(target, p.sum(-1), 0.0),
                p.masked_fill_(~target[:, None], 0.0).neg_())
    return _sparse_terms(teacher, log_q_kept, target, temperature, z.shape[-1])


def _sparse_terms(teacher, log_q_kept: Tensor, target: Tensor, temperature: float,
                  vocab: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """A sampled or top-k teacher's KL sum, the per-row scale of q_T, and the (P, K) amounts added
    at its classes (None: a top-k row's student tail is too small to be written out)."""
    width = log_q_kept.shape[-1]
    on = target[:, None]
    if isinstance(teacher, SampledTargets):
        weights = teacher.weights.reshape(-1, width).float()
        logprobs = teacher.logprobs.reshape(-1, width).float()
        rows = (weights * (logprobs - log_q_kept)).sum(-1)
        return (torch.where(target, rows, 0.0).sum(), torch.where(target, weights.sum(-1), 0.0),
                torch.where(on, -weights, 0.0))
    kept_mass = log_q_kept.exp().sum(-1)
    if bool((kept_mass > 1 - TINY_TAIL).any()):
        return None
    log_tail_q = torch.log1p(-kept_mass)
    t_top, t_tail = teacher.logprobs.reshape(-1, width).float(), teacher.tail.reshape(-1).float()
    if temperature != 1.0:
        t_top, t_tail = _tempered_topk(t_top, t_tail, vocab, temperature)
    p_top, p_tail = t_top.exp(), t_tail.exp()
    rest = torch.where(t_tail > float("-inf"), p_tail * (t_tail - log_tail_q), 0.0)  # 0 log 0 = 0
    rows = (p_top * (t_top - log_q_kept)).sum(-1) + rest
    ratio = p_tail * torch.exp(-log_tail_q)  # p_tail / Q, Q >= TINY_TAIL here
    scale = p_top.sum(-1) + p_tail - ratio
    amount = ratio[:, None] * log_q_kept.exp() - p_top
    return torch.where(target, rows, 0.0).sum(), torch.where(target, scale, 0.0), torch.where(on, amount, 0.0)
