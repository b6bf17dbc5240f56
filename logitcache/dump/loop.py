"""The dump's loop: batches that never cross a shard go through the teacher, and each finished
shard goes to the background writer (compress, write, read back, digests, ledger).

    >>> written = run_teacher(model, inputs, spec, teacher, pending_shards, config, device, counts, show=True)
"""

from __future__ import annotations

import math

import contextlib

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import DatasetError, StoreIncompleteError
from ..progress import progress_bar
from ..store import VIEW_HASHES_ARRAY, VIEW_PARAMS_ARRAY, BackgroundWriter, Teacher, get_codec


def autocast(device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


class AccuracyCounts:
    """Per shard, once it is written and read back: the stored targets' top-1/top-5 hits (what
    students will see) and the probability mass the codec stores exactly (below 1 only for sparse
    codecs). For the shards this session runs the teacher on, also the teacher's own top-1/top-5
    hits, from its float32 logits before encoding, and how often the stored targets' top-1 agrees
    with the teacher's own. Called from the writer threads (so none of it is in the teacher's
    loop), one shard each, in any order.

    The stored counts are a function of the store's bytes, so they go into the teacher's digested
    ``metrics`` (a resumed dump writes the same metadata as an uninterrupted one). The teacher's own
    outputs are seen only by the session that computes them, so theirs go into the volatile ``run``
    record, over the rows this session computed (all of them, unless it resumed)."""

    NAMES = ("top1", "top5", "mass_stored", "own_rows", "own_top1", "own_top5", "agreement")
    OWN = get_codec("fp32")  # ranks float32 logits as every codec ranks its decoded rows

    def __init__(self, labels: np.ndarray, teacher: Teacher):
        self.labels = labels
        self.teacher = teacher
        self.by_shard: dict[int, tuple] = {}

    def __call__(self, shard: int, stored: dict[str, np.ndarray], logits: np.ndarray | None = None) -> None:
        """Count one shard: ``stored`` as read back, ``logits`` the teacher's float32 outputs it was
        encoded from (None for a shard written by an earlier session, whose outputs are gone)."""
        teacher = self.teacher
        start, stop = teacher.layout.shard_rows(shard, len(self.labels))
        if not teacher.rows_ok(stored).all():
            raise StoreIncompleteError(f"teacher {teacher.name!r}: shard {shard} holds rows never written")
        labels = np.repeat(self.labels[start:stop], teacher.views_per_sample)  # one row per view
        sets = [labels]
        if logits is not None:
            own = {"logits": logits.reshape(len(labels), -1)}
            own_top1, own_top5 = self.OWN.label_hits(own, labels, 5)
            sets.append(own["logits"].argmax(axis=1))  # the agreement: the stored top-1 "hitting" it
        top1, top5 = teacher.codec.label_hits(teacher.flat(stored), sets, 5)  # one decoding, both sets
        mass = teacher.codec.stored_mass(teacher.flat(stored))
        mass = float("nan") if mass is None else float(mass.sum())  # nan: not kept, whatever the other shards
        mine = (len(labels), int(own_top1.sum()), int(own_top5.sum()), int(top1[1].sum())) if logits is not None \
            else (0, 0, 0, 0)
        self.by_shard[shard] = (int(top1[0].sum()), int(top5[0].sum()), mass, *mine)

    def totals(self) -> list[float]:
        """The NAMES, summed over the shards counted so far (to be summed over ranks), in shard order
        (writers finish shards in any order; the float sum of the mass must not follow them)."""
        counted = [self.by_shard[shard] for shard in sorted(self.by_shard)]
        return [float(sum(h[i] for h in counted)) for i in range(len(self.NAMES))]

    @classmethod
    def records(cls, totals: list[float], rows: int) -> tuple[dict, dict | None]:
        """(the teacher's ``metrics``: the stored targets' top-1, top-5 and stored mass over all
        ``rows``; the run's ``teacher_outputs``: the teacher's own top-1 and top-5 and the stored
        targets' top-1 agreement with it, over the rows this session computed, or None if none)."""
        counts = dict(zip(cls.NAMES, totals))
        metrics = {"top1": counts["top1"] / rows, "top5": counts["top5"] / rows,
                   "mass_stored": None if math.isnan(counts["mass_stored"]) else counts["mass_stored"] / rows}
        own = int(counts["own_rows"])
        if not own:
            return metrics, None
        return metrics, {"rows": own, "top1": counts["own_top1"] / own, "top5": counts["own_top5"] / own,
                         "agreement": counts["agreement"] / own}


def run_teacher(model, inputs, spec: str, teacher: Teacher, pending: list[int], config, device, counts,
                show: bool, held=None, tap=None) -> int:
    """Feed the pending shards through the teacher, batch by batch, into the background writer.
    ``held``: called before each shard is written; raises if this process no longer holds the lock.
    ``tap``: the teacher's feature tap (``features.extract.FeatureTap``) for a teacher with features.

    ``--batch-size`` counts teacher inputs, so a batch holds batch_size // K samples of K views."""
    layout, total, views = teacher.layout, len(inputs), teacher.views_per_sample
    samples_per_batch = max(1, config.batch_size // views) if teacher.views else config.batch_size
    batches, owners = [], []
    for shard in pending:
        start, stop = layout.shard_rows(shard, total)
        for lo in range(start, stop, samples_per_batch):
            batches.append(list(range(lo, min(lo + samples_per_batch, stop))))
            owners.append(shard)
    if not batches:
        return 0
    loader = DataLoader(inputs, batch_sampler=batches, num_workers=config.workers, pin_memory=device.type == "cuda")
    buffers: dict[int, dict[str, np.ndarray]] = {}
    filled: dict[int, int] = {}
    todo = sum(len(b) for b in batches)
    bar = progress_bar(total=todo, unit="sample", enabled=config.progress and show, desc=f"dump {teacher.name}")
    with BackgroundWriter(teacher, on_written=counts, before_write=held) as writer, bar:
        for shard, indices, batch in zip(owners, batches, _checked(loader, spec)):
            images = batch[0].flatten(0, 1) if teacher.views else batch[0]  # (B, K, ...) -> (B * K, ...)
            with torch.inference_mode(), autocast(device, config.bf16), tap or contextlib.nullcontext():
                logits = model(images.to(device, non_blocking=True))
            start, stop = layout.shard_rows(shard, total)
            buffer = buffers.setdefault(shard, _shard_buffer(teacher, stop - start))
            rows = slice(indices[0] - start, indices[-1] + 1 - start)
            buffer["logits"][rows] = logits.float().cpu().numpy().reshape(len(indices), *teacher.row_shape)
            if teacher.views:
                buffer[VIEW_PARAMS_ARRAY][rows] = batch[2].numpy()
                if VIEW_HASHES_ARRAY in buffer:
                    buffer[VIEW_HASHES_ARRAY][rows] = batch[3].numpy().view(np.uint64)
            for name, values in (tap.outputs if tap else {}).items():
                buffer["features"][name][rows] = values.cpu().numpy().reshape(len(indices), *teacher.row_shape[:-1],
                                                                              *values.shape[1:])
            filled[shard] = filled.get(shard, 0) + len(indices)
            if filled[shard] == stop - start:
                done = buffers.pop(shard)
                teacher.require_finite(shard, done["logits"])  # here, so no later shard is written after it
                features = done.pop("features", None)
                writer.submit(shard, done.pop("logits"), done or None, features)
            bar.update(len(indices))
    return todo


def _shard_buffer(teacher: Teacher, rows: int) -> dict[str, np.ndarray]:
    """Empty arrays for one shard: logits, and a multi-view teacher's view arrays."""
    buffer = {"logits": np.empty((rows, *teacher.row_shape), np.float32)}
    for name, array in teacher.view_arrays.items():
        buffer[name] = np.empty((rows, *array.shape[1:]), array.dtype)
    if teacher.features:
        buffer["features"] = {f["name"]: np.empty((rows, *teacher.row_shape[:-1], *f["shape"]), np.float32)
                              for f in teacher.features}
    return buffer


def _checked(loader, spec: str):
    """Iterate a DataLoader, turning a sample that fails to load into one clear error."""
    iterator = iter(loader)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except (OSError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()
            if "stack expects each tensor to be equal size" in str(err):
                raise DatasetError(f"the inputs of {spec} differ in size, so they cannot be batched: give the views "
                                   "one size with size=N in --augment (or resize in --transform)") from None
            raise DatasetError(f"loading a sample of {spec} failed: {first[-1] if first else type(err).__name__}") from None
