"""Multi-view stores at work: draw views for the teacher, replay them for the student, check them.

    >>> source = get_dataset("cifar100:data@train", for_views=True)   # normalisation left for the views
    >>> views = DumpViews(source, parse_augment("cifar"), views=4, seed=0, hashes=True)
    >>> inputs, label, params, hashes = views[17]           # (4, C, H, W), int, (4, 5), (4,)
    >>> replay = ViewReplay(teacher.read_view_params(0, N), size=(160, 160), normalize=source.view_normalize)
    >>> replay.build(source.dataset[17][0], row=17, view=2) # view 2 of sample 17, at 160 px
    >>> problems = check_view_hashes(teacher, source)

A view is cut from the sample as the transform leaves it before its final ``normalize``, then
normalised; student-side colour steps (``color_jitter``) go between the two, tensor steps
(``erasing``) after.

The teacher's inputs and the student's replays go through the same function (``apply_view``)
with the same float16 parameters read back from the store, so at the dump's size they are the
same tensors, bit for bit; ``view_hashes`` lets anyone prove it later on their own copy of the data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DatasetError
from ..sources import transforms
from .view_specs import ViewAugment, apply_view, view_hash


class DumpViews(Dataset):
    """Sample i of a ``for_views`` source -> (its K views stacked, label, float16 (K, P) params,
    int64 (K,) view hashes).

    Hashes are uint64 values carried as int64 (a DataLoader cannot collate uint64); all zeros
    when not recorded."""

    def __init__(self, source, augment: ViewAugment, views: int, seed: int, hashes: bool):
        self.dataset, self.augment, self.views, self.seed, self.hashes = source.dataset, augment, views, seed, hashes
        self.replay = ViewReplay(None, augment.size, normalize=source.view_normalize)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        params = self.augment.draw(self.seed, index, self.views)
        built = [self.replay.cut(image, row) for row in params]
        hashes = np.array([view_hash(v) for v in built] if self.hashes else [0] * self.views, dtype=np.uint64)
        return torch.stack(built), label, torch.from_numpy(params), torch.from_numpy(hashes.view(np.int64))


class ViewReplay:
    """Rebuild stored views: params (N, K, P) from the store, cut at ``size`` (default: the
    input's), then ``colour`` (student-side, e.g. color_jitter), the source's ``normalize`` (as at
    the dump), then ``extras`` (student-side, e.g. erasing). Steps are transform specs."""

    def __init__(self, params: np.ndarray | None, size: tuple[int, int] | None, *, normalize: str | None = None,
                 colour: str | None = None, extras: str | None = None):
        self.params, self.size = params, size
        self.colour, self.normalize, self.extras = (transforms.build_transform(s) if s else None
                                                    for s in (colour, normalize, extras))

    @property
    def views(self) -> int:
        return self.params.shape[1]

    def cut(self, image, params, colour: bool = False):
        """The view ``params`` describes: crop, resize, flip, [colour], normalize."""
        out = apply_view(image, params, self.size)
        if colour and self.colour is not None:
            out = self.colour(out)
        return self.normalize(out) if self.normalize is not None else out

    def build(self, image, row: int, view: int):
        """Stored view ``view`` of sample ``row``, with every student-side step."""
        out = self.cut(image, self.params[row, view], colour=True)
        return self.extras(out) if self.extras is not None else out


class _ReplayAll(Dataset):
    """Every view of every sample at the dump's size, with its hash (for checking)."""

    def __init__(self, dataset, replay: ViewReplay):
        self.dataset, self.replay = dataset, replay

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, row: int):
        if not np.isfinite(self.replay.params[row]).all():  # a row never written (partial store): nothing to check
            return torch.zeros(self.replay.views, dtype=torch.int64)
        image = self.dataset[row][0]
        hashes = [view_hash(self.replay.cut(image, self.replay.params[row, view])) for view in range(self.replay.views)]
        return torch.from_numpy(np.array(hashes, dtype=np.uint64).view(np.int64))


def check_view_hashes(teacher, source, workers: int = 0, limit: int = 10) -> list[str]:
    """Rebuild every stored view of ``teacher`` from a ``for_views`` source of its dataset and
    compare it with the recorded hash; returns one line per differing sample (at most ``limit``,
    then a count). Samples in shards not written yet are skipped."""
    size = tuple(teacher.views["size"]) if teacher.views.get("size") else None
    n = teacher.num_samples
    replay = ViewReplay(teacher.read_view_params(0, n), size, normalize=source.view_normalize)
    recorded = teacher.read_view_hashes(0, n)
    loader = DataLoader(_ReplayAll(source.dataset, replay), batch_size=64, num_workers=workers)
    written = np.zeros(n, dtype=bool)  # a partial store: check only the shards written so far
    for shard in np.flatnonzero(teacher.shard_done()):
        written[slice(*teacher.layout.shard_rows(int(shard), n))] = True
    problems, start = [], 0
    try:
        for batch in loader:
            computed = batch.numpy().view(np.uint64)
            differs = (computed != recorded[start:start + len(batch)]).any(axis=1) & written[start:start + len(batch)]
            for offset in np.flatnonzero(differs):
                row = start + int(offset)
                bad = np.flatnonzero(computed[offset] != recorded[row]).tolist()
                problems.append(f"sample {row} ({teacher.store.keys[row]!r}): views {bad} differ from the dump")
            start += len(batch)
    except (OSError, ValueError, RuntimeError) as err:
        raise DatasetError(f"rebuilding the views failed: {str(err).strip().splitlines()[-1]}") from None
    if len(problems) > limit:
        problems = [*problems[:limit], f"... and {len(problems) - limit} more samples"]
    return problems
