"""The ``u8`` codec: per-row 8-bit quantised log-probabilities, a quarter of fp32's bytes.

    >>> codec = get_codec("u8")
    >>> stored = codec.encode(logits)   # {"logits": uint8 (n, C), "scale": float32 (n,), "offset": float32 (n,)}
    >>> codec.decode(stored)            # float32 (n, C): offset + scale * code, the log-probabilities
"""

from __future__ import annotations

import numpy as np

from .codec_interface import ArraySpec, Codec, float32_slices
from .catalog import register_codec


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

    def decode_batch(self, stored):
        import torch

        # offset + scale * code in float32, the same two roundings as ``decode``
        scale, offset = (torch.from_numpy(stored[name])[:, None] for name in ("scale", "offset"))
        return float32_slices(torch.from_numpy(stored["logits"]),
                              lambda rows, part: part.mul_(scale[rows]).add_(offset[rows]))


register_codec(Uint8LogProbCodec())
