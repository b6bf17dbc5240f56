"""What every logit codec is: the arrays it stores (``ArraySpec``) and the interface (``Codec``).

    >>> class MyCodec(Codec): ...      # name, arrays, encode, decode

The concrete codecs are in ``_codecs.py`` (dense) and ``_sparse_codecs.py`` (topk, sample); both
build on this module, and ``_codecs.get_codec`` names them all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

FLOAT16_MAX = float(np.finfo(np.float16).max)
BFLOAT16_NAN_BITS = 0x7FC0


@dataclass(frozen=True)
class ArraySpec:
    """One stored array: its dtype, its per-row shape, and its fill value."""

    dtype: str
    per_class: bool  # True: (N, width or C); False: (N,)
    fill_value: float | int
    width: int | None = None  # a row of `width` entries instead of C (sparse codecs)


class Codec(ABC):
    """Base class. Subclasses set ``name``, ``arrays``, and implement encode/decode."""

    name: str
    description: str
    arrays: dict[str, ArraySpec]

    @abstractmethod
    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """float32 (n, C) finite logits -> one numpy array per name in ``arrays``."""

    def encode_shard(self, logits: np.ndarray, shard: int) -> dict[str, np.ndarray]:
        """Encode one shard (codecs that draw random numbers seed them by shard)."""
        return self.encode(logits)

    @abstractmethod
    def decode(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """The arrays ``encode`` made -> float32 (n, C) logits (u8: up to a per-row constant)."""

    def for_classes(self, num_classes: int) -> Codec:
        """This codec configured for C classes (sparse codecs pick their index dtype by C)."""
        return self

    def bytes_per_sample(self, num_classes: int) -> int:
        """Uncompressed bytes one sample takes in this codec."""
        return sum(
            np.dtype(spec.dtype).itemsize * ((spec.width or num_classes) if spec.per_class else 1)
            for spec in self.arrays.values()
        )

    def stored_mass(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """(n,) fraction of each row's probability mass held exactly (1 for dense codecs)."""
        return np.ones(len(next(iter(stored.values()))), dtype=np.float64)

    #: True for codecs with sparse training targets (topk:K, sample:K); see ``sparse_targets``.
    sparse_form = False
    #: True for codecs with no dense form (sample:K): only losses that take sparse targets use them.
    sparse_only = False

    def rows_ok(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """(n,) True where a row was written (unwritten rows decode to NaN)."""
        return np.isfinite(self.decode(stored)).all(axis=1)

    def top_classes(self, stored: dict[str, np.ndarray], k: int) -> np.ndarray:
        """(n, k) class indices, most probable first (ties: lower index first)."""
        logits = self.decode(stored)
        k = min(k, logits.shape[1])
        top = np.sort(np.argpartition(-logits, k - 1, axis=1)[:, :k], axis=1)  # O(C), not a full sort
        order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    def label_hits(self, stored: dict[str, np.ndarray], labels: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Bools shaped like ``labels``: the label is the most probable class, and among the ``k`` most
        probable, exactly as ``top_classes`` ranks them. ``labels`` is (n,), or (m, n) for m label sets
        answered from one decoding (the dump asks for the dataset's labels and the teacher's own top-1).
        For dense codecs, by counting the classes above each label (one pass, no partition); rows
        where ties with the label could go either way ask ``top_classes``."""
        labels = np.asarray(labels, dtype=np.int64)
        sets = labels.reshape(-1, labels.shape[-1])
        if self.sparse_form:
            top = self.top_classes(stored, k)
            hits = [(top[:, 0] == one, (top == one[:, None]).any(axis=1)) for one in sets]
        else:
            logits = self.decode(stored)
            hits = [self._dense_hits(stored, logits, one, k) for one in sets]
        return tuple(np.stack(found).reshape(labels.shape) for found in zip(*hits))

    def _dense_hits(self, stored: dict, logits: np.ndarray, labels: np.ndarray, k: int) -> tuple:
        k = min(k, logits.shape[1])
        value = logits[np.arange(len(labels)), labels][:, None]
        above = np.count_nonzero(logits > value, axis=1)
        tied = np.count_nonzero(logits == value, axis=1) - 1  # other classes equal to the label's value
        top1, topk = (above == 0) & (tied == 0), above + tied < k
        unsure = np.flatnonzero(((above == 0) & (tied > 0)) | ((above < k) & (above + tied >= k)))
        if unsure.size:  # ties at the boundary: whatever top_classes's partition does, do the same
            top = self.top_classes({name: values[unsure] for name, values in stored.items()}, k)
            top1[unsure], topk[unsure] = top[:, 0] == labels[unsure], (top == labels[unsure, None]).any(axis=1)
        return top1, topk

    def sparse_targets(self, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The rows as sparse training targets, for codecs that have them (else None)."""
        return None
