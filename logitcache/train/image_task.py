"""The image task: a classifier trained from a store's cached logits (or labels, or a teacher in the loop).

    >>> task = ImageTask(config, store, log)              # what trainer.py's loop asks of image data
    >>> student = task.build(device)                      # data, then the student checked against it
    >>> trained = task.prepare(student, dist)             # online teacher, feature connectors, batches
    >>> loss, parts = task.step_loss(model, batch, epoch, step_in_epoch)

A step: optional Mixup/CutMix (the cached teacher distributions mixed alike), a teacher in the
loop if any, the forward, ``ce_weight * CE + kd_weight * KD`` (``losses/``) plus the feature
losses' weighted sum (``features/``). Evaluation: validation loss, top-1 and top-5. After DKD's
warm-up, a student at chance stops the run (``checkpointing.collapse_error``). A multi-view store's views
are replayed: each epoch every sample shows one stored view, rebuilt from the raw sample, with
that view's logits (``views/replay.py``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..distributed import Distributed
from ..errors import ConfigError, DatasetError, ModelError
from ..features.distiller import FeatureRun
from ..losses import loss_spec
from ..mixing import Mixer
from ..sources import FACTORY, get_dataset, get_model, transforms
from ..views.replay import ViewReplay, check_view_hashes
from .train_config import TrainConfig, options_record, warmup_note
from .paired_data import EpochSampler, PairedDataset, TeacherLogits
from .checkpointing import collapse_error
from .run_summary import TrainSummary

MIX_TAG = 0x313C  # keeps the Mixup/CutMix random stream apart from the others


@dataclass
class ImageSummary(TrainSummary):
    num_classes: int | None = None  # top-5 is named only above 5 classes (at or below, it is always 100 %)

    def results(self) -> list[str]:
        last, best = self.last, self.best
        if last.get("val_top1") is None:  # no --val-dataset: nothing to call best
            return [f"  last epoch: train loss {last['train_loss']:.4f}",
                    "  no validation set (--val-dataset), so best.pt is the last epoch's weights"]
        top5 = f", top-5 {_pct(last.get('val_top5'))}" if self.num_classes is None or self.num_classes > 5 else ""
        return [f"  last epoch: val top-1 {_pct(last.get('val_top1'))}{top5}, train loss {last['train_loss']:.4f}",
                f"  best epoch {best['epoch']}: val top-1 {_pct(best.get('val_top1'))}"]


class ImageTask:
    """Answers ``trainer.Task`` for images: samples paired with their teacher's logits (in memory or
    streamed), a student whose head has one output per class."""

    def __init__(self, config: TrainConfig, store, log):
        self.config, self.log = config, log
        uses_store = config.store and (loss_spec(config.loss).needs_teacher or config.feature_loss)
        self.store = store if uses_store else None
        self.connectors = None

    def build(self, device) -> torch.nn.Module:
        config, log = self.config, self.log
        self.device = device
        if note := warmup_note(config):
            log(note)
        # Data: the teacher's logits, the training set (replayed views, or any augmentation), validation.
        self.logits = logits = _open_teacher_logits(config, self.store)
        self.train_source, self.replay = _training_data(config, self.store, logits, log)
        self.val_source = get_dataset(config.val_dataset, transform=config.val_transform,
                                      default_transform=None if config.transform else store_transform(logits),
                                      ) if config.val_dataset else None
        self.num_classes = logits.num_classes if logits is not None else len(self.train_source.classes)
        self.rows = logits.rows if logits is not None else np.arange(len(self.train_source))
        self.paired = PairedDataset(self.train_source.dataset, logits, self.replay)
        # The student, checked against the data before any step.
        self.sample = self.paired[int(self.rows[0]) * (self.replay.views if self.replay else 1)][0]
        return _checked_student(config, self.sample, self.val_source, self.num_classes,
                                "store" if logits is not None else "dataset", device)

    def prepare(self, student, dist: Distributed) -> torch.nn.Module:
        config, device, logits, replay = self.config, self.device, self.logits, self.replay
        self.dist = dist
        self.online = _online_teacher(config, self.num_classes, device)
        self.features = features = FeatureRun.build(
            config.feature_options(), student, self.sample, device, store=self.store, rows=self.rows, online=self.online,
            teacher_name=logits.teacher_names[0] if logits is not None else None,
            random_views=self.train_source.random_views and not replay)
        paired = features.pair(self.paired, replay.views if replay else 0) if features else self.paired
        self.connectors = features.distiller if features else None  # trained with the student, saved beside it
        self.kd = loss_spec(config.loss).build(config.temperature, config.kd_weight, config.loss_options)
        self.mixer = Mixer(config.mixup, config.cutmix, config.temperature)
        self.sampler, self.loader = epoch_loader(config, paired, self.rows, logits, replay, dist, device, features)
        self.steps_per_epoch = len(self.loader)
        self.chance, self.teacher_top1 = _majority_share(self.val_source), _teacher_top1(self.store, logits)
        return student if features is None else torch.nn.ModuleList([student, features.distiller])

    def epoch_batches(self, epoch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.mix_rng = (np.random.default_rng([self.config.seed, epoch, self.dist.rank, MIX_TAG])
                        if self.mixer.enabled else None)
        return self.loader

    def step_loss(self, model, batch, epoch: int, step_in_epoch: int) -> tuple[torch.Tensor, tuple]:
        config, device, features, online, kd = self.config, self.device, self.features, self.online, self.kd
        inputs, labels, teacher_logits, *stored_features = batch
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        mixed = None
        if self.mixer.enabled:
            cached = _to_device(teacher_logits, device) if kd is not None and online is None else None
            mixed = self.mixer(inputs, labels, cached, self.mix_rng)
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
        return loss, (loss, ce, kd_value)

    def before_optimizer_step(self) -> None:
        if self.features is not None:
            self.features.average_gradients(self.dist)

    def step_losses(self, parts: tuple) -> tuple[float, ...]:
        values = self.dist.sum([part.item() for part in parts])
        return tuple(v / self.dist.world_size for v in values)

    def epoch_totals(self, seconds: float) -> dict:
        return {}

    def evaluate(self, student) -> dict:
        return evaluate(student, self.val_source, self.config, self.device)

    def epoch_line(self, record: dict) -> str:
        """What the epoch did, naming only what the run has: the kd term of a run that learns from a
        teacher, validation when there is a validation set, top-5 when there are more than 5 classes."""
        parts = f"ce {record['train_ce']:.4f}" + (f", kd {record['train_kd']:.4f}" if self.kd is not None else "")
        line = f"epoch {record['epoch']}/{self.config.epochs}: train loss {record['train_loss']:.4f} ({parts})"
        if record.get("val_top1") is not None:
            line += f", val top-1 {_pct(record['val_top1'])}"
            line += f", top-5 {_pct(record['val_top5'])}" if self.num_classes > 5 else ""
        return f"{line}, {record['epoch_seconds']:.1f} s"

    def stop_error(self, record: dict) -> Exception | None:
        return collapse_error(record, options_record(self.config), self.num_classes, self.chance, self.teacher_top1)

    def summary(self, **fields) -> ImageSummary:
        return ImageSummary(**fields, num_classes=self.num_classes)


def epoch_loader(config: TrainConfig, paired, rows, logits, replay, dist: Distributed, device,
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
        source = get_dataset(config.dataset, transform=config.transform, augment=config.augment,
                             default_transform=store_transform(logits))
        _say_inputs(config, source, logits, log)
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


def store_transform(logits: TeacherLogits | None) -> str | None:
    """The transform that made the inputs the store's teacher saw: the student's default, so that it
    learns the teacher's targets from the same inputs (None without a store, or for a factory
    dataset that applies its own)."""
    recorded = logits.transform if logits is not None else None
    return recorded if recorded and recorded != FACTORY else None


def _say_inputs(config: TrainConfig, source, logits: TeacherLogits | None, log) -> None:
    """Train's first lines say which inputs the student sees, and warn when the teacher saw others."""
    recorded = store_transform(logits)
    if config.transform and recorded and transforms.canonical(config.transform) != recorded:
        log(f"warning: the store's teacher saw inputs made by {recorded!r}; --transform {config.transform!r} gives "
            "the student other inputs (leave --transform out to use the teacher's)")
    why = ("--transform" if config.transform else "the store's: what the teacher saw"
           if source.extra.get("transform_from") == "model" else "the dataset's default")
    log(f"inputs: {source.transform} ({why})")


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


def _to_device(targets, device):  # a tensor, or a codec's typed targets (which move as one)
    return targets.to(device, non_blocking=True)


def _pct(value):
    return "n/a" if value is None else f"{value:.2%}"
