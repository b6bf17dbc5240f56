"""The one loss registry, and what a loss declares: its options and what the trainer asks of it.

    >>> register_loss(Loss("cosine", CosineLoss, "cosine distance of the logits",
    ...                    options=(Option("scale", float, 1.0, "Cosine logits' scale."),)))
    >>> logit_loss("dkd").options[1]              # Option('beta', float, 8.0, ...): --dkd-beta, dkd_beta
    >>> declared_options()                        # every (loss, Option), in the order the CLI lists them

A ``Loss`` is a logit loss ``train --loss`` takes (``ce``, the labels alone, included); feature losses
(``features/losses.py``) register their ``FeatureLoss`` records here too, under kind ``feature``. This
module imports no torch: the CLI builds its options from these records, and ``--help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError, SpecError
from ..registry import Registry

LOSSES = Registry("loss")


@dataclass(frozen=True)
class Option:
    """One hyperparameter a loss declares: ``--LOSS-NAME`` on the command line, ``LOSS_NAME`` (or
    ``[LOSS] NAME``) in a pipeline file, ``loss_options[LOSS][NAME]`` in a TrainConfig."""

    name: str
    type: type  # float or int
    default: float | int
    help: str = ""
    minimum: float | int | None = 0  # the smallest value that means something (weights and epochs: 0)

    def check(self, loss: str, value) -> float | int:
        """``value`` as this option's type (an int fits a float option), at least ``minimum``;
        ConfigError naming the flag."""
        flag = option_flag(loss, self.name)
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.type is float else int):
            kind = "a number" if self.type is float else "an integer"
            raise ConfigError(f"{flag} takes {kind}, got {value!r}")
        if self.minimum is not None and value < self.minimum:  # nan and inf: train's finite check names them
            raise ConfigError(f"{flag} must be at least {self.minimum:g}, got {value:g}")
        return self.type(value)


def option_flag(loss: str, option: str) -> str:
    return f"--{loss}-{option}".replace("_", "-")


def option_key(loss: str, option: str) -> str:
    """The flat name of a loss option: a click parameter, a pipeline key, an older record's field."""
    return f"{loss}_{option}".replace("-", "_")


@dataclass(frozen=True)
class Loss:
    """A logit loss ``train`` takes, and what the trainer needs to know about it."""

    name: str
    module: Callable | None  # (temperature=..., **options) -> loss(student, teacher, labels, epoch); None: ce
    help: str  # one line for ``train --help``
    options: tuple[Option, ...] = ()
    temperature: float = 1.0  # the default --temperature
    min_batch: int = 1  # the smallest batch its value is defined on (the last batch is dropped below it)
    reads_sparse: bool = False  # learns from topk:K / sample:K targets without building a dense row
    mixes: bool = True  # defined on Mixup/CutMix samples, which have two classes each
    tokens: bool = False  # also defined on token positions (a language model's run)
    warmup: str | None = None  # the option holding its warm-up epochs: a run checks it learns after them
    kind = "logit"

    @property
    def needs_teacher(self) -> bool:
        return self.module is not None

    def option(self, name: str) -> Option:
        return next(option for option in self.options if option.name == name)

    def build(self, temperature: float, options: dict | None = None):
        """The loss module at ``temperature`` with its own option values (declared defaults for the
        rest), or None for ``ce``."""
        if self.module is None:
            return None
        values = {option.name: option.default for option in self.options} | dict(options or {})
        return self.module(temperature=temperature, **values)


def register_loss(entry):
    """Register a ``Loss`` (or a ``FeatureLoss``) under its name; a name or flat option key twice raises."""
    taken = {option_key(name, option.name) for name, option in declared_options()}
    for option in getattr(entry, "options", ()):
        if option_key(entry.name, option.name) in taken:
            raise ValueError(f"loss option {option_key(entry.name, option.name)!r} is already declared")
    LOSSES.register(entry.name)(entry)
    return entry


def unregister_loss(name: str) -> None:
    """Remove a registered loss (tests that register their own)."""
    LOSSES.unregister(name)


def names_of(kind: str, pattern: str = "*") -> list[str]:
    """The registered losses of one kind (``logit`` or ``feature``), sorted."""
    return [name for name in LOSSES.names(pattern) if LOSSES.get(name).kind == kind]


def entry_of(kind: str, name: str, what: str):
    """The registered ``kind`` loss ``name``; SpecError listing that kind's losses if there is none."""
    if name not in LOSSES or LOSSES.get(name).kind != kind:
        raise SpecError(f"unknown {what} {name!r}; known: {', '.join(names_of(kind))}")
    return LOSSES.get(name)


def logit_loss(name: str) -> Loss:
    """The registered logit loss ``name`` (SpecError listing them if there is none)."""
    return entry_of("logit", name, "loss")


def loss_names() -> list[str]:
    """Every loss ``train --loss`` takes, ``ce`` included."""
    return names_of("logit")


def list_losses(pattern: str = "*") -> list[str]:
    """The KD losses: the ones that learn from a teacher (``ce`` is the labels alone)."""
    return [name for name in names_of("logit", pattern) if LOSSES.get(name).needs_teacher]


def get_loss(name: str, **kwargs):
    """The KD loss module called ``name`` with its settings.

    Raises:
        SpecError: not a KD loss (``ce`` has no module); the message lists the KD losses.
    """
    if name not in list_losses():
        raise SpecError(f"unknown loss {name!r}; known: {', '.join(list_losses())}")
    return LOSSES.get(name).module(**kwargs)


def declared_options() -> list[tuple[str, Option]]:
    """Every logit loss's options as (loss name, Option), in the order ``train --help`` lists them."""
    return [(name, option) for name in names_of("logit") for option in LOSSES.get(name).options]


def token_loss_names() -> list[str]:
    """The losses defined on token positions."""
    return [name for name in names_of("logit") if LOSSES.get(name).tokens]


def token_loss(name: str) -> Loss:
    """The token loss ``name``: a token run trains with one loss, its KL weighed by --kd-weight.

    Raises:
        ConfigError: it is not defined on token positions (or is a list); the message lists the ones that are.
    """
    choices = " or ".join(token_loss_names())
    if name in LOSSES and LOSSES.get(name).kind == "logit" and LOSSES.get(name).tokens:
        return LOSSES.get(name)
    if "," in name or "=" in name:
        raise ConfigError(f"--loss {name}: token data trains with one loss, --loss {choices} (weigh the KL with "
                          "--kd-weight)")
    raise ConfigError(f"--loss {name} is not defined on token positions; token data trains with --loss {choices}")
