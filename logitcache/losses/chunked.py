"""Token losses from a causal LM's hidden states, a chunk of positions at a time: the student's
(batch, positions, vocabulary) logits, their log-softmax and their gradient never exist whole.

    >>> split = split_lm(student, probe)                        # sources/lm_heads.py
    >>> hidden = split.hidden_states(batch["input_ids"])        # (B, L, H)
    >>> head = chunked_head(student, split.head_logits, hidden)  # the head and the parameters it uses
    >>> sums = chunked_token_loss_sums(hidden, head, batch["labels"], teacher, temperature=1.0,
    ...                                ce_weight=1.0, kd_weight=1.0)
    >>> sums.total(1.0, 1.0).backward()                         # into the body and the head

Each chunk of positions goes through the model's own ``head_logits`` (soft-capping and logit scales
included) to the CE and KL the whole batch's loss uses (``token_sums.position_loss_sums``, for
dense, top-k and sampled targets). The gradient of the chunk's weighted loss w.r.t. its hidden
states and the head's parameters is taken in the forward, while the chunk's logits are alive, and
accumulated (Liger-Kernel's design for its chunked losses); the backward only scales the sums by
the incoming gradient. ``logit_gradients`` writes the loss's gradient w.r.t. the logits out, so
autograd runs only the head's backward; where it does not (a sample store drawn at another
temperature, whose refusal the formulas give; top-k ids named twice) autograd differentiates the
formulas. Recomputing each chunk in the backward instead costs one more pass through
the head and saved no memory here (benchmarks/lm_students_memory.py), so it is not offered.

The weights of CE and KL are fixed when the loss is computed (the gradient is taken for them):
``TokenLossSums.total`` returns that sum and refuses other weights; ``ce`` and ``kd`` are values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .logit_gradients import buffer_size, written_gradient
from .token_sums import TokenLossSums, check_student_vocabulary, next_token_targets, position_loss_sums

CHUNK_BYTES = 128 << 20  # one chunk's float32 logits; a chunk holds about five such (V)-wide tensors at once


@dataclass(frozen=True)
class ChunkedHead:
    """A causal LM's head: its function (``SplitLM.head_logits``), the trainable parameters it uses
    (the gradient accumulated for each), and its width."""

    logits: Callable[[Tensor], Tensor]  # (..., H) -> (..., V)
    parameters: tuple[Tensor, ...]
    vocab_size: int


def chunked_head(model: torch.nn.Module, head_logits: Callable[[Tensor], Tensor], hidden: Tensor) -> ChunkedHead:
    """``head_logits`` with the parameters of ``model`` it uses, found by differentiating it at one
    position of ``hidden`` (B, L, H): whatever the head is (a tied embedding, a bias, a scale)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    used = [None] * len(trainable)
    with torch.enable_grad():
        probe = head_logits(hidden[:1, :1].detach())  # (1, 1, V)
        if trainable and probe.requires_grad:
            used = torch.autograd.grad(probe.float().sum(), trainable, allow_unused=True)
    return ChunkedHead(head_logits, tuple(p for p, g in zip(trainable, used) if g is not None), probe.shape[-1])


def chunk_positions(vocab_size: int) -> int:
    """Positions per chunk: as many as CHUNK_BYTES of float32 logits hold (at least one)."""
    return max(1, CHUNK_BYTES // (4 * vocab_size))


def worth_chunking(positions: int, vocab_size: int) -> bool:
    """The default rule: chunk when a step's float32 logits (``positions`` x V) take more than one
    chunk; below that one chunk is the whole batch, and the materialised loss is the same."""
    return positions * vocab_size * 4 > CHUNK_BYTES


def chunked_token_loss_sums(hidden: Tensor, head: ChunkedHead, labels: Tensor, teacher, temperature: float = 1.0,
                            ce_weight: float = 1.0, kd_weight: float = 1.0,
                            chunk_size: int | None = None) -> TokenLossSums:
    """``token_sums.token_loss_sums`` of ``head.logits(hidden)``, without those logits: chunk by chunk.

    Args:
        hidden: (B, L, H) the student's hidden states before its head.
        head: ``chunked_head``'s answer for the student.
        labels: (B, L) Hugging Face labels (-100 where the next token is not a target).
        teacher: None, or the teacher's targets for all B x L positions (typed, or by field name).
        temperature: the KL's (a sample store's targets serve only the one they were drawn at).
        ce_weight, kd_weight: the weights the returned ``total`` (and its gradient) is taken for.
        chunk_size: positions per chunk over the batch (default: ``chunk_positions``), rounded down
            to whole columns of B positions, at least one.

    Returns:
        TokenLossSums whose ``total(ce_weight, kd_weight)`` carries the gradient.
    """
    from ..codecs import as_targets

    next_tokens, targets = next_token_targets(labels)  # (B, L) each
    teacher = None if teacher is None else as_targets(teacher)
    check_student_vocabulary(teacher, head.vocab_size)
    batch, length = labels.shape
    columns = max(1, (chunk_size or chunk_positions(head.vocab_size)) // batch)
    pieces = [slice(start, min(start + columns, length)) for start in range(0, length, columns)]
    chunks = LossChunks(head, next_tokens, targets, teacher, temperature, (ce_weight, kd_weight), pieces)
    total, ce, kd = _ChunkedLoss.apply(chunks, hidden, *head.parameters)
    return TokenLossSums(ce, kd, int(targets.sum()), weighted=((ce_weight, kd_weight), total))


@dataclass(frozen=True)
class LossChunks:
    """One batch's loss, cut into ``pieces`` of positions: each piece's values, with or without its
    gradient (written out where ``logit_gradients`` can, by autograd otherwise)."""

    head: ChunkedHead
    next_tokens: Tensor  # (B, L)
    targets: Tensor  # (B, L) bool
    teacher: object  # typed targets for (B, L), or None
    temperature: float
    weights: tuple[float, float]  # (CE, KL)
    pieces: list[slice]
    scratch: list = field(default_factory=list)  # the one buffer, once made (see _buffer)

    def loss(self, piece: slice, chunk_hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(weighted sum, CE, KL) of one piece, differentiable by autograd."""
        logits = self.head.logits(chunk_hidden)  # (B, c, V): the only vocabulary-wide tensors alive
        ce, kd = position_loss_sums(logits, self.next_tokens[:, piece], self.targets[:, piece],
                                    self._teacher(piece), self.temperature)
        return self.weights[0] * ce + self.weights[1] * kd, ce, kd

    def gradient(self, piece: slice, chunk_hidden: Tensor, wrt: list[Tensor]) -> tuple[list[Tensor], list]:
        """(weighted sum, CE, KL) of one piece, detached, and the weighted sum's gradient w.r.t. ``wrt``."""
        if not wrt:  # nothing trains (evaluation): the values alone
            with torch.no_grad():
                return [value.float() for value in self.loss(piece, chunk_hidden)], []
        logits = self.head.logits(chunk_hidden)
        buffer = self._buffer(buffer_size(logits, self.temperature), logits.device)
        written = written_gradient(logits, self.next_tokens[:, piece], self.targets[:, piece], self._teacher(piece),
                                   *self.weights, self.temperature, buffer)
        if written is None:
            del logits
            values = self.loss(piece, chunk_hidden)
            grads = torch.autograd.grad(values[0], wrt, allow_unused=True) if values[0].requires_grad else []
        else:
            ce, kd, grad_logits = written
            values = (self.weights[0] * ce + self.weights[1] * kd, ce, kd)
            grads = torch.autograd.grad(logits, wrt, grad_logits, allow_unused=True) if logits.requires_grad else []
        return [value.detach().float() for value in values], list(grads) or [None] * len(wrt)

    def _buffer(self, size: int, device: torch.device) -> Tensor:
        """One float32 buffer on the logits' device for every chunk of the batch (the first chunk is
        the largest)."""
        if not self.scratch or self.scratch[0].numel() < size or self.scratch[0].device != device:
            self.scratch[:] = [torch.empty(size, dtype=torch.float32, device=device)]
        return self.scratch[0]

    def _teacher(self, piece: slice):
        return None if self.teacher is None else self.teacher[:, piece]


class _ChunkedLoss(torch.autograd.Function):
    """(weighted sum, CE, KL) over the chunks' pieces; the gradient of the weighted sum w.r.t.
    ``hidden`` and ``parameters`` is taken per chunk in the forward and only scaled in the backward."""

    @staticmethod
    def forward(ctx, chunks: LossChunks, hidden, *parameters):
        wants = ctx.needs_input_grad[1:]  # hidden, then each parameter
        grad_hidden = torch.zeros_like(hidden) if wants[0] else None
        grad_parameters = [torch.zeros_like(p) if want else None for p, want in zip(parameters, wants[1:])]
        sums = [torch.zeros((), dtype=torch.float32, device=hidden.device) for _ in range(3)]  # weighted, ce, kd
        for piece in chunks.pieces:
            with torch.enable_grad():
                chunk_hidden = hidden[:, piece].detach().requires_grad_(wants[0])
                wrt = [t for t, want in zip([chunk_hidden, *parameters], wants) if want]
                values, grads = chunks.gradient(piece, chunk_hidden, wrt)
            if wants[0]:
                grad_hidden[:, piece] = grads.pop(0)
            for i, want in enumerate(wants[1:]):
                gradient = grads.pop(0) if want else None
                if gradient is not None:
                    grad_parameters[i] += gradient
            sums = [running + value for running, value in zip(sums, values)]
        ctx.save_for_backward(grad_hidden, *grad_parameters)
        ctx.mark_non_differentiable(sums[1], sums[2])
        return tuple(sums)

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_kd):
        scaled = [None if g is None else g * grad_total.to(g.dtype) for g in ctx.saved_tensors]
        return None, *scaled
