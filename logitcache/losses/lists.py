"""A run's logit losses: ``--loss NAME[=WEIGHT],...``, what the trainer asks of the list, and the
options each loss is built with.

    >>> losses = loss_spec("kl=1,dist=0.5")           # a LossList; loss_spec("dist") is a list of one
    >>> losses.needs_teacher, losses.min_batch, losses.temperature      # True, 2, None (kl 4, dist 1 differ)
    >>> kd = losses.build(temperature=4.0, kd_weight=1.0, options={"dist": {"beta": 2.0}})
    >>> logged, weighted = kd(student_logits, teacher_logits, labels, epoch=3)

The training total is ``ce_weight * CE + sum(weight_i * loss_i)``; a name without a weight takes
``--kd-weight``, so ``--loss kl`` means what it always meant. ``ce`` is that first term, weighed by
``--ce-weight``: alone it is a label-only run, and it is never part of a list. What the list answers:
it needs a teacher if any loss does; its smallest batch is the largest any needs; it reads sparse
targets, and mixes samples, only if every loss does; its default temperature is the losses' own
when they agree, else None (then ``--temperature`` is required); its warm-up is the longest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError, SpecError
from .declarations import LOSSES, Loss, logit_loss, loss_names, option_flag


def parse_weighted(text, option: str) -> list[tuple[str, float | None]]:
    """``NAME[=WEIGHT],...`` -> [(name, weight or None)], as ``--loss`` and ``--feature-loss`` take it.

    Raises:
        SpecError: a weight that is not a finite number >= 0, an empty name or one given twice.
    """
    pairs = []
    for item in (part.strip() for part in str(text).split(",")):
        name, sep, raw = item.partition("=")
        weight = None
        if sep:
            try:
                weight = float(raw)
            except ValueError:
                raise SpecError(f"{option} {item!r}: the weight {raw!r} is not a number") from None
            if not weight >= 0 or weight == math.inf:
                raise SpecError(f"{option} {item!r}: the weight must be a finite number >= 0")
        if not name or name in [n for n, _ in pairs]:
            raise SpecError(f"{option} {text!r}: give each loss once, as NAME[=WEIGHT],...")
        pairs.append((name, weight))
    return pairs


def loss_terms(text: str) -> list[tuple[Loss, float | None]]:
    """The registered losses of a ``--loss`` list, with their weights (None: --kd-weight).

    Raises:
        ConfigError: one line naming the fix: an unknown name, a bad weight, a name twice, ce in a list.
    """
    try:
        pairs = parse_weighted(text, "--loss")
    except SpecError as err:  # the same line, as the other options' checks raise it
        raise ConfigError(str(err)) from None
    for name, _ in pairs:
        if name not in loss_names():
            raise ConfigError(f"--loss {name!r} is unknown; choose {', '.join(loss_names())}")
    if "ce" in [name for name, _ in pairs] and (len(pairs) > 1 or pairs[0][1] is not None):
        raise ConfigError(f"--loss {text}: ce is the labels' cross-entropy, always in the total: weigh it with "
                          "--ce-weight and list only the losses added to it")
    return [(logit_loss(name), weight) for name, weight in pairs]


@dataclass(frozen=True)
class LossList:
    """The losses of one ``--loss`` list (``ce`` alone: none), and what the trainer asks of them."""

    text: str
    terms: tuple[tuple[Loss, float | None], ...]

    @property
    def needs_teacher(self) -> bool:
        return any(loss.needs_teacher for loss, _ in self.terms)

    @property
    def min_batch(self) -> int:
        return max([loss.min_batch for loss, _ in self.terms], default=1)

    @property
    def reads_sparse(self) -> bool:
        return bool(self.terms) and all(loss.reads_sparse for loss, _ in self.terms)

    @property
    def mixes(self) -> bool:
        return all(loss.mixes for loss, _ in self.terms)

    @property
    def temperature(self) -> float | None:
        """The losses' default temperature when they agree (1 for ce alone); None when they differ."""
        defaults = {loss.temperature for loss, _ in self.terms} or {1.0}
        return defaults.pop() if len(defaults) == 1 else None

    def temperature_conflict(self) -> str:
        """Why a list needs --temperature (its losses' defaults differ), as one line."""
        own = ", ".join(f"{loss.name} {loss.temperature:g}" for loss, _ in self.terms)
        return f"--loss {self.text}: the losses' default temperatures differ ({own}); give --temperature"

    def warmup(self, options: dict) -> tuple[str, int] | None:
        """The longest warm-up of the list, as (its flag, epochs); None when no loss has one."""
        warmups = [(option_flag(loss.name, loss.warmup), int(_value(loss, loss.warmup, options)))
                   for loss, _ in self.terms if loss.warmup]
        return max(warmups, key=lambda flag_epochs: flag_epochs[1], default=None)

    def build(self, temperature: float, kd_weight: float, options: dict) -> WeightedLosses | None:
        """The modules of the list, each built from its own options; None for ``ce``."""
        terms = [(kd_weight if weight is None else weight, loss.build(temperature, options.get(loss.name)))
                 for loss, weight in self.terms if loss.needs_teacher]
        return WeightedLosses(terms) if terms else None


def _value(loss: Loss, name: str, options: dict):
    return (options.get(loss.name) or {}).get(name, loss.option(name).default)


class WeightedLosses:
    """``sum(weight_i * loss_i)``: called as one loss, it returns what a step logs as ``kd`` (the
    losses' sum, unweighted) and what it adds to the total (each times its weight)."""

    def __init__(self, terms: list[tuple[float, object]]):
        self.terms = terms

    def __call__(self, student_logits, teacher, labels, epoch: int = 1):
        logged = weighted = None
        for weight, loss in self.terms:
            value = loss(student_logits, teacher, labels, epoch=epoch)
            logged = value if logged is None else logged + value
            weighted = weight * value if weighted is None else weighted + weight * value
        return logged, weighted


def loss_spec(text: str) -> LossList:
    """The ``--loss`` list ``text`` (one name is a list of one); ConfigError naming the fix if it is bad."""
    return LossList(text, tuple(loss_terms(text)))


def resolved_loss_options(given: dict | None) -> dict[str, dict]:
    """Every logit loss's declared options, ``given``'s values over the defaults (``{"dkd": {"beta":
    8.0, ...}, ...}``); entries that name no declared option are kept for ``check_loss_options``."""
    resolved = {name: {option.name: option.default for option in LOSSES.get(name).options}
                for name in loss_names() if LOSSES.get(name).options}
    for name, values in (given or {}).items():
        resolved.setdefault(name, {})
        for key, value in (values if isinstance(values, dict) else {}).items():
            resolved[name][key] = _as_declared(name, key, value)
    return resolved


def _as_declared(loss: str, option: str, value):
    """``value`` as the option's declared type (4 -> 4.0 for a float option); as given if it does not fit."""
    try:
        return LOSSES.get(loss).option(option).check(loss, value)
    except (ConfigError, SpecError, AttributeError, StopIteration):  # check_loss_options says what is wrong
        return value


def check_loss_options(given: dict) -> None:
    """Every entry names a declared option of a registered loss and has its type; ConfigError naming it."""
    for name, values in given.items():
        if name not in loss_names() or not LOSSES.get(name).options:
            with_options = [n for n in loss_names() if LOSSES.get(n).options]
            raise ConfigError(f"loss options for {name!r}: it is not a loss with options; those are "
                              f"{', '.join(with_options)}")
        if not isinstance(values, dict):
            raise ConfigError(f"loss options for {name!r} must be a table of OPTION = value, got {values!r}")
        loss = LOSSES.get(name)
        for key, value in values.items():
            if key not in [option.name for option in loss.options]:
                raise ConfigError(f"{name} has no option {key!r}; its options: "
                                  f"{', '.join(option_flag(name, o.name) for o in loss.options)}")
            loss.option(key).check(name, value)
