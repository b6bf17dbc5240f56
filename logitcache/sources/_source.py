"""What a dataset spec builds: a ``DatasetSource`` (the dataset, its keys, labels and classes), made
only once those describe one sample each, and the transform steps it applies.

    >>> source = make_source("digits@train", "train", dataset, keys, labels, classes, "none")
    >>> source.keys[0], source.labels[0], source.describe()
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError, SpecError
from . import transforms

FACTORY = "factory"  # the transform a store records for a factory dataset that applies its own


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
    extra: dict = field(default_factory=dict)  # transform_from: "model" when the model's data config chose it
    view_normalize: str | None = None  # for_views: the final normalize step, left for the cut view

    def __len__(self):
        return len(self.keys)

    def describe(self) -> dict:
        """What a store records about where its samples came from."""
        return {"spec": self.spec, "split": self.split, "transform": self.transform}


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
