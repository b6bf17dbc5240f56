"""What each kind of spec may be, in words, read from the registries: the CLI's help of its spec options.

    >>> model_specs()
    'NAME[:k=v,...], a registered model (cnn, gpt, ...); checkpoint:FILE, a model train saved, ...; ...'
    >>> dataset_specs(), token_dataset_specs(), tokenizer_specs()

Every registered name and scheme is listed with its grammar and description, so a scheme added
anywhere (a plugin's included) is in the help, and the help cannot name one that is gone.
"""

from __future__ import annotations

from ..registry import Registry
from ._registry import DATASETS, MODEL_SCHEMES, MODELS, TOKEN_DATASETS, TOKENIZERS

FACTORY_SPEC = "package.module:factory"


def model_specs() -> str:
    """Registered architectures, then every model scheme, then factories."""
    names = f"NAME[:k=v,...], a registered model ({', '.join(MODELS.names())})"
    return "; ".join([names, *_described(MODEL_SCHEMES), f"or {FACTORY_SPEC}, called with num_classes="])


def dataset_specs() -> str:
    """Every registered dataset with its splits, then factories."""
    def splits(name: str) -> str:
        entry = DATASETS.get(name)
        return f"[@{'|'.join(entry.splits)}]" if entry.splits else ""

    return "; ".join([*_described(DATASETS, splits), f"or {FACTORY_SPEC}[@SPLIT]"])


def token_dataset_specs() -> str:
    """Every token dataset kind, then factories; the splits all of them take."""
    return "; ".join([*_described(TOKEN_DATASETS), f"or {FACTORY_SPEC}"]) + "; @train, @val or @all picks a split"


def tokenizer_specs() -> str:
    return "; ".join([*_described(TOKENIZERS), f"or {FACTORY_SPEC}"])


def _described(registry: Registry, suffix=lambda name: "") -> list[str]:
    """``GRAMMAR, description`` for every entry."""
    lines = []
    for name in registry.names():
        about = registry.about(name)
        lines.append(f"{about.grammar}{suffix(name)}" + (f", {about.description}" if about.description else ""))
    return lines
