"""The token dataset kinds: where a corpus's records come from (each registers itself).

    >>> corpus = TOKEN_DATASETS.get("jsonl")("jsonl:chats.jsonl:messages", "chats.jsonl:messages", "train")
    >>> next(corpus.records)       # Record(key='chats.jsonl:1', value=[{'role': ..., 'content': ...}, ...])

A reader finds its files (or loads its dataset, or calls its factory) at once, so a bad spec fails
before any work, and yields its records lazily, one file, line or batch of rows at a time: a
corpus is never held in memory whole.

- ``text:FILE_OR_GLOB``: one document per file (UTF-8); key: the path relative to the glob's
  fixed directory (``hamlet.md``).
- ``jsonl:FILE_OR_GLOB[:FIELD]``: one record per non-blank line; key ``FILE:LINE``.
- ``hf:DIR[:FIELD]``: a ``datasets.load_from_disk`` directory; key: the row index (``SPLIT/INDEX``
  for a DatasetDict, whose own splits are used).
- ``parquet:FILE_OR_GLOB[:FIELD]``: key ``FILE#ROW``.
- ``package.module:factory``: see ``factory_corpus``; key: the item's index.

FIELD defaults to the first of ``text``, ``messages``, ``input_ids`` the data have. A record's
value is text, a list of chat messages (``{"role", "content"}``) or token ids; beside
``input_ids`` a ``loss_mask`` field is read too. Nothing is downloaded: paths are local.
"""

from __future__ import annotations

import glob
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError, SpecError
from ._loading import call_user, first_line, quiet_torch
from ._registry import import_object, register_token_dataset

DEFAULT_FIELDS = ("text", "messages", "input_ids")
ROWS_PER_READ = 1024  # hf and parquet rows read at a time
_END = object()  # what next() gives at the end of an iterator
LM_EXTRA = "pip install 'logitcache[lm]'"


@dataclass
class Record:
    """One document or example: text, chat messages or token ids (with their loss mask)."""

    key: str
    value: object
    loss_mask: object = None  # beside token ids only: loss_mask[t] says token t+1 is a target


@dataclass
class Corpus:
    """What a reader found. ``split_by``: how ``token_datasets.py`` takes a split from it — ``tokens``
    (the tail of each record's tokens), ``records`` (every 10th record) or ``done`` (the reader
    applied the split already). ``records`` is read once; ``about`` is final once it has been."""

    records: Iterator[Record]
    split_by: str
    pack: bool  # packed by default
    about: dict = field(default_factory=dict)  # JSON-able: what was read


def split_field(arg: str) -> tuple[str, str | None]:
    """``"data/chats.jsonl:messages"`` -> ``("data/chats.jsonl", "messages")``; a path that exists
    as given, or whose tail holds a slash, has no field."""
    path, sep, name = arg.rpartition(":")
    if sep and path and name and not any(c in name for c in "/\\") and not Path(arg).exists():
        return path, name
    return arg, None


def choose_field(spec: str, name: str | None, fields, where: str) -> str:
    """The field to read: the one named (which must exist), else the first default present."""
    fields = list(fields)
    listed = ", ".join(map(str, fields)) or "none"
    if name is not None:
        if name not in fields:
            raise DatasetError(f"token dataset {spec!r}: {where} has no field {name!r}; its fields: {listed}")
        return name
    found = next((f for f in DEFAULT_FIELDS if f in fields), None)
    if found is None:
        raise DatasetError(f"token dataset {spec!r}: {where} has none of the fields {', '.join(DEFAULT_FIELDS)}; "
                           f"its fields: {listed}; name one as KIND:PATH:FIELD")
    return found


def matching_files(spec: str, pattern: str) -> list[tuple[Path, str]]:
    """The files a path or glob names, sorted, each with its key: its path relative to the
    pattern's fixed directory."""
    if not pattern:
        raise SpecError(f"token dataset {spec!r} needs a file or glob")
    if not glob.has_magic(pattern):
        path = Path(pattern)
        if path.is_dir():
            raise DatasetError(f"token dataset {spec!r}: {pattern} is a directory; give a file or a glob "
                               f"such as {pattern.rstrip('/')}/*.txt")
        if not path.is_file():
            raise DatasetError(f"token dataset {spec!r}: no file {pattern}")
        return [(path, path.name)]
    parts = Path(pattern).parts
    fixed = Path(*parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))] or ".")
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise DatasetError(f"token dataset {spec!r}: no file matches {pattern!r}")
    return [(file, file.relative_to(fixed).as_posix()) for file in files]


@register_token_dataset("text", grammar="text:FILE_OR_GLOB",
                        description="UTF-8 text files, one document each")
def read_text(spec: str, arg: str, split: str | None) -> Corpus:
    """Plain text files, one document each, packed by default; split by each file's tokens."""
    files = matching_files(spec, arg)
    return Corpus(_text_records(spec, files), "tokens", pack=True, about={"files": len(files)})


def _text_records(spec: str, files: list[tuple[Path, str]]) -> Iterator[Record]:
    for file, key in files:
        try:
            yield Record(key, file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise DatasetError(f"token dataset {spec!r}: {file} is not UTF-8 text ({err.reason} at byte "
                               f"{err.start})") from None
        except OSError as err:
            raise DatasetError(f"token dataset {spec!r}: cannot read {file} ({first_line(err)})") from None


@register_token_dataset("jsonl", grammar="jsonl:FILE_OR_GLOB[:FIELD]",
                        description="JSON lines, a record each")
def read_jsonl(spec: str, arg: str, split: str | None) -> Corpus:
    """JSON lines, one record per non-blank line; FIELD is chosen from the first record."""
    pattern, name = split_field(arg)
    about = {"field": name}
    return Corpus(_jsonl_records(spec, matching_files(spec, pattern), about), "records", pack=False, about=about)


def _jsonl_records(spec: str, files: list[tuple[Path, str]], about: dict) -> Iterator[Record]:
    name = about["field"]
    for file, key in files:
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{file}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DatasetError(f"token dataset {spec!r}: {where} is not valid JSON ({err.msg}, column "
                                       f"{err.colno})") from None
                if not isinstance(row, dict):
                    raise DatasetError(f"token dataset {spec!r}: {where} is a JSON {type(row).__name__}, "
                                       "not an object")
                name = about["field"] = choose_field(spec, name, row, where)
                yield Record(f"{key}:{number}", row[name], row.get("loss_mask") if name == "input_ids" else None)


@register_token_dataset("hf", grammar="hf:DIR[:FIELD]",
                        description="a datasets save_to_disk directory")
def read_hf(spec: str, arg: str, split: str | None) -> Corpus:
    """A ``datasets.load_from_disk`` directory. A DatasetDict's own splits are used: train is its
    ``train``; val its ``validation``, ``val`` or ``test``; all every split, by name."""
    path, name = split_field(arg)
    try:
        import datasets
    except ImportError:
        raise SpecError(f"token dataset {spec!r} needs the datasets package: {LM_EXTRA}") from None
    if not Path(path).is_dir():
        raise DatasetError(f"token dataset {spec!r}: directory {path} does not exist")
    with quiet_torch():
        loaded = call_user(datasets.load_from_disk, f"token dataset {spec!r}: cannot load {path}", DatasetError,
                           path)
    if not isinstance(loaded, datasets.DatasetDict):
        name = choose_field(spec, name, loaded.column_names, path)
        return Corpus(_rows(loaded, name, ""), "records", pack=False, about={"field": name})
    parts = _dict_parts(spec, loaded, split)
    for part, data in parts:  # every part's field, checked before any is read
        name = choose_field(spec, name, data.column_names, f"{path} split {part!r}")
    records = (record for part, data in parts for record in _rows(data, name, f"{part}/"))
    return Corpus(records, "done", pack=False, about={"field": name, "splits": [part for part, _ in parts]})


def _dict_parts(spec: str, loaded, split: str | None) -> list:
    names = sorted(loaded)
    if split in (None, "all"):
        return [(n, loaded[n]) for n in names]
    wanted = ("train",) if split == "train" else ("validation", "val", "test")
    found = next((n for n in wanted if n in loaded), None)
    if found is None:
        raise DatasetError(f"token dataset {spec!r}: its DatasetDict has no {' or '.join(wanted)} split for "
                           f"{split}; its splits: {', '.join(names)}")
    return [(found, loaded[found])]


def _rows(data, name: str, prefix: str) -> Iterator[Record]:
    """A record per row of one Hugging Face Dataset, ``ROWS_PER_READ`` rows read at a time."""
    with_mask = name == "input_ids" and "loss_mask" in data.column_names
    for first in range(0, len(data), ROWS_PER_READ):
        batch = data[first: first + ROWS_PER_READ]
        masks = batch["loss_mask"] if with_mask else [None] * len(batch[name])
        for offset, (value, mask) in enumerate(zip(batch[name], masks)):
            yield Record(f"{prefix}{first + offset}", value, mask)


@register_token_dataset("parquet", grammar="parquet:FILE_OR_GLOB[:FIELD]",
                        description="Parquet files, a record per row")
def read_parquet(spec: str, arg: str, split: str | None) -> Corpus:
    """Parquet files (read with pyarrow), one record per row."""
    pattern, name = split_field(arg)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SpecError(f"token dataset {spec!r} needs pyarrow: {LM_EXTRA}") from None
    files = []
    for file, key in matching_files(spec, pattern):  # every file's columns, checked before any is read
        columns = call_user(pq.read_schema, f"token dataset {spec!r}: cannot read {file} as Parquet", DatasetError,
                            file).names
        name = choose_field(spec, name, columns, str(file))
        files.append((file, key, [name, "loss_mask"] if name == "input_ids" and "loss_mask" in columns else [name]))
    return Corpus(_parquet_records(spec, pq, files), "records", pack=False, about={"field": name})


def _parquet_records(spec: str, pq, files: list[tuple[Path, str, list[str]]]) -> Iterator[Record]:
    for file, key, columns in files:
        cannot = f"token dataset {spec!r}: cannot read {file} as Parquet"
        parquet = call_user(pq.ParquetFile, cannot, DatasetError, file)
        row = 0
        for batch in _each(call_user(parquet.iter_batches, cannot, DatasetError, ROWS_PER_READ, columns=columns),
                           cannot):
            values = batch.column(columns[0]).to_pylist()
            masks = batch.column("loss_mask").to_pylist() if len(columns) == 2 else [None] * len(values)
            for value, mask in zip(values, masks):
                yield Record(f"{key}#{row}", value, mask)
                row += 1


def factory_corpus(spec: str, target: str, split: str | None) -> Corpus:
    """``package.module:factory``: called as ``factory(split=SPLIT)`` if it has a ``split``
    parameter (it then applies the split; SPLIT is all, train or val), else as ``factory()``
    (every 10th item is val). It returns an iterable of text, or of dicts with ``text``,
    ``messages`` or ``input_ids`` (and optionally ``loss_mask``)."""
    factory = import_object(target, "token dataset")
    takes_split = _takes_split(factory)
    kwargs = {"split": split or "all"} if takes_split else {}
    items = call_user(factory, f"token dataset {spec!r}: the factory failed", DatasetError, **kwargs)
    no_iterable = f"token dataset {spec!r}: the factory returned no iterable"
    items = call_user(iter, no_iterable, DatasetError, items)
    records = (_factory_record(spec, index, item) for index, item in enumerate(_each(items, no_iterable)))
    return Corpus(records, "done" if takes_split else "records", pack=False, about={"factory": target})


def _each(items: Iterator, what: str) -> Iterator:
    """The items, whatever the iterator raises made one ``DatasetError`` line."""
    while (item := call_user(next, what, DatasetError, items, _END)) is not _END:
        yield item


def _takes_split(factory) -> bool:
    try:
        return "split" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _factory_record(spec: str, index: int, item) -> Record:
    if isinstance(item, str):
        return Record(str(index), item)
    if isinstance(item, dict):
        for name in DEFAULT_FIELDS:
            if name in item:
                return Record(str(index), item[name], item.get("loss_mask") if name == "input_ids" else None)
        listed = ", ".join(map(str, item)) or "none"
        raise DatasetError(f"token dataset {spec!r}: item {index} has none of {', '.join(DEFAULT_FIELDS)}; "
                           f"its fields: {listed}")
    raise DatasetError(f"token dataset {spec!r}: item {index} is a {type(item).__name__}, not text or a dict "
                       f"with {', '.join(DEFAULT_FIELDS)}")
