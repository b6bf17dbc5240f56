"""Logit codecs: how float32 logits become the arrays a teacher group stores, and back.

    >>> codec = get_codec("fp16")
    >>> stored = codec.encode(logits)        # {"logits": float16 (n, C)}
    >>> codec.decode(stored)                 # float32 (n, C)

Each codec names the arrays it stores (one row per sample, so all of them shard alike) and the
fill value of each. Fill values are chosen so that a row that was never written decodes to NaN:
a missing chunk can never pass for real logits. This module needs numpy only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..errors import SpecError

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

    def sparse_targets(self, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The rows as sparse training targets, for codecs that have them (else None)."""
        return None


class Float32Codec(Codec):
    name = "fp32"
    description = "float32 logits, exact"
    arrays = {"logits": ArraySpec("float32", True, float("nan"))}

    def encode(self, logits):
        return {"logits": np.ascontiguousarray(logits, dtype=np.float32)}

    def decode(self, stored):
        return np.asarray(stored["logits"], dtype=np.float32)


class Float16Codec(Codec):
    name = "fp16"
    description = "IEEE half-precision logits (11-bit mantissa, |x| <= 65504)"
    arrays = {"logits": ArraySpec("float16", True, float("nan"))}

    def encode(self, logits):
        peak = float(np.abs(logits).max(initial=0.0))
        if peak > FLOAT16_MAX:
            raise SpecError(
                f"codec fp16 cannot hold logits of magnitude {peak:.4g} (float16 max is 65504); "
                "use --codec bf16 or --codec fp32"
            )
        return {"logits": logits.astype(np.float16)}

    def decode(self, stored):
        return stored["logits"].astype(np.float32)


class BFloat16Codec(Codec):
    """bfloat16 stored as its raw uint16 bits (zarr 3.1 has no bfloat16 dtype)."""

    name = "bf16"
    description = "bfloat16 logits as uint16 bits (8-bit mantissa, float32 range)"
    arrays = {"logits": ArraySpec("uint16", True, BFLOAT16_NAN_BITS)}

    def encode(self, logits):
        bits = np.ascontiguousarray(logits, dtype=np.float32).view(np.uint32)
        # Round to nearest, ties to even: add 0x7FFF plus the lowest bit that survives.
        rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        return {"logits": ((bits + rounding) >> np.uint32(16)).astype(np.uint16)}

    def decode(self, stored):
        bits = stored["logits"].astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32)


class Uint8LogProbCodec(Codec):
    """Per-row 8-bit quantised log-probabilities: logp ~= offset + scale * code.

    Log-probabilities differ from the logits by a per-row constant, which softmax ignores at any
    temperature, so decoded rows are valid logits. Each row uses its full 0..255 range.
    """

    name = "u8"
    description = "per-row 8-bit quantised log-probabilities with float32 scale and offset"
    arrays = {
        "logits": ArraySpec("uint8", True, 0),
        "scale": ArraySpec("float32", False, float("nan")),
        "offset": ArraySpec("float32", False, float("nan")),
    }

    def encode(self, logits):
        wide = logits.astype(np.float64)
        top = wide.max(axis=1, keepdims=True)
        logp = wide - top - np.log(np.exp(wide - top).sum(axis=1, keepdims=True))
        low, high = logp.min(axis=1), logp.max(axis=1)
        scale = ((high - low) / 255.0).astype(np.float32)
        scale[scale == 0] = 1.0  # a constant row: every code is 0
        offset = low.astype(np.float32)
        codes = np.rint((logp - offset[:, None]) / scale[:, None])
        return {
            "logits": np.clip(codes, 0, 255).astype(np.uint8),
            "scale": scale,
            "offset": offset,
        }

    def decode(self, stored):
        scale = stored["scale"].astype(np.float32)[:, None]
        offset = stored["offset"].astype(np.float32)[:, None]
        return offset + scale * stored["logits"].astype(np.float32)


CODECS: dict[str, Codec] = {
    codec.name: codec
    for codec in (Float32Codec(), Float16Codec(), BFloat16Codec(), Uint8LogProbCodec())
}


def list_codecs() -> list[str]:
    """Codec names accepted by ``get_codec`` and ``--codec`` (plus ``topk:K``, ``sample:K[:T]``)."""
    return sorted(CODECS)


def get_codec(name: str) -> Codec:
    """The codec called ``name``: fp32, fp16, bf16, u8, topk:K or sample:K[:T].

    Raises:
        SpecError: no codec has that name; the message lists the ones that do.
    """
    from ._sparse_codecs import parse_sparse_codec

    if name in CODECS:
        return CODECS[name]
    codec = parse_sparse_codec(name)
    if codec is None:
        raise SpecError(f"unknown codec {name!r}; choose one of {', '.join(list_codecs())}, topk:K, sample:K[:T]")
    return codec
