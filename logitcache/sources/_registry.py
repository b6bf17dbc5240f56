"""A small name -> builder registry, one per extension point (datasets, models, losses).

    >>> MODELS = Registry("model")
    >>> @MODELS.register()
    ... def mlp(num_classes, hidden=256): ...
    >>> MODELS.get("mlp"), MODELS.names("res*")

Registering a name twice raises; an unknown name raises a SpecError that lists the known ones.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SpecError
from ._loading import first_line


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable] = {}

    def register(self, name: str | None = None) -> Callable[[Callable], Callable]:
        """Decorator: register a builder under ``name`` (default: the function's name)."""

        def decorate(builder: Callable) -> Callable:
            key = name or builder.__name__
            if key in self._builders:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._builders[key] = builder
            return builder

        return decorate

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable:
        try:
            return self._builders[name]
        except KeyError:
            raise SpecError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._builders if fnmatch.fnmatch(n, pattern))


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


def parse_kwargs(text: str, where: str) -> dict:
    """``"hidden=32,depth=2"`` -> ``{"hidden": 32, "depth": 2}`` (ints, floats, bools, strings)."""
    kwargs = {}
    for item in filter(None, text.split(",")):
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise SpecError(f"{where}: {item!r} is not of the form name=value")
        kwargs[key] = _parse_value(raw)
    return kwargs


def _parse_value(raw: str):
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


@dataclass
class DatasetEntry:
    """What a registered dataset provides: a builder and its defaults."""

    builder: Callable  # (arg, split, transform) -> (dataset, keys, labels, classes)
    default_transform: str
    splits: tuple[str, ...]
    default_split: str | None
    needs_arg: bool = True


# The two registries. Families register into them from their own modules, which the package's
# __init__ imports; the modules that look names up (datasets.py, models.py) import only this one.
DATASETS = Registry("dataset")
MODELS = Registry("model")


def register_dataset(name, *, default_transform, splits=(), default_split=None, needs_arg=True):
    """Decorator: register ``builder(arg, split, transform)`` as dataset ``name``."""

    def decorate(builder):
        DATASETS.register(name)(DatasetEntry(builder, default_transform, tuple(splits), default_split, needs_arg))
        return builder

    return decorate


def register_model(name: str | None = None):
    """Decorator: register ``builder(num_classes, **kwargs) -> nn.Module``."""
    return MODELS.register(name)
