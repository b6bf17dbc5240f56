"""``logitcache train``'s options: one dataclass, its defaults, the checks it must pass, the lr
schedule it sets, and which options a ``--resume`` may change.

    >>> config = TrainConfig(out="runs/r20", student="resnet20", dataset="cifar100:data@train",
    ...                      store="stores/r56.zarr").resolved()      # loss dist, temperature 1
    >>> validate(config)                                                 # ConfigError on bad values
    >>> resume_changes(recorded_options, config)                        # [] when --resume may go on

The CLI options map one to one onto the fields; a pipeline file's student tables are these fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from ..errors import ConfigError

CACHE_BUDGET = 4 << 30  # bytes of logits, as stored, held in memory before they are streamed by chunk

FLOAT32_MAX = 3.4028234663852886e38  # options scale float32 weights and losses: larger is inf to them


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
    loss: str | None = None  # default: dist with a teacher, ce without
    temperature: float | None = None  # default: the loss's own (losses.py: kl 4, dkd 4, dist 1)
    kd_weight: float = 1.0
    ce_weight: float = 1.0
    dist_beta: float = 1.0
    dist_gamma: float = 1.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup: int = 20
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

    def resolved(self) -> TrainConfig:
        """Fill the defaults that depend on other options."""
        has_teacher = bool(self.store or self.online_teacher)
        loss = self.loss or ("dist" if has_teacher else "ce")
        from ..losses import (
            LOSSES,  # here, not at the top: the CLI reads this module's defaults without torch
        )

        default = LOSSES.get(loss).temperature if loss in LOSSES else 1.0  # an unknown loss: validate says so
        temperature = self.temperature if self.temperature is not None else default
        return TrainConfig(**{**asdict(self), "loss": loss, "temperature": temperature,
                              "milestones": tuple(self.milestones)})



def validate(config: TrainConfig) -> None:
    """Raise ConfigError (one line, naming the option) for any out-of-range or contradictory option."""
    for item in fields(config):  # nan and inf pass every comparison below, or fail them with a confusing message
        value = getattr(config, item.name)
        if isinstance(value, float) and not abs(value) <= FLOAT32_MAX:
            raise ConfigError(f"{_flag(item.name)} must be a finite number within float32's range (3.4e38), "
                              f"got {value:g}")
    peak = _peak_lr(config)
    if not peak <= FLOAT32_MAX:
        raise ConfigError(f"--lr {config.lr:g} times --lr-gamma {config.lr_gamma:g} at each of the "
                          f"{len(config.milestones)} --milestones leaves float32's range (3.4e38)")
    if config.optimizer == "adamw" and not peak * config.weight_decay <= FLOAT32_MAX:
        raise ConfigError(f"--lr {peak:g} times --weight-decay {config.weight_decay:g} (AdamW's decay per step) "
                          "leaves float32's range (3.4e38)")
    from ..losses import LOSSES, loss_names, loss_spec

    if config.loss not in LOSSES:
        raise ConfigError(f"--loss {config.loss!r} is unknown; choose {', '.join(loss_names())}")
    loss = loss_spec(config.loss)
    checks = [
        (not loss.needs_teacher or config.store or config.online_teacher,
         f"--loss {config.loss} distils from a teacher: give --store (or --online-teacher)"),
        (not (config.store and config.online_teacher), "give --store or --online-teacher, not both"),
        (config.epochs >= 1, f"--epochs must be at least 1, got {config.epochs}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (config.batch_size >= loss.min_batch,
         f"--loss {config.loss} needs --batch-size of at least {loss.min_batch}"),
        (config.lr > 0, f"--lr must be positive, got {config.lr}"),
        (config.temperature > 0, f"--temperature must be positive, got {config.temperature}"),
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
         f"{' or '.join(n for n in loss_names() if LOSSES.get(n).needs_teacher and LOSSES.get(n).mixes)} "
         "with --mixup/--cutmix"),
        (not (config.resume and config.overwrite), "give --resume or --overwrite, not both"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    from ..features.grammar import check_feature_options

    check_feature_options(config)


def warmup_note(config: TrainConfig) -> str | None:
    """The note ``train`` starts with when the loss's own warm-up (DKD's) outlasts the run; None otherwise."""
    from ..losses import loss_spec

    option = loss_spec(config.loss).warmup
    warmup = getattr(config, option) if option else 0
    if warmup <= config.epochs:
        return None
    return (f"note: {_flag(option)} {warmup} is longer than this {config.epochs}-epoch run: the {config.loss} term "
            f"ramps up over {warmup} epochs and ends at {config.epochs / warmup:.0%} of its weight "
            f"(give {_flag(option)} {config.epochs} or less for the full term)")


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


def resume_changes(recorded: dict, config: TrainConfig) -> list[str]:
    """What a --resume with ``config`` would change in the run whose options were ``recorded``,
    as "name (old -> new)"; empty when it may go on. Options missing from an older record count
    as their defaults (they did not exist, so the run behaved as their default does)."""
    new = options_record(config)
    defaults = {item.name: None if item.default is MISSING else item.default for item in fields(TrainConfig)}
    changes = []
    for name, value in new.items():
        old = recorded.get(name, defaults.get(name))
        if isinstance(old, tuple):
            old = list(old)
        if old != value and not MAY_CHANGE_ON_RESUME.get(name, _never)(old, value):
            changes.append(f"{_flag(name).removeprefix('--')} ({_show(old)} -> {_show(value)})")
    return changes


def cosine_extension(recorded: dict, config: TrainConfig, done: int, last_lr: float | None) -> str | None:
    """The note a --resume that adds epochs to a cosine run logs; None when it does not."""
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


def options_record(config: TrainConfig) -> dict:
    """The options as JSON values, as config.json and every checkpoint record them."""
    return json.loads(json.dumps(asdict(config)))


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
