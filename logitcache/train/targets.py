"""Stored rows -> training targets, a batch at a time (what ``TeacherLogits.take`` hands the loss).

    >>> decode = BatchDecoder(get_codec("fp16"), sparse=False)
    >>> decode.gather({"logits": float16_table}, rows)   # float32 (n, C): the rows, gathered and decoded
    >>> decode({"logits": float16_rows})                 # the same for rows already gathered
"""

from __future__ import annotations

import numpy as np
import torch

GRAIN = 32768  # torch's parallel grain (at::internal::GRAIN_SIZE): smaller ops run on the calling thread


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

    def gather(self, table: dict[str, np.ndarray], index: np.ndarray):
        """The targets of ``table``'s rows ``index``. A dense batch is gathered and decoded slice by
        slice (``_float32``'s slices) straight into its float32 tensor: the stored rows are read once,
        and never copied whole first (numpy's gather, then the decode, took ~1.4x as long at C = 1000)."""
        dense = self._dense_form(table)
        if dense is None:
            return self({name: values[index] for name, values in table.items()})
        values, then = dense
        rows = torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64))
        out = torch.empty((len(rows), *values.shape[1:]), dtype=torch.float32)
        step = max(1, GRAIN // max(1, values[0].numel() if len(values) else 1))
        for start in range(0, len(rows), step):
            part = slice(start, start + step)
            decoded = out[part].copy_(values.index_select(0, rows[part]))
            if then is not None:
                then(rows[part], decoded)
        return out

    def __call__(self, stored: dict[str, np.ndarray]):
        """The targets of rows already gathered (``stored``: each array's rows)."""
        if self.sparse:
            return {key: torch.from_numpy(values) for key, values in self.codec.sparse_targets(stored).items()}
        dense = self._dense_form(stored)
        if dense is None:
            return torch.from_numpy(self.codec.decode(stored))
        values, then = dense
        if values.dtype == torch.float32 and then is None:
            return values
        return _float32(values, then)

    def _dense_form(self, stored: dict[str, np.ndarray]):
        """(the stored values as a torch tensor that ``.float()`` decodes, and what then turns a
        decoded slice of rows into logits, or None), or None for codecs the codec itself decodes."""
        if self.sparse:
            return None
        name = "fp32" if self.ensemble else self.codec.name
        if name in ("fp32", "fp16"):
            return torch.from_numpy(stored["logits"]), None
        if name == "bf16":  # the stored upper 16 bits of each float32
            return torch.from_numpy(stored["logits"].view(np.int16)).view(torch.bfloat16), None
        if name == "u8":  # offset + scale * code, in float32 as the codec decodes
            scale, offset = (torch.from_numpy(stored[k])[:, None] for k in ("scale", "offset"))
            return torch.from_numpy(stored["logits"]), lambda rows, part: part.mul_(scale[rows]).add_(offset[rows])
        return None


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
