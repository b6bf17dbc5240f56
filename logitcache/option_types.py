"""Whether an option's value has its field's type, for configs built from a file or from Python.

    >>> fits(3, float), fits(True, int), fits([1, 2], tuple[int, ...])
    (True, False, True)
    >>> check_types(TrainConfig(epochs="3"))   # ConfigError: epochs = "3" is a string; expected an integer

The CLI's options are typed by click; a pipeline file and the Python API (``TrainConfig(...)``,
``DumpConfig(...)``) are not, and a string where a number belongs would fail deep inside a stage
with a TypeError. Both are checked here, field by field, before a stage starts.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import fields

from .errors import ConfigError


def fits(value, annotation) -> bool:
    """Does a value have the type a config field is annotated with? (ints fit floats; bools are not
    numbers; arrays fit tuples)"""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(fits(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(fits(v, item) for v in value)
    if annotation is typing.Any:
        return True
    return isinstance(value, typing.get_origin(annotation) or annotation)


NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table",
         list: "an array"}
KINDS = {**NAMES, bool: "a boolean"}


def describe(annotation) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " or ".join(describe(arm) for arm in typing.get_args(annotation) if arm is not type(None))
    if typing.get_origin(annotation) is tuple:
        return f"an array of {describe(typing.get_args(annotation)[0]).partition(' ')[2]}s"
    return NAMES.get(typing.get_origin(annotation) or annotation, str(annotation))


def kind(value) -> str:
    return KINDS.get(type(value), f"a {type(value).__name__}")


def show(value) -> str:
    """A value as a pipeline file spells it (TOML's strings, true/false and arrays are JSON's)."""
    return json.dumps(value, default=str)


def check_types(options) -> None:
    """Raise ConfigError naming the first field of a config dataclass whose value has another type."""
    hints = typing.get_type_hints(type(options))
    for item in fields(options):
        value = getattr(options, item.name)
        if not fits(value, hints[item.name]):
            raise ConfigError(f"{item.name} = {show(value)} is {kind(value)}; expected {describe(hints[item.name])}")
