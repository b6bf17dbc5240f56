"""Stage 2: train a student from a store (or from labels alone), read top to bottom.

    >>> from logitcache.train import TrainConfig, train
    >>> summary = train(TrainConfig(out="data/runs/dist", student="mlp:hidden=32",
    ...                             dataset="digits@train", val_dataset="digits@val",
    ...                             store="data/stores/digits.zarr", loss="dist"))

The loop: build the student, open the store and check it matches the dataset, then per epoch:
set the order, step through batches (lr from ``get_lr``, optional Mixup/CutMix, forward,
ce_weight*CE + each loss times its weight, backward, step), evaluate, write metrics and checkpoints. Randomness
is a function of (seed, epoch), so ``--resume`` from an epoch checkpoint continues the very same run.
A multi-view store's views are replayed: each epoch every sample shows one stored view, rebuilt
from the raw sample, with that view's logits.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..devices import resolve_device
from ..distributed import Distributed, distributed, is_main_process
from ..errors import ConfigError, DatasetError, ModelError
from ..features.distiller import FeatureRun
from ..losses import loss_spec
from ..mixing import Mixer
from ..progress import progress_bar
from ..sources import get_dataset, get_model, transforms
from ..store import open_store
from ..views.replay import ViewReplay, check_view_hashes
from .board import open_board
from .config import TrainConfig, get_lr, validate, warmup_note
from .data import EpochSampler, PairedDataset, TeacherLogits, sampled_codec
from .resume import (
    best,
    check_step_loss,
    collapse_error,
    hold_run,
    open_resume,
    prepare_run,
    save_epoch,
    weights_error,
)
from .run_files import RunFiles
from .student import build_optimizer as _optimizer
from .student import wrap_ddp as _wrap_ddp


@dataclass
class TrainSummary:
    out: str
    epochs: int
    seconds: float
    last: dict
    best: dict
    history: list = field(default_factory=list)

    def lines(self) -> list[str]:
        last, best = self.last, self.best
        if last.get("val_top1") is None:  # no --val-dataset: nothing to call best
            return [f"trained {self.epochs} epochs in {self.seconds:.1f} s -> {self.out}",
                    f"  last epoch: train loss {last['train_loss']:.4f}",
                    "  no validation set (--val-dataset), so best.pt is the last epoch's weights"]
        return [
            f"trained {self.epochs} epochs in {self.seconds:.1f} s -> {self.out}",
            f"  last epoch: val top-1 {_pct(last.get('val_top1'))}, top-5 {_pct(last.get('val_top5'))}, "
            f"train loss {last['train_loss']:.4f}",
            f"  best epoch {best['epoch']}: val top-1 {_pct(best.get('val_top1'))}",
        ]


def _pct(value):
    return "n/a" if value is None else f"{value:.2%}"


def train(config: TrainConfig, log=print) -> TrainSummary:
    """Train one student; resumable at epoch boundaries. Returns the closing summary.

    Under torchrun the student is wrapped in DistributedDataParallel, each rank takes every
    world_size-th sample of the epoch's order, and rank 0 alone evaluates, logs and checkpoints.
    Rank 0 holds the run directory's lock throughout; see ``resume.py`` for that, for what a
    ``--resume`` may change, and for stopping at a non-finite loss (TrainingDivergedError).
    """
    validate(config.resolved())  # every option checked before the store is opened
    config = with_store_temperature(config, log if is_main_process() else _quiet).resolved()
    run = RunFiles(Path(config.out))
    with distributed(config.device) as dist, hold_run(run, dist):
        return _train(config, run, dist, log if dist.is_main else _quiet)


def with_store_temperature(config: TrainConfig, log) -> TrainConfig:
    """``config`` with ``--temperature`` set to the one a ``sample:K:T`` store's classes were drawn
    at, when none is given and the loss reads sampled targets (KL from sampled classes estimates
    the KL at that temperature only); said in one line. Otherwise ``config`` as it is."""
    loss = config.loss or "dist"
    if config.temperature is not None or not config.store or not loss_spec(loss).reads_sparse:
        return config
    codec = sampled_codec(config.store, config.teacher, config.allow_partial, config.storage_options)
    if codec is None:
        return config
    log(f"--temperature {codec.sampled_at:g}: the temperature the store's classes were sampled at ({codec.name})")
    return replace(config, temperature=codec.sampled_at)


def _train(config: TrainConfig, run: RunFiles, dist: Distributed, log) -> TrainSummary:
    device = resolve_device(dist.device(config.device))
    resumed = open_resume(run, config, dist, log)  # before any data is read: refuses a changed run at once
    if note := warmup_note(config):
        log(note)

    # Data: the teacher's logits, the training set (replayed views, or any augmentation), validation.
    uses_store = config.store and (loss_spec(config.loss).needs_teacher or config.feature_loss)
    store = open_store(config.store, storage_options=config.storage_options) if uses_store else None  # once
    logits = _open_teacher_logits(config, store)
    train_source, replay = _training_data(config, store, logits, log)
    val_source = get_dataset(config.val_dataset, transform=config.val_transform) if config.val_dataset else None
    num_classes = logits.num_classes if logits is not None else len(train_source.classes)
    rows = logits.rows if logits is not None else np.arange(len(train_source))
    paired = PairedDataset(train_source.dataset, logits, replay)

    # The student, checked against the data before any step.
    sample = paired[int(rows[0]) * (replay.views if replay else 1)][0]
    student = _checked_student(config, sample, val_source, num_classes, "store" if logits is not None else "dataset",
                               device)
    model = _wrap_ddp(student, dist, device)
    online = _online_teacher(config, num_classes, device)
    features = FeatureRun.build(config, student, sample, device, store=store, rows=rows, online=online,
                                teacher_name=logits.teacher_names[0] if logits is not None else None,
                                random_views=train_source.random_views and not replay)
    paired = features.pair(paired, replay.views if replay else 0) if features else paired
    optimizer = _optimizer(config, student if features is None else torch.nn.ModuleList([student, features.distiller]))
    kd = loss_spec(config.loss).build(config.temperature, config.kd_weight, config.loss_options)
    mixer = Mixer(config.mixup, config.cutmix, config.temperature)
    connectors = features.distiller if features else None  # trained with the student, saved beside it
    start_epoch, history = prepare_run(run, config, resumed, student, optimizer, dist, log, connectors)

    sampler, loader = _epoch_loader(config, paired, rows, logits, replay, dist, device, features)
    board = open_board(config, (start_epoch - 1) * len(loader), log, enabled=dist.is_main)
    chance, teacher_top1 = _majority_share(val_source), _teacher_top1(store, logits)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        sampler.set_epoch(epoch)
        torch.manual_seed(config.seed * 100_003 + epoch + 1_000_003 * dist.rank)  # a function of (seed, epoch, rank)
        mix_rng = np.random.default_rng([config.seed, epoch, dist.rank, MIX_TAG]) if mixer.enabled else None
        epoch_start = time.perf_counter()
        losses = train_one_epoch(model, loader, optimizer, kd, online, config, epoch, device, dist, mixer, mix_rng,
                                 board, features)
        dist.agree(weights_error(student, config, epoch))
        record = None
        if dist.is_main:
            run.append_steps(epoch, losses)
            record = {**_epoch_record(epoch, losses), **evaluate(student, val_source, config, device),
                      "epoch_seconds": round(time.perf_counter() - epoch_start, 3)}
            history.append(record)
            board.epoch(record, epoch * len(loader) - 1)  # flushed before the checkpoint: a resume purges the rest
            save_epoch(run, config, student, optimizer, num_classes, history, connectors)
            log(_epoch_line(record, config.epochs))
        else:
            history.append(None)
        history[-1] = dist.broadcast(record)
        dist.agree(collapse_error(history[-1], config, num_classes, chance, teacher_top1))
    summary = TrainSummary(config.out, config.epochs, time.perf_counter() - started, history[-1],
                           best(history), history)
    if dist.is_main:
        run.finish(summary_record(summary))
    board.close()
    dist.agree()
    return summary


def _teacher_top1(store, logits: TeacherLogits | None) -> float | None:
    """The recorded top-1 of the store's teacher(s) on the training labels (their mean for an
    ensemble); None without a store (an online teacher's is not known before training)."""
    if logits is None:
        return None
    scores = [(store.teacher(name).attrs.get("metrics") or {}).get("top1") for name in logits.teacher_names]
    return None if None in scores else sum(scores) / len(scores)


def _majority_share(source) -> float | None:
    """The val top-1 of always answering the validation set's most frequent class (None without one)."""
    if source is None:
        return None
    return float(np.bincount(source.labels).max() / len(source.labels))


def _checked_student(config: TrainConfig, sample, val_source, num_classes: int, source: str, device):
    """The student, built under the run's seed and checked against a training sample (and a
    validation one) before any step: its head must fit the classes, its input the data."""
    torch.manual_seed(config.seed)
    student = get_model(config.student, num_classes).to(device)
    if config.cutmix and sample.ndim != 3:
        raise ConfigError(f"--cutmix pastes boxes between images (C, H, W), but the inputs are {tuple(sample.shape)}; "
                          "use --mixup")
    _check_head(student, sample, num_classes, source, device)
    if val_source is not None:
        _check_head(student, val_source.dataset[0][0], num_classes, source, device, what="validation inputs",
                    hint="; give a --val-transform that matches the training inputs")
    return student


def _epoch_loader(config: TrainConfig, paired, rows, logits, replay, dist: Distributed, device,
                  features=None) -> tuple:
    """The epoch sampler (block-shuffled when logits are streamed) and the batches over it
    (``PairedDataset.loader``: targets and cached features gathered a batch at a time)."""
    streamed = logits is not None and not logits.in_memory
    sampler = EpochSampler(rows, config.seed, block_rows=logits.block_rows if streamed else None,
                           window_blocks=logits.window_blocks if streamed else 1,
                           rank=dist.rank, world_size=dist.world_size,
                           views=replay.views if replay else 0, view_order=config.view_order)
    min_batch = max(loss_spec(config.loss).min_batch, features.min_batch if features else 1)
    drop_last = 0 < len(sampler) % config.batch_size < min_batch  # a batch the losses are defined on
    loader = paired.loader(sampler, config.batch_size, workers=config.workers, drop_last=drop_last,
                           pin_memory=device.type == "cuda", persistent_workers=config.workers > 0)
    return sampler, loader


MIX_TAG = 0x313C  # keeps the Mixup/CutMix random stream apart from the others


def train_one_epoch(model, loader, optimizer, kd, online, config: TrainConfig, epoch: int, device,
                    dist: Distributed, mixer: Mixer | None = None, mix_rng=None, board=None,
                    features=None) -> list[tuple]:
    """One pass over the loader; returns (step, lr, loss, ce, kd) per step, averaged over ranks
    (and writes each to ``board``, the run's TensorBoard, if any). ``features`` (a FeatureRun):
    feature losses, whose weighted sum is part of the loss.
    Stops (TrainingDivergedError) at the first step whose loss is not finite, on every rank."""
    model.train()
    steps_per_epoch = len(loader)
    losses = []
    bar = progress_bar(loader, desc=f"epoch {epoch}/{config.epochs}", unit="step", leave=False,
                       enabled=config.progress and dist.is_main)
    for step_in_epoch, (inputs, labels, teacher_logits, *stored_features) in enumerate(bar):
        step = (epoch - 1) * steps_per_epoch + step_in_epoch
        lr = get_lr(config, step, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        mixed = None
        if mixer is not None and mixer.enabled:
            cached = _to_device(teacher_logits, device) if kd is not None and online is None else None
            mixed = mixer(inputs, labels, cached, mix_rng)
            inputs, teacher_logits = mixed.inputs, mixed.teacher
        if online is not None:  # the teacher in the loop sees the (mixed) inputs themselves
            with torch.inference_mode(), features.online_tap() if features else contextlib.nullcontext():
                teacher_logits = online(inputs).float()
            teacher_logits = teacher_logits.clone()  # a normal tensor: losses may save it for backward
        with (torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16),
              features.student_tap() if features else contextlib.nullcontext()):
            student_logits = model(inputs)
        ce = mixed.cross_entropy(student_logits) if mixed else F.cross_entropy(student_logits.float(), labels)
        loss, kd_value = config.ce_weight * ce, torch.zeros(())
        if kd is not None:
            kd_value, weighted = kd(student_logits, _to_device(teacher_logits, device), labels, epoch=epoch)
            loss = loss + weighted  # each loss of --loss times its weight
        if features is not None:  # each feature loss carries its own weight
            loss = loss + features.loss(stored_features[0] if stored_features else None, device, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if features is not None:
            features.average_gradients(dist)
        optimizer.step()
        values = dist.sum([loss.item(), ce.item(), kd_value.item()])
        losses.append((step, lr, *(v / dist.world_size for v in values)))
        check_step_loss(losses[-1], config, epoch, step_in_epoch, steps_per_epoch)
        bar.set_postfix(loss=f"{losses[-1][2]:.4f}", refresh=False)  # shown at the bar's next redraw
        if board is not None:  # the run's TensorBoard (train_one_epoch is also called without one)
            board.step(*losses[-1])
    return losses


def _epoch_record(epoch: int, losses: list[tuple]) -> dict:
    """The epoch's last lr and mean training losses."""
    means = {f"train_{name}": sum(x[i] for x in losses) / max(len(losses), 1)
             for i, name in ((2, "loss"), (3, "ce"), (4, "kd"))}
    return {"epoch": epoch, "lr": losses[-1][1] if losses else None, **means}


def _to_device(targets, device):  # a tensor, or a codec's typed targets (which move as one)
    return targets.to(device, non_blocking=True)


def _quiet(*_):
    pass


@torch.no_grad()
def evaluate(model, source, config: TrainConfig, device) -> dict:
    """Validation loss, top-1 and top-5 of ``model`` on ``source`` (empty without one)."""
    if source is None:
        return {"val_loss": None, "val_top1": None, "val_top5": None}
    model.eval()
    loader = DataLoader(source.dataset, batch_size=max(config.batch_size, 256), num_workers=config.workers)
    total, loss, top1, top5 = 0, 0.0, 0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            outputs = model(inputs).float()
        loss += F.cross_entropy(outputs, labels, reduction="sum").item()
        top = outputs.topk(min(5, outputs.shape[1]), dim=1).indices
        top1 += (top[:, 0] == labels).sum().item()
        top5 += (top == labels[:, None]).any(1).sum().item()
        total += len(labels)
    return {"val_loss": loss / total, "val_top1": top1 / total, "val_top5": top5 / total}


def _open_teacher_logits(config: TrainConfig, store) -> TeacherLogits | None:
    """Open the store's teacher(s), check them against the options, and load or stream their logits."""
    if not config.store or not (loss_spec(config.loss).needs_teacher or config.feature_loss):
        return None
    mixing = bool(config.mixup or config.cutmix)  # mixing needs whole distributions
    sparse = loss_spec(config.loss).reads_sparse and not mixing
    logits = TeacherLogits.open(store, config.teacher, config.cache_budget, workers=config.workers,
                                allow_partial=config.allow_partial, temperature=config.temperature,
                                storage_options=config.storage_options, sparse=sparse,
                                dense_for="--mixup/--cutmix" if mixing else None,
                                expect_teacher=config.expect_teacher)
    sampled_at = logits.codec.sampled_at
    if sampled_at is not None and sampled_at != config.temperature:
        raise ConfigError(
            f"--temperature {config.temperature:g} differs from the temperature {sampled_at:g} the store's classes "
            f"were sampled at ({logits.codec.name}); sampled targets estimate the KL at that temperature only"
        )
    return logits


def _training_data(config: TrainConfig, store, logits: TeacherLogits | None, log) -> tuple:
    """The training source, checked against the store, and the view replay of a multi-view store."""
    if logits is None or not logits.views:
        if config.view_size or config.check_views or config.view_order != "random":
            raise ConfigError("--view-order, --view-size and --check-views replay the views of a multi-view store "
                              "(dump --augment SPEC --views K); this run has none")
        source = get_dataset(config.dataset, transform=config.transform, augment=config.augment)
        if logits is None:
            return source, None
        replay = None
    else:
        source, replay = _replayed_views(config, store, logits, log)
    store.check_dataset(source.keys, source.labels)
    if config.check_views:
        _check_views(store, logits, source, config.workers, log)
    if source.random_views and not replay:
        log(f"warning: {source.transform!r} draws random views, but the store holds one fixed view per "
            "sample: the teacher never saw the views the student trains on (dump with --augment to fix that)")
    mode = "in memory" if logits.in_memory else f"streamed, {logits.window_blocks} chunks per window"
    mode += f", sparse {logits.codec.name} targets" if logits.sparse else ""
    views = f" x {replay.views} views" if replay else ""
    log(f"teacher {logits.teacher_name!r} from {config.store}: {len(logits.rows)} samples{views} x "
        f"{logits.num_classes} classes, {mode}")
    return source, replay


def _replayed_views(config: TrainConfig, store, logits: TeacherLogits, log) -> tuple:
    """The dataset the store's views were cut from, and a replay of them at the student's size."""
    views, recorded = logits.views, logits.transform
    if config.transform and transforms.canonical(config.transform) != recorded:
        raise ConfigError(f"the store's views were cut from inputs made by transform {recorded!r}; --transform "
                          f"{config.transform!r} would change them (leave it out)")
    steps = transforms.expand(config.augment) if config.augment else []
    allowed = transforms.COLOR_STEPS | transforms.TENSOR_STEPS
    replayed = sorted({name for name, _ in steps} - allowed)
    if replayed:
        raise ConfigError(f"--augment {', '.join(replayed)} would move the student off the views the teacher saw; "
                          f"the store replays its own ({views['augment']}); --augment may only add steps it does "
                          f"not replay: {', '.join(sorted(allowed))}")
    colour = transforms.only(config.augment, transforms.COLOR_STEPS)
    extras = transforms.only(config.augment, transforms.TENSOR_STEPS)
    source = get_dataset(config.dataset, transform=recorded, for_views=True)
    size = (config.view_size, config.view_size) if config.view_size else views["size"]
    teacher = store.teacher(logits.teacher_names[0])
    replay = ViewReplay(teacher.read_view_params(0, teacher.num_samples), tuple(size) if size else None,
                        normalize=source.view_normalize, colour=colour, extras=extras)
    at = f"{size[0]}x{size[1]} px" if size else "the input's size"
    log(f"replaying {replay.views} stored views per sample ({views['augment']}) at {at}, "
        f"a {config.view_order} view each epoch; student-side only, not replayed: {config.augment or 'none'}")
    return source, replay


def _check_views(store, logits: TeacherLogits, source, workers: int, log) -> None:
    """--check-views: rebuild every stored view and compare its hash with the dump's."""
    teachers = [store.teacher(name) for name in logits.teacher_names]
    hashed = [t for t in teachers if t.has_view_hashes]
    if not hashed:
        raise ConfigError("--check-views: the store recorded no view hashes (dump with --record-view-hashes)")
    for teacher in hashed:
        problems = check_view_hashes(teacher, source, workers)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DatasetError(f"--check-views: teacher {teacher.name!r}: {problems[0]}{more}; the data or the "
                               "augmentation code changed since the dump")
        log(f"checked {teacher.num_samples * teacher.views_per_sample} views of teacher {teacher.name!r}: "
            "all replay exactly")


def _check_head(student, sample, num_classes: int, where: str, device, what: str = "an input",
                hint: str = "") -> None:
    """One forward pass: sizes lazy layers and checks the head has one output per class."""
    inputs = sample.unsqueeze(0).to(device)
    student.eval()
    with torch.no_grad():
        try:
            out = student(inputs)
        except Exception as err:
            raise ModelError(f"the student fails on {what} of shape {tuple(inputs.shape[1:])}: "
                             f"{str(err).strip().splitlines()[0]}{hint}") from None
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise ModelError(f"the student outputs {tuple(out.shape[1:])} per sample but the {where} has {num_classes} classes")


def _online_teacher(config: TrainConfig, num_classes: int, device):
    if not config.online_teacher:
        return None
    teacher = get_model(config.online_teacher, num_classes, weights=config.online_teacher_weights)
    return teacher.to(device).eval()



def _epoch_line(record: dict, epochs: int) -> str:
    return (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} "
            f"(ce {record['train_ce']:.4f}, kd {record['train_kd']:.4f}), val top-1 {_pct(record['val_top1'])}, "
            f"top-5 {_pct(record['val_top5'])}, {record['epoch_seconds']:.1f} s")


def summary_record(summary: TrainSummary) -> dict:
    return {"complete": True, "epochs": summary.epochs, "seconds": round(summary.seconds, 3),
            "last": summary.last, "best": summary.best}
