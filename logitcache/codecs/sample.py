"""The ``sample:K[:T][:fp16|:fp32|:counts]`` codec: K classes drawn from the teacher at temperature T,
an unbiased sparse target for the KL at T (Anshumann et al., ACL 2025).

    >>> get_codec("sample:12:4").for_classes(151936)   # 12 draws at T = 4, ids in 18 bits (packed_ids.py)
    >>> codec.sampled_at                               # 4.0: the only temperature its targets serve
    >>> get_codec("sample:12:fp16")                    # per-class log-probabilities, as before format v7
    >>> get_codec("sample:12:counts")                  # the classes and counts only, no log-probabilities
    >>> codec.with_index_gaps(False)                   # ids as ids: how teachers before format v6 keep them
    >>> codec.with_logprob_sum(False)                  # per-class float16: teachers before v7 named sample:K

Draws are a pure function of (``SAMPLE_SEED``, shard, logits), so a resumed or distributed dump
draws what an uninterrupted one does; a token dump draws on the device from the same host-made
uniforms (``uniforms``, ``reduce_logits``). There is no dense form: only losses that read its
``SampledTargets`` can use it.

``sample:K[:T]`` keeps one float32 per row (format v7, ``logprob_sum`` in the teacher's record):
``sum_k w_k log p_k``, the only way every loss reads the log-probabilities (with w = count / K; the
KL's gradient does not depend on them at all). Its targets give that sum as every used class's
log-probability: the weights sum to 1, so ``sum_k w_k (log p_k - log q_k)`` keeps its value and
its gradient (benchmarks/RESULTS.md: 19 B/token at V = 131,072 where float16 per class took 32).
``:fp16`` and ``:fp32`` keep each class's log-probability, as every ``sample:K`` before v7 did.

``:counts`` keeps no log-probabilities (format v5): its targets carry log p = 0 for every class, so
the KL's formula ``sum_k w_k (log p_k - log q_k)`` becomes the sampled cross-entropy
``-sum_k w_k log q_k``, an unbiased estimate of CE(p_T, q_T) = KL(p_T || q_T) + H(p_T): the same
gradient as the KL (H(p_T) does not depend on the student), a loss value higher by the teacher's
entropy, which a store without log-probabilities cannot know.

A row's unique classes are ascending, so new teachers keep them as gaps (format v6, ``index_gaps``
in the teacher's record; ``packed_ids.to_gaps``): small numbers where the draws cluster, which the
chunks' compression finds. The arrays, their dtypes and widths are those of ids.
"""

from __future__ import annotations

import copy

import numpy as np

from ..errors import SpecError
from .codec_interface import ArraySpec, SparseCodec, logsumexp, to_host
from .catalog import parse_entries, register_family
from .packed_ids import GAPS_VERSION, LOGPROB_SUM_VERSION, PACKED_VERSION, from_gaps, packed_index_bits, to_gaps
from .target_types import SampledTargets

SAMPLE_SEED = 0x5EED  # draws are a pure function of (this seed, shard, logits): resumable and repeatable
# T outside these draws one class or a uniform guess anyway; far outside, logits / T leaves float32 (1e-300: NaN)
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
ROW_SUM = "sum"  # ``values`` of the form that keeps each row's sum_k w_k log p_k, one float32 (format v7)
SUM_ARRAY = "logprob_sum"


class SampleCodec(SparseCodec):
    """K draws from the teacher's distribution at temperature T, kept as unique classes with counts.

    Per row: ``indices`` (unique sampled classes, ascending, padded with ``padding_id``; as gaps
    with ``index_gaps``, padded with 0; above 65,536 classes their low 16 bits, the rest in
    ``indices_high``), ``counts`` (uint16, 0 for padding) and ``logprob_sum`` (float32, the row's
    ``sum_k w_k log p_k`` at T; format v7), or with ``:fp16``/``:fp32`` ``logprobs`` (the teacher's
    log-probability of each sampled class at T), or neither (``:counts``). With w = count /
    K, ``sum_k w_k (logprobs_k - log q_k)`` is an unbiased estimate of KL(p_T || q_T) and its
    gradient of the dense gradient (Anshumann et al., ACL 2025): the KL loss must then run at the
    same temperature T. There is no dense form.
    """

    target_type = SampledTargets
    has_dense_form = False
    packs_indices = True
    mass_note = "in the sampled classes"

    def __init__(self, k: int, temperature: float = 1.0, values: str | None = ROW_SUM,
                 num_classes: int | None = None, index_gaps: bool = True):
        """``values``: ``ROW_SUM`` (one sum per row), the per-class log-probabilities' dtype, or None
        to keep none (``:counts``); ``index_gaps``: ids kept as gaps (format v6; False: as teachers
        before v6 keep them)."""
        self.k, self.temperature, self.num_classes = k, temperature, num_classes
        self.index_gaps = index_gaps
        self.index_bits = packed_index_bits(num_classes)
        self._keep_values(values)
        self.name = self.form_name

    def _keep_values(self, values: str | None) -> None:
        """The arrays, description and mass note of a form (``values`` as ``__init__``'s); the name stays."""
        self.values = values
        self.description = f"{self.k} draws from the teacher at T={self.temperature:g}, unique classes with counts" + {
            None: " (no log-probabilities: the loss is the sampled cross-entropy)",
            ROW_SUM: " and one log-probability sum per row"}.get(values, "")
        self.arrays = {**self.index_arrays(), "counts": ArraySpec("uint16", True, 0, width=self.k)}
        if values == ROW_SUM:
            self.arrays[SUM_ARRAY] = ArraySpec("float32", False, float("nan"))
        elif values is not None:
            self.arrays["logprobs"] = ArraySpec(values, True, float("nan"), width=self.k)
        self.mass_note = {None: "only counts of sampled classes: no probabilities",
                          ROW_SUM: "a row sum keeps no class's probability"
                          }.get(values, SampleCodec.mass_note)

    @property
    def form_name(self) -> str:
        # docstring inherited; the name __init__ gives these values
        return f"sample:{self.k}" + (f":{self.temperature:g}" if self.temperature != 1.0 else "") + {
            "float16": ":fp16", "float32": ":fp32", None: ":counts"}.get(self.values, "")

    @property
    def logprob_sum(self) -> bool:
        """True where each row keeps its ``sum_k w_k log p_k`` instead of per-class values (format v7)."""
        return self.values == ROW_SUM

    @property
    def format_version(self) -> int:
        if self.logprob_sum:
            return LOGPROB_SUM_VERSION
        if self.index_gaps:
            return GAPS_VERSION
        return PACKED_VERSION if self.values is None else super().format_version

    def with_index_gaps(self, gaps):
        # docstring inherited
        if type(gaps) is not bool:
            raise SpecError(f"codec {self.name}: index_gaps {gaps!r} is neither true nor false")
        if gaps == self.index_gaps:
            return self
        twin = copy.copy(self)
        twin.index_gaps = gaps
        return twin

    def with_logprob_sum(self, row_sum):
        # docstring inherited; False on sample:K (a record without the field) is its float16 per-class form
        if type(row_sum) is not bool:
            raise SpecError(f"codec {self.name}: logprob_sum {row_sum!r} is neither true nor false")
        if row_sum == self.logprob_sum:
            return self
        if row_sum:
            raise SpecError(f"codec {self.name} keeps {'no' if self.values is None else 'per-class'} "
                            "log-probabilities, not one sum per row (logprob_sum true)")
        twin = copy.copy(self)
        twin._keep_values("float16")
        return twin

    @property
    def sampled_at(self) -> float:
        """T: the only temperature its targets estimate the KL at."""
        return self.temperature

    def for_classes(self, num_classes: int) -> SampleCodec:
        twin = copy.copy(self)  # the name too: a per-class twin (``with_logprob_sum``) keeps its record's
        twin.num_classes, twin.index_bits = num_classes, packed_index_bits(num_classes)
        twin._keep_values(self.values)
        return twin

    def encode(self, logits):
        return self.encode_shard(logits, 0)

    def encode_shard(self, logits, shard: int):
        wide = logits.astype(np.float64) / self.temperature
        logp = wide - logsumexp(wide)[:, None]
        cdf = np.cumsum(np.exp(logp), axis=1)
        rows, classes = logits.shape
        draws = self.uniforms(shard, rows)
        picked = np.minimum(search_right(cdf, draws * cdf[:, -1:]), classes - 1)  # inverse CDF, per draw
        return self._stored(*self._unique_draws(picked, np.take_along_axis(logp, picked, 1)))

    def uniforms(self, shard: int, rows: int) -> np.ndarray:
        """(rows, K) uniform draws in [0, 1) for one shard: a pure function of the seed and shard, so
        a resumed or distributed dump draws exactly what an uninterrupted one does."""
        return np.random.default_rng([SAMPLE_SEED, shard]).random((rows, self.k))

    def from_draws(self, draws: np.ndarray, logprobs: np.ndarray) -> dict:
        """The stored arrays from K drawn classes per row and their log-probabilities at T (drawn
        elsewhere, e.g. on the device): unique classes ascending, their counts, padding filled."""
        return self._stored(*self._unique_draws(draws, logprobs))

    def _unique_draws(self, draws: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, K) draws and their log-probabilities -> each row's unique classes ascending (int64,
        padded with ``padding_id``), their counts (uint16) and log-probabilities (NaN for padding)."""
        rows, k = draws.shape
        order = np.argsort(draws, axis=1, kind="stable")
        draws, logprobs = np.take_along_axis(draws, order, 1), np.take_along_axis(logprobs, order, 1)
        first = np.ones((rows, k), dtype=bool)
        first[:, 1:] = draws[:, 1:] != draws[:, :-1]
        slot = np.cumsum(first, axis=1) - 1  # each draw's place among its row's unique classes
        row = np.repeat(np.arange(rows), k).reshape(rows, k)
        indices = np.full((rows, k), self.padding_id, dtype=np.int64)
        counts = np.zeros((rows, k), dtype=np.uint16)
        values = np.full((rows, k), np.nan, dtype=_VALUE_DTYPES.get(self.values, self.values))
        indices[row[first], slot[first]] = draws[first]
        values[row[first], slot[first]] = logprobs[first]
        np.add.at(counts, (row, slot), 1)
        return indices, counts, values

    def _stored(self, indices: np.ndarray, counts: np.ndarray, logprobs: np.ndarray) -> dict:
        """The arrays as stored: the ids as gaps (``index_gaps``), cast or split, the log-probabilities
        kept per class, as each row's sum (``logprob_sum``), or not at all (``:counts``)."""
        if self.index_gaps:
            indices = to_gaps(indices, counts > 0)
        stored = {**self.store_indices(indices), "counts": counts}
        if self.logprob_sum:
            return {**stored, SUM_ARRAY: _row_sums(counts, logprobs, self.k)}
        return stored if self.values is None else {**stored, "logprobs": logprobs}

    def read_indices(self, stored):
        # docstring inherited; gaps summed back to ids, padding (zero counts) as ``padding_id``
        if not self.index_gaps:
            return super().read_indices(stored)
        return from_gaps(self._gaps(stored), stored["counts"] > 0, self.padding_id)

    def _gaps(self, stored: dict) -> np.ndarray:
        """The stored gaps, joined where they are split (uint16 ones as they are: summing widens them)."""
        return stored["indices"] if self.index_bits is None else super().read_indices(stored)

    def reduce_logits(self, logits, uniforms):
        # docstring inherited; the draws on the device, from the host's uniforms
        import torch

        scaled = logits if self.temperature == 1.0 else logits / self.temperature  # x / 1.0 is x, bit for bit
        logp = torch.log_softmax(scaled, dim=1)
        cdf = logp.double().exp_().cumsum_(dim=1)  # in place: the same values, two fewer (P x V) float64 tensors
        target = torch.as_tensor(uniforms, device=logits.device) * cdf[:, -1:]
        draws = torch.searchsorted(cdf, target, right=True).clamp_(max=logits.shape[1] - 1)
        picked = torch.gather(logp, 1, draws)
        indices, counts, logprobs = self._unique_draws(*to_host(draws, picked))
        mass = _mass(counts, logprobs)  # before ``:counts`` drops the log-probabilities
        return self._stored(indices, counts, logprobs), torch.as_tensor(mass), None

    def decode(self, stored):
        raise SpecError(f"codec {self.name} stores samples, not a distribution: only --loss kl can use it")

    def rows_ok(self, stored):
        complete = stored["counts"].sum(axis=1, dtype=np.int64) == self.k
        if self.values is None:
            return complete
        if self.logprob_sum:
            return complete & np.isfinite(stored[SUM_ARRAY])
        used = stored["counts"] > 0
        return complete & np.where(used, np.isfinite(stored["logprobs"].astype(np.float32)), True).all(axis=1)

    def top_classes(self, stored, k):
        # docstring inherited; a row's padding, when it has fewer than k classes, is -1 (no class)
        counts = stored["counts"].astype(np.int64)
        order = np.argsort(-counts, axis=1, kind="stable")[:, :k]
        ids = np.where(counts > 0, self.read_indices(stored), -1)
        return np.take_along_axis(ids, order, axis=1)

    def stored_mass(self, stored):
        """docstring inherited; None with ``:counts`` or one sum per row, which hold no class's
        probability (a token dump weighs its sampled classes' mass on the device, before it drops them)."""
        if self.values is None or self.logprob_sum:
            return None
        return _mass(stored["counts"], stored["logprobs"])

    def sparse_targets(self, stored):
        counts = stored["counts"].astype(np.float32)
        used = counts > 0
        return {
            "indices": from_gaps(self._gaps(stored), used, 0) if self.index_gaps
            else np.where(used, super().read_indices(stored), 0),
            "weights": counts / self.k,
            "logprobs": np.zeros(counts.shape, np.float32) if self.values is None  # the cross-entropy: module doc
            else np.where(used, stored[SUM_ARRAY][:, None], np.float32(0)) if self.logprob_sum  # same loss: module doc
            else np.where(used, stored["logprobs"].astype(np.float32), 0.0),
        }


_VALUE_DTYPES = {None: "float16", ROW_SUM: "float64"}  # the per-class values a form draws (a sum: exact ones)


def _row_sums(counts: np.ndarray, logprobs: np.ndarray, k: int) -> np.ndarray:
    """(n,) float32 ``sum_k (count_k / K) log p_k`` over each row's used slots, summed in float64."""
    terms = np.where(counts > 0, counts * logprobs.astype(np.float64), 0.0)
    return (terms.sum(axis=1) / k).astype(np.float32)


def _mass(counts: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """(n,) the probability mass of each row's unique sampled classes."""
    return np.where(counts > 0, np.exp(logprobs.astype(np.float64)), 0.0).sum(axis=1)


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
    """``sample:K[:T][:fp16|fp32|counts]`` -> its codec (T = 1 unless given; a later T wins; one
    log-probability sum per row unless ``fp16``/``fp32`` (per class) or ``counts`` (none)).

    Raises:
        SpecError: K is not a positive integer, a part is neither a temperature nor fp16/fp32/counts,
            a temperature outside [MIN_TEMPERATURE, MAX_TEMPERATURE] (inf, nan), or fp32 with counts.
    """
    k, values, extra = parse_entries(name, "sample")
    if "counts" in extra:
        if values == "float32":
            raise SpecError(f"codec {name!r} keeps no log-probabilities (counts): fp32 has nothing to apply to")
        values, extra = None, [part for part in extra if part != "counts"]  # fp16 with it: as before v7, nothing
    elif not {"fp16", "fp32"} & set(name.split(":")[2:]):  # neither: one sum per row
        values = ROW_SUM
    temperature = 1.0
    for part in extra:
        try:
            temperature = float(part)
        except ValueError:
            raise SpecError(f"codec {name!r} is not of the form sample:K[:T][:fp16|:fp32|:counts] with T > 0") from None
        if not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:  # nan too
            raise SpecError(f"codec {name!r}: the temperature {part} is not between {MIN_TEMPERATURE:g} and "
                            f"{MAX_TEMPERATURE:g}")
    return SampleCodec(k, temperature, values)


register_family("sample", "sample:K[:T]", parse_sample,
                examples=("sample:4", "sample:6:2:fp32", "sample:3:fp16", "sample:5:3:counts"))
