"""``dump()``, top to bottom: build the data and the teacher, probe it, take the teacher's lock,
open or create the store and the teacher, write every pending shard, mark it complete.

    >>> summary = dump(DumpConfig(store="data/stores/digits.zarr", teacher="cnn", dataset="digits@train"))

The teacher runs batch by batch; batches never cross a shard, so a resumed dump feeds the teacher
exactly the batches an uninterrupted one would and writes the same bytes. Finished shards go to a
background writer (compress, write, read back, record done) while the teacher computes the next.

With ``--augment SPEC --views K`` the teacher sees K random views of every sample (drawn from
(seed, sample index) alone) and the store keeps each view's logits and parameters, so students
can replay exactly those views (``views/replay.py``). With ``--features NAME=LAYER[:REDUCE],...`` it
also keeps those teacher features of every sample (and view), cut by forward hooks (``features/``).
"""

from __future__ import annotations

import contextlib
import re
import time

import torch

from ..devices import resolve_device
from ..distributed import Distributed, distributed
from ..errors import (
    ConfigError,
    DatasetError,
    LogitCacheError,
    ModelError,
    SpecError,
)
from ..features.extract import tap_teacher
from ..features.feature_specs import parse_features
from ..option_types import check_types
from ..sources import get_dataset, get_model, model_transform, weights_in_spec
from ..store import (
    MAX_VIEWS,
    Teacher,
    feature_codec,
    get_codec,
    open_store,
    writer_lock,
)
from ..views.view_specs import parse_augment
from ..views.replay import DumpViews
from .dump_config import DumpConfig
from .loop import AccuracyCounts, autocast, run_teacher
from .resume import mark_dumped, open_for_dump
from .settings import dump_settings
from .summary import DumpSummary
from .generate import GenerateJob, sampling_of
from .token_dump import TokenJob

TEACHER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def dump(config: DumpConfig, log=print):
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


def _dump(config: DumpConfig, dist: Distributed, log):
    # Every rank builds the same data and teacher; only rank 0 writes the store's metadata. A teacher
    # without weights draws its own from torch's generator: seeded, the same command makes the same store.
    torch.manual_seed(config.seed)
    job = (GenerateJob if config.generate else TokenJob)(config, dist) if config.tokenizer else \
        ImageJob(config, dist, log)
    with contextlib.ExitStack() as held:
        store = teacher = lock = error = None
        if dist.is_main:  # rank 0 holds the teacher's lock for the whole dump, for every rank
            try:
                lock = held.enter_context(writer_lock(
                    config.store, f"teacher-{config.teacher_name}", config.storage_options,
                    what=f"teacher {config.teacher_name!r} of {config.store}"))
                job.prepare(log)  # a generating job's responses, before the store that holds them
                store, teacher = open_for_dump(config, job.source, job.num_classes, job.settings, job.provenance)
            except LogitCacheError as err:
                error = err
        dist.agree(error)
        if not dist.is_main:
            store = open_store(config.store, read_only=False, storage_options=config.storage_options)
            teacher = store.teacher(config.teacher_name)
        if teacher.is_complete:
            log(f"teacher {config.teacher_name!r} in {config.store} is already complete, from these same "
                "settings: nothing to do")
            return job.summary(store, teacher, written=0, seconds=0.0)
        if dist.is_main and teacher.num_shards < 2 * dist.world_size and dist.enabled:
            log(f"warning: {teacher.num_shards} shards for {dist.world_size} processes leaves some idle; "
                "a smaller --rows-per-shard spreads the work (shards are the unit each process writes)")
        return job.write(dist, store, teacher, lock, log)


class ImageJob:
    """What ``dump`` needs of an image (labelled-sample) dump: the inputs (views too), the teacher,
    its settings; then ``write`` and ``summary``."""

    def __init__(self, config: DumpConfig, dist: Distributed, log=print):
        self.config = config
        augment = parse_augment(config.augment) if config.augment else None
        model_steps = None if config.transform else model_transform(config.teacher)  # a timm teacher's data config
        self.source = get_dataset(config.dataset, split=config.split, transform=config.transform,
                                  for_views=bool(augment), default_transform=model_steps)
        if self.source.extra.get("transform_from") == "model" and dist.is_main:
            log(f"inputs: {self.source.transform} (the teacher's data config; --transform overrides it)")
        self.inputs = (DumpViews(self.source, augment, config.view_count, config.seed, config.record_view_hashes)
                       if augment else self.source.dataset)
        self.device = resolve_device(dist.device(config.device))
        model = get_model(config.teacher, config.num_classes or len(self.source.classes), weights=config.weights)
        self.model = model.to(self.device).eval()
        self.num_classes = _probe(self.model, self.source, self.inputs, self.device, config.bf16)
        self.tap, features = _feature_tap(config, self.model, self.inputs, self.device)
        _check_head(config, self.source, self.num_classes)
        if dist.is_main and not (config.weights or weights_in_spec(config.teacher)):
            log(f"note: {config.teacher} was given no --weights: its weights are the builder's own (random unless "
                "the builder loads some); info will say so")
        self.settings, self.provenance = dump_settings(config, self.source, self.model, self.num_classes,
                                                       self.device, augment, features)

    def prepare(self, log) -> None:
        """Nothing to make before the store: the samples exist."""

    def write(self, dist, store, teacher, lock, log) -> DumpSummary:
        return _write_teacher(self.config, dist, self.source, self.inputs, self.model, self.device, store, teacher,
                              lock, log, self.tap)

    def summary(self, store, teacher, written: int, seconds: float) -> DumpSummary:
        return _summary(self.config, store, teacher, teacher.attrs["metrics"], written, seconds,
                        outputs=(teacher.attrs.get("run") or {}).get("teacher_outputs"))


def _write_teacher(config: DumpConfig, dist: Distributed, source, inputs, model, device, store, teacher, lock,
                   log, tap=None) -> DumpSummary:
    """Write every pending shard (each rank its own), then mark the teacher complete."""
    started = time.perf_counter()
    counts = AccuracyCounts(store.labels, teacher)
    done = teacher.shard_done()
    mine = [s for s in range(teacher.num_shards) if s % dist.world_size == dist.rank]
    written, error = 0, None
    try:
        for shard in (s for s in mine if done[s]):  # re-read what a previous run wrote: checks it, counts it
            counts(shard, teacher.read_stored(*teacher.layout.shard_rows(shard, len(source))))
        pending = [s for s in mine if not done[s]]
        written = run_teacher(model, inputs, source.spec, teacher, pending, config, device, counts, dist.is_main,
                              held=lock.ensure_held if lock is not None else None, tap=tap)
    except LogitCacheError as err:
        error = err
    dist.agree(error)
    *totals, written = dist.sum([*counts.totals(), written])
    seconds = time.perf_counter() - started
    rows = len(source) * teacher.views_per_sample  # accuracy and mass are over every stored view
    metrics, outputs = AccuracyCounts.records(totals, rows)
    mark_dumped(teacher, lock, dist, seconds, lambda: metrics, teacher_outputs=outputs)
    return _summary(config, store, teacher, metrics, int(written), seconds, resumed=int(done.sum()), outputs=outputs)


def _summary(config: DumpConfig, store, teacher: Teacher, metrics: dict, written: int, seconds: float,
             resumed: int | None = None, outputs: dict | None = None) -> DumpSummary:
    return DumpSummary(store.location, config.teacher_name, store.num_samples, written, seconds,
                       teacher.nbytes_stored(), teacher.num_classes, teacher.codec.name, metrics["top1"],
                       metrics["top5"], teacher.num_shards if resumed is None else resumed, config.view_count,
                       teacher.nbytes_views(), teacher_outputs=outputs)


def validate(config: DumpConfig) -> None:
    """Refuse option values a dump cannot use (ConfigError), before anything is built."""
    check_types(config)  # a DumpConfig made in Python: "8" for batch_size is one line, not a TypeError
    if config.views is not None and config.views < 1:
        raise ConfigError(f"--views must be at least 1, got {config.views}")
    if config.views is not None and config.views > MAX_VIEWS:
        raise ConfigError(f"--views must be at most {MAX_VIEWS} (what a store may hold), got {config.views}")
    if config.views is not None and not config.augment:
        raise ConfigError("--views needs --augment: without it every view of a sample would be the same")
    if config.record_view_hashes and not config.augment:
        raise ConfigError("--record-view-hashes hashes the views of --augment; add --augment")
    if config.augment:
        parse_augment(config.augment)
    if config.tokenizer and (config.augment or config.transform or config.num_classes is not None):
        raise ConfigError("a token dump (--tokenizer) takes no --augment, --transform or --num-classes: the "
                          "teacher reads token ids, and its head's width is the vocabulary")
    if config.generate and not config.tokenizer:
        raise ConfigError("--generate needs --tokenizer and --seq-len: the teacher answers text prompts "
                          "(--dataset jsonl:FILE:FIELD) token by token")
    if config.seq_len is not None and not config.tokenizer:
        raise ConfigError("--seq-len is for token dumps: add --tokenizer (e.g. bytes)")
    if config.tokenizer and (config.seq_len is None or config.seq_len < 2):
        raise ConfigError(f"a token dump needs --seq-len N (positions per sequence, N >= 2), got {config.seq_len}")
    sampling = (config.temperature, config.top_p, config.max_new_tokens, config.greedy) != (1.0, 1.0, 64, False)
    if sampling and not config.generate:
        raise ConfigError("--temperature, --top-p, --max-new-tokens and --greedy are for --generate")
    if config.generate:
        sampling_of(config)
    if config.features and config.tokenizer:
        raise ConfigError("--features are for image dumps; a token dump (--tokenizer) stores logits only")
    if config.features:
        parse_features(config.features)
        feature_codec(config.feature_codec)
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


def _check_head(config: DumpConfig, source, num_classes: int) -> None:
    """The teacher's head must have one output per class of the dataset, or the width --num-classes
    asks for: a folder of train/ and val/ read as two classes, or a head for another label set,
    would otherwise dump rows no student can learn from (and a top-1 of 0 %)."""
    if config.num_classes is not None and num_classes != config.num_classes:
        raise ModelError(f"--num-classes {config.num_classes} was given, but the teacher outputs "
                         f"{num_classes} classes (its builder ignored the number); drop --num-classes or "
                         "fix the teacher")
    classes = len(source.classes)
    if config.num_classes is None and num_classes != classes:
        shown = ", ".join(source.classes[:4]) + (", ..." if classes > 4 else "")
        raise ModelError(f"the teacher has {num_classes} outputs but {source.spec} has {classes} classes ({shown}); "
                         f"check the dataset (a wrong folder or split?), or give --num-classes {num_classes} to "
                         "dump a head of another width on purpose")


def _feature_tap(config: DumpConfig, model, inputs, device) -> tuple:
    """The teacher's feature tap and the record of each feature (None, None without --features)."""
    if not config.features:
        return None, None
    sample = inputs[0][0][0] if isinstance(inputs, DumpViews) else inputs[0][0]
    return tap_teacher(model, parse_features(config.features), sample, device, config.feature_codec, config.bf16)


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
    with torch.inference_mode(), autocast(device, bf16):
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
