"""The feature options' grammar (no torch, so the CLI and pipeline checks stay light).

    >>> parse_features("emb=30:pool,s3=29:attention")        # what a dump caches, per sample
    [FeatureSpec(name='emb', layer='30', reduce='pool'), FeatureSpec(name='s3', layer='29', reduce='attention')]
    >>> parse_student_features("emb=10,s3=9")                  # the student's layer for each cached name
    {'emb': '10', 's3': '9'}
    >>> parse_feature_losses("at,rkd=2")                       # losses, each with its weight (None: its own)
    [('at', None), ('rkd', 2.0)]

``--features NAME=LAYER[:REDUCE],...``: NAME is an identifier (it names the array ``features/NAME``),
LAYER a module path of the teacher (``layer3.1``, ``12``, ``features.denseblock4``), REDUCE what is
kept per sample: ``pool`` (C values), ``attention`` (H x W), ``gram`` (C x C), ``map`` (C x H x W, the
default). ``--student-features NAME=LAYER,...`` names the student's module for each teacher feature
it learns from; the order is the order of the levels (shallow to deep, for ReviewKD).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError, SpecError
from ..losses.lists import parse_weighted
from ..store import REDUCES

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
LAYER = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class FeatureOptions:
    """A run's feature settings, all a feature run reads: ``losses`` (``--feature-loss``), the student's
    layers (``--student-features``), an online teacher's layers (``--features``), and the bytes of
    cached features held in memory before they are read by chunk."""

    losses: str | None = None
    student_layers: str | None = None
    online_layers: str | None = None
    cache_budget: int = 4 << 30


@dataclass(frozen=True)
class FeatureSpec:
    """One ``--features`` entry: a name, a module path of the teacher, and what is kept per sample."""

    name: str
    layer: str
    reduce: str = "map"

    @property
    def spec(self) -> str:
        return f"{self.name}={self.layer}:{self.reduce}"


def _pairs(text: str, option: str, form: str) -> list[tuple[str, str]]:
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"{option} is empty; give {form}")
    pairs, seen = [], set()
    for item in (part.strip() for part in text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or not NAME.match(name) or not value:
            raise SpecError(f"{option}: {item!r} is not of the form {form} (NAME: letters, digits, '_')")
        if name in seen:
            raise SpecError(f"{option}: {name!r} is given twice")
        seen.add(name)
        pairs.append((name, value))
    return pairs


def parse_features(text: str) -> list[FeatureSpec]:
    """``NAME=LAYER[:REDUCE],...`` -> FeatureSpecs, in the order given.

    Raises:
        SpecError: a malformed entry, a repeated name, or an unknown REDUCE (the message lists them).
    """
    specs = []
    for name, value in _pairs(text, "--features", "NAME=LAYER[:REDUCE]"):
        layer, _, reduce = value.partition(":")
        reduce = reduce or "map"
        if not LAYER.match(layer):
            raise SpecError(f"--features {name}: {layer!r} is not a module path (e.g. layer3.1, 12, features.7)")
        if reduce not in REDUCES:
            raise SpecError(f"--features {name}: unknown reduce {reduce!r}; choose {', '.join(REDUCES)}")
        specs.append(FeatureSpec(name, layer, reduce))
    return specs


def parse_student_features(text: str) -> dict[str, str]:
    """``NAME=LAYER,...`` -> {name: the student's module path}, in the order given."""
    layers = {}
    for name, layer in _pairs(text, "--student-features", "NAME=LAYER"):
        if not LAYER.match(layer):
            raise SpecError(f"--student-features {name}: {layer!r} is not a module path (e.g. layer3.1, 12)")
        layers[name] = layer
    return layers


def parse_feature_losses(text: str) -> list[tuple[str, float | None]]:
    """``NAME[=WEIGHT],...`` -> [(loss name, weight or None for the loss's own default)], as ``--loss``
    takes its list."""
    return parse_weighted(text, "--feature-loss")


def canonical(specs: list[FeatureSpec]) -> str:
    """The spec string a store records (every REDUCE spelled out)."""
    return ",".join(spec.spec for spec in specs)


def check_feature_options(feature_loss: str | None, student_features: str | None, features: str | None, *,
                          store: str | None, online_teacher: str | None, teacher: str | None, mixing: bool,
                          batch_size: int) -> None:
    """``train``'s feature options make sense together, given the run's teacher source (``store`` or
    ``online_teacher``, ``teacher``), whether it mixes samples, and its batch size; ConfigError/SpecError
    naming the option."""
    from .losses import feature_loss_spec  # here: the feature losses import torch, the grammar does not

    if not feature_loss:
        if student_features or features:
            raise ConfigError("--student-features and --features are read by --feature-loss; add one (e.g. at)")
        return
    for name, _ in parse_feature_losses(feature_loss):
        feature_loss_spec(name)
    if not student_features:
        raise ConfigError("--feature-loss needs --student-features NAME=LAYER,...: the student's layer for each "
                          "teacher feature it learns from")
    parse_student_features(student_features)
    checks = [
        (store or online_teacher, "--feature-loss learns from a teacher's features: give --store "
         "(dumped with --features) or --online-teacher with --features"),
        (not features or online_teacher, "--features names the layers of a teacher in the loop "
         "(--online-teacher); a store records the features it holds"),
        (not (store and mixing), "--mixup/--cutmix mix the inputs, but cached "
         "features are of unmixed samples: train feature losses from a store without mixing"),
        ("," not in (teacher or ""), "--feature-loss learns from one teacher's features; name one --teacher"),
        (batch_size >= 2, "--feature-loss needs --batch-size of at least 2 (relations and batch norm "
         "in the connectors)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if features:
        parse_features(features)
