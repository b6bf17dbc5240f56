"""``logitcache train``'s options: one dataclass, its defaults, the checks it must pass, the lr
schedule it sets, and which options a ``--resume`` may change.

    >>> config = TrainConfig(out="runs/r20", student="resnet20", dataset="cifar100:data@train",
    ...                      store="stores/r56.zarr").resolved()      # loss dist, temperature 1
    >>> validate(config)                                                 # ConfigError on bad values
    >>> resume_changes(recorded_options, options_record(config))        # [] when --resume may go on

The CLI options map one to one onto the fields, except the losses' own options (``--dkd-beta``), which
``loss_options`` holds by loss; a pipeline file's student tables are these fields (``gather_loss_options``).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..losses import (
    check_loss_options,
    declared_options,
    list_losses,
    loss_names,
    loss_spec,
    resolved_loss_options,
)
from ..losses.declarations import option_flag, option_key

if TYPE_CHECKING:
    from ..features.feature_specs import FeatureOptions

CACHE_BUDGET = 4 << 30  # bytes of logits, as stored, held in memory before they are streamed by chunk

FLOAT32_MAX = 3.4028234663852886e38  # options scale float32 weights and losses: larger is inf to them

# The key, beside the options in config.json and every checkpoint, of what the run learnt from
# (``run_targets.py``): no option, so compared on its own (``targets_changes``), never by resume_changes.
TARGETS = "targets"


@dataclass
class TrainConfig:
    """Everything ``logitcache train`` takes; the CLI options map one to one."""

    out: str
    student: str
    dataset: str | None = None  # required, except for a token store, which holds its sequences
    val_dataset: str | None = None
    store: str | None = None
    val_store: str | None = None  # token data: a store the teacher dumped over held-out text
    tokenizer: str | None = None  # token data without a store (or for --val-dataset): tokenises the text
    seq_len: int | None = None  # token data without a store: tokens per training sequence
    teacher: str | None = None  # teacher name inside the store; "a,b" for an ensemble
    expect_teacher: str | None = None  # sha256 prefix(es) the store's teacher(s) must have
    online_teacher: str | None = None  # a teacher spec run in the loop (for comparisons)
    online_teacher_weights: str | None = None
    loss: str | None = None  # NAME[=WEIGHT],...; default: dist with a teacher, ce without
    temperature: float | None = None  # default: the losses' own (each loss declares it: kl 4, dkd 4, dist 1)
    kd_weight: float = 1.0  # the weight of a --loss name given without one
    ce_weight: float = 1.0
    # Each loss's declared options by loss, {"dkd": {"beta": 4.0}} (flags --dkd-beta, pipeline keys dkd_beta
    # or a [dkd] table); resolved() fills every declared default, and config.json records them all.
    loss_options: dict[str, dict] = field(default_factory=dict)
    feature_loss: str | None = None  # NAME[=WEIGHT],...: feature losses (at, rkd, fitnet, ickd, reviewkd)
    student_features: str | None = None  # NAME=LAYER,...: the student's layer for each teacher feature
    features: str | None = None  # NAME=LAYER[:REDUCE],...: the --online-teacher's features (a store has its own)
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    warmup_epochs: int = 0
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    # token runs: the loss a chunk of positions at a time through the student's head (losses/chunked.py);
    # None: when a step's float32 logits would exceed one chunk and the student splits at its head
    chunked_loss: bool | None = None
    workers: int = 0
    transform: str | None = None  # training inputs; default: the dataset's eval transform
    augment: str | None = None  # random steps put before the training transform
    val_transform: str | None = None  # default: the validation dataset's eval transform
    view_order: str = "random"  # multi-view stores: which stored view a sample shows each epoch
    view_size: int | None = None  # multi-view stores: replay views at N x N (default: the dump's size)
    check_views: bool = False  # recompute every stored view's hash before training
    mixup: float = 0.0  # Beta alpha for Mixup (0: off); teachers' probabilities are mixed alike
    cutmix: float = 0.0  # Beta alpha for CutMix (0: off)
    cache_budget: int = CACHE_BUDGET
    allow_partial: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    tensorboard: bool = False  # also write the scalars as TensorBoard event files in RUN/tensorboard
    storage_options: dict = field(default_factory=dict)

    def feature_options(self) -> FeatureOptions:
        """What a feature run reads of this config (``features/distiller.FeatureRun``)."""
        from ..features.feature_specs import FeatureOptions  # here: the grammar imports the store (zarr)

        return FeatureOptions(self.feature_loss, self.student_features, self.features, self.cache_budget)

    def resolved(self) -> TrainConfig:
        """Fill the defaults that depend on other options: the loss, its temperature (None when the
        losses of a list disagree: validate then asks for one), every loss option."""
        has_teacher = bool(self.store or self.online_teacher)
        loss = self.loss or ("dist" if has_teacher else "ce")
        try:
            default = loss_spec(loss).temperature
        except ConfigError:  # a bad --loss: validate says so
            default = 1.0
        temperature = self.temperature if self.temperature is not None else default
        return TrainConfig(**{**asdict(self), "loss": loss, "temperature": temperature,
                              "milestones": tuple(self.milestones),
                              "loss_options": resolved_loss_options(self.loss_options)})


def gather_loss_options(options: dict) -> dict:
    """``options`` (TrainConfig fields by name) with the loss settings moved into ``loss_options``: the
    flat keys the CLI and older records use (``dkd_beta``) and per-loss tables (``{"dkd": {"beta": 4}}``),
    over any ``loss_options`` given.

    Raises:
        ConfigError: one option given twice (a flat key and its table's entry).
    """
    flat = {option_key(loss, option.name): (loss, option.name) for loss, option in declared_options()}
    rest, gathered = {}, {loss: dict(values) for loss, values in (options.get("loss_options") or {}).items()}
    for key, value in options.items():
        if key in flat:
            entries = [(*flat[key], value)]
        elif key in loss_names() and isinstance(value, dict):
            entries = [(key, name, item) for name, item in value.items()]
        else:
            rest[key] = value
            continue
        for loss, name, item in entries:
            if name in gathered.setdefault(loss, {}):
                raise ConfigError(f"{option_flag(loss, name)} is given twice")
            gathered[loss][name] = item
    if gathered:
        rest["loss_options"] = gathered
    return rest


def validate(config: TrainConfig) -> None:
    """Raise ConfigError (one line, naming the option) for any out-of-range or contradictory option."""
    check_loss_options(config.loss_options)
    _check_finite(config)
    peak = _peak_lr(config)
    if not peak <= FLOAT32_MAX:
        raise ConfigError(f"--lr {config.lr:g} times --lr-gamma {config.lr_gamma:g} at each of the "
                          f"{len(config.milestones)} --milestones leaves float32's range (3.4e38)")
    if config.optimizer == "adamw" and not peak * config.weight_decay <= FLOAT32_MAX:
        raise ConfigError(f"--lr {peak:g} times --weight-decay {config.weight_decay:g} (AdamW's decay per step) "
                          "leaves float32's range (3.4e38)")
    from ..codecs.sample import MAX_TEMPERATURE, MIN_TEMPERATURE  # here: the codecs import numpy

    loss = loss_spec(config.loss)  # ConfigError naming the fix for a bad list
    if config.temperature is None:
        raise ConfigError(loss.temperature_conflict())
    checks = [
        (not loss.needs_teacher or config.store or config.online_teacher,
         f"--loss {config.loss} distils from a teacher: give --store (or --online-teacher)"),
        (not (config.store and config.online_teacher), "give --store or --online-teacher, not both"),
        (config.epochs >= 1, f"--epochs must be at least 1, got {config.epochs}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (config.batch_size >= loss.min_batch,
         f"--loss {config.loss} needs --batch-size of at least {loss.min_batch}"),
        (config.lr > 0, f"--lr must be positive, got {config.lr}"),
        (config.lr_gamma > 0, f"--lr-gamma must be positive (a negative one ascends the loss), got {config.lr_gamma}"),
        (MIN_TEMPERATURE <= config.temperature <= MAX_TEMPERATURE,
         f"--temperature must be from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g} (outside it logits / T or T² leave "
         f"float32), got {config.temperature:g}"),
        (config.kd_weight >= 0 and config.ce_weight >= 0, "--kd-weight and --ce-weight must be >= 0"),
        (config.kd_weight + config.ce_weight > 0, "--kd-weight and --ce-weight cannot both be 0"),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0, got {config.weight_decay}"),
        (config.momentum >= 0, f"--momentum must be >= 0, got {config.momentum}"),
        (config.optimizer in ("sgd", "adamw"), f"--optimizer must be sgd or adamw, got {config.optimizer!r}"),
        (config.schedule in ("cosine", "step", "constant"),
         f"--schedule must be cosine, step or constant, got {config.schedule!r}"),
        (config.warmup_epochs >= 0 and config.workers >= 0, "--warmup-epochs and --workers must be >= 0"),
        (config.cache_budget >= 0, "--cache-budget must be >= 0"),
        (config.view_order in ("random", "cycle"), f"--view-order must be random or cycle, got {config.view_order!r}"),
        (config.view_size is None or config.view_size >= 1, f"--view-size must be at least 1, got {config.view_size}"),
        (config.mixup >= 0 and config.cutmix >= 0, "--mixup and --cutmix take a Beta alpha >= 0 (0 is off)"),
        (loss.mixes or not (config.mixup or config.cutmix),
         f"--loss {config.loss} needs one class per sample, but a mixed sample has two: use "
         f"{' or '.join(n for n in list_losses() if loss_spec(n).mixes)} with --mixup/--cutmix"),
        (not (config.resume and config.overwrite), "give --resume or --overwrite, not both"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    from ..features.feature_specs import check_feature_options  # here: the grammar reads the store's names (zarr)

    check_feature_options(config.feature_loss, config.student_features, config.features, store=config.store,
                          online_teacher=config.online_teacher, teacher=config.teacher,
                          mixing=bool(config.mixup or config.cutmix), batch_size=config.batch_size)


def _check_finite(config: TrainConfig) -> None:
    """Every float option, the losses' own included, is finite and within float32's range: nan and inf
    pass every comparison ``validate`` makes, or fail them with a confusing message."""
    numbers = [(_flag(item.name), getattr(config, item.name)) for item in fields(config)]
    numbers += [(option_flag(loss, name), value) for loss, values in config.loss_options.items()
                for name, value in values.items()]
    for flag, value in numbers:
        if isinstance(value, float) and not abs(value) <= FLOAT32_MAX:
            raise ConfigError(f"{flag} must be a finite number within float32's range (3.4e38), got {value:g}")


def loss_warmup(config: TrainConfig) -> tuple[str, int] | None:
    """The longest warm-up of the run's losses (DKD's), as (its flag, epochs); None when none has one."""
    return loss_spec(config.loss).warmup(config.loss_options)


def warmup_note(config: TrainConfig) -> str | None:
    """The note ``train`` starts with when the loss's own warm-up (DKD's) outlasts the run; None otherwise."""
    flag, warmup = loss_warmup(config) or ("", 0)
    if warmup <= config.epochs:
        return None
    return (f"note: {flag} {warmup} is longer than this {config.epochs}-epoch run: the {config.loss} term "
            f"ramps up over {warmup} epochs and ends at {config.epochs / warmup:.0%} of its weight "
            f"(give {flag} {config.epochs} or less for the full term)")


def _peak_lr(config: TrainConfig) -> float:
    """The largest lr the schedule reaches (--lr, unless step decay's gamma is above 1)."""
    if config.schedule != "step":
        return config.lr
    try:
        return config.lr * max(1.0, config.lr_gamma ** len(config.milestones))
    except OverflowError:
        return math.inf


def get_lr(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at a global step: linear warm-up, then cosine, step decay or constant."""
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "cosine":
        total = max(config.epochs * steps_per_epoch - warmup, 1)
        return 0.5 * config.lr * (1 + math.cos(math.pi * (step - warmup) / total))
    if config.schedule == "step":
        epoch = step // steps_per_epoch + 1
        return config.lr * config.lr_gamma ** sum(epoch > m for m in config.milestones)
    return config.lr


def _any(recorded, new) -> bool:
    return True


# The one list of options a --resume may give values other than the run's recorded ones; every
# other option must be the same, or the resumed run would not be the run its files describe.
MAY_CHANGE_ON_RESUME = {
    "out": _any,  # the run directory itself, however it is spelled
    "resume": _any,  # how this command starts, not what the run computes
    "overwrite": _any,
    "progress": _any,
    "tensorboard": _any,  # what else the run writes, not what it computes
    "workers": _any,  # batches and their order do not depend on who loads them
    "chunked_loss": _any,  # the same loss and gradients, summed in another order (float32 rounding)
    "device": _any,  # where the same computation runs (the last bits differ between devices, as between two GPUs)
    "storage_options": _any,  # how the store is reached (endpoint, credentials), not which store
    "check_views": _any,  # checks before step 0; they change nothing they pass
    "expect_teacher": _any,
    # More epochs extend the run. With --schedule step or constant the extended run is exactly the
    # one started with the larger --epochs; with cosine it is not (the curve stretches: the lr of
    # the epochs still to come rises again), which --resume says in a note (see cosine_extension).
    # Fewer epochs are refused: the cosine of the epochs already trained assumed the longer run.
    "epochs": lambda recorded, new: new >= recorded,
}


def resume_changes(recorded: dict, options: dict) -> list[str]:
    """What a --resume with ``options`` (``options_record``'s) would change in the run whose options
    were ``recorded``, as "name (old -> new)"; empty when it may go on. Options missing from an older
    record count as their defaults (they did not exist, so the run behaved as their default does).
    The targets record (``TARGETS``) is no option: ``run_targets.targets_changes`` compares it."""
    new = {name: value for name, value in options.items() if name != TARGETS}
    defaults = {item.name: None if item.default is MISSING else item.default for item in fields(TrainConfig)}
    changes = _loss_option_changes(recorded, new.pop("loss_options"))
    for name, value in new.items():
        old = recorded.get(name, defaults.get(name))
        if isinstance(old, tuple):
            old = list(old)
        if old != value and not MAY_CHANGE_ON_RESUME.get(name, _never)(old, value):
            changes.append(f"{_flag(name).removeprefix('--')} ({_show(old)} -> {_show(value)})")
    return changes


def cosine_extension(recorded: dict, options: dict, done: int, last_lr: float | None) -> str | None:
    """The note a --resume with ``options`` that adds epochs to a cosine run logs; None when it does not."""
    config = TrainConfig(**{name: value for name, value in options.items() if name != TARGETS})
    before = recorded.get("epochs", config.epochs)
    if config.schedule != "cosine" or config.epochs <= before or done < 1:
        return None
    jump = ""
    if done >= config.warmup_epochs and last_lr is not None:  # then the phase, and so the lr, is exact at any steps per epoch
        jump = f" (from lr {last_lr:.3g} at the end of epoch {done} to {get_lr(config, done, 1):.3g})"
    rest = f"epoch {config.epochs}" if done + 1 == config.epochs else f"epochs {done + 1}-{config.epochs}"
    return (f"note: --epochs {config.epochs} extends this {before}-epoch run: with --schedule cosine the lr of "
            f"{rest} follows the {config.epochs}-epoch curve{jump}, so the result is not the run "
            f"--epochs {config.epochs} would have trained from the start")


def _loss_option_changes(recorded: dict, new: dict) -> list[str]:
    """The loss options a --resume would change, as "dkd-beta (8 -> 4)". A record of the older
    layout has them as flat fields (``dkd_beta``); one without an option had its declared default."""
    old = resolved_loss_options(gather_loss_options(recorded).get("loss_options"))
    changes = []
    for loss in sorted(set(old) | set(new)):
        for name in sorted(set(old.get(loss, {})) | set(new.get(loss, {}))):
            before, after = old.get(loss, {}).get(name), new.get(loss, {}).get(name)
            if before != after:
                changes.append(f"{option_flag(loss, name).removeprefix('--')} ({_show(before)} -> {_show(after)})")
    return changes


def options_record(config: TrainConfig) -> dict:
    """The options as JSON values, as config.json and every checkpoint record them (every loss
    option, its declared default where none was given)."""
    return json.loads(json.dumps({**asdict(config), "loss_options": resolved_loss_options(config.loss_options)}))


def _never(recorded, new) -> bool:
    return False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value) or "none"
    return str(value)
