"""The feature side of one student run: the student's taps, the feature losses with their connectors and
weights, and where the teacher's features come from (the store, or the teacher in the loop).

    >>> run = FeatureRun.build(options, student, sample, device, store=store, teacher_name="default", rows=rows)
    >>> paired = run.pair(paired, views=0)               # batches gain the cached features
    >>> with run.student_tap():
    ...     student_logits = model(inputs)
    >>> loss = loss + run.loss(cached_features, device, epoch)

``--feature-loss at,rkd=2`` picks the losses (each with its paper's weight unless one is given);
``--student-features NAME=LAYER,...`` names the student's module for each teacher feature it learns
from. Each loss takes the features whose cached reduce it prefers (AT: attention, else maps; RKD: pool,
else maps; ICKD: gram, else maps; FitNet: maps; ReviewKD: every map and pool level, in the order given).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as torch_dist
from torch import nn

from ..errors import ConfigError, StoreMismatchError
from .cached_features import FeaturePairs, TeacherFeatures
from .extract import FeatureTap, tap_teacher
from .feature_specs import FeatureOptions, parse_feature_losses, parse_features, parse_student_features
from .losses import Level, feature_loss_spec


class FeatureDistiller(nn.Module):
    """The feature losses of one run, as one module (its state is the connectors, saved in checkpoints)."""

    def __init__(self, student: nn.Module, student_layers: dict[str, str], teacher: dict[str, dict],
                 losses: list[tuple[str, float | None]], sample: torch.Tensor, device):
        super().__init__()
        unknown = [name for name in student_layers if name not in teacher]
        if unknown:
            raise StoreMismatchError(f"--student-features names {', '.join(map(repr, unknown))}, but the teacher's "
                                     f"features are: {_listing(teacher)}")
        self.tap = FeatureTap(student, student_layers, what="student")
        shapes = self._probe(student, sample, device)
        self.losses, self.weights, self.names = nn.ModuleDict(), {}, {}
        for name, weight in losses:
            spec = feature_loss_spec(name)
            self.names[name] = _pick(spec, student_layers, teacher)
            levels = [Level(n, shapes[n], teacher[n]["reduce"], tuple(teacher[n]["shape"])) for n in self.names[name]]
            self.losses[name] = spec.build(levels)
            self.weights[name] = spec.weight if weight is None else weight
        self.min_batch = max(feature_loss_spec(name).min_batch for name, _ in losses)
        self.to(device)

    def _probe(self, student: nn.Module, sample: torch.Tensor, device) -> dict[str, tuple[int, ...]]:
        student.eval()
        with torch.no_grad(), self.tap:
            student(sample.unsqueeze(0).to(device))
        return {name: tuple(values.shape[1:]) for name, values in self.tap.outputs.items()}

    def forward(self, teacher: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
        """The weighted sum of every feature loss, from the student's last tapped pass and the teacher's features."""
        student = self.tap.outputs
        total = torch.zeros((), device=next(iter(teacher.values())).device)
        for name, loss in self.losses.items():
            names = self.names[name]
            total = total + self.weights[name] * loss([student[n] for n in names], [teacher[n] for n in names], epoch)
        return total


def _pick(spec, student_layers: dict[str, str], teacher: dict[str, dict]) -> list[str]:
    """The features a loss learns from: of those the student names, the ones with the reduce it prefers
    (ReviewKD: every accepted one), in the order the student named them."""
    named = [n for n in student_layers if teacher[n]["reduce"] in spec.accepts]
    if spec.name == "reviewkd":
        return named
    for reduce in spec.accepts:
        preferred = [n for n in named if teacher[n]["reduce"] == reduce]
        if preferred:
            return preferred
    raise ConfigError(f"--feature-loss {spec.name} learns from {' or '.join(spec.accepts)} features; the teacher's "
                      f"are {_listing(teacher)}: name one of the right kind in --student-features")


def _listing(teacher: dict[str, dict]) -> str:
    return ", ".join(f"{n} ({r['reduce']} {'x'.join(map(str, r['shape']))})" for n, r in teacher.items()) or "none"


class FeatureRun:
    """What a training loop needs for feature losses; ``build`` returns None without ``--feature-loss``."""

    def __init__(self, distiller: FeatureDistiller, reader: TeacherFeatures | None, teacher_tap: FeatureTap | None):
        self.distiller, self.reader, self.teacher_tap = distiller, reader, teacher_tap

    @classmethod
    def build(cls, options: FeatureOptions, student, sample, device, *, store=None, teacher_name=None, rows=None,
              online=None, random_views: bool = False) -> FeatureRun | None:
        """``options``: the run's ``FeatureOptions``. ``random_views``: the student's inputs are random views the store's single view never showed the
        teacher; spatial features (attention, map) would then be misplaced, so they are refused."""
        if not options.losses:
            return None
        losses = parse_feature_losses(options.losses)
        student_layers = parse_student_features(options.student_layers or "")
        reader = teacher_tap = None
        if online is not None:
            teacher_tap, records = online_records(online, options.online_layers or "", sample, device)
        else:
            records = {f["name"]: f for f in store.teacher(teacher_name).features}
            if not records:
                raise ConfigError(f"the store's teacher {teacher_name!r} holds no features; dump it with --features "
                                  "NAME=LAYER[:REDUCE] (or train with --online-teacher and --features)")
        distiller = FeatureDistiller(student, student_layers, records, losses, sample, device)
        spatial = sorted({n for ns in distiller.names.values() for n in ns if records[n]["reduce"] in ("attention", "map")})
        if online is None and random_views and spatial:
            raise ConfigError(f"the student trains on random views (--augment/--transform), but the store holds the "
                              f"teacher's features of one fixed view per sample, so its spatial features "
                              f"({', '.join(spatial)}) would not line up with the student's; dump a multi-view store "
                              "(--augment SPEC --views K) and replay it, or use --online-teacher")
        if online is None:
            reader = TeacherFeatures(store, teacher_name, sorted({n for ns in distiller.names.values() for n in ns}),
                                     rows, options.cache_budget)  # one reader: the loader's process (FeaturePairs)
        return cls(distiller, reader, teacher_tap)

    @property
    def min_batch(self) -> int:
        return self.distiller.min_batch

    def pair(self, paired, views: int = 0):
        """The paired dataset with the cached features appended to each item (as is with a teacher in the loop)."""
        return FeaturePairs(paired, self.reader, views) if self.reader is not None else paired

    def student_tap(self):
        return self.distiller.tap

    def online_tap(self):
        return self.teacher_tap if self.teacher_tap is not None else contextlib.nullcontext()

    def loss(self, cached: dict | None, device, epoch: int) -> torch.Tensor:
        """The weighted feature losses of the student's last pass against the cached features (or, with a teacher
        in the loop, those its tap kept in the same step)."""
        if cached is None:
            teacher = {name: values.clone() for name, values in self.teacher_tap.outputs.items()}  # out of inference mode
        else:
            teacher = {name: values.to(device, non_blocking=True) for name, values in cached.items()}
        return self.distiller(teacher, epoch)

    def average_gradients(self, dist) -> None:
        """Under torchrun the connectors are not inside the student's DDP wrapper: average their gradients here."""
        if not dist.enabled:
            return
        for parameter in self.distiller.parameters():
            if parameter.grad is not None:
                torch_dist.all_reduce(parameter.grad)
                parameter.grad /= dist.world_size


def online_records(teacher: nn.Module, features: str, sample: torch.Tensor, device) -> tuple[FeatureTap, dict]:
    """A tap on a teacher run in the loop (``--features`` names its layers and reduces) and the records of what
    it keeps per sample, as a store would record them."""
    if not features:
        raise ConfigError("--feature-loss with --online-teacher needs --features NAME=LAYER[:REDUCE] for the teacher")
    tap, records = tap_teacher(teacher, parse_features(features), sample, device)
    return tap, {record["name"]: record for record in records}
