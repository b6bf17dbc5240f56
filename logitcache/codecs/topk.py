"""The ``topk:K[:fp32]`` codec: the K most probable classes exactly, the rest as one tail bucket.

    >>> get_codec("topk:50").for_classes(21841)   # indices uint16, log-probabilities fp16, tail fp32
    >>> get_codec("topk:8").for_classes(131072)   # ids in 17 bits: 16 in indices, 1 in indices_high (v5)
    >>> get_codec("topk:50:fp32")                 # float32 log-probabilities instead of float16

For large label spaces: a KL loss reads its sparse targets (``TopKTargets``) as they are, and it
also decodes to a dense distribution (the tail spread evenly) for the losses that need one. A
token dump takes the top K on the device (``reduce_logits``); the token teacher then also keeps
each position's log-sum-exp of the raw logits.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError
from .codec_interface import ArraySpec, SparseCodec, logsumexp, to_host
from .catalog import parse_entries, register_family
from .packed_ids import packed_index_bits
from .target_types import TopKTargets


class TopKCodec(SparseCodec):
    """The K most probable classes exactly, plus the rest as one tail bucket.

    Stores per row the top-K class indices (uint16 up to 65,536 classes, else in ceil(log2 C) bits,
    ``packed_ids.py``; uint32 in stores before format v5), their
    log-probabilities (float16) and the log of the remaining probability mass (float32), computed
    with a log-sum-exp over the other classes so it stays exact when tiny. Decodes to dense
    log-probabilities: the top K as stored, the tail mass spread evenly over the other C - K
    classes. Top-K probabilities and the tail mass are exact (up to float16 rounding); only how the
    tail is shared among its classes is lost.
    """

    target_type = TopKTargets
    packs_indices = True
    keeps_logsumexp = True
    mass_note = "the rest as one tail bucket"

    def __init__(self, k: int, values: str = "float16", num_classes: int | None = None):
        self.k, self.values, self.num_classes = k, values, num_classes
        self.name = f"topk:{k}" + (":fp32" if values == "float32" else "")
        self.description = f"top-{k} log-probabilities with a tail bucket"
        self.index_bits = packed_index_bits(num_classes)
        self.arrays = {
            **self.index_arrays(),
            "logprobs": ArraySpec(values, True, float("nan"), width=k),
            "tail": ArraySpec("float32", False, float("nan")),
        }

    def for_classes(self, num_classes: int) -> TopKCodec:
        if self.k >= num_classes:
            raise SpecError(f"codec {self.name} keeps {self.k} of only {num_classes} classes; use a dense codec")
        return TopKCodec(self.k, self.values, num_classes)

    def encode(self, logits):
        wide = logits.astype(np.float64)
        # The K largest by partition (O(C)), then sorted: most probable first, ties to the lower index.
        top = np.sort(np.argpartition(-wide, self.k - 1, axis=1)[:, : self.k], axis=1)
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(wide, top, 1), axis=1, kind="stable"), 1)
        norm = logsumexp(wide)
        kept = np.take_along_axis(wide, top, axis=1)
        rest = wide.copy()
        np.put_along_axis(rest, top, -np.inf, axis=1)
        tail = logsumexp(rest) - norm
        return {
            **self.store_indices(top),
            "logprobs": (kept - norm[:, None]).astype(self.values),
            "tail": tail.astype(np.float32),
        }

    def from_top(self, indices: np.ndarray, top: np.ndarray, norm: np.ndarray, tail_norm: np.ndarray) -> dict:
        """The stored arrays from a reduction done elsewhere (``reduce_logits``, on the device): the
        top-K class indices (most probable first), their raw logits, the log-sum-exp of each row
        and of the row without its top K."""
        return {
            **self.store_indices(indices),
            "logprobs": (top - norm[:, None]).astype(self.values),
            "tail": (tail_norm - norm).astype(np.float32),
        }

    def reduce_logits(self, logits, uniforms):
        # docstring inherited; the top K and two log-sum-exps on the device, (P x K) values to the host
        import torch

        norm = torch.logsumexp(logits, dim=1)
        top, indices = torch.topk(logits, self.k, dim=1, sorted=True)
        tail_norm = _logsumexp_without(logits, indices, top)
        stored = self.from_top(*to_host(indices, top, norm, tail_norm))
        return stored, torch.exp(top - norm[:, None]).sum(dim=1), norm

    def decode(self, stored):
        indices = self.read_indices(stored)
        rows = len(indices)
        spread = stored["tail"].astype(np.float32) - np.float32(np.log(self.num_classes - self.k))
        dense = np.repeat(spread[:, None], self.num_classes, axis=1)
        valid = indices < self.num_classes  # unwritten rows hold the fill value (and a NaN tail)
        dense[np.nonzero(valid)[0], indices[valid]] = stored["logprobs"].astype(np.float32)[valid]
        dense[~valid.all(axis=1)] = np.nan
        return dense.reshape(rows, self.num_classes)

    def stored_mass(self, stored):
        return np.exp(stored["logprobs"].astype(np.float64)).sum(axis=1)

    def rows_ok(self, stored):
        return np.isfinite(stored["logprobs"].astype(np.float32)).all(axis=1) & np.isfinite(stored["tail"])

    def top_classes(self, stored, k):
        return self.read_indices(stored)[:, :k]

    def sparse_targets(self, stored):
        return {"indices": self.read_indices(stored), "logprobs": stored["logprobs"].astype(np.float32),
                "tail": stored["tail"].astype(np.float32)}


def _logsumexp_without(logits, indices, values):
    """The log-sum-exp of each row without the entries at ``indices`` (whose values are ``values``).
    The block is masked in place and restored exactly, rather than copied whole."""
    import torch

    if logits.requires_grad:
        return torch.logsumexp(logits.scatter(1, indices, float("-inf")), dim=1)
    logits.scatter_(1, indices, float("-inf"))
    try:
        return torch.logsumexp(logits, dim=1)
    finally:
        logits.scatter_(1, indices, values)


def parse_topk(name: str) -> TopKCodec:
    """``topk:K[:fp16|fp32]`` -> its codec.

    Raises:
        SpecError: K is not a positive integer, or a part is neither fp16 nor fp32.
    """
    k, values, extra = parse_entries(name, "topk")
    if extra:
        raise SpecError(f"codec {name!r} is not of the form topk:K[:fp32]")
    return TopKCodec(k, values)


register_family("topk", "topk:K", parse_topk, examples=("topk:5", "topk:3:fp32"))
