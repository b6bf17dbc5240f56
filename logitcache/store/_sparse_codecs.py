"""Sparse codecs for large label spaces: ``topk:K`` (top-K plus a tail bucket) and ``sample:K``
(K classes drawn from the teacher's distribution, an unbiased sparse target).

    >>> get_codec("topk:50").for_classes(21841)        # indices uint16, log-probs fp16, tail fp32
    >>> get_codec("sample:12:4").for_classes(151936)   # 12 draws at temperature 4, indices uint32
    >>> get_codec("topk:50:fp32")                      # float32 values instead of float16

Both keep per row K entries; the index dtype is uint16 up to 65,536 classes, else uint32, and the
values float16 (or float32 with a ``:fp32`` suffix). They
hand losses sparse targets (``sparse_targets``) so nothing dense is built for a KL loss; topk also
decodes to a dense distribution for losses that need one.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError
from ._codec_base import ArraySpec, Codec

SAMPLE_SEED = 0x5EED  # draws are a pure function of (this seed, shard, logits): resumable and repeatable


def index_dtype(num_classes: int | None) -> str:
    return "uint16" if num_classes is not None and num_classes <= 65536 else "uint32"


def search_right(cdf: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For every row r and column k, ``np.searchsorted(cdf[r], targets[r, k], side="right")``: the
    number of entries of the non-decreasing row that are <= the target, found by one bisection run
    on all of them at once (the very comparisons searchsorted makes, so the very same answers)."""
    rows = np.arange(len(cdf))[:, None]
    low = np.zeros(targets.shape, dtype=np.int64)
    high = np.full(targets.shape, cdf.shape[1], dtype=np.int64)
    while True:
        open_ = low < high
        if not open_.any():
            return low
        middle = (low + high) // 2
        right = cdf[rows, np.minimum(middle, cdf.shape[1] - 1)] <= targets
        low = np.where(open_ & right, middle + 1, low)
        high = np.where(open_ & ~right, middle, high)


def logsumexp(values: np.ndarray) -> np.ndarray:
    top = values.max(axis=1)
    return top + np.log(np.exp(values - top[:, None]).sum(axis=1))


class TopKCodec(Codec):
    """The K most probable classes exactly, plus the rest as one tail bucket.

    Stores per row the top-K class indices (uint16 up to 65,536 classes, else uint32), their
    log-probabilities (float16) and the log of the remaining probability mass (float32), computed
    with a log-sum-exp over the other classes so it stays exact when tiny. Decodes to dense
    log-probabilities: the top K as stored, the tail mass spread evenly over the other C - K
    classes. Top-K probabilities and the tail mass are exact (up to float16 rounding); only how the
    tail is shared among its classes is lost.
    """

    sparse_form = True

    def __init__(self, k: int, values: str = "float16", num_classes: int | None = None):
        self.k, self.values, self.num_classes = k, values, num_classes
        self.name = f"topk:{k}" + (":fp32" if values == "float32" else "")
        self.description = f"top-{k} log-probabilities with a tail bucket"
        dtype = index_dtype(num_classes)
        self.arrays = {
            "indices": ArraySpec(dtype, True, int(np.iinfo(dtype).max), width=k),
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
            "indices": top.astype(self.arrays["indices"].dtype),
            "logprobs": (kept - norm[:, None]).astype(self.values),
            "tail": tail.astype(np.float32),
        }

    def from_top(self, indices: np.ndarray, top: np.ndarray, norm: np.ndarray, tail_norm: np.ndarray) -> dict:
        """The stored arrays from a reduction done elsewhere (a token dump's, on the device): the
        top-K class indices (most probable first), their raw logits, the log-sum-exp of each row
        and of the row without its top K."""
        return {
            "indices": indices.astype(self.arrays["indices"].dtype),
            "logprobs": (top - norm[:, None]).astype(self.values),
            "tail": (tail_norm - norm).astype(np.float32),
        }

    def decode(self, stored):
        indices = stored["indices"].astype(np.int64)
        rows = len(indices)
        spread = stored["tail"].astype(np.float32) - np.float32(np.log(self.num_classes - self.k))
        dense = np.repeat(spread[:, None], self.num_classes, axis=1)
        valid = indices < self.num_classes  # unwritten rows hold the index fill value
        dense[np.nonzero(valid)[0], indices[valid]] = stored["logprobs"].astype(np.float32)[valid]
        dense[~valid.all(axis=1)] = np.nan
        return dense.reshape(rows, self.num_classes)

    def stored_mass(self, stored):
        return np.exp(stored["logprobs"].astype(np.float64)).sum(axis=1)

    def rows_ok(self, stored):
        return np.isfinite(stored["logprobs"].astype(np.float32)).all(axis=1) & np.isfinite(stored["tail"])

    def top_classes(self, stored, k):
        return stored["indices"][:, :k].astype(np.int64)

    def sparse_targets(self, stored):
        return {"indices": stored["indices"].astype(np.int64), "logprobs": stored["logprobs"].astype(np.float32),
                "tail": stored["tail"].astype(np.float32)}



class SampleCodec(Codec):
    """K draws from the teacher's distribution at temperature T, kept as unique classes with counts.

    Per row: ``indices`` (unique sampled classes, ascending, padded with the dtype's maximum),
    ``counts`` (uint16, 0 for padding) and ``logprobs`` (float16, the teacher's log-probability of
    each sampled class at T). With w = count / K, ``sum_k w_k (logprobs_k - log q_k)`` is an unbiased
    estimate of KL(p_T || q_T) and its gradient of the dense gradient (Anshumann et al., ACL 2025):
    the KL loss must then run at the same temperature T. There is no dense form.
    """

    sparse_form = True
    sparse_only = True

    def __init__(self, k: int, temperature: float = 1.0, values: str = "float16", num_classes: int | None = None):
        self.k, self.temperature, self.values, self.num_classes = k, temperature, values, num_classes
        self.name = f"sample:{k}" + (f":{temperature:g}" if temperature != 1.0 else "") + (
            ":fp32" if values == "float32" else "")
        self.description = f"{k} draws from the teacher at T={temperature:g}, unique classes with counts"
        dtype = index_dtype(num_classes)
        self.arrays = {
            "indices": ArraySpec(dtype, True, int(np.iinfo(dtype).max), width=k),
            "counts": ArraySpec("uint16", True, 0, width=k),
            "logprobs": ArraySpec(values, True, float("nan"), width=k),
        }

    def for_classes(self, num_classes: int) -> SampleCodec:
        return SampleCodec(self.k, self.temperature, self.values, num_classes)

    def encode(self, logits):
        return self.encode_shard(logits, 0)

    def encode_shard(self, logits, shard: int):
        wide = logits.astype(np.float64) / self.temperature
        logp = wide - logsumexp(wide)[:, None]
        cdf = np.cumsum(np.exp(logp), axis=1)
        rows, classes = logits.shape
        draws = np.random.default_rng([SAMPLE_SEED, shard]).random((rows, self.k))
        picked = np.minimum(search_right(cdf, draws * cdf[:, -1:]), classes - 1)  # inverse CDF, per draw
        # np.unique of each row, for all rows at once: sorted draws, a class where the run starts
        picked.sort(axis=1)
        first = np.ones(picked.shape, dtype=bool)
        first[:, 1:] = picked[:, 1:] != picked[:, :-1]
        slot = np.cumsum(first, axis=1) - 1  # the column each draw's class lands in
        row = np.broadcast_to(np.arange(rows)[:, None], picked.shape)
        indices = np.full((rows, self.k), self.arrays["indices"].fill_value, dtype=self.arrays["indices"].dtype)
        counts = np.zeros((rows, self.k), dtype=np.uint16)
        logprobs = np.full((rows, self.k), np.nan, dtype=self.values)
        indices[row[first], slot[first]] = picked[first]
        np.add.at(counts, (row, slot), 1)
        logprobs[row[first], slot[first]] = logp[row[first], picked[first]]
        return {"indices": indices, "counts": counts, "logprobs": logprobs}

    def uniforms(self, shard: int, rows: int) -> np.ndarray:
        """(rows, K) uniform draws in [0, 1) for one shard: a pure function of the seed and shard, so
        a resumed or distributed dump draws exactly what an uninterrupted one does."""
        return np.random.default_rng([SAMPLE_SEED, shard]).random((rows, self.k))

    def from_draws(self, draws: np.ndarray, logprobs: np.ndarray) -> dict:
        """The stored arrays from K drawn classes per row and their log-probabilities at T (drawn
        elsewhere, e.g. on the device): unique classes ascending, their counts, padding filled."""
        rows, k = draws.shape
        order = np.argsort(draws, axis=1, kind="stable")
        draws, logprobs = np.take_along_axis(draws, order, 1), np.take_along_axis(logprobs, order, 1)
        first = np.ones((rows, k), dtype=bool)
        first[:, 1:] = draws[:, 1:] != draws[:, :-1]
        slot = np.cumsum(first, axis=1) - 1  # each draw's place among its row's unique classes
        row = np.repeat(np.arange(rows), k).reshape(rows, k)
        indices = np.full((rows, k), self.arrays["indices"].fill_value, dtype=self.arrays["indices"].dtype)
        counts = np.zeros((rows, k), dtype=np.uint16)
        values = np.full((rows, k), np.nan, dtype=self.values)
        indices[row[first], slot[first]] = draws[first]
        values[row[first], slot[first]] = logprobs[first]
        np.add.at(counts, (row, slot), 1)
        return {"indices": indices, "counts": counts, "logprobs": values}

    def decode(self, stored):
        raise SpecError(f"codec {self.name} stores samples, not a distribution: only --loss kl can use it")

    def rows_ok(self, stored):
        used = stored["counts"] > 0
        finite = np.where(used, np.isfinite(stored["logprobs"].astype(np.float32)), True).all(axis=1)
        return finite & (stored["counts"].sum(axis=1, dtype=np.int64) == self.k)

    def top_classes(self, stored, k):
        order = np.argsort(-stored["counts"].astype(np.int64), axis=1, kind="stable")[:, :k]
        return np.take_along_axis(stored["indices"].astype(np.int64), order, axis=1)

    def stored_mass(self, stored):
        used = stored["counts"] > 0
        return np.where(used, np.exp(stored["logprobs"].astype(np.float64)), 0.0).sum(axis=1)

    def sparse_targets(self, stored):
        counts = stored["counts"].astype(np.float32)
        used = counts > 0
        return {
            "indices": np.where(used, stored["indices"].astype(np.int64), 0),
            "weights": counts / self.k,
            "logprobs": np.where(used, stored["logprobs"].astype(np.float32), 0.0),
        }


def parse_sparse_codec(name: str) -> Codec | None:
    """``topk:K[:fp32]`` or ``sample:K[:T][:fp32]`` -> a codec; None if ``name`` is neither."""
    family, *parts = name.split(":")
    if family not in ("topk", "sample"):
        return None
    try:
        k = int(parts[0]) if parts else 0
    except ValueError:
        k = 0
    if k < 1:
        raise SpecError(f"codec {name!r} needs a positive number of entries, e.g. {family}:50")
    values, temperature = "float16", 1.0
    for part in parts[1:]:
        if part in ("fp16", "fp32"):
            values = "float16" if part == "fp16" else "float32"
            continue
        try:
            temperature = float(part) if family == "sample" else 0.0
        except ValueError:
            temperature = 0.0
        if not temperature > 0:
            grammar = "topk:K[:fp32]" if family == "topk" else "sample:K[:T][:fp32] with T > 0"
            raise SpecError(f"codec {name!r} is not of the form {grammar}")
    if family == "topk":
        return TopKCodec(k, values)
    return SampleCodec(k, temperature, values)
