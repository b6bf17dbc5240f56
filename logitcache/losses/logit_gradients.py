"""The token losses at T = 1 with their gradient w.r.t. the logits written out: the chunked loss's
fast path (``chunked.py``), which then needs only the head's own backward.

    >>> ce, kd, grad = written_gradient(logits, next_tokens, targets, teacher, ce_weight=1.0, kd_weight=1.0)
    >>> torch.autograd.grad(logits, [hidden, *head.parameters], grad)   # what autograd would have given

With q = softmax(z) over a row of logits z, the gradient of each summand is q times a number per
row, less a few entries: ``-log q_y`` gives q - e_y; a sampled row ``sum_k w_k (log p_k - log q_k)``
gives (sum_k w_k) q - sum_k w_k e_k; a dense teacher (sum p) q - p; a ``topk:K`` row, whose tail
term reads the student's tail mass Q = 1 - sum_k q_k, gives (sum_k p_k + p_tail - p_tail / Q) q
plus (p_tail q_k / Q - p_k) at each kept class k (an entry for each slot, so a class named twice
is counted twice, as the formula counts it). So one (positions, V) buffer is exponentiated in
place, scaled per row and corrected by a scatter, where autograd's log-softmax, gather and their
backward passes write several such tensors (benchmarks/RESULTS.md, "written gradients").

The values are ``token_sums.position_loss_sums``'s formulas on the same log q, so the two agree to
float32 rounding. Not written out (``None``: the caller differentiates the formulas): a
temperature other than 1 (the loss's or a sample store's), and a ``topk`` chunk with a row whose student tail is under
``kd.TINY_TAIL`` (summed exactly there, where ``1 - sum_k q_k`` would lose its digits).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..codecs import DenseTargets, SampledTargets, TopKTargets
from .kd import TINY_TAIL


def written_gradient(logits: Tensor, next_tokens: Tensor, targets: Tensor, teacher, ce_weight: float,
                     kd_weight: float, temperature: float = 1.0,
                     buffer: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
    """(CE sum, KL sum, gradient of ``ce_weight * CE + kd_weight * KL`` w.r.t. ``logits``) over the
    target positions, or None where the gradient is not written out (module doc).

    Args:
        logits: (..., V) the student's, any float dtype (the gradient comes back in it).
        next_tokens, targets: (...) the token each position predicts and whether it is a target.
        teacher: typed targets for the same positions, or None.
        buffer: float32 storage of at least the logits' size on their device, reused for the
            gradient (a fresh (P, V) tensor each chunk costs its pages being mapped anew).
    """
    if temperature != 1.0 or not (teacher is None or isinstance(teacher, (DenseTargets, SampledTargets,
                                                                           TopKTargets))):
        return None
    if isinstance(teacher, SampledTargets) and teacher.temperature is not None and bool(
            (teacher.temperature != 1.0).any()):
        return None  # drawn at another T: the formulas' path refuses it
    vocab = logits.shape[-1]
    z = logits.detach().float().reshape(-1, vocab)  # never written to: the head's backward may hold it
    target = targets.reshape(-1)
    top = z.amax(-1, keepdim=True)
    grad = None if buffer is None else buffer.view(-1)[:z.numel()].view(z.shape)
    grad = torch.sub(z, top, out=grad).exp_()  # q times the row's sum: scaled below
    sums = grad.sum(-1, keepdim=True)
    log_norm = top + sums.log()  # (P, 1): log q = z - log_norm
    kept = teacher.indices.reshape(-1, teacher.indices.shape[-1]) if _is_sparse(teacher) else None  # (P, K)
    wanted = next_tokens.reshape(-1, 1) if kept is None else torch.cat([next_tokens.reshape(-1, 1), kept], -1)
    picked = z.gather(-1, wanted) - log_norm  # log q at the next token (and the teacher's classes)
    ce = torch.where(target, -picked[:, 0], 0.0).sum()
    scale = torch.where(target, ce_weight, 0.0)  # of q, per row
    entries = [next_tokens.reshape(-1, 1)]
    amounts = [torch.where(target, -ce_weight, 0.0)[:, None]]
    kd = z.new_zeros(())
    if isinstance(teacher, DenseTargets):
        kd, dense_scale, dense_p = _dense_terms(z, log_norm, teacher.logits.reshape(-1, vocab), target)
        scale = scale + kd_weight * dense_scale
    elif teacher is not None:
        parts = _sparse_terms(teacher, picked[:, 1:], target)
        if parts is None:
            return None
        kd, sparse_scale, amount = parts
        scale = scale + kd_weight * sparse_scale
        entries.append(kept)
        amounts.append(kd_weight * amount)
    grad.mul_((scale[:, None] / sums))
    if isinstance(teacher, DenseTargets):
        grad.sub_(dense_p.masked_fill_(~target[:, None], 0.0).mul_(kd_weight))
    grad.scatter_add_(-1, torch.cat(entries, -1), torch.cat(amounts, -1))
    return ce, kd, grad.reshape(logits.shape).to(logits.dtype)


def _is_sparse(teacher) -> bool:
    return isinstance(teacher, (SampledTargets, TopKTargets))


def _dense_terms(z: Tensor, log_norm: Tensor, teacher_logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A dense teacher's KL sum, the per-row scale of q (sum p) and p itself (P, V)."""
    log_p = teacher_logits.float().log_softmax(-1)
    p = log_p.exp()
    # sum p (log p - log q), with log q = z - log_norm, without a (P, V) log q
    rows = torch.linalg.vecdot(p, log_p) - torch.linalg.vecdot(p, z) + log_norm[:, 0] * p.sum(-1)
    return torch.where(target, rows, 0.0).sum(), torch.where(target, p.sum(-1), 0.0), p


def _sparse_terms(teacher, log_q_kept: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """A sampled or top-k teacher's KL sum, the per-row scale of q, and the (P, K) amounts added at
    its classes (None: a top-k row's student tail is too small to be written out)."""
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
    p_top, p_tail = t_top.exp(), t_tail.exp()
    rest = torch.where(t_tail > float("-inf"), p_tail * (t_tail - log_tail_q), 0.0)  # 0 log 0 = 0
    rows = (p_top * (t_top - log_q_kept)).sum(-1) + rest
    ratio = p_tail * torch.exp(-log_tail_q)  # p_tail / Q, Q >= TINY_TAIL here
    scale = p_top.sum(-1) + p_tail - ratio
    amount = ratio[:, None] * log_q_kept.exp() - p_top
    return torch.where(target, rows, 0.0).sum(), torch.where(target, scale, 0.0), torch.where(on, amount, 0.0)
