"""The sources' registries (datasets, models, token datasets) and how specs name Python objects.

    >>> @register_model()
    ... def mlp(num_classes, hidden=256): ...
    >>> MODELS.get("mlp"), DATASETS.names("cifar*"), TOKEN_DATASETS.names()
    >>> import_object("mypackage.nets:build", "model")

The ``Registry`` class itself is ``logitcache.registry`` (losses use it too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SpecError
from ..registry import Registry, parse_kwargs  # noqa: F401 - parse_kwargs: models.py
from ._loading import first_line


def import_object(path: str, kind: str):
    """Import ``package.module:attribute``; errors become one-line SpecErrors."""
    import importlib

    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise SpecError(f"{kind} {path!r} is not of the form package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # a module may fail to import any way: ImportError, SyntaxError, its own code
        raise SpecError(f"{kind} {path!r}: cannot import {module_name!r} "
                        f"({type(err).__name__}: {first_line(err)})") from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise SpecError(f"{kind} {path!r}: module {module_name!r} has no {attribute!r}") from None
    if not callable(found):
        raise SpecError(f"{kind} {path!r}: {attribute!r} is not callable (it is of type {type(found).__name__})")
    return found


@dataclass
class DatasetEntry:
    """What a registered dataset provides: a builder and its defaults."""

    builder: Callable  # (arg, split, transform) -> (dataset, keys, labels, classes)
    default_transform: str
    splits: tuple[str, ...]
    default_split: str | None
    needs_arg: bool = True


# The registries. Families register into them from their own modules, which the package's
# __init__ imports; the modules that look names up (datasets.py, models.py, tokens.py) import only this one.
DATASETS = Registry("dataset")
MODELS = Registry("model")
TOKEN_DATASETS = Registry("token dataset")


def register_dataset(name, *, default_transform, splits=(), default_split=None, needs_arg=True):
    """Decorator: register ``builder(arg, split, transform)`` as dataset ``name``."""

    def decorate(builder):
        DATASETS.register(name)(DatasetEntry(builder, default_transform, tuple(splits), default_split, needs_arg))
        return builder

    return decorate


def register_model(name: str | None = None):
    """Decorator: register ``builder(num_classes, **kwargs) -> nn.Module``."""
    return MODELS.register(name)


def register_token_dataset(name: str | None = None):
    """Decorator: register ``reader(spec, arg, split) -> Corpus`` as token dataset kind ``name``
    (``sources/_token_corpora.py`` defines Corpus and the built-in kinds)."""
    return TOKEN_DATASETS.register(name)
