"""Stored rows -> training targets, a batch at a time (what ``TeacherLogits.take`` hands the loss).

    >>> decode = BatchDecoder(get_codec("fp16"), sparse=False)
    >>> decode({"logits": float16_rows})          # float32 (n, C), exactly Teacher.decode's values
    >>> decode.gather({"logits": float16_table}, rows)   # the same for the table's rows ``rows``
"""

from __future__ import annotations

import numpy as np
import torch


class BatchDecoder:
    """Stored rows -> training targets, a batch at a time, by the codec: dense float32 logits
    (``Codec.decode_batch``: through torch, an fp16 row becomes float32 at memory speed), or with
    ``sparse`` its typed sparse targets (``Codec.training_targets``). The values are exactly
    ``Teacher.decode``'s (``tests/train/test_paired_data.py`` holds every codec to that); an ensemble's table
    holds its combined float32 logits already."""

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
            return self.codec.training_targets(stored)
        return self.codec.decode_batch(stored)
