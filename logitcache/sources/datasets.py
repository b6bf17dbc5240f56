"""Datasets by spec string: ``NAME[:ARG][@SPLIT]`` or ``module:factory[@SPLIT]``.

    >>> source = get_dataset("digits@train")                  # the embedded default
    >>> source = get_dataset("cifar100:/data/cifar@test")
    >>> source = get_dataset("imagefolder:/data/pets", transform="imagenet")
    >>> source = get_dataset("parquet:/data/imagenet/validation-*.parquet@val")   # Hugging Face files
    >>> source = get_dataset("mydata:build@train")            # mydata.py on the path, or here
    >>> source.dataset[0], source.keys[0], source.labels[0]

Every source knows its sample keys and labels without loading a single input, so stores can
fingerprint a dataset before the teacher runs. Keys are stable ids: relative file paths for
folders of files, ``SPLIT/INDEX`` for indexed datasets.
"""

from __future__ import annotations

import re

from ..errors import SpecError
from . import transforms
from ._registry import DATASETS, register_dataset
from ._source import FACTORY, DatasetSource, make_source, resolve_steps
from .factory import factory_dataset

__all__ = ["FACTORY", "DatasetSource", "get_dataset", "list_datasets", "make_source", "parse_spec",
           "register_dataset"]

_SPLIT = re.compile(r"^(?P<body>.*)@(?P<split>[A-Za-z0-9_-]+)$")


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
    default_transform: str | None = None,
) -> DatasetSource:
    """Build a dataset source from a spec.

    Args:
        spec: ``NAME[:ARG][@SPLIT]`` for registered datasets, or ``module:factory`` (any module Python
            can import, or one in the current directory).
        split: the split, unless the spec names one.
        transform: a transform preset or step list; default: the dataset's eval transform (a
            factory's own; a factory takes steps only if it has a ``transform`` parameter, see
            ``factory.py``).
        augment: random steps put before the transform (train-time augmentation); tensor steps
            such as erasing go after it.
        for_views: the inputs views are cut from (``--augment`` of a dump): the default transform
            loses its center crop (views see the whole image), random steps are refused, and a
            final ``normalize`` step is not applied but kept in ``view_normalize``, for the view.
        default_transform: the model's own input transform (``sources.models.model_transform``: a
            timm model's data config), used in place of the default of a dataset of images (one whose
            own default converts images with ``to_tensor``); ``transform`` still wins.

    Raises:
        SpecError: unknown dataset, split or transform step, a bad step value, or steps a factory
            cannot apply; checked before any data are read.
        DatasetError: the data are not where the spec says, or their keys and labels do not
            describe their samples (none, duplicate keys, labels that are not class indices).
    """
    name, arg, split = parse_spec(spec, split)
    if name not in DATASETS and arg:  # module:factory; an unknown module is an unknown name
        return factory_dataset(spec, f"{name}:{arg}", split, transform=transform, augment=augment,
                               for_views=for_views, registry=DATASETS)
    entry = DATASETS.get(name)
    if entry.needs_arg and not arg:
        raise SpecError(f"dataset {spec!r} needs a location: {name}:PATH")
    if arg and not entry.needs_arg:
        raise SpecError(f"dataset {name!r} takes no location, but the spec {spec!r} gives {arg!r}")
    split = split or entry.default_split
    if entry.splits and split not in entry.splits:
        raise SpecError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(entry.splits)}")
    default = entry.default_transform
    from_model = bool(default_transform and not transform and "to_tensor" in dict(transforms.expand(default)))
    if from_model:  # a dataset of images, which the model's steps take
        default = default_transform
    default = transforms.without(default, "center_crop") if for_views else default
    steps, before, normalize = resolve_steps(transform or default, augment, for_views)
    dataset, keys, labels, classes = entry.builder(arg, split, transforms.build_transform(before))
    source = make_source(spec, split, dataset, keys, labels, classes, steps, normalize)
    if from_model:
        source.extra["transform_from"] = "model"
    return source
