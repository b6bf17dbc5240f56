"""Stage 1: run a teacher once over a dataset and write its raw logits into a store.

    >>> from logitcache.dump import DumpConfig, dump
    >>> summary = dump(DumpConfig(store="data/stores/digits.zarr", teacher="checkpoint:t/best.pt",
    ...                           dataset="digits@train"))
    >>> print("\\n".join(summary.lines()))

The teacher runs batch by batch; batches never cross a shard, so a resumed dump feeds the teacher
exactly the batches an uninterrupted one would and writes the same bytes. Finished shards go to a
background writer (compress, write, read back, record done) while the teacher computes the next.

With ``--augment SPEC --views K`` the teacher sees K random views of every sample (drawn from
(seed, sample index) alone) and the store keeps each view's logits and parameters, so students
can replay exactly those views (``replay.py``).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .devices import resolve_device
from .distributed import Distributed, distributed
from .errors import (
    ConfigError,
    DatasetError,
    LogitCacheError,
    ModelError,
    SpecError,
    StoreIncompleteError,
)
from .dump_config import DumpConfig
from .dump_settings import dump_settings
from .dump_store import now_utc, open_for_dump
from .replay import DumpViews
from .sources import get_dataset, get_model
from .sources.views import parse_augment
from .store import (
    VIEW_HASHES_ARRAY,
    VIEW_PARAMS_ARRAY,
    BackgroundWriter,
    Teacher,
    get_codec,
    open_store,
    writer_lock,
)

TEACHER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class DumpSummary:
    store: str
    teacher_name: str
    samples: int
    samples_this_run: int
    seconds: float
    bytes_on_disk: int
    num_classes: int
    codec: str
    top1: float
    top5: float
    resumed_shards: int
    views: int = 0
    view_bytes: int = 0  # view_params and view_hashes, beside the logits' bytes_on_disk

    @property
    def rows(self) -> int:
        """Teacher outputs stored: samples x views."""
        return self.samples * max(self.views, 1)

    @property
    def bytes_per_sample(self) -> float:
        return self.bytes_on_disk / self.samples

    @property
    def ratio_vs_fp32(self) -> float:
        return self.rows * self.num_classes * 4 / max(self.bytes_on_disk, 1)

    def lines(self) -> list[str]:
        rate = self.samples_this_run / self.seconds if self.seconds else float("nan")
        resumed = f" (resumed: {self.resumed_shards} shards were already written)" if self.resumed_shards else ""
        views = f" x {self.views} views" if self.views else ""
        per_view = f", {self.bytes_on_disk / self.rows:.1f} bytes/view" if self.views else ""
        return [
            f"dumped {self.samples} samples{views} x {self.num_classes} classes into {self.store} "
            f"[teacher {self.teacher_name!r}, codec {self.codec}]{resumed}",
            f"  {self.samples_this_run} samples in {self.seconds:.1f} s = {rate:.0f} samples/s",
            f"  {self.bytes_on_disk} bytes on disk = {self.bytes_per_sample:.1f} bytes/sample{per_view} "
            f"({self.ratio_vs_fp32:.2f}x smaller than raw fp32)",
            f"  teacher top-1 {self.top1:.2%}, top-5 {self.top5:.2%} on the dumped labels"
            + (" (all views)" if self.views else ""),
        ] + ([f"  view parameters: {self.view_bytes} bytes = {self.view_bytes / self.rows:.1f} bytes/view"]
             if self.views else [])


def dump(config: DumpConfig, log=print) -> DumpSummary:
    """Run the teacher over the dataset and write (or resume writing) one teacher's logits.

    Under torchrun, ranks split the pending shards (shard s goes to rank s % world_size), so no two
    ranks write one shard; rank 0 creates the metadata and marks the store complete after all
    ranks finish. The store is the same, byte for byte, as a single process writes.

    Raises:
        LogitCacheError subclasses for every bad input; the store is never marked complete
        unless every shard was written and read back.
    """
    validate(config)
    with distributed(config.device) as dist:
        return _dump(config, dist, log)


def _dump(config: DumpConfig, dist: Distributed, log) -> DumpSummary:
    # Every rank builds the same data and teacher; only rank 0 writes the store's metadata.
    augment = parse_augment(config.augment) if config.augment else None
    source = get_dataset(config.dataset, split=config.split, transform=config.transform, for_views=bool(augment))
    inputs = (DumpViews(source, augment, config.view_count, config.seed, config.record_view_hashes)
              if augment else source.dataset)
    device = resolve_device(dist.device(config.device))
    model = get_model(config.teacher, config.num_classes or len(source.classes), weights=config.weights)
    model.to(device).eval()
    num_classes = _probe(model, source, inputs, device, config.bf16)
    if config.num_classes is not None and num_classes != config.num_classes:
        raise ModelError(f"--num-classes {config.num_classes} was given, but the teacher outputs {num_classes} "
                         "classes (its builder ignored the number); drop --num-classes or fix the teacher")
    settings, provenance = dump_settings(config, source, model, num_classes, device, augment)
    with contextlib.ExitStack() as held:
        store = teacher = error = None
        if dist.is_main:  # rank 0 holds the teacher's lock for the whole dump, for every rank
            try:
                lock = held.enter_context(writer_lock(
                    config.store, f"teacher-{config.teacher_name}", config.storage_options,
                    what=f"teacher {config.teacher_name!r} of {config.store}"))
                store, teacher = open_for_dump(config, source, num_classes, settings, provenance)
            except LogitCacheError as err:
                error = err
        dist.agree(error)
        if not dist.is_main:
            store = open_store(config.store, read_only=False, storage_options=config.storage_options)
            teacher = store.teacher(config.teacher_name)
        if teacher.is_complete:
            log(f"teacher {config.teacher_name!r} in {config.store} is already complete, from these same "
                "settings: nothing to do")
            return _summary(config, store, teacher, teacher.attrs["metrics"], written=0, seconds=0.0)
        return _write_teacher(config, dist, source, inputs, model, device, store, teacher,
                              lock if dist.is_main else None, log)


def _write_teacher(config: DumpConfig, dist: Distributed, source, inputs, model, device, store, teacher, lock,
                   log) -> DumpSummary:
    """Write every pending shard (each rank its own), then mark the teacher complete."""
    if dist.is_main and teacher.num_shards < 2 * dist.world_size and dist.enabled:
        log(f"warning: {teacher.num_shards} shards for {dist.world_size} processes leaves some idle; "
            "a smaller --rows-per-shard spreads the work (shards are the unit each process writes)")
    started = time.perf_counter()
    counts = _AccuracyCounts(store.labels, teacher)
    done = teacher.shard_done()
    mine = [s for s in range(teacher.num_shards) if s % dist.world_size == dist.rank]
    written, error = 0, None
    try:
        for shard in (s for s in mine if done[s]):  # re-read what a previous run wrote: checks it, counts it
            counts(shard, teacher.read_stored(*teacher.layout.shard_rows(shard, len(source))))
        pending = [s for s in mine if not done[s]]
        written = _run_teacher(model, inputs, source.spec, teacher, pending, config, device, counts, dist.is_main)
    except LogitCacheError as err:
        error = err
    dist.agree(error)
    hits1, hits5, mass, written = dist.sum([*counts.totals(), written])
    seconds = time.perf_counter() - started
    rows = len(source) * teacher.views_per_sample  # accuracy and mass are over every stored view
    metrics = {"top1": hits1 / rows, "top5": hits5 / rows, "mass_stored": mass / rows}
    error = None
    if dist.is_main:
        try:
            lock.ensure_held()
            run = teacher.attrs["run"]
            run.update(finished_at=now_utc(), sessions=run["sessions"] + 1,
                       seconds=round(run["seconds"] + seconds, 3), processes=dist.world_size)
            teacher.mark_complete(metrics=metrics, run=run)
        except LogitCacheError as err:
            error = err
    dist.agree(error)
    return _summary(config, store, teacher, metrics, int(written), seconds, resumed=int(done.sum()))


def _summary(config: DumpConfig, store, teacher: Teacher, metrics: dict, written: int, seconds: float,
             resumed: int | None = None) -> DumpSummary:
    return DumpSummary(store.location, config.teacher_name, store.num_samples, written, seconds,
                       teacher.nbytes_stored(), teacher.num_classes, teacher.codec.name, metrics["top1"],
                       metrics["top5"], teacher.num_shards if resumed is None else resumed, config.view_count,
                       teacher.nbytes_views())


def validate(config: DumpConfig) -> None:
    """Refuse option values a dump cannot use (ConfigError), before anything is built."""
    if config.views is not None and config.views < 1:
        raise ConfigError(f"--views must be at least 1, got {config.views}")
    if config.views is not None and not config.augment:
        raise ConfigError("--views needs --augment: without it every view of a sample would be the same")
    if config.record_view_hashes and not config.augment:
        raise ConfigError("--record-view-hashes hashes the views of --augment; add --augment")
    if config.augment:
        parse_augment(config.augment)
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {config.workers}")
    if config.rows_per_shard is not None and config.rows_per_shard < 1:
        raise ConfigError(f"--rows-per-shard must be at least 1, got {config.rows_per_shard}")
    name = config.teacher_name
    if not TEACHER_NAME.match(name) or len(name) > 100 or name == "zarr.json" or name.endswith(".partial"):
        raise ConfigError(f"--teacher-name {name[:40]!r} must be up to 100 letters, digits, '_', '.', '-' "
                          "(and not 'zarr.json' or '*.partial', which the store uses)")
    get_codec(config.codec)


def _autocast(device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _probe(model, source, inputs, device, bf16: bool) -> int:
    """Run one sample (its first view) through the teacher: its output must be (batch, classes)."""
    try:
        sample = inputs[0][0]
    except SpecError:
        raise
    except Exception as err:
        raise DatasetError(f"cannot load the first sample of {source.spec}: {err}") from None
    if isinstance(inputs, DumpViews):
        sample = sample[0]
    with torch.inference_mode(), _autocast(device, bf16):
        try:
            output = model(sample.unsqueeze(0).to(device))
        except Exception as err:
            raise ModelError(f"the teacher fails on an input of shape {tuple(sample.shape)}: {err}") from None
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != 1:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(f"the teacher's output is {shape} for one sample; logitcache needs (batch, classes)")
    num_classes = int(output.shape[1])
    if source.labels.max() >= num_classes:
        raise ModelError(
            f"the teacher has {num_classes} outputs but the dataset's labels reach {int(source.labels.max())}"
        )
    return num_classes


class _AccuracyCounts:
    """Per shard: top-1/top-5 hits from the decoded logits (what students will see), and the
    probability mass the codec stores exactly (below 1 only for sparse codecs)."""

    def __init__(self, labels: np.ndarray, teacher: Teacher):
        self.labels = labels
        self.teacher = teacher
        self.by_shard: dict[int, tuple[int, int, float]] = {}

    def __call__(self, shard: int, stored: dict[str, np.ndarray]) -> None:
        teacher = self.teacher
        start, stop = teacher.layout.shard_rows(shard, len(self.labels))
        if not teacher.rows_ok(stored).all():
            raise StoreIncompleteError(f"teacher {teacher.name!r}: shard {shard} holds rows never written")
        labels = np.repeat(self.labels[start:stop], teacher.views_per_sample)  # one row per view
        top = teacher.codec.top_classes(teacher.flat(stored), 5)
        top1 = top[:, 0] == labels
        top5 = (top == labels[:, None]).any(axis=1)
        mass = float(teacher.codec.stored_mass(teacher.flat(stored)).sum())
        self.by_shard[shard] = (int(top1.sum()), int(top5.sum()), mass)

    def totals(self) -> list[float]:
        """Top-1 hits, top-5 hits and stored mass, summed over the shards counted so far."""
        return [float(sum(h[i] for h in self.by_shard.values())) for i in range(3)]


def _run_teacher(model, inputs, spec: str, teacher: Teacher, pending: list[int], config, device, counts,
                 show: bool) -> int:
    """Feed the pending shards through the teacher, batch by batch, into the background writer.

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
    bar = tqdm(total=todo, unit="sample", disable=not (config.progress and show),
               desc=f"dump {teacher.name}", dynamic_ncols=True)
    with BackgroundWriter(teacher, on_written=counts) as writer, bar:
        for shard, indices, batch in zip(owners, batches, _checked(loader, spec)):
            images = batch[0].flatten(0, 1) if teacher.views else batch[0]  # (B, K, ...) -> (B * K, ...)
            with torch.inference_mode(), _autocast(device, config.bf16):
                logits = model(images.to(device, non_blocking=True))
            start, stop = layout.shard_rows(shard, total)
            buffer = buffers.setdefault(shard, _shard_buffer(teacher, stop - start))
            rows = slice(indices[0] - start, indices[-1] + 1 - start)
            buffer["logits"][rows] = logits.float().cpu().numpy().reshape(len(indices), *teacher.row_shape)
            if teacher.views:
                buffer[VIEW_PARAMS_ARRAY][rows] = batch[2].numpy()
                if VIEW_HASHES_ARRAY in buffer:
                    buffer[VIEW_HASHES_ARRAY][rows] = batch[3].numpy().view(np.uint64)
            filled[shard] = filled.get(shard, 0) + len(indices)
            if filled[shard] == stop - start:
                done = buffers.pop(shard)
                writer.submit(shard, done.pop("logits"), done or None)
            bar.update(len(indices))
    return todo


def _shard_buffer(teacher: Teacher, rows: int) -> dict[str, np.ndarray]:
    """Empty arrays for one shard: logits, and a multi-view teacher's view arrays."""
    buffer = {"logits": np.empty((rows, *teacher.row_shape), np.float32)}
    for name, array in teacher.view_arrays.items():
        buffer[name] = np.empty((rows, *array.shape[1:]), array.dtype)
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
