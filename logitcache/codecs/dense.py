"""The dense codecs: every class's logit, as float32 (``fp32``), float16 (``fp16``) or bfloat16 (``bf16``).

    >>> codec = get_codec("fp16")
    >>> stored = codec.encode(logits)        # {"logits": float16 (n, C)}
    >>> codec.decode(stored)                 # float32 (n, C)
    >>> codec.decode_batch(stored)           # the same values as a tensor, cast by torch

Fill values are NaN (bf16: a NaN bit pattern), so a row that was never written decodes to NaN: a
missing chunk can never pass for real logits.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError
from .codec_interface import BFLOAT16_NAN_BITS, FLOAT16_MAX, ArraySpec, Codec, cast, float32_slices
from .catalog import register_codec


class Float32Codec(Codec):
    name = "fp32"
    description = "float32 logits, exact"
    arrays = {"logits": ArraySpec("float32", True, float("nan"))}

    def encode(self, logits):
        return {"logits": np.ascontiguousarray(logits, dtype=np.float32)}

    def decode(self, stored):
        return np.asarray(stored["logits"], dtype=np.float32)

    def decode_batch(self, stored):
        import torch

        return torch.from_numpy(stored["logits"])


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

    def decode_batch(self, stored):
        import torch

        return float32_slices(torch.from_numpy(stored["logits"]))

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

    def decode_batch(self, stored):
        import torch

        # the stored upper 16 bits of each float32, read as torch's bfloat16
        return float32_slices(torch.from_numpy(stored["logits"].view(np.int16)).view(torch.bfloat16))


for _codec in (Float32Codec(), Float16Codec(), BFloat16Codec()):
    register_codec(_codec)
