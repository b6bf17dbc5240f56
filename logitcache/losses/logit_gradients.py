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
float32 rounding; a top-k row whose student tail is under ``kd.TINY_TAIL`` has it summed exactly,
as there, and its tail term taken from the logs. Not written out (``None``: the caller
differentiates the formulas): a sample store drawn at another temperature than the loss's (the
formulas refuse it), and a top-k chunk with a row that names a class twice (no store writes one).
"""

from __future__ import annotations

from typing import NamedTuple

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
    z_top = z.amax(-1, keepdim=True)
    grad, sums, log_norm = _scaled_softmax(z, z_top, 1.0, next(spaces))  # q times the row's sum, for now
    kept = teacher.indices.reshape(-1, teacher.indices.shape[-1]) if _is_sparse(teacher) else None  # (P, K)
    picked = z.gather(-1, next_tokens if kept is None else torch.cat([next_tokens, kept], -1))
    ce = torch.where(target, sums[:, 0].log() - (picked[:, 0] - z_top[:, 0]), 0.0).sum()
    ce_scale = torch.where(target, ce_weight, 0.0)  # of q, per row
    if teacher is None:
        grad.mul_(ce_scale[:, None] / sums)
        return ce, z.new_zeros(()), _with_next_tokens(grad, next_tokens, target, ce_weight, logits.shape, logits.dtype)
    factor = kd_weight * temperature  # d/dz of T² KL(q_T) is T d/d(z/T)
    at_t = (grad, sums, log_norm) if temperature == 1.0 else _scaled_softmax(z, z_top, temperature, next(spaces))
    # log q_T at the kept classes as log_softmax forms it, (z - max) / T - log(sum): the fewest digits lost
    log_q_kept = None if kept is None else (picked[:, 1:] - z_top) / temperature - at_t[1].log()
    terms = _kl_terms(teacher, z, log_q_kept, at_t[2], target, temperature)
    if terms is None:
        return None
    if temperature == 1.0:  # one buffer: q scaled for the CE and the KL together
        grad.mul_((ce_scale + factor * terms.scale)[:, None] / sums)
        kl = grad
    else:
        kl = at_t[0].mul_((factor * terms.scale)[:, None] / at_t[1])
        grad.mul_(ce_scale[:, None] / sums)
    _add_kl_extras(kl, terms, factor, z, at_t[2], temperature)
    if kept is not None and terms.kept_values is not None:  # a top-k teacher's classes: written over
        shared = ce_scale[:, None] * (picked[:, 1:] - log_norm).exp() if temperature == 1.0 else 0.0
        kl.scatter_(-1, kept, factor * terms.kept_values + shared)
    if temperature != 1.0:
        grad.add_(kl)
    if terms.at_kept is not None:  # a sampled teacher's classes: added
        grad.scatter_add_(-1, kept, factor * terms.at_kept)
    kd = terms.total * temperature**2
    return ce, kd, _with_next_tokens(grad, next_tokens, target, ce_weight, logits.shape, logits.dtype)


def _with_next_tokens(grad: Tensor, next_tokens: Tensor, target: Tensor, ce_weight: float, shape, dtype) -> Tensor:
    """The CE's -1 at each target's next token added; the gradient in the logits' shape and dtype."""
    grad.scatter_add_(-1, next_tokens, torch.where(target, -ce_weight, 0.0)[:, None])
    return grad.reshape(shape).to(dtype)


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


def _scaled_softmax(z: Tensor, top: Tensor, temperature: float, out: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """exp((z - top) / T) into ``out`` (``top``: the rows' maxima, (P, 1)), its row sums (P, 1), and
    log of softmax's norm at T (P, 1): log q_T = z / T - that."""
    shifted = torch.sub(z, top, out=out)
    if temperature != 1.0:
        shifted.div_(temperature)
    shifted.exp_()
    sums = shifted.sum(-1, keepdim=True)
    return shifted, sums, top / temperature + sums.log()


def _is_sparse(teacher) -> bool:
    return isinstance(teacher, (SampledTargets, TopKTargets))


class KLTerms(NamedTuple):
    """The KL of a chunk's rows at T, before T², and what its gradient w.r.t. z / T is made of."""

    total: Tensor  # summed over the target rows
    scale: Tensor  # (P,) of q_T, every class
    at_kept: Tensor | None = None  # (P, K) added at a sampled teacher's classes
    kept_values: Tensor | None = None  # (P, K) a top-k teacher's classes' whole gradient, written over
    dense: Tensor | None = None  # (P, V) a dense teacher's -p_T, added
    small_tails: tuple[Tensor, Tensor, Tensor] | None = None  # top-k rows, p_tail and log Q (module doc)


def _add_kl_extras(kl: Tensor, terms: KLTerms, factor: float, z: Tensor, log_norm: Tensor, temperature: float):
    """A dense teacher's -p_T, and each small-tail top-k row's -p_tail q_i / Q (from the logs, exact)."""
    if terms.dense is not None:
        kl.add_(terms.dense, alpha=factor)
    if terms.small_tails is not None:
        rows, p_tail, log_tail = terms.small_tails
        ratio = (z[rows] / temperature - log_norm[rows] - log_tail[:, None]).exp_()  # q_i / Q
        kl[rows] -= (factor * p_tail)[:, None] * ratio


def _kl_terms(teacher, z: Tensor, log_q_kept: Tensor | None, log_norm: Tensor, target: Tensor,
              temperature: float) -> KLTerms | None:
    """``KLTerms`` of dense, top-k or sampled targets (None: top-k ids named twice in a row)."""
    if isinstance(teacher, DenseTargets):
        log_p = (teacher.logits.reshape(z.shape).float() / temperature).log_softmax(-1)
        p = log_p.exp()
        difference = torch.sub(z / temperature, log_norm).neg_().add_(log_p)  # log p - log q_T, as the formulas
        rows = torch.linalg.vecdot(p, difference)
        return KLTerms(torch.where(target, rows, 0.0).sum(), torch.where(target, p.sum(-1), 0.0),
                       dense=p.masked_fill_(~target[:, None], 0.0).neg_())
    width = log_q_kept.shape[-1]
    on = target[:, None]
    if isinstance(teacher, SampledTargets):
        weights = teacher.weights.reshape(-1, width).float()
        logprobs = teacher.logprobs.reshape(-1, width).float()
        rows = (weights * (logprobs - log_q_kept)).sum(-1)
        return KLTerms(torch.where(target, rows, 0.0).sum(), torch.where(target, weights.sum(-1), 0.0),
                       at_kept=torch.where(on, -weights, 0.0))
    return _topk_terms(teacher, z, log_q_kept, log_norm, target, temperature)


def _topk_terms(teacher, z: Tensor, log_q_kept: Tensor, log_norm: Tensor, target: Tensor,
                temperature: float) -> KLTerms | None:
    """A top-k row: (S - p_tail / Q) q_T at every class, then q_T,k S - p_k written over each kept
    class (no cancellation there); a row whose tail Q is under TINY_TAIL takes its log Q summed
    exactly and its tail term from the logs (``_add_kl_extras``)."""
    kept = teacher.indices.reshape(log_q_kept.shape)
    ordered = kept.sort(-1).values
    if bool(((ordered[:, 1:] == ordered[:, :-1]).any(-1) & target).any()):
        return None  # a class named twice: the formulas count it twice, a write-over could not
    kept_mass = log_q_kept.exp().sum(-1)
    log_tail_q = torch.log1p(-kept_mass.clamp(max=1 - TINY_TAIL))
    small = torch.nonzero(kept_mass > 1 - TINY_TAIL)[:, 0]
    if len(small):  # as kd._log_tail: those rows' other classes summed exactly
        others = (z[small] / temperature).scatter_(-1, kept[small], float("-inf")).logsumexp(-1)
        log_tail_q = log_tail_q.index_put((small,), others - log_norm[small, 0])
    t_top, t_tail = teacher.logprobs.reshape(kept.shape).float(), teacher.tail.reshape(-1).float()
    if temperature != 1.0:
        t_top, t_tail = _tempered_topk(t_top, t_tail, z.shape[-1], temperature)
    p_top, p_tail = t_top.exp(), t_tail.exp()
    rest = torch.where(t_tail > float("-inf"), p_tail * (t_tail - log_tail_q), 0.0)  # 0 log 0 = 0
    rows = (p_top * (t_top - log_q_kept)).sum(-1) + rest
    whole = p_top.sum(-1) + p_tail
    ratio = (p_tail * torch.exp(-log_tail_q)).index_fill_(0, small, 0.0)  # p_tail / Q; small tails: from logs
    on = target[:, None]
    return KLTerms(torch.where(target, rows, 0.0).sum(), torch.where(target, whole - ratio, 0.0),
                   kept_values=torch.where(on, log_q_kept.exp() * whole[:, None] - p_top, 0.0),
                   small_tails=None if not len(small) else (small, torch.where(target[small], p_tail[small], 0.0),
                                                              log_tail_q[small]))
