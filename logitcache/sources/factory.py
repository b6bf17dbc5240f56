"""Datasets from user code: ``module:factory[@SPLIT]``.

    >>> get_dataset("mypkg.data:build@train")      # build(split="train") returns a map-style Dataset
    >>> get_dataset("mydata:build@train")          # a top-level module: mydata.py on sys.path or here
    >>> get_dataset("mypkg.data:build", transform="to_tensor,normalize=mnist")   # needs build(..., transform=None)

The factory is called as ``factory(split=SPLIT)`` and returns a Dataset of (input, label). Keys
come from its ``keys`` attribute (default ``SPLIT/INDEX``), labels from ``targets`` (default:
read from every sample), class names from ``classes`` (default: 0 to the largest label).

Transforms: a factory applies its own, which the store records as ``factory``. A factory whose
signature has a ``transform`` parameter can be given ``--transform`` (and ``--augment``) steps
instead: it is called with ``transform=`` the built steps, and the store records those steps. A
factory without one refuses them: they would be dropped without a word.
"""

from __future__ import annotations

import inspect
import operator

import numpy as np

from ..errors import DatasetError, SpecError
from . import transforms
from ._loading import call_user
from ._registry import import_object
from ._source import FACTORY, DatasetSource, make_source, resolve_steps

MAX_NUMBERED_CLASSES = 1 << 22  # labels beyond this need a classes list (0..max would be a huge list)


def factory_dataset(spec: str, target: str, split: str | None, *, transform: str | None,
                    augment: str | None, for_views: bool, registry=None) -> DatasetSource:
    """Call the factory ``target`` names and check what it returns (see the module docstring).

    Raises:
        SpecError: the factory cannot be imported (with ``registry``: nor is it a name there), or
            cannot apply the steps given.
        DatasetError: the factory fails, or its dataset's keys or labels do not describe its samples.
    """
    factory = import_object(target, "dataset", registry)
    own = transform in (None, FACTORY)  # FACTORY: a store's record of the factory's own transform
    steps, kwargs, normalize = FACTORY, {"split": split}, None
    if not own or augment:
        steps, before, normalize = _given_steps(spec, factory, None if own else transform, augment, for_views)
        kwargs["transform"] = transforms.build_transform(before)
    dataset = call_user(factory, f"dataset {spec!r}: the factory failed", DatasetError, **kwargs)
    size = call_user(len, f"dataset {spec!r}: the factory's dataset has no length", DatasetError, dataset)
    keys = _attribute(dataset, "keys", spec)
    if keys is None or callable(keys):
        keys = [f"{split or 'all'}/{i}" for i in range(size)]
    labels = _labels(dataset, size, spec)
    classes = _attribute(dataset, "classes", spec) or _numbered_classes(labels, spec)
    return make_source(spec, split, dataset, keys, labels, classes, steps, normalize)


def _attribute(dataset, name: str, spec: str):
    """The dataset's ``keys``/``classes``/``targets`` as a list or array (None if it has none)."""
    value = call_user(getattr, f"dataset {spec!r}: reading its {name} failed", DatasetError, dataset, name, None)
    if value is None or (callable(value) and name == "keys"):
        return value
    convert = np.asarray if name == "targets" else list
    return call_user(convert, f"dataset {spec!r}: its {name} are not a list", DatasetError, value)


def _given_steps(spec: str, factory, transform: str | None, augment: str | None, for_views: bool) -> tuple:
    """Validate the steps given (unknown names and bad values first), then check the factory can
    apply them in place of its own transform."""
    if transform:
        transforms.build_transform(transform)
    if augment:
        transforms.build_transform(augment)
    flags = " and ".join(f for f, v in (("--transform", transform), ("--augment", augment)) if v)
    if not _takes_transform(factory):
        raise SpecError(f"dataset {spec!r}: its factory takes no transform argument, so {flags} cannot be "
                        "applied; leave it out (the factory applies its own), or give the factory a "
                        "transform=None parameter")
    if not transform:
        raise SpecError(f"dataset {spec!r}: --augment needs --transform too with a factory dataset (the "
                        "augmentation goes in front of a transform logitcache knows; the factory's own is not)")
    return resolve_steps(transform, augment, for_views)


def _takes_transform(factory) -> bool:
    try:
        parameter = inspect.signature(factory).parameters.get("transform")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def _labels(dataset, size: int, spec: str):
    labels = _attribute(dataset, "targets", spec)
    if labels is not None:
        return labels
    return [_label_of(dataset, index, spec) for index in range(size)]


def _label_of(dataset, index: int, spec: str) -> int:
    item = call_user(lambda: dataset[index], f"dataset {spec!r}: cannot read sample {index}", DatasetError)
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DatasetError(f"dataset {spec!r}: sample {index} is a {type(item).__name__}, not an (input, label) pair")
    try:
        return operator.index(item[1])  # ints, numpy ints, integer tensors of one element; not 2.7 or "3"
    except TypeError:
        raise DatasetError(f"dataset {spec!r}: sample {index} has label {item[1]!r}, not an integer class "
                           "index") from None


def _numbered_classes(labels, spec: str) -> list[str]:
    """Classes 0..max(label), for datasets without a ``classes`` list."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.dtype.kind not in "iuf" or not np.isfinite(labels).all():
        return []  # make_source says what is wrong (no samples, or labels that are not class indices)
    largest = int(labels.max())
    if largest >= MAX_NUMBERED_CLASSES:
        raise DatasetError(f"dataset {spec!r}: its largest label is {largest}; a dataset with that many classes "
                           "needs a classes attribute naming them")
    return [str(c) for c in range(largest + 1)]
