"""The ``sample:K[:T][:fp32]`` codec: K classes drawn from the teacher at temperature T, an unbiased
sparse target for the KL at T (Anshumann et al., ACL 2025).

    >>> get_codec("sample:12:4").for_classes(151936)   # 12 draws at T = 4, indices uint32
    >>> codec.sampled_at                               # 4.0: the only temperature its targets serve

Draws are a pure function of (``SAMPLE_SEED``, shard, logits), so a resumed or distributed dump
draws what an uninterrupted one does; a token dump draws on the device from the same host-made
uniforms (``uniforms``, ``reduce_logits``). There is no dense form: only losses that read its
``SampledTargets`` can use it.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError
from .base import ArraySpec, SparseCodec, index_dtype, logsumexp, to_host
from .catalog import parse_entries, register_family
from .target_types import SampledTargets

SAMPLE_SEED = 0x5EED  # draws are a pure function of (this seed, shard, logits): resumable and repeatable


class SampleCodec(SparseCodec):
    """K draws from the teacher's distribution at temperature T, kept as unique classes with counts.

    Per row: ``indices`` (unique sampled classes, ascending, padded with the dtype's maximum),
    ``counts`` (uint16, 0 for padding) and ``logprobs`` (float16, the teacher's log-probability of
    each sampled class at T). With w = count / K, ``sum_k w_k (logprobs_k - log q_k)`` is an unbiased
    estimate of KL(p_T || q_T) and its gradient of the dense gradient (Anshumann et al., ACL 2025):
    the KL loss must then run at the same temperature T. There is no dense form.
    """

    target_type = SampledTargets
    has_dense_form = False
    mass_note = "in the sampled classes"

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

    @property
    def sampled_at(self) -> float:
        """T: the only temperature its targets estimate the KL at."""
        return self.temperature

    def for_classes(self, num_classes: int) -> SampleCodec:
        return SampleCodec(self.k, self.temperature, self.values, num_classes)

    def encode(self, logits):
        return self.encode_shard(logits, 0)

    def encode_shard(self, logits, shard: int):
        wide = logits.astype(np.float64) / self.temperature
        logp = wide - logsumexp(wide)[:, None]
        cdf = np.cumsum(np.exp(logp), axis=1)
        rows, classes = logits.shape
        draws = self.uniforms(shard, rows)
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

    def reduce_logits(self, logits, uniforms):
        # docstring inherited; the draws on the device, from the host's uniforms
        import torch

        scaled = logits if self.temperature == 1.0 else logits / self.temperature  # x / 1.0 is x, bit for bit
        logp = torch.log_softmax(scaled, dim=1)
        cdf = logp.double().exp_().cumsum_(dim=1)  # in place: the same values, two fewer (P x V) float64 tensors
        target = torch.as_tensor(uniforms, device=logits.device) * cdf[:, -1:]
        draws = torch.searchsorted(cdf, target, right=True).clamp_(max=logits.shape[1] - 1)
        picked = torch.gather(logp, 1, draws)
        stored = self.from_draws(*to_host(draws, picked))
        return stored, torch.as_tensor(self.stored_mass(stored)), None

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


def parse_sample(name: str) -> SampleCodec:
    """``sample:K[:T][:fp16|fp32]`` -> its codec (T = 1 unless given; a later T wins).

    Raises:
        SpecError: K is not a positive integer, or a part is neither a temperature > 0 nor fp16/fp32.
    """
    k, values, extra = parse_entries(name, "sample")
    temperature = 1.0
    for part in extra:
        try:
            temperature = float(part)
        except ValueError:
            temperature = 0.0
        if not temperature > 0:
            raise SpecError(f"codec {name!r} is not of the form sample:K[:T][:fp32] with T > 0")
    return SampleCodec(k, temperature, values)


register_family("sample", "sample:K[:T]", parse_sample, examples=("sample:4", "sample:6:2:fp32"))
