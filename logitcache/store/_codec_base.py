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


def cast(values: np.ndarray, dtype) -> np.ndarray:
    """``values.astype(dtype)`` between float32 and float16, bit for bit as numpy rounds (to nearest,
    ties to even), by torch's vectorised cast: numpy converts half floats one at a time, 5-10x
    slower, and every shard of an fp16 teacher goes through it on the way in and out. NaN payloads
    may differ (only finite rows are ever encoded; a NaN decodes to a NaN)."""
    dtype = np.dtype(dtype)
    if values.dtype == dtype:
        return values
    torch = _torch()
    if torch is None or not values.flags.writeable or {values.dtype, dtype} != {np.dtype(np.float16),
                                                                               np.dtype(np.float32)}:
        return values.astype(dtype)  # torch shares no read-only memory; other dtypes are numpy's
    wanted = torch.float16 if dtype == np.float16 else torch.float32
    return torch.from_numpy(np.ascontiguousarray(values)).to(wanted).numpy()


def _torch():
    """torch if it is installed (logitcache's stages need it; the format does not), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


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
        For dense codecs, by the argmax and by counting the classes above and tied with each label
        (``_dense_hits``); rows where ties with the label could go either way ask ``top_classes``."""
        labels = np.asarray(labels, dtype=np.int64)
        sets = labels.reshape(-1, labels.shape[-1])
        if self.sparse_form:
            top = self.top_classes(stored, k)
            hits = [(top[:, 0] == one, (top == one[:, None]).any(axis=1)) for one in sets]
        else:
            logits = self.decode(stored)
            first = logits.argmax(axis=1)  # a class with the largest value
            hits = [self._dense_hits(stored, logits, first, one, k) for one in sets]
        return tuple(np.stack(found).reshape(labels.shape) for found in zip(*hits))

    def _dense_hits(self, stored: dict, logits: np.ndarray, first: np.ndarray, labels: np.ndarray, k: int) -> tuple:
        """A label that is the argmax and ties with no other class is the top-1, so among the top k
        (one count over those rows); for the others, the classes above the label, and tied with it
        only where that leaves it among the top k. A tie that ``top_classes``'s partition breaks
        (at the top, or at the k-th place) is answered by it."""
        k = min(k, logits.shape[1])
        top1 = first == labels
        topk = top1.copy()
        hit, rest = np.flatnonzero(top1), np.flatnonzero(~top1)
        tied_at_top = _count(logits[hit] == logits[hit, labels[hit]][:, None]) > 1
        unsure = [hit[tied_at_top]]
        if rest.size:
            rows = logits[rest]
            value = rows[np.arange(len(rest)), labels[rest]][:, None]
            above = _count(rows > value)
            close = np.flatnonzero(above < k)
            tied = _count(rows[close] == value[close]) - 1  # other classes equal to the label's value
            topk[rest[close]] = above[close] + tied < k
            unsure.append(rest[close[((above[close] == 0) & (tied > 0)) | (above[close] + tied >= k)]])
        unsure = np.concatenate(unsure)
        if unsure.size:
            top = self.top_classes({name: values[unsure] for name, values in stored.items()}, k)
            top1[unsure], topk[unsure] = top[:, 0] == labels[unsure], (top == labels[unsure, None]).any(axis=1)
        return top1, topk

    def sparse_targets(self, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The rows as sparse training targets, for codecs that have them (else None)."""
        return None


def _count(flags: np.ndarray) -> np.ndarray:
    """Trues per row of a bool (n, C) array, as int64 (numpy's own count per axis is ~1.6x slower)."""
    wide = np.uint16 if flags.shape[1] < 2**16 else np.uint32
    return flags.view(np.uint8).sum(axis=1, dtype=wide).astype(np.int64)
