"""The sources' registries and how specs name Python objects.

    >>> @register_model()
    ... def mlp(num_classes, hidden=256): ...
    >>> @register_model_scheme("zoo", grammar="zoo:NAME", description="a model from my zoo")
    ... def zoo(rest, num_classes): ...                       # get_model("zoo:tiny", 10)
    >>> MODELS.get("mlp"), MODEL_SCHEMES.names(), DATASETS.names("cifar*"), TOKENIZERS.names()
    >>> import_object("mypackage.nets:build", "model")      # or a top-level module: "nets:build"

A spec is ``NAME[:ARG]``: NAME is looked up here. Models have two registries: architectures
(``resnet20``, ``mlp:hidden=32``) and schemes, whose ARG says where the model comes from
(``torchvision:resnet18``, ``checkpoint:FILE``); a scheme wins over an architecture of the same
name. Datasets, token datasets and tokenizers have one each. Each entry registers itself in the
module that implements it, with its grammar and a one-line description, which the CLI's help
lists. The ``Registry`` class itself is ``logitcache.registry`` (losses use it too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SpecError
from ..registry import Registry, parse_kwargs  # noqa: F401 - parse_kwargs: models.py
from ._loading import first_line


def import_object(path: str, kind: str, registry: Registry | None = None):
    """Import ``module:attribute`` (``mymodule:build`` or ``package.module:build``); errors become
    one-line SpecErrors. A module not found on ``sys.path`` is looked for in the current directory
    too, as entry points and uvicorn do. With ``registry``, a module that does not exist is an
    unknown name: the error says both the registry and the import were tried."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise SpecError(f"{kind} {path!r} is not of the form module:factory")
    try:
        module = _import_module(module_name)
    except ModuleNotFoundError as err:
        if not _is_missing(module_name, err):  # the module exists; something it imports does not
            raise SpecError(f"{kind} {path!r}: cannot import {module_name!r} "
                            f"(ModuleNotFoundError: {first_line(err)})") from None
        registered = (f"a registered {kind} (known: {', '.join(registry.names())}) nor "
                      if registry is not None else "")
        raise SpecError(f"{kind} {path!r}: {module_name!r} is neither {registered}a module Python can import "
                        f"(cannot import {module_name!r}: {first_line(err)}; looked on sys.path and in the "
                        "current directory)") from None
    except Exception as err:  # a module may fail to import any way: SyntaxError, its own code
        raise SpecError(f"{kind} {path!r}: cannot import {module_name!r} "
                        f"({type(err).__name__}: {first_line(err)})") from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise SpecError(f"{kind} {path!r}: module {module_name!r} has no {attribute!r}") from None
    if not callable(found):
        raise SpecError(f"{kind} {path!r}: {attribute!r} is not callable (it is of type {type(found).__name__})")
    return found


def _import_module(name: str):
    """``importlib.import_module``, retried with the current directory on ``sys.path`` (the console
    script's ``sys.path`` starts with its own bin directory, not the one it is run in). The
    directory stays there: DataLoader workers that unpickle the module's objects import it again."""
    import importlib
    import os
    import sys

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        here = os.getcwd()
        if not _is_missing(name, err) or any(os.path.abspath(p or ".") == here for p in sys.path):
            raise
        sys.path.append(here)
        return importlib.import_module(name)


def _is_missing(module_name: str, err: ModuleNotFoundError) -> bool:
    """Is ``err`` about the module itself (or a package above it), not about something it imports?"""
    return bool(err.name) and (module_name == err.name or module_name.startswith(err.name + "."))


@dataclass
class DatasetEntry:
    """What a registered dataset provides: a builder and its defaults."""

    builder: Callable  # (arg, split, transform) -> (dataset, keys, labels, classes)
    default_transform: str
    splits: tuple[str, ...]
    default_split: str | None
    needs_arg: bool = True


@dataclass
class ModelScheme:
    """What a model scheme provides: a builder, and what else the model's spec tells."""

    build: Callable  # (rest, num_classes) -> nn.Module; rest: the spec after "SCHEME:"
    transform: Callable | None = None  # (rest) -> the input transform steps the model brings
    weights_file: Callable | None = None  # (rest) -> the file the spec reads weights from, or None


# The registries. Families register into them from their own modules, which the package's
# __init__ imports; the modules that look names up (datasets.py, models.py, token_datasets.py,
# tokenizers.py) import only this one.
DATASETS = Registry("dataset")
MODELS = Registry("model")
MODEL_SCHEMES = Registry("model scheme")
TOKEN_DATASETS = Registry("token dataset")
TOKENIZERS = Registry("tokenizer")


def register_dataset(name, *, default_transform, splits=(), default_split=None, needs_arg=True,
                     grammar=None, description=""):
    """Decorator: register ``builder(arg, split, transform)`` as dataset ``name``, written
    ``grammar`` in specs (default ``NAME:PATH``, or ``NAME`` for one that takes no location)."""

    def decorate(builder):
        entry = DatasetEntry(builder, default_transform, tuple(splits), default_split, needs_arg)
        DATASETS.register(name, grammar=grammar or (f"{name}:PATH" if needs_arg else name),
                          description=description)(entry)
        return builder

    return decorate


def register_model(name: str | None = None):
    """Decorator: register ``builder(num_classes, **kwargs) -> nn.Module``."""
    return MODELS.register(name)


def register_model_scheme(name: str, *, grammar: str, description: str, transform=None, weights_file=None):
    """Decorator: register ``build(rest, num_classes) -> nn.Module`` as the scheme of specs
    ``NAME:REST``; ``transform`` and ``weights_file`` (each ``(rest) -> str | None``) say which
    input transform the model brings and which file its weights come from (see ModelScheme)."""

    def decorate(build):
        MODEL_SCHEMES.register(name, grammar=grammar, description=description)(
            ModelScheme(build, transform, weights_file))
        return build

    return decorate


def rest_is_the_file(rest: str) -> str:
    """``weights_file`` of a scheme whose REST is the one file the whole model is read from."""
    return rest


def register_token_dataset(name: str | None = None, *, grammar: str | None = None, description: str = ""):
    """Decorator: register ``reader(spec, arg, split) -> Corpus`` as token dataset kind ``name``
    (``sources/_token_corpora.py`` defines Corpus and the built-in kinds)."""
    return TOKEN_DATASETS.register(name, grammar=grammar, description=description)


def register_tokenizer(name: str, *, grammar: str, description: str):
    """Decorator: register ``build(spec, arg) -> Tokenizer`` as tokenizer ``name``: a spec
    ``NAME`` if ``grammar`` has no colon, else ``NAME:ARG``."""
    return TOKENIZERS.register(name, grammar=grammar, description=description)
