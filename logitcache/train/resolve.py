"""Which task a TrainConfig trains, and the options it resolves to: the one place a run is told
apart (images or token sequences), its defaults filled, and the options it refuses.

    >>> run = resolve(config)                  # opens --store: ResolvedRun(config, tokens, store)
    >>> run.config.loss, run.config.temperature
    ('kl', 1.0)
    >>> check_options(config, token_store=True)   # a pipeline's plan: the checks that need no store

A run trains a language model when its store holds token sequences, or when it gives an option
only token data takes (``--tokenizer``, ``--seq-len``, ``--val-store``); otherwise a classifier on
images. The defaults differ: an image run's loss is ``dist`` with a teacher (``ce`` without) at the
loss's own temperature, or the one a ``sample:K:T`` store's classes were drawn at; a token run's
is ``kl`` with a teacher (``ce`` without) at temperature 1, or a sample store's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ConfigError, StoreMismatchError
from ..lm import open_teacher
from ..losses import loss_spec, token_loss
from ..option_types import check_types
from ..store import LogitStore, open_store
from .train_config import TrainConfig, validate
from .paired_data import sampled_codec

# Image (and image feature) options and their defaults: a token run refuses any other value.
IMAGE_ONLY = {"transform": None, "augment": None, "val_transform": None, "view_order": "random", "view_size": None,
              "check_views": False, "mixup": 0.0, "cutmix": 0.0, "online_teacher": None,
              "online_teacher_weights": None, "feature_loss": None, "student_features": None, "features": None}


@dataclass
class ResolvedRun:
    config: TrainConfig  # every default filled, every option checked
    tokens: bool  # a language model on token sequences (else a classifier on images)
    store: LogitStore | None  # --store, opened once


def resolve(config: TrainConfig, log=print) -> ResolvedRun:
    """``config`` with its task's defaults, once every option passed its task's checks (a line is
    logged when a sample store sets the temperature of an image run).

    Raises:
        ConfigError: an option the task does not take, or a missing one; an out-of-range value.
        StoreMismatchError: token options with a store of labelled samples.
    """
    check_types(config)  # a TrainConfig made in Python: "3" for epochs is one line, not a TypeError deep inside
    store = open_store(config.store, storage_options=config.storage_options) if config.store else None
    if names_token_data(config) or (store is not None and store.is_tokens):
        config = _token_config(config, store)
        validate(config)
        return ResolvedRun(config, True, store)
    if not config.dataset:
        raise ConfigError("--dataset is required: the training set (a token store holds its own sequences: "
                          "give --store)")
    if config.chunked_loss:
        raise ConfigError("--chunked-loss is for language-model students (token data): an image student's "
                          "logits are (batch, classes), with no positions to chunk")
    validate(config.resolved())  # every option checked before the store is read
    return ResolvedRun(_with_store_temperature(config, store, log).resolved(), False, store)


def names_token_data(config: TrainConfig) -> bool:
    """Options only a language model's run takes (its store may not be made yet)."""
    return bool(config.tokenizer or config.seq_len is not None or config.val_store)


def check_options(config: TrainConfig, token_store: bool = False) -> None:
    """The checks a run makes before its store exists (a pipeline's plan, before its dumps):
    ranges, specs, and a token run's refusals. ``token_store``: its --store will hold token sequences.

    Raises:
        ConfigError: naming the option.
    """
    if not (token_store or names_token_data(config)):
        validate(config.resolved())
        return
    _check_options(config)
    loss = config.loss or ("kl" if config.store else "ce")
    validate(replace(config, loss=loss, temperature=1.0 if config.temperature is None else config.temperature,
                     milestones=tuple(config.milestones)))


def _with_store_temperature(config: TrainConfig, store, log) -> TrainConfig:
    """``config`` with ``--temperature`` set to the one a ``sample:K:T`` store's classes were drawn
    at, when none is given and the loss reads sampled targets (KL from sampled classes estimates
    the KL at that temperature only); said in one line. Otherwise ``config`` as it is."""
    loss = config.loss or "dist"
    if config.temperature is not None or store is None or not loss_spec(loss).reads_sparse:
        return config
    codec = sampled_codec(store, config.teacher, config.allow_partial, config.storage_options)
    if codec is None:
        return config
    log(f"--temperature {codec.sampled_at:g}: the temperature the store's classes were sampled at ({codec.name})")
    return replace(config, temperature=codec.sampled_at)


def _token_config(config: TrainConfig, store) -> TrainConfig:
    """``config`` with a token run's defaults filled (loss kl/ce, temperature 1 or a sample store's).

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
        # an unfinished teacher is refused when read
        codec = open_teacher(store, config.teacher, allow_partial=True, argument="--teacher").codec
        drawn_at = codec.sampled_at
    temperature = config.temperature if config.temperature is not None else drawn_at or 1.0
    if drawn_at is not None and temperature != drawn_at:
        raise ConfigError(f"--temperature {temperature:g} differs from the temperature {drawn_at:g} the store's "
                          f"tokens were sampled at ({codec.name}); sampled targets estimate the KL at that "
                          "temperature only")
    return replace(config, loss=loss, temperature=temperature, milestones=tuple(config.milestones))


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
