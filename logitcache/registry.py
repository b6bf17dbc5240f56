"""A small name -> entry registry, one per extension point (datasets, models, losses), and the
``k=v,...`` argument syntax of spec strings.

    >>> MODELS = Registry("model")
    >>> @MODELS.register(grammar="mlp[:hidden=N]", description="a small MLP")
    ... def mlp(num_classes, hidden=256): ...
    >>> MODELS.get("mlp"), MODELS.names("res*")
    >>> MODELS.about("mlp")        # About(grammar='mlp[:hidden=N]', description='a small MLP')
    >>> parse_kwargs("hidden=32,act=relu", "model 'mlp'")     # {"hidden": 32, "act": "relu"}

Registering a name twice raises; an unknown name raises a SpecError that lists the known ones.
An entry may say how a spec writes it and what it is, in one line each: the CLI's help is made
from those, so what it lists is what is registered.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from .errors import SpecError


@dataclass(frozen=True)
class About:
    """How a spec writes an entry (``torchvision:NAME``) and what it is, in a few words."""

    grammar: str
    description: str = ""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable] = {}
        self._about: dict[str, About] = {}

    def register(self, name: str | None = None, *, grammar: str | None = None,
                 description: str = "") -> Callable[[Callable], Callable]:
        """Decorator: register a builder under ``name`` (default: the function's name), written
        in specs as ``grammar`` (default: the name)."""

        def decorate(builder: Callable) -> Callable:
            key = name or builder.__name__
            if key in self._builders:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._builders[key] = builder
            self._about[key] = About(grammar or key, description)
            return builder

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test that registers its own entry cleans up after itself)."""
        self._builders.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable:
        try:
            return self._builders[name]
        except KeyError:
            raise SpecError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def about(self, name: str) -> About:
        """How ``name`` is written and what it is (``get``'s error if it is not registered)."""
        self.get(name)
        return self._about[name]

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._builders if fnmatch.fnmatch(n, pattern))


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
