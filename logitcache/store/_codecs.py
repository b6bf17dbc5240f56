"""Logit codecs: how float32 logits become the arrays a teacher group stores, and back.

    >>> codec = get_codec("fp16")
    >>> stored = codec.encode(logits)        # {"logits": float16 (n, C)}
    >>> codec.decode(stored)                 # float32 (n, C)

Each codec names the arrays it stores (one row per sample, so all of them shard alike) and the
fill value of each. Fill values are chosen so that a row that was never written decodes to NaN:
a missing chunk can never pass for real logits.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError
from ._codec_base import BFLOAT16_NAN_BITS, FLOAT16_MAX, ArraySpec, Codec, cast
from ._sparse_codecs import parse_sparse_codec

__all__ = ["ArraySpec", "Codec", "CODECS", "get_codec", "list_codecs"]


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
        peak = max(float(logits.max(initial=0.0)), -float(logits.min(initial=0.0)))
        if peak > FLOAT16_MAX:
            raise SpecError(
                f"codec fp16 cannot hold logits of magnitude {peak:.4g} (float16 max is 65504); "
                "use --codec bf16 or --codec fp32"
            )
        return {"logits": cast(logits, np.float16)}

    def decode(self, stored):
        return cast(stored["logits"], np.float32)

    def rows_ok(self, stored):
        exponent = np.uint16(0x7C00)  # all ones: inf or NaN (the fill value); no decoding needed
        return ((stored["logits"].view(np.uint16) & exponent) != exponent).all(axis=1)


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
    if name in CODECS:
        return CODECS[name]
    codec = parse_sparse_codec(name)
    if codec is None:
        raise SpecError(f"unknown codec {name!r}; choose one of {', '.join(list_codecs())}, topk:K, sample:K[:T]")
    return codec
