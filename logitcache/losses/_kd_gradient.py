"""Hinton KD's value on dense logits with its gradient written out (torch at import: ``kd.py``
imports this module when a dense loss is first computed, so the CLI never does).

    >>> KDivergence.apply(student.float(), teacher.float(), 4.0)   # what kd_loss returns
    >>> kd_value(student, teacher, 4.0)                             # the same value, autograd's gradient
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_value(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) at T, times T^2, batch mean, exactly as the reference computes it."""
    log_q = F.log_softmax(student / temperature, dim=1)
    p = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_q, p, reduction="none").sum(1).mean() * temperature**2


class KDivergence(torch.autograd.Function):
    """``kd_value`` with its gradient written out: d/ds [T^2/B sum p (log p - log_softmax(s/T))] is
    T/B (softmax(s/T) - p) for a teacher distribution p (sum 1). The forward keeps log q and p
    (no autograd graph), the backward is one elementwise pass over them."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        log_q = F.log_softmax(student / temperature, dim=1)
        p = F.softmax(teacher / temperature, dim=1)
        ctx.save_for_backward(log_q, p)
        ctx.temperature = temperature
        return F.kl_div(log_q, p, reduction="none").sum(1).mean() * temperature**2

    @staticmethod
    def backward(ctx, grad: Tensor):
        log_q, p = ctx.saved_tensors
        return log_q.exp().sub_(p).mul_(grad * ctx.temperature / log_q.shape[0]), None, None
