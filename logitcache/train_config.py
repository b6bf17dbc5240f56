"""``logitcache train``'s options: one dataclass, its defaults, and the checks it must pass.

    >>> config = TrainConfig(out="runs/r20", student="resnet20", dataset="cifar100:data@train",
    ...                      store="stores/r56.zarr").resolved()      # loss dist, temperature 1
    >>> validate(config)                                                 # ConfigError on bad values

The CLI options map one to one onto the fields; a pipeline file's student tables are these fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import ConfigError
from .losses import list_losses

DEFAULT_TEMPERATURE = {"kl": 4.0, "dkd": 4.0, "dist": 1.0}


@dataclass
class TrainConfig:
    """Everything ``logitcache train`` takes; the CLI options map one to one."""

    out: str
    student: str
    dataset: str
    val_dataset: str | None = None
    store: str | None = None
    teacher: str | None = None  # teacher name inside the store; "a,b" for an ensemble
    expect_teacher: str | None = None  # sha256 prefix(es) the store's teacher(s) must have
    online_teacher: str | None = None  # a teacher spec run in the loop (for comparisons)
    online_teacher_weights: str | None = None
    loss: str | None = None  # default: dist with a teacher, ce without
    temperature: float | None = None  # default per loss: kl 4, dkd 4, dist 1
    kd_weight: float = 1.0
    ce_weight: float = 1.0
    dist_beta: float = 1.0
    dist_gamma: float = 1.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup: int = 20
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
    cache_budget: int = 4 << 30
    allow_partial: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    storage_options: dict = field(default_factory=dict)

    def resolved(self) -> TrainConfig:
        """Fill the defaults that depend on other options."""
        has_teacher = bool(self.store or self.online_teacher)
        loss = self.loss or ("dist" if has_teacher else "ce")
        temperature = self.temperature if self.temperature is not None else DEFAULT_TEMPERATURE.get(loss, 1.0)
        return TrainConfig(**{**asdict(self), "loss": loss, "temperature": temperature,
                              "milestones": tuple(self.milestones)})



def validate(config: TrainConfig) -> None:
    """Raise ConfigError (one line, naming the option) for any out-of-range or contradictory option."""
    checks = [
        (config.loss == "ce" or config.loss in list_losses(),
         f"--loss {config.loss!r} is unknown; choose ce, {', '.join(list_losses())}"),
        (config.loss == "ce" or config.store or config.online_teacher,
         f"--loss {config.loss} distils from a teacher: give --store (or --online-teacher)"),
        (not (config.store and config.online_teacher), "give --store or --online-teacher, not both"),
        (config.epochs >= 1, f"--epochs must be at least 1, got {config.epochs}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (config.loss != "dist" or config.batch_size >= 2, "--loss dist needs --batch-size of at least 2"),
        (config.lr > 0, f"--lr must be positive, got {config.lr}"),
        (config.temperature > 0, f"--temperature must be positive, got {config.temperature}"),
        (config.kd_weight >= 0 and config.ce_weight >= 0, "--kd-weight and --ce-weight must be >= 0"),
        (config.kd_weight + config.ce_weight > 0, "--kd-weight and --ce-weight cannot both be 0"),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0, got {config.weight_decay}"),
        (config.optimizer in ("sgd", "adamw"), f"--optimizer must be sgd or adamw, got {config.optimizer!r}"),
        (config.schedule in ("cosine", "step", "constant"),
         f"--schedule must be cosine, step or constant, got {config.schedule!r}"),
        (config.warmup_epochs >= 0 and config.workers >= 0, "--warmup-epochs and --workers must be >= 0"),
        (config.cache_budget >= 0, "--cache-budget must be >= 0"),
        (config.view_order in ("random", "cycle"), f"--view-order must be random or cycle, got {config.view_order!r}"),
        (config.view_size is None or config.view_size >= 1, f"--view-size must be at least 1, got {config.view_size}"),
        (config.mixup >= 0 and config.cutmix >= 0, "--mixup and --cutmix take a Beta alpha >= 0 (0 is off)"),
        (config.loss != "dkd" or not (config.mixup or config.cutmix),
         "--loss dkd splits the target class from the rest, but a mixed sample has two: use kl or dist with "
         "--mixup/--cutmix"),
        (not (config.resume and config.overwrite), "give --resume or --overwrite, not both"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
