"""The epoch order: a seeded permutation of the store's rows that is a pure function of (seed, epoch),
block-shuffled when logits are streamed, shared out across ranks, one view per row and epoch.

    >>> sampler = EpochSampler(logits.rows, seed=0, block_rows=logits.block_rows, window_blocks=logits.window_blocks)
    >>> sampler.set_epoch(3); sampler.order()     # the same every time for (seed, epoch)
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """A seeded order over given rows that is a pure function of (seed, epoch).

    Under DDP every rank computes the same order and takes its share (``rank_order``).
    With ``block_rows`` it is a block shuffle: blocks of consecutive rows are visited in random
    order, ``window_blocks`` at a time, with the rows of each window shuffled together. Every
    row still comes exactly once per epoch, and a reader needs only one window of blocks.

    With ``views`` = K > 0 it yields ``row * K + view``: one view per row and epoch, ``random``
    (seeded by (seed, epoch, row)) or ``cycle`` (view (epoch - 1 + row) mod K, so over K epochs
    every sample shows every view once).
    """

    def __init__(self, rows, seed: int, shuffle: bool = True, block_rows: int | None = None,
                 window_blocks: int = 1, rank: int = 0, world_size: int = 1, views: int = 0,
                 view_order: str = "random"):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.seed, self.shuffle = seed, shuffle
        self.block_rows, self.window_blocks = block_rows, max(1, window_blocks)
        self.rank, self.world_size = rank, world_size
        self.views, self.view_order = views, view_order
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.rows) // self.world_size)

    def rank_order(self) -> np.ndarray:
        """This rank's share: every world_size-th row of the epoch's order, padded by wrapping
        around (as DistributedSampler does) so every rank takes the same number of steps."""
        order = self.order()
        if self.world_size == 1:
            return order
        padding = len(self) * self.world_size - len(order)
        return np.concatenate([order, order[:padding]])[self.rank :: self.world_size]

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return self.rows
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.block_rows is None:
            return rng.permutation(self.rows)
        blocks = self.rows // self.block_rows
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        groups = np.split(self.rows, starts[1:])
        visit = rng.permutation(len(groups))
        windows = []
        for first in range(0, len(visit), self.window_blocks):
            window = np.concatenate([groups[g] for g in visit[first : first + self.window_blocks]])
            windows.append(rng.permutation(window))
        return np.concatenate(windows) if windows else self.rows

    def view_of(self, rows: np.ndarray) -> np.ndarray:
        """The view each of ``rows`` shows this epoch."""
        if self.view_order == "cycle":
            return (self.epoch - 1 + rows) % self.views
        choice = np.random.default_rng([self.seed, self.epoch, VIEW_CHOICE_TAG]).integers(
            self.views, size=int(self.rows.max(initial=-1)) + 1)
        return choice[rows]

    def indices(self) -> np.ndarray:
        """This epoch's indices for this rank, in order (what iterating yields, as one array)."""
        order = self.rank_order()
        if self.views:
            order = order * self.views + self.view_of(order)
        return order

    def __iter__(self):
        return iter(self.indices().tolist())


class ArrayBatches(Sampler[np.ndarray]):
    """``BatchSampler(sampler, batch_size, drop_last)``'s batches as int64 arrays, cut from the
    sampler's whole epoch at once (an ``EpochSampler``'s ``indices()``), never a Python int per row."""

    def __init__(self, sampler, batch_size: int, drop_last: bool = False):
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __len__(self):
        rows = len(self.sampler)
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def __iter__(self):
        every = getattr(self.sampler, "indices", None)
        order = np.array(every() if callable(every) else list(self.sampler), dtype=np.int64)  # a copy: ours
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            yield order[start:start + self.batch_size]


VIEW_CHOICE_TAG = 0x71E6  # keeps the view choice's random stream apart from the order's
