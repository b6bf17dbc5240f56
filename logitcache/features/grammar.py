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

from ..errors import SpecError
from ..store import REDUCES

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
LAYER = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


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
    """``NAME[=WEIGHT],...`` -> [(loss name, weight or None for the loss's own default)]."""
    losses = []
    for item in (part.strip() for part in str(text).split(",")):
        name, sep, raw = item.partition("=")
        weight = None
        if sep:
            try:
                weight = float(raw)
            except ValueError:
                raise SpecError(f"--feature-loss {item!r}: the weight {raw!r} is not a number") from None
            if not weight >= 0 or weight == float("inf"):
                raise SpecError(f"--feature-loss {item!r}: the weight must be a finite number >= 0")
        if not name or name in [n for n, _ in losses]:
            raise SpecError(f"--feature-loss {text!r}: give each loss once, as NAME[=WEIGHT],...")
        losses.append((name, weight))
    return losses


def canonical(specs: list[FeatureSpec]) -> str:
    """The spec string a store records (every REDUCE spelled out)."""
    return ",".join(spec.spec for spec in specs)


def check_feature_options(config) -> None:
    """``train``'s feature options (a TrainConfig) make sense together; ConfigError/SpecError naming the option."""
    from ..errors import ConfigError
    from .losses import FEATURE_LOSSES  # here: the registry imports torch, the grammar does not

    if not config.feature_loss:
        if config.student_features or config.features:
            raise ConfigError("--student-features and --features are read by --feature-loss; add one (e.g. at)")
        return
    for name, _ in parse_feature_losses(config.feature_loss):
        FEATURE_LOSSES.get(name)
    if not config.student_features:
        raise ConfigError("--feature-loss needs --student-features NAME=LAYER,...: the student's layer for each "
                          "teacher feature it learns from")
    parse_student_features(config.student_features)
    checks = [
        (config.store or config.online_teacher, "--feature-loss learns from a teacher's features: give --store "
         "(dumped with --features) or --online-teacher with --features"),
        (not config.features or config.online_teacher, "--features names the layers of a teacher in the loop "
         "(--online-teacher); a store records the features it holds"),
        (not (config.store and (config.mixup or config.cutmix)), "--mixup/--cutmix mix the inputs, but cached "
         "features are of unmixed samples: train feature losses from a store without mixing"),
        ("," not in (config.teacher or ""), "--feature-loss learns from one teacher's features; name one --teacher"),
        (config.batch_size >= 2, "--feature-loss needs --batch-size of at least 2 (relations and batch norm "
         "in the connectors)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if config.features:
        parse_features(config.features)
