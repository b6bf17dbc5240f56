"""An image run's training data: the store's teacher logits checked against the options, the
training set checked against the store, and a multi-view store's views replayed.

    >>> logits = open_teacher_logits(config, store)          # None without a teacher to read
    >>> source, replay = training_data(config, store, logits, log)

A multi-view store's views are replayed: each epoch every sample shows one stored view, rebuilt
from the raw sample, with that view's logits (``views/replay.py``).
"""

from __future__ import annotations

from ..errors import ConfigError, DatasetError
from ..losses import loss_spec
from ..sources import get_dataset, transforms
from ..views.replay import ViewReplay, check_view_hashes
from .config import TrainConfig
from .data import TeacherLogits


def open_teacher_logits(config: TrainConfig, store) -> TeacherLogits | None:
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
    sampled_at = getattr(logits.codec, "temperature", None) if logits.codec.sparse_only else None
    if sampled_at is not None and sampled_at != config.temperature:
        raise ConfigError(
            f"--temperature {config.temperature:g} differs from the temperature {sampled_at:g} the store's classes "
            f"were sampled at ({logits.codec.name}); sampled targets estimate the KL at that temperature only"
        )
    return logits


def training_data(config: TrainConfig, store, logits: TeacherLogits | None, log) -> tuple:
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
