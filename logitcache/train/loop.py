"""Stage 2: train a student from a store (or from labels alone), read top to bottom.

    >>> from logitcache.train import TrainConfig, train
    >>> summary = train(TrainConfig(out="data/runs/dist", student="mlp:hidden=32",
    ...                             dataset="digits@train", val_dataset="digits@val",
    ...                             store="data/stores/digits.zarr", loss="dist"))

The loop: build the student, open the store and check it matches the dataset, then per epoch:
set the order, step through batches (lr from ``get_lr``, optional Mixup/CutMix, forward,
ce_weight*CE + kd_weight*KD, backward, step), evaluate, write metrics and checkpoints. Randomness
is a function of (seed, epoch), so ``--resume`` from an epoch checkpoint continues the very same run.
A multi-view store's views are replayed: each epoch every sample shows one stored view, rebuilt
from the raw sample, with that view's logits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..devices import resolve_device
from ..distributed import Distributed, distributed
from ..errors import ConfigError, DatasetError, ModelError
from ..losses import loss_spec
from ..mixing import Mixer
from ..sources import get_dataset, get_model, transforms
from ..store import open_store
from ..views.replay import ViewReplay, check_view_hashes
from .config import TrainConfig, get_lr, validate
from .data import EpochSampler, PairedDataset, TeacherLogits
from .resume import (
    best,
    check_step_loss,
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
    config = config.resolved()
    validate(config)
    run = RunFiles(Path(config.out))
    with distributed(config.device) as dist, hold_run(run, dist):
        return _train(config, run, dist, log if dist.is_main else _quiet)


def _train(config: TrainConfig, run: RunFiles, dist: Distributed, log) -> TrainSummary:
    device = resolve_device(dist.device(config.device))
    resumed = open_resume(run, config, dist, log)  # before any data is read: refuses a changed run at once

    # Data: the teacher's logits, the training set (replayed views, or any augmentation), validation.
    uses_store = config.store and loss_spec(config.loss).needs_teacher
    store = open_store(config.store, storage_options=config.storage_options) if uses_store else None  # once
    logits = _open_teacher_logits(config, store)
    train_source, replay = _training_data(config, store, logits, log)
    val_source = get_dataset(config.val_dataset, transform=config.val_transform) if config.val_dataset else None
    num_classes = logits.num_classes if logits is not None else len(train_source.classes)
    rows = logits.rows if logits is not None else np.arange(len(train_source))
    paired = PairedDataset(train_source.dataset, logits, replay)

    # The student, checked against the data before any step.
    student = _checked_student(config, paired[int(rows[0]) * (replay.views if replay else 1)][0], val_source,
                               num_classes, "store" if logits is not None else "dataset", device)
    model = _wrap_ddp(student, dist, device)
    online = _online_teacher(config, num_classes, device)
    optimizer = _optimizer(config, student)
    kd = loss_spec(config.loss).build(config)
    mixer = Mixer(config.mixup, config.cutmix, config.temperature)
    start_epoch, history = prepare_run(run, config, resumed, student, optimizer, dist, log)

    sampler, loader = _epoch_loader(config, paired, rows, logits, replay, dist, device)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        sampler.set_epoch(epoch)
        torch.manual_seed(config.seed * 100_003 + epoch + 1_000_003 * dist.rank)  # a function of (seed, epoch, rank)
        mix_rng = np.random.default_rng([config.seed, epoch, dist.rank, MIX_TAG]) if mixer.enabled else None
        epoch_start = time.perf_counter()
        losses = train_one_epoch(model, loader, optimizer, kd, online, config, epoch, device, dist, mixer, mix_rng)
        dist.agree(weights_error(student, config, epoch))
        record = None
        if dist.is_main:
            run.append_steps(epoch, losses)
            record = {**_epoch_record(epoch, losses), **evaluate(student, val_source, config, device),
                      "epoch_seconds": round(time.perf_counter() - epoch_start, 3)}
            history.append(record)
            save_epoch(run, config, student, optimizer, num_classes, history)
            log(_epoch_line(record, config.epochs))
        else:
            history.append(None)
        history[-1] = dist.broadcast(record)
        dist.agree()
    summary = TrainSummary(config.out, config.epochs, time.perf_counter() - started, history[-1],
                           best(history), history)
    if dist.is_main:
        run.finish(summary_record(summary))
    dist.agree()
    return summary


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


def _epoch_loader(config: TrainConfig, paired, rows, logits, replay, dist: Distributed, device) -> tuple:
    """The epoch sampler (block-shuffled when logits are streamed) and the DataLoader over it."""
    streamed = logits is not None and not logits.in_memory
    sampler = EpochSampler(rows, config.seed, block_rows=logits.block_rows if streamed else None,
                           window_blocks=logits.window_blocks if streamed else 1,
                           rank=dist.rank, world_size=dist.world_size,
                           views=replay.views if replay else 0, view_order=config.view_order)
    drop_last = 0 < len(sampler) % config.batch_size < loss_spec(config.loss).min_batch  # a batch it is defined on
    loader = DataLoader(paired, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        drop_last=drop_last, pin_memory=device.type == "cuda", persistent_workers=config.workers > 0)
    return sampler, loader


MIX_TAG = 0x313C  # keeps the Mixup/CutMix random stream apart from the others


def train_one_epoch(model, loader, optimizer, kd, online, config: TrainConfig, epoch: int, device,
                    dist: Distributed, mixer: Mixer | None = None, mix_rng=None) -> list[tuple]:
    """One pass over the loader; returns (step, lr, loss, ce, kd) per step, averaged over ranks.
    Stops (TrainingDivergedError) at the first step whose loss is not finite, on every rank."""
    model.train()
    steps_per_epoch = len(loader)
    losses = []
    bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not (config.progress and dist.is_main),
               leave=False, dynamic_ncols=True)
    for step_in_epoch, (inputs, labels, teacher_logits) in enumerate(bar):
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
            with torch.inference_mode():
                teacher_logits = online(inputs).float()
            teacher_logits = teacher_logits.clone()  # a normal tensor: losses may save it for backward
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            student_logits = model(inputs)
        ce = mixed.cross_entropy(student_logits) if mixed else F.cross_entropy(student_logits.float(), labels)
        loss, kd_value = config.ce_weight * ce, torch.zeros(())
        if kd is not None:
            kd_value = kd(student_logits, _to_device(teacher_logits, device), labels, epoch=epoch)
            loss = loss + config.kd_weight * kd_value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        values = dist.sum([loss.item(), ce.item(), kd_value.item()])
        losses.append((step, lr, *(v / dist.world_size for v in values)))
        check_step_loss(losses[-1], config, epoch, step_in_epoch, steps_per_epoch)
        bar.set_postfix(loss=f"{losses[-1][2]:.4f}")
    return losses


def _epoch_record(epoch: int, losses: list[tuple]) -> dict:
    """The epoch's last lr and mean training losses."""
    means = {f"train_{name}": sum(x[i] for x in losses) / max(len(losses), 1)
             for i, name in ((2, "loss"), (3, "ce"), (4, "kd"))}
    return {"epoch": epoch, "lr": losses[-1][1] if losses else None, **means}


def _to_device(targets, device):
    if isinstance(targets, dict):
        return {key: value.to(device, non_blocking=True) for key, value in targets.items()}
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
    if not config.store or not loss_spec(config.loss).needs_teacher:
        return None
    mixing = bool(config.mixup or config.cutmix)  # mixing needs whole distributions
    sparse = loss_spec(config.loss).reads_sparse and not mixing
    logits = TeacherLogits.open(store, config.teacher, config.cache_budget, workers=config.workers,
                                allow_partial=config.allow_partial, temperature=config.temperature,
                                storage_options=config.storage_options, sparse=sparse,
                                dense_for="--mixup/--cutmix" if mixing else None,
                                expect_teacher=config.expect_teacher)
    sampled_at = getattr(logits.codec, "temperature", None) if logits.codec.sparse_only else None
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
