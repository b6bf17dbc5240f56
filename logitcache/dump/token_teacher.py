"""A token dump's teacher, run so that a batch's (batch, positions, vocabulary) logits never exist
at once: its backbone over the batch, then its head over one chunk of positions at a time, each
chunk reduced (``reduce.py``) before the next is made.

    >>> teacher = TokenTeacher(model, device, bf16=False)
    >>> vocab = teacher.probe(tokens, lengths, tokenizer)   # checks it; splits its head if it can
    >>> sequences = teacher.sequences_per_batch(seq_len=1024, batch_size=256, batch_tokens=65536)
    >>> logits = teacher(ids, "sequences 0-64")             # (B*T, V) on demand: logits[lo:hi] runs the head

At 131,072 ids a float32 row of logits is 512 KB, so a batch of 64 sequences of 1,024 tokens
would be 34 GB; the chunks (``reduce.BUDGET_BYTES``) hold a few hundred MB. The split is
``sources/lm_heads.split_lm``'s, trusted once a probe of the first sequence's own tokens gives the
model's own logits. A teacher without one (no ``hidden_states``/``head_logits``, or a split that
gives other logits) runs whole, and its batches are cut so that their whole logits fit the same
budget (one sequence at least); ``unsplit_reason`` says why.

The chunks are the reducer's, cut from the batch's positions where they were cut when the head ran
whole, so where the head's product gives a row the same bits whatever rows are beside it (this
project's CPU did, in float32 and bf16: benchmarks/lm_dump.py identity), the stored bytes and the
teacher's statistics are those of the whole head.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import ModelError
from ..sources import lm_context_length
from ..sources.lm_heads import split_lm
from .loop import autocast
from .reduce import BUDGET_BYTES

PROBE_POSITIONS = 64  # the probe's positions through the head: its split is proven on these


class TokenTeacher:
    """A causal LM for a token dump: probed, split at its head when it can be, run batch by batch."""

    def __init__(self, model, device: torch.device, bf16: bool):
        self.model, self.device, self.bf16 = model, device, bf16
        self.split, self.vocab = None, None
        self.unsplit_reason = None  # why the head runs whole (None: it is split)

    def probe(self, tokens: np.ndarray, lengths: np.ndarray, tokenizer) -> int:
        """The teacher's context must hold a sequence and its head every token id; returns the head's
        width. A sequence of id 0 (in every vocabulary) goes first, so a too-small vocabulary is named
        rather than crashing; the split is then proven on the first sequence's own tokens."""
        length = tokens.shape[1]
        context = lm_context_length(self.model)
        if context is not None and length > context:
            raise ModelError(f"--seq-len {length} is longer than the teacher's context of {context} tokens")
        offered = split_lm(self.model)  # its methods, not yet proven
        positions = length if offered is None else min(length, PROBE_POSITIONS)
        output = self._zeros_logits(offered, length, positions)
        if not isinstance(output, torch.Tensor) or output.ndim != 3 or tuple(output.shape[:2]) != (1, positions):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            of = f"one sequence of {length} tokens" if positions == length else \
                f"the first {positions} positions of a sequence of {length} tokens"
            raise ModelError(f"the teacher's output is {shape} for {of}; a token dump needs a causal LM's "
                             "(batch, positions, vocabulary) logits")
        self.vocab = int(output.shape[2])
        if self.vocab < tokenizer.vocab_size or tokens.max() >= self.vocab:
            raise ModelError(f"the teacher's head has {self.vocab} outputs but tokenizer {tokenizer.spec!r} has "
                             f"{tokenizer.vocab_size} ids: they were not made for each other")
        if offered is None:
            self.unsplit_reason = "it has no hidden_states and head_logits methods"
            return self.vocab
        first = tokens[:1, :max(1, min(PROBE_POSITIONS, int(lengths[0])))]
        with torch.inference_mode(), autocast(self.device, self.bf16):
            self.split = split_lm(self.model, torch.as_tensor(first, dtype=torch.long, device=self.device))
        if self.split is None:
            self.unsplit_reason = "its hidden_states and head_logits do not give its own logits on a probe"
        return self.vocab

    def _zeros_logits(self, offered, length: int, positions: int):
        """The logits of a sequence of id 0 at its first ``positions`` (its whole length unless the
        head is offered apart: then only the backbone reads every position)."""
        sample = torch.zeros((1, length), dtype=torch.long, device=self.device)
        with torch.inference_mode(), autocast(self.device, self.bf16):
            try:
                if offered is None:
                    return logits_of(self.model(sample))
                return offered.head_logits(offered.hidden_states(sample)[:, :positions])
            except Exception as err:
                raise ModelError(f"the teacher fails on a sequence of {length} tokens: {err}") from None

    def sequences_per_batch(self, seq_len: int, batch_size: int, batch_tokens: int) -> int:
        """Whole sequences per forward: ``batch_tokens`` worth, at most ``batch_size``, at least one;
        for a head that runs whole, also no more than its whole logits' share of the budget."""
        sequences = min(batch_size, max(1, batch_tokens // seq_len))
        if self.split is None:
            sequences = min(sequences, max(1, BUDGET_BYTES // (seq_len * self.vocab * 4)))
        return sequences

    def unsplit_note(self, seq_len: int, sequences: int) -> str:
        """The one line a dump prints when the head runs whole."""
        size = sequences * seq_len * self.vocab * 4 / 2**20
        return (f"note: the teacher's head runs whole ({self.unsplit_reason}), so a batch's logits exist at once: "
                f"up to {sequences} sequence{'s' * (sequences > 1)} of {seq_len} tokens, {size:,.0f} MiB")

    def __call__(self, ids: torch.Tensor, where: str):
        """``ids`` (B, T) -> their (B*T, V) logits: a tensor when the head runs whole, else
        ``HeadLogits``, made a slice of positions at a time. ``where`` names the batch in errors."""
        expected = (*ids.shape, self.vocab)
        with autocast(self.device, self.bf16):
            if self.split is None:
                logits = logits_of(self.model(ids))
                _check_shape(logits, expected, where)
                return logits.flatten(0, 1)
            hidden = self.split.hidden_states(ids)  # (B, T, H)
        if hidden.ndim != 3 or tuple(hidden.shape[:2]) != tuple(ids.shape):
            raise ModelError(f"the teacher's hidden states changed shape to {tuple(hidden.shape)} for {where}; "
                             f"they must be {(*ids.shape, 'H')}")
        return HeadLogits(self.split.head_logits, hidden.flatten(0, 1), self.vocab,
                          lambda: autocast(self.device, self.bf16), where)


class HeadLogits:
    """(P, V) logits that exist a slice at a time: ``logits[lo:hi]`` runs the head on the hidden
    states of positions lo..hi-1 (the reducer only ever slices and reads ``shape``)."""

    def __init__(self, head: Callable, hidden: torch.Tensor, vocab: int, context: Callable, where: str):
        self.head, self.hidden, self.context, self.where = head, hidden, context, where
        self.shape = (hidden.shape[0], vocab)  # (P, V)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        with self.context():
            logits = self.head(self.hidden[rows])  # (hi - lo, V)
        _check_shape(logits, (len(range(*rows.indices(self.shape[0]))), self.shape[1]), self.where)
        return logits


def _check_shape(logits, expected: tuple, where: str) -> None:
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(f"the teacher's output changed shape to {shape} for {where}; it must be {expected}")


def logits_of(output):
    """A causal LM's logits: the tensor itself, or the ``logits`` of a Hugging Face output."""
    return getattr(output, "logits", output)


OUT_OF_MEMORY = ("out of memory", "not enough memory", "can't allocate memory")  # CUDA/MPS, CPU (two wordings)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that failed: torch's on a device or in its CPU allocator,
    or Python's own MemoryError (a numpy array on the host)."""
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(words in text for words in OUT_OF_MEMORY)
