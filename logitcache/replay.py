"""Multi-view stores at work: draw views for the teacher, replay them for the student, check them.

    >>> views = DumpViews(source.dataset, parse_augment("cifar"), views=4, seed=0, hashes=True)
    >>> inputs, label, params, hashes = views[17]           # (4, C, H, W), int, (4, 5), (4,)
    >>> replay = ViewReplay(teacher.read_view_params(0, N), size=(160, 160))
    >>> replay.build(source.dataset[17][0], row=17, view=2) # view 2 of sample 17, at 160 px
    >>> problems = check_view_hashes(teacher, source.dataset)

The teacher's inputs and the student's replays go through the same function (``apply_view``)
with the same float16 parameters read back from the store, so at the dump's size they are the
same tensors, bit for bit; ``view_hashes`` lets anyone prove it later on their own copy of the data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DatasetError
from .sources.views import ViewAugment, apply_view, view_hash


class DumpViews(Dataset):
    """Sample i -> (its K views stacked, label, float16 (K, P) params, int64 (K,) view hashes).

    Hashes are uint64 values carried as int64 (a DataLoader cannot collate uint64); all zeros
    when not recorded."""

    def __init__(self, dataset, augment: ViewAugment, views: int, seed: int, hashes: bool):
        self.dataset, self.augment, self.views, self.seed, self.hashes = dataset, augment, views, seed, hashes

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        params = self.augment.draw(self.seed, index, self.views)
        built = [apply_view(image, row, self.augment.size) for row in params]
        hashes = np.array([view_hash(v) for v in built] if self.hashes else [0] * self.views, dtype=np.uint64)
        return torch.stack(built), label, torch.from_numpy(params), torch.from_numpy(hashes.view(np.int64))


class ViewReplay:
    """Rebuild stored views: params (N, K, P) from the store, at ``size`` (default: the dump's),
    then ``extras`` (student-side steps the store does not replay, e.g. random erasing)."""

    def __init__(self, params: np.ndarray, size: tuple[int, int] | None, extras=None):
        self.params, self.size, self.extras = params, size, extras

    @property
    def views(self) -> int:
        return self.params.shape[1]

    def build(self, image, row: int, view: int):
        out = apply_view(image, self.params[row, view], self.size)
        return self.extras(out) if self.extras is not None else out


class _ReplayAll(Dataset):
    """Every view of every sample at the dump's size, with its hash (for checking)."""

    def __init__(self, dataset, replay: ViewReplay):
        self.dataset, self.replay = dataset, replay

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, row: int):
        image = self.dataset[row][0]
        hashes = [view_hash(self.replay.build(image, row, view)) for view in range(self.replay.views)]
        return torch.from_numpy(np.array(hashes, dtype=np.uint64).view(np.int64))


def check_view_hashes(teacher, dataset, workers: int = 0, limit: int = 10) -> list[str]:
    """Rebuild every stored view of ``teacher`` from ``dataset`` and compare it with the recorded
    hash; returns one line per differing sample (at most ``limit``, then a count)."""
    size = tuple(teacher.views["size"]) if teacher.views.get("size") else None
    n = teacher.num_samples
    replay = ViewReplay(teacher.read_view_params(0, n), size)
    recorded = teacher.read_view_hashes(0, n)
    loader = DataLoader(_ReplayAll(dataset, replay), batch_size=64, num_workers=workers)
    problems, start = [], 0
    try:
        for batch in loader:
            computed = batch.numpy().view(np.uint64)
            for offset in np.flatnonzero((computed != recorded[start:start + len(batch)]).any(axis=1)):
                row = start + int(offset)
                bad = np.flatnonzero(computed[offset] != recorded[row]).tolist()
                problems.append(f"sample {row} ({teacher.store.keys[row]!r}): views {bad} differ from the dump")
            start += len(batch)
    except (OSError, ValueError, RuntimeError) as err:
        raise DatasetError(f"rebuilding the views failed: {str(err).strip().splitlines()[-1]}") from None
    if len(problems) > limit:
        problems = [*problems[:limit], f"... and {len(problems) - limit} more samples"]
    return problems
