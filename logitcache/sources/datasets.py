"""Datasets by spec string: ``NAME[:ARG][@SPLIT]`` or ``package.module:factory[@SPLIT]``.

    >>> source = get_dataset("digits@train")                  # the embedded default
    >>> source = get_dataset("cifar100:/data/cifar@test")
    >>> source = get_dataset("imagefolder:/data/pets", transform="imagenet")
    >>> source.dataset[0], source.keys[0], source.labels[0]

Every source knows its sample keys and labels without loading a single input, so stores can
fingerprint a dataset before the teacher runs. Keys are stable ids: relative file paths for
folders of files, ``SPLIT/INDEX`` for indexed datasets.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError, SpecError
from . import transforms
from ._registry import Registry

DATASETS = Registry("dataset")
FACTORY = "factory"  # the transform a store records for a factory dataset that applies its own
_SPLIT = re.compile(r"^(?P<body>.*)@(?P<split>[A-Za-z0-9_-]+)$")


@dataclass
class DatasetEntry:
    """What a registered dataset provides: a builder and its defaults."""

    builder: Callable  # (arg, split, transform) -> (dataset, keys, labels, classes)
    default_transform: str
    splits: tuple[str, ...]
    default_split: str | None
    needs_arg: bool = True


@dataclass
class DatasetSource:
    """A dataset plus what stores and loaders need to know about it."""

    spec: str
    split: str | None
    dataset: object  # a torch Dataset of (input, label)
    keys: list[str]
    labels: np.ndarray
    classes: list[str]
    transform: str  # canonical transform steps (or FACTORY: a factory dataset's own)
    random_views: bool = False
    extra: dict = field(default_factory=dict)
    view_normalize: str | None = None  # for_views: the final normalize step, left for the cut view

    def __len__(self):
        return len(self.keys)

    def describe(self) -> dict:
        """What a store records about where its samples came from."""
        return {"spec": self.spec, "split": self.split, "transform": self.transform}


def register_dataset(name, *, default_transform, splits=(), default_split=None, needs_arg=True):
    """Decorator: register ``builder(arg, split, transform)`` as dataset ``name``."""

    def decorate(builder):
        DATASETS.register(name)(DatasetEntry(builder, default_transform, tuple(splits), default_split, needs_arg))
        return builder

    return decorate


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


def parse_spec(spec: str, split: str | None = None) -> tuple[str, str, str | None]:
    """``"cifar100:/d@test"`` -> ``("cifar100", "/d", "test")``."""
    match = _SPLIT.match(spec)
    body, spec_split = (match["body"], match["split"]) if match else (spec, None)
    if spec_split and split and spec_split != split:
        raise SpecError(f"dataset {spec!r} names split {spec_split!r} but --split is {split!r}")
    name, _, arg = body.partition(":")
    return name, arg, spec_split or split


def get_dataset(
    spec: str,
    *,
    split: str | None = None,
    transform: str | None = None,
    augment: str | None = None,
    for_views: bool = False,
) -> DatasetSource:
    """Build a dataset source from a spec.

    Args:
        spec: ``NAME[:ARG][@SPLIT]`` for registered datasets, or ``package.module:factory``.
        split: the split, unless the spec names one.
        transform: a transform preset or step list; default: the dataset's eval transform (a
            factory's own; a factory takes steps only if it has a ``transform`` parameter, see
            ``factory.py``).
        augment: random steps put before the transform (train-time augmentation); tensor steps
            such as erasing go after it.
        for_views: the inputs views are cut from (``--augment`` of a dump): the default transform
            loses its center crop (views see the whole image), random steps are refused, and a
            final ``normalize`` step is not applied but kept in ``view_normalize``, for the view.

    Raises:
        SpecError: unknown dataset, split or transform step, a bad step value, or steps a factory
            cannot apply; checked before any data are read.
        DatasetError: the data are not where the spec says, or their keys and labels do not
            describe their samples (none, duplicate keys, labels that are not class indices).
    """
    name, arg, split = parse_spec(spec, split)
    if name not in DATASETS and "." in name:
        from .factory import factory_dataset

        return factory_dataset(spec, f"{name}:{arg}", split, transform=transform, augment=augment,
                               for_views=for_views)
    entry = DATASETS.get(name)
    if entry.needs_arg and not arg:
        raise SpecError(f"dataset {spec!r} needs a location: {name}:PATH")
    if arg and not entry.needs_arg:
        raise SpecError(f"dataset {name!r} takes no location, but the spec {spec!r} gives {arg!r}")
    split = split or entry.default_split
    if entry.splits and split not in entry.splits:
        raise SpecError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(entry.splits)}")
    default = transforms.without(entry.default_transform, "center_crop") if for_views else entry.default_transform
    steps, before, normalize = resolve_steps(transform or default, augment, for_views)
    dataset, keys, labels, classes = entry.builder(arg, split, transforms.build_transform(before))
    return make_source(spec, split, dataset, keys, labels, classes, steps, normalize)


def resolve_steps(steps: str, augment: str | None, for_views: bool) -> tuple[str, str, str | None]:
    """(all steps, the steps the dataset applies, the normalize step left for views), validated:
    a bad step name or value is a SpecError here, before any data are read."""
    if for_views and transforms.is_random(steps):
        raise SpecError(f"transform {steps!r} draws random views; with --augment the views are the only "
                        "randomness, so the transform must be deterministic")
    if augment:
        steps = transforms.with_augment(steps, augment)
    before, normalize = transforms.split_normalize(steps) if for_views else (steps, None)
    transforms.build_transform(steps)  # checks every step's value
    return steps, before, normalize


def make_source(spec: str, split, dataset, keys, labels, classes, steps: str,
                normalize: str | None = None) -> DatasetSource:
    """A DatasetSource, once its keys, labels and classes are checked to describe one sample each.
    ``steps`` is the transform applied (FACTORY: a factory dataset's own).

    Raises:
        DatasetError: no samples; keys or labels that do not match the samples or each other.
    """
    keys, labels = [str(k) for k in keys], _integer_labels(np.asarray(labels), spec)
    if len(keys) == 0:
        raise DatasetError(f"dataset {spec!r} is empty")
    if len(keys) != len(labels):
        raise DatasetError(f"dataset {spec!r} gives {len(keys)} keys but {len(labels)} labels")
    classes = [str(c) for c in classes]
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DatasetError(f"dataset {spec!r} has labels from {labels.min()} to {labels.max()}, but "
                           f"{len(classes)} classes (labels are class indices 0-{len(classes) - 1})")
    _check_keys(keys, spec)
    return DatasetSource(spec=spec, split=split, dataset=dataset, keys=keys, labels=labels, classes=classes,
                         transform=steps if steps == FACTORY else transforms.canonical(steps),
                         random_views=steps != FACTORY and transforms.is_random(steps), view_normalize=normalize)


def _integer_labels(labels: np.ndarray, spec: str) -> np.ndarray:
    if labels.ndim != 1:
        raise DatasetError(f"dataset {spec!r}: labels must be one class index per sample, got shape {labels.shape}")
    if labels.dtype.kind in "iub" or (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)):
        return labels.astype(np.int64)
    sample = ", ".join(repr(v) for v in labels[:3].tolist())
    raise DatasetError(f"dataset {spec!r}: labels must be integer class indices, got {sample}")


def _check_keys(keys: list[str], spec: str) -> None:
    """Keys are stored as UTF-8 and name one sample each."""
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        duplicate = next(k for k in keys if k in seen or seen.add(k))
        raise DatasetError(f"dataset {spec!r}: key {duplicate!r} names more than one sample")
    for key in keys:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise DatasetError(f"dataset {spec!r}: sample key {key!r} is not valid UTF-8 (a file name in "
                               "another encoding?); rename it") from None


# Register the built-in datasets (each in its own module).
from . import digits, imagefolder, torchvision_datasets  # noqa: E402,F401
