"""Stored rows -> training targets, a batch at a time (what ``TeacherLogits.take`` hands the loss).

    >>> decode = BatchDecoder(get_codec("fp16"), sparse=False)
    >>> decode({"logits": float16_rows})          # float32 (n, C), exactly Teacher.decode's values
    >>> decode.gather({"logits": float16_table}, rows)   # the same for the table's rows ``rows``
"""

from __future__ import annotations

import numpy as np
import torch


class BatchDecoder:
    """Stored rows -> training targets, a batch at a time: dense codecs through torch (an fp16 row
    becomes float32 at memory speed; numpy's float16 casts are ~20x slower), sparse codecs through
    the codec's own ``sparse_targets``, anything else through its ``decode``. The values are exactly
    ``Teacher.decode``'s (``tests/test_data.py`` holds every codec to that)."""

    def __init__(self, codec, sparse: bool, ensemble: bool = False):
        self.codec, self.sparse, self.ensemble = codec, sparse, ensemble

    def row_bytes(self, num_classes: int) -> int:
        """Bytes one row takes as the table holds it."""
        return 4 * num_classes if self.ensemble else self.codec.bytes_per_sample(num_classes)

    def gather(self, table: dict[str, np.ndarray], rows: np.ndarray):
        """The targets of ``table``'s rows ``rows``: one ``take`` per array (a little faster than
        fancy indexing), then the batch decoded."""
        return self({name: np.take(values, rows, axis=0) for name, values in table.items()})

    def __call__(self, stored: dict[str, np.ndarray]):
        if self.ensemble:
            return torch.from_numpy(stored["logits"])
        if self.sparse:
            return {key: torch.from_numpy(values) for key, values in self.codec.sparse_targets(stored).items()}
        name = self.codec.name
        if name == "fp32":
            return torch.from_numpy(stored["logits"])
        if name == "fp16":
            return _float32(torch.from_numpy(stored["logits"]))
        if name == "bf16":  # the stored upper 16 bits of each float32
            return _float32(torch.from_numpy(stored["logits"].view(np.int16)).view(torch.bfloat16))
        if name == "u8":  # offset + scale * code, in float32 as the codec decodes
            scale, offset = (torch.from_numpy(stored[k])[:, None] for k in ("scale", "offset"))
            return _float32(torch.from_numpy(stored["logits"]), lambda rows, part: part.mul_(scale[rows]).add_(
                offset[rows]))
        return torch.from_numpy(self.codec.decode(stored))


GRAIN = 32768  # torch's parallel grain (at::internal::GRAIN_SIZE): smaller ops run on the calling thread


def _float32(values: torch.Tensor, then=None) -> torch.Tensor:
    """``values.float()`` (and ``then(rows, part)`` on each part) on the calling thread, in slices under
    torch's parallel grain: a memory-bound cast gains nothing from an intra-op parallel region, and
    one stalls for a whole time slice whenever the cores are busy (DataLoader workers, other jobs)."""
    out = torch.empty(values.shape, dtype=torch.float32)
    step = max(1, GRAIN // max(1, values[0].numel() if len(values) else 1))
    for start in range(0, len(values), step):
        rows = slice(start, start + step)
        part = out[rows].copy_(values[rows])
        if then is not None:
            then(rows, part)
    return out
