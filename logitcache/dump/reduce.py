"""Reduce a language model's logits where they were computed: only the stored targets leave the device.

    >>> reducer = DeviceReducer(codec, budget_bytes=256 << 20)
    >>> arrays, stats, bad = reducer(logits, next_tokens, is_target, is_real, uniforms)

A (positions x vocabulary) block of float32 logits is 600 KB per position at Qwen's 151,936 ids, so
it never goes to the host: each codec reduces a chunk where it was computed (``Codec.reduce_logits``:
``topk:K`` takes the K largest and two log-sum-exps on the device, ``sample:K[:T]`` draws on the
device from host-made uniforms, so the draws do not depend on the device's random generator) and
only (positions x K) arrays are copied back. Dense codecs (small vocabularies) copy the logits and
encode on the host as image dumps do. This module cuts the work into chunks of positions that keep
the temporaries under ``budget_bytes``, checks finiteness and keeps the teacher's own statistics.
``logits`` need only be sliced like a (P, V) tensor: a split teacher's ``token_teacher.HeadLogits``
runs its head on each chunk's positions when the chunk is taken, so no more than one chunk's logits
ever exist.

On a CPU these passes over (positions x V) cost as much as the teacher's own head, so a chunk is
copied as little as possible: float32 logits of real rows are read in place (topk masks its K
entries for the tail's log-sum-exp and puts them back), finiteness is checked on row sums, and the
statistics reuse topk's log-sum-exp. The stored bytes are those of the plain version (checked on
many shapes when this was written; benchmarks/RESULTS.md, token stores, has the timings).

A row of a codec that ``keeps_logsumexp`` (topk) also keeps the log-sum-exp of its raw logits
(``store._tokens.token_extra_arrays``).
Over the target positions the teacher's own statistics come from the full logits: how many
targets, the sum of their negative log-likelihoods, the top-1 hits, and the probability mass the
stored targets hold.
"""

from __future__ import annotations

import numpy as np
import torch

from ..store import LOGSUMEXP_ARRAY, Codec

STATS = ("targets", "nll_sum", "top1_hits", "mass_sum")  # one float64 each, per shard
BUDGET_BYTES = 256 << 20  # a chunk's logits and the reduction's temporaries (24 bytes a logit)


class DeviceReducer:
    """Turn (P, V) logits into the codec's stored arrays plus the per-row log-sum-exp."""

    def __init__(self, codec: Codec, budget_bytes: int = BUDGET_BYTES):
        self.codec, self.budget_bytes = codec, budget_bytes

    def __call__(self, logits, next_tokens: torch.Tensor, is_target: torch.Tensor,
                 is_real: torch.Tensor, uniforms: np.ndarray | None) -> tuple[dict, np.ndarray, np.ndarray]:
        """``logits``: (P, V), a tensor or anything sliced like one (``HeadLogits``). Returns (stored
        arrays for these P rows, float64 stats as in ``STATS``, the rows holding non-finite logits).
        Rows past their sequence (``is_real`` False) are stored as raw logits 0, the uniform
        distribution, so padding costs nearly nothing once compressed."""
        positions, vocab = logits.shape
        step = max(1, self.budget_bytes // (vocab * 8 * 3))
        pieces, stats, bad = [], np.zeros(len(STATS)), []
        for lo in range(0, positions, step):
            hi = min(lo + step, positions)
            # float32 contiguous logits are not copied (nothing below writes to them for good); other
            # layouts are, so the bytes never depend on how the model laid its output out
            chunk = logits[lo:hi].float().contiguous()
            if not bool(is_real[lo:hi].all()):
                chunk = torch.where(is_real[lo:hi, None], chunk, 0.0)
            finite = _finite_rows(chunk)
            if not bool(finite.all()):
                bad.extend((lo + torch.nonzero(~finite).flatten()).tolist())
                continue
            draws = None if uniforms is None else uniforms[lo:hi]
            stored, mass, norm = self._reduce(chunk, draws)
            stats += _teacher_stats(chunk, next_tokens[lo:hi], is_target[lo:hi], mass, norm)
            pieces.append(stored)
        if bad:
            return {}, stats, np.asarray(bad)
        return {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}, stats, np.asarray(bad)

    def _reduce(self, logits: torch.Tensor,
                uniforms: np.ndarray | None) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
        """One chunk through the codec (``Codec.reduce_logits``): (stored arrays, the probability mass
        of the stored targets per row, the rows' log-sum-exp when it was computed, else None), with
        that log-sum-exp stored too for a codec that ``keeps_logsumexp``."""
        stored, mass, norm = self.codec.reduce_logits(logits, uniforms)
        if self.codec.keeps_logsumexp:
            stored = {**stored, LOGSUMEXP_ARRAY: norm.detach().cpu().numpy()}
        return stored, mass, norm


def _finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """Rows whose logits are all finite. A row's float sum is finite only if every term is (an inf
    or NaN term makes it inf or NaN), so only rows whose sum is not finite (a NaN or inf, or a sum
    that overflowed) are checked element by element: one cheap pass instead of a (P x V) mask."""
    finite = torch.isfinite(logits.sum(dim=1))
    if not bool(finite.all()):
        suspect = torch.nonzero(~finite).flatten()
        finite[suspect] = torch.isfinite(logits[suspect]).all(dim=1)
    return finite


def _teacher_stats(logits: torch.Tensor, next_tokens: torch.Tensor, is_target: torch.Tensor,
                   mass: torch.Tensor, norm: torch.Tensor | None = None) -> np.ndarray:
    """Over the target rows: count, summed NLL of the next token, top-1 hits, summed stored mass.
    ``norm`` is the rows' log-sum-exp if already computed; rows are selected after the row-wise work,
    so the (P x V) logits are never copied."""
    if not bool(is_target.any()):
        return np.zeros(len(STATS))
    if norm is None:
        norm = torch.logsumexp(logits, dim=1)
    nll = (norm - logits.gather(1, next_tokens[:, None]).squeeze(1))[is_target]
    hits = logits.argmax(dim=1)[is_target] == next_tokens[is_target]
    kept = mass.to(is_target.device)[is_target]
    return np.asarray([float(is_target.sum()), float(nll.double().sum()), float(hits.sum()),
                       float(kept.double().sum())])
