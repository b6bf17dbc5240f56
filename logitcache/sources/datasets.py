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
from ._registry import Registry, import_object

DATASETS = Registry("dataset")
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
    transform: str  # canonical transform steps (or 'factory' for user datasets)
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
        transform: a transform preset or step list; default: the dataset's eval transform.
        augment: random steps put before the transform (train-time augmentation); tensor steps
            such as erasing go after it.
        for_views: the inputs views are cut from (``--augment`` of a dump): the default transform
            loses its center crop (views see the whole image), random steps are refused, and a
            final ``normalize`` step is not applied but kept in ``view_normalize``, for the view.

    Raises:
        SpecError: unknown dataset, split or transform.
        DatasetError: the data are not where the spec says.
    """
    name, arg, split = parse_spec(spec, split)
    if name not in DATASETS and "." in name:
        return _factory_dataset(spec, f"{name}:{arg}", split)
    entry = DATASETS.get(name)
    if entry.needs_arg and not arg:
        raise SpecError(f"dataset {spec!r} needs a location: {name}:PATH")
    split = split or entry.default_split
    if entry.splits and split not in entry.splits:
        raise SpecError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(entry.splits)}")
    steps = transform or entry.default_transform
    if for_views:
        steps = transform or transforms.without(entry.default_transform, "center_crop")
        if transforms.is_random(steps):
            raise SpecError(f"transform {steps!r} draws random views; with --augment the views are the only "
                            "randomness, so the transform must be deterministic")
    if augment:
        steps = transforms.with_augment(steps, augment)
    before, normalize = transforms.split_normalize(steps) if for_views else (steps, None)
    dataset, keys, labels, classes = entry.builder(arg, split, transforms.build_transform(before))
    if len(keys) == 0:
        raise DatasetError(f"dataset {spec!r} is empty")
    return DatasetSource(
        spec=spec,
        split=split,
        dataset=dataset,
        keys=[str(k) for k in keys],
        labels=np.asarray(labels, dtype=np.int64),
        classes=[str(c) for c in classes],
        transform=transforms.canonical(steps),
        random_views=transforms.is_random(steps),
        view_normalize=normalize,
    )


def _factory_dataset(spec: str, target: str, split: str | None) -> DatasetSource:
    """``package.module:factory``: called as ``factory(split=SPLIT)``, returns a Dataset."""
    factory = import_object(target, "dataset")
    dataset = factory(split=split)
    keys = getattr(dataset, "keys", None)
    if keys is None or callable(keys):
        keys = [f"{split or 'all'}/{i}" for i in range(len(dataset))]
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    classes = getattr(dataset, "classes", None) or [str(c) for c in range(int(np.max(labels)) + 1)]
    if len(keys) == 0:
        raise DatasetError(f"dataset {spec!r} is empty")
    return DatasetSource(spec, split, dataset, [str(k) for k in keys], np.asarray(labels, dtype=np.int64),
                         [str(c) for c in classes], transform="factory")


# Register the built-in datasets (each in its own module).
from . import digits, imagefolder, torchvision_datasets  # noqa: E402,F401
