"""Hugging Face image datasets, offline: ``hf:DIR`` (``save_to_disk``) and ``parquet:FILE_OR_GLOB``.

    >>> get_dataset("hf:/data/cifar10@test", transform="cifar10")     # a DatasetDict's split
    >>> get_dataset("parquet:/data/imagenet/validation-*.parquet@val")   # the Hub's Parquet files
    >>> get_dataset("parquet:/data/c100/train.parquet:image=img,label=fine_label")

Both read with the ``datasets`` package (an optional extra: ``pip install 'logitcache[hf]'``) and
nothing is downloaded. ``hf:DIR`` opens a directory ``save_to_disk`` wrote (``load_from_disk``:
memory-mapped, nothing converted); ``@SPLIT`` picks a split of a ``DatasetDict``. ``parquet:``
takes a file, a glob or a directory of ``*.parquet`` files (sorted by name), converted once into
datasets' Arrow cache (``HF_DATASETS_CACHE``) as ``load_dataset`` does, so samples can be read in
any order; its ``@SPLIT`` only names the samples.

Columns: the image column is the first with an ``Image`` feature (else ``image`` or ``img``), the
label column the first ``ClassLabel`` (else ``label``, ``labels`` or ``fine_label``); override them
with ``:image=COL,label=COL``. Class names come from the ``ClassLabel`` feature, else 0 to the
largest label. Images are converted to ``mode=RGB`` (as ImageFolder does; ``mode=L`` for grey,
``mode=keep`` to leave them as stored).

Keys are stable ids: the ``key=COL`` column, else the first of ``id``, ``image_id``, ``file_name``,
``filename`` and ``path`` that holds unique values, else the path each image was stored with (when
every image has a unique one), else ``SPLIT/INDEX`` in the files' order.
"""

from __future__ import annotations

import glob
from pathlib import Path

from ..errors import DatasetError, SpecError
from ._loading import first_line
from ._registry import parse_kwargs, register_dataset

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels", "fine_label")
KEY_COLUMNS = ("id", "image_id", "file_name", "filename", "path")
OPTIONS = ("image", "label", "key", "mode")


class HFImages:
    """(image, label) pairs from a ``datasets.Dataset``: the image decoded, converted to ``mode``
    and transformed. Pickles as the Dataset does (a memory-mapped file), so workers reopen it."""

    def __init__(self, data, image: str, label: str, mode: str | None, transform=None):
        self.data = data.select_columns([image, label])
        self.image, self.label, self.mode, self.transform = image, label, mode, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        row = self.data[int(index)]
        image = row[self.image]
        if self.mode and getattr(image, "mode", self.mode) != self.mode:
            image = image.convert(self.mode)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(row[self.label])


@register_dataset("hf", default_transform="imagenet", grammar="hf:DIR[:image=COL,label=COL]",
                  description="a datasets save_to_disk directory of images (the hf extra)")
def hf(arg, split, transform):
    location, options = _location_and_options(arg, "hf")
    datasets = _datasets()
    if not Path(location).is_dir():
        raise DatasetError(f"hf: {location} does not exist or is not a directory (a directory save_to_disk wrote)")
    try:
        loaded = datasets.load_from_disk(location)
    except Exception as err:  # datasets raises FileNotFoundError, ValueError... on what it cannot read
        raise DatasetError(f"hf: cannot load {location} with datasets.load_from_disk "
                           f"({type(err).__name__}: {first_line(err)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = sorted(loaded)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in loaded:
            raise SpecError(f"hf: {location} holds splits {', '.join(names)}; name one with @SPLIT"
                            + ("" if split is None else f" (there is no {split!r})"))
        loaded = loaded[split]
    elif split is not None and loaded.split is not None and str(loaded.split) != split:
        raise SpecError(f"hf: {location} holds the {loaded.split!r} split only, not {split!r}")
    return _image_source(loaded, split or (str(loaded.split) if loaded.split else None), options, transform,
                         f"hf:{location}")


@register_dataset("parquet", default_transform="imagenet", grammar="parquet:FILES[:image=COL,label=COL]",
                  description="Parquet files of images: a file, glob or directory (the hf extra)")
def parquet(arg, split, transform):
    location, options = _location_and_options(arg, "parquet")
    datasets = _datasets()
    files = _parquet_files(location)
    try:
        loaded = datasets.Dataset.from_parquet(files, split=split or "train")
    except Exception as err:  # pyarrow and datasets raise many types on files they cannot read
        raise DatasetError(f"parquet: cannot read {location} ({type(err).__name__}: {first_line(err)})") from None
    return _image_source(loaded, split, options, transform, f"parquet:{location}")


def _image_source(data, split, options: dict, transform, where: str) -> tuple:
    """(dataset, keys, labels, classes) of an image dataset, its columns found or named."""
    image = options.get("image") or _column(data, "Image", IMAGE_COLUMNS, "image", where)
    label = options.get("label") or _column(data, "ClassLabel", LABEL_COLUMNS, "label", where)
    for role, column in (("image", image), ("label", label)):
        if column not in data.column_names:
            raise SpecError(f"{where}: no {role} column {column!r}; columns: {', '.join(data.column_names)}")
    labels = _arrow(data, label)
    if labels.null_count:
        raise DatasetError(f"{where}: label column {label!r} has {labels.null_count} missing labels")
    labels = labels.to_numpy()
    if labels.dtype.kind not in "iu":
        raise DatasetError(f"{where}: label column {label!r} holds {labels.dtype} values, not class indices; "
                           "name the label column with :label=COL")
    feature = data.features[label]
    numbered = [str(c) for c in range(int(labels.max(initial=-1)) + 1)]  # no ClassLabel: 0 to the largest label
    classes = list(feature.names) if hasattr(feature, "names") else numbered
    keys = _keys(data, options.get("key"), image, split, where)
    mode = None if options.get("mode") == "keep" else options.get("mode", "RGB")
    return HFImages(data, image, label, mode, transform), keys, labels, classes


def _column(data, feature_type: str, names: tuple, role: str, where: str) -> str:
    """The first column with a feature of ``feature_type``, else the first of ``names`` present."""
    for column, feature in data.features.items():
        if type(feature).__name__ == feature_type:
            return column
    for column in names:
        if column in data.column_names:
            return column
    raise SpecError(f"{where}: no {role} column found (no {feature_type} feature, none called "
                    f"{' or '.join(names)}); name it with :{role}=COL; columns: {', '.join(data.column_names)}")


def _keys(data, key: str | None, image: str, split: str | None, where: str) -> list[str]:
    if key is not None:
        if key not in data.column_names:
            raise SpecError(f"{where}: no key column {key!r}; columns: {', '.join(data.column_names)}")
        return [str(k) for k in _arrow(data, key).to_pylist()]
    for column in KEY_COLUMNS:
        if column in data.column_names and column != image:
            values = [str(k) for k in _arrow(data, column).to_pylist()]
            if len(set(values)) == len(values):
                return values
    paths = _stored_paths(data, image)
    if paths is not None:
        return paths
    return [f"{split or 'all'}/{i:05d}" for i in range(len(data))]


def _stored_paths(data, image: str) -> list[str] | None:
    """The path each image was stored with (an Image feature's ``path`` field), when every image
    has one and no two share it; read from the Arrow column alone, not one image decoded."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = _arrow(data, image)
    if not pa.types.is_struct(column.type) or column.type.get_field_index("path") < 0:
        return None
    paths = pc.struct_field(column, "path").to_pylist()
    if any(not p for p in paths) or len(set(paths)) != len(paths):
        return None
    return paths


def _arrow(data, column: str):
    """One column as a pyarrow ChunkedArray (nothing decoded, no Python objects per row)."""
    return data.with_format("arrow")[column]


def _location_and_options(arg: str, name: str) -> tuple[str, dict]:
    """``/data/x:image=img,label=y`` -> ``("/data/x", {"image": "img", "label": "y"})``."""
    if not arg:
        raise SpecError(f"dataset {name!r} needs a location: {name}:PATH")
    location, sep, tail = arg.rpartition(":")
    if not sep or "=" not in tail:
        return arg, {}
    options = {key: str(value) for key, value in parse_kwargs(tail, f"dataset {name}:{arg}").items()}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SpecError(f"dataset {name}:{arg}: unknown option(s) {', '.join(unknown)}; options: {', '.join(OPTIONS)}")
    return location, options


def _parquet_files(location: str) -> list[str]:
    if Path(location).is_dir():
        files = sorted(str(p) for p in Path(location).glob("*.parquet"))
    else:
        files = sorted(glob.glob(location))
    if not files:
        raise DatasetError(f"parquet: no files match {location} (a .parquet file, a glob or a directory of them)")
    return files


def _datasets():
    try:
        import datasets
    except ImportError:
        raise SpecError("hf: and parquet: datasets need the datasets package: pip install 'logitcache[hf]'") from None
    return datasets
