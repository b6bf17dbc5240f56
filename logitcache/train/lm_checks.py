"""Token runs: which runs are, the defaults they resolve, and the options they refuse, all before
a run directory or a sequence is touched.

    >>> is_token_run(config)                      # a token store, or --tokenizer/--seq-len/--val-store
    >>> config = token_config(config, store)      # loss kl/ce, temperature 1 (a sample store: its T); checked

A token run is recognised by its store being a token store, or by an option only token data has.
Its defaults differ from an image run's: the loss is ``kl`` with a teacher (``ce`` without), and the
temperature 1, or the one a ``sample:K:T`` store's tokens were drawn at, the only one they serve.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from ..errors import ConfigError, StoreMismatchError
from ..lm import open_teacher
from ..store import open_store
from ..losses import token_loss
from .config import TrainConfig, validate
from .data import check_teacher_identity

# Image (and image feature) options and their defaults: a token run refuses any other value.
IMAGE_ONLY = {"transform": None, "augment": None, "val_transform": None, "view_order": "random", "view_size": None,
              "check_views": False, "mixup": 0.0, "cutmix": 0.0, "online_teacher": None,
              "online_teacher_weights": None, "feature_loss": None, "student_features": None, "features": None}


def is_token_run(config: TrainConfig) -> bool:
    """Does ``config`` train a language model? (Opens ``--store`` to see what it holds.)"""
    if config.tokenizer or config.seq_len is not None or config.val_store:
        return True
    return bool(config.store) and open_store(config.store, storage_options=config.storage_options).is_tokens


def token_config(config: TrainConfig, store) -> TrainConfig:
    """``config`` with a token run's defaults filled, once its options make a token run.

    Raises:
        ConfigError: an option token data does not take, or a missing one; a loss that is not
            defined on token positions; a temperature a sample store does not serve.
        StoreMismatchError: ``store`` holds labelled samples.
    """
    _check_data_options(config, store)
    loss = config.loss or ("kl" if store is not None and store.all_teacher_names else "ce")
    if token_loss(loss).needs_teacher and store is None:
        raise ConfigError(f"--loss {loss} distils from a token store's teacher: give --store (or train label-only "
                          "with --loss ce)")
    if config.teacher and "," in config.teacher:
        raise ConfigError(f"--teacher {config.teacher}: a token run distils from one teacher; name one")
    drawn_at = None
    if token_loss(loss).needs_teacher:
        codec = open_teacher(store, config.teacher, allow_partial=True).codec  # unfinished: refused when read
        drawn_at = codec.sampled_at
    temperature = config.temperature if config.temperature is not None else drawn_at or 1.0
    if drawn_at is not None and temperature != drawn_at:
        raise ConfigError(f"--temperature {temperature:g} differs from the temperature {drawn_at:g} the store's "
                          f"tokens were sampled at ({codec.name}); sampled targets estimate the KL at that "
                          "temperature only")
    return replace(config, loss=loss, temperature=temperature, milestones=tuple(config.milestones))


def check_token_options(config: TrainConfig) -> None:
    """The checks of a token run that need no store (a pipeline makes its stores later): image
    options refused, the loss defined on tokens, the ranges ``validate`` checks.

    Raises:
        ConfigError: naming the option.
    """
    _check_options(config)
    loss = config.loss or ("kl" if config.store else "ce")
    validate(replace(config, loss=loss, temperature=1.0 if config.temperature is None else config.temperature,
                     milestones=tuple(config.milestones)))


def _check_data_options(config: TrainConfig, store) -> None:
    if store is not None and not store.is_tokens:
        raise StoreMismatchError(f"--store {config.store} holds labelled samples, not token sequences; --tokenizer, "
                                 "--seq-len and --val-store are for token data")
    _check_options(config)
    if store is None:
        missing = [flag for flag, value in (("--dataset", config.dataset), ("--tokenizer", config.tokenizer),
                                            ("--seq-len", config.seq_len)) if value is None]
        if missing:
            raise ConfigError(f"token data without a --store needs --dataset (text:GLOB, jsonl:FILE, ...), --tokenizer "
                              f"and --seq-len; missing: {', '.join(missing)}")
        return
    if config.dataset:
        raise ConfigError(f"the token store {config.store} holds its training sequences: leave out --dataset "
                          f"{config.dataset} (--val-dataset or --val-store give held-out data)")
    if config.seq_len is not None and config.seq_len != store.seq_len:
        raise ConfigError(f"--seq-len {config.seq_len} differs from the store's sequences of {store.seq_len} tokens; "
                          "a token store fixes them: leave out --seq-len")
    if config.tokenizer:
        _check_tokenizer(config.tokenizer, store)


def _check_options(config: TrainConfig) -> None:
    image = [f"--{name.replace('_', '-')}" for name, default in IMAGE_ONLY.items() if getattr(config, name) != default]
    if image:
        verb, pronoun = ("applies", "it") if len(image) == 1 else ("apply", "them")
        raise ConfigError(f"{', '.join(image)} {verb} to image data, not to token sequences; leave {pronoun} out")
    if config.loss is not None:
        token_loss(config.loss)  # raises for a loss not defined on tokens, naming the ones that are
    if config.val_store and config.val_dataset:
        raise ConfigError("give --val-store or --val-dataset, not both")


def _check_tokenizer(spec: str, store) -> None:
    from ..sources import get_tokenizer  # builds a tokenizer only when one is named

    recorded = store.dataset["tokenizer"]
    if get_tokenizer(spec).identity != recorded.get("identity"):
        raise StoreMismatchError(f"--tokenizer {spec} is not the tokenizer {store.location} was made with "
                                 f"({recorded.get('spec')!r}, {recorded.get('vocab_size')} ids)")


def check_expected_teacher(teacher, expected: str | None) -> None:
    """--expect-teacher: the teacher's digest (or weights or parameters sha256) starts with it."""
    if not expected:
        return
    settings = teacher.attrs["settings"]
    check_teacher_identity(SimpleNamespace(
        teacher_names=[teacher.name], location=teacher.store.location,
        recorded={teacher.name: [settings.get("weights_sha256"), settings.get("parameters_sha256"), teacher.digest]},
    ), expected)
