"""Token datasets by spec string: rows of token ids with the positions whose next token is a target.

    >>> tokenizer = get_tokenizer("bytes")
    >>> source = get_token_dataset("text:data/text/shakespeare/*.md@train", tokenizer, seq_len=256)
    >>> source.tokens.shape, source.lengths[-1], source.keys[:2]
    ((2063, 256), 71, ['hamlet.md#0', 'hamlet.md#255'])
    >>> stream = stream_token_dataset("text:corpus/*.txt", tokenizer, seq_len=2048)
    >>> for rows in stream: ...                # TokenRows, in order; memory bounded by a batch
    >>> stream.description                     # complete once a pass has ended

Specs (``KIND:ARG[@SPLIT]``; ``_token_corpora.py`` reads each kind):

- ``text:FILE_OR_GLOB``: plain UTF-8 files, one document per file. Packed by default.
- ``jsonl:FILE_OR_GLOB[:FIELD]``, ``hf:DIR[:FIELD]`` (``datasets.load_from_disk``),
  ``parquet:FILE_OR_GLOB[:FIELD]``: one record per line or row; FIELD (default: the first of
  ``text``, ``messages``, ``input_ids`` present) holds text, chat messages (only the assistant's
  tokens are targets, see ``_token_documents.py``) or token ids. One record per row by default.
- ``package.module:factory``: an iterable of text, or of dicts with ``text``, ``messages`` or
  ``input_ids`` (and ``loss_mask``); see ``_token_corpora.factory_corpus``.

``@train``, ``@val`` or ``@all`` at the end of a spec names the split (any other ``@...`` is part
of the path). Splits are deterministic and disjoint:

- text files: ``val`` is the last 10 % of each document's tokens (``n // 10`` of ``n``), ``train``
  the rest;
- records (jsonl, hf, parquet, a factory without a ``split`` parameter): ``val`` is every 10th
  record (index 9, 19, ...), ``train`` the others;
- a Hugging Face DatasetDict's own splits, and a factory that takes ``split``, are used as given.

Rows (``tokens`` of shape (N, L), L = ``seq_len``):

- packed: documents are joined into one stream, each text followed by the end-of-text id (a
  target; nothing for a tokenizer without one; chats and given ids bring their own ends), and
  cut into rows of L tokens that overlap by one: row k starts at token k·(L-1), so every token
  after the first is a target in exactly one row (a row's first token has nothing before it in
  the row). The last row is right-padded.
- not packed: rows never cross documents. A record must fit one row (a longer one is refused);
  a text file is cut as above, its last row padded.

``loss_mask[i, t]`` is True when ``tokens[i, t + 1]`` is a training target, so it is False at
column L-1 and from ``lengths[i] - 1`` on. Padding is ``tokenizer.pad_id``. Keys say where a row
comes from: ``FILE#OFFSET`` (the token offset of its first token in that document) for cut
documents, the record's key (``chats.jsonl:7``, ``data.parquet#3``, ``12``) for unpacked records.
The same inputs always give the same arrays.

Streamed: records are read, tokenised (texts in batches, ``Tokenizer.encode_batch``) and cut a
batch at a time (``_token_packing.py``), so a pass holds one batch of records (``BATCH_CHARS`` of
text, or ``BATCH_RECORDS``), the rows cut from it and one row's overlap, never the corpus: no split
needs a whole pass (a text's val part is the tail of that document, a record's split its index).
A single document is tokenised whole, so one text file bounds the memory from below.
``get_token_dataset`` is one pass gathered into arrays, for data that fits in memory.
A pass can also start mid-corpus: after each block ``stream.position`` says where it ends (records
read, counts, the packer's state, as JSON), and ``stream.rows_from(position)`` gives the rows after
it, reading the records before but not tokenising them (a token store's creation resumes so).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError, SpecError
from . import _token_corpora  # noqa: F401 - registers the built-in kinds
from ._registry import TOKEN_DATASETS, register_token_dataset
from ._token_corpora import Corpus, Record, factory_corpus
from ._token_documents import Document, to_documents
from ._token_packing import PackedRows, TokenRows, concatenate_rows, document_rows, record_rows

__all__ = ["SPLITS", "TokenRows", "TokenSource", "TokenStream", "get_token_dataset", "list_token_datasets",
           "parse_token_spec", "register_token_dataset", "stream_token_dataset"]

SPLITS = ("all", "train", "val")
VAL_EVERY = 10  # records: every 10th is val; text: the last 1/10 of each document's tokens
BATCH_CHARS = 1 << 20  # a batch of records to tokenise: this many characters of text...
BATCH_RECORDS = 4096  # ...or this many records, whichever comes first
_SPLIT = re.compile(r"^(?P<body>.*)@(?P<split>all|train|val)$")


@dataclass
class TokenSource:
    """Token rows plus what stores and loaders need to know about them (module docstring)."""

    spec: str
    tokens: np.ndarray  # (N, L) int64
    loss_mask: np.ndarray  # (N, L) bool: tokens[i, t + 1] is a target
    lengths: np.ndarray  # (N,) int64: real tokens per row, the rest is padding
    keys: list[str]
    tokenizer: object  # the Tokenizer
    description: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.keys)

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def describe(self) -> dict:
        return dict(self.description)


def list_token_datasets(pattern: str = "*") -> list[str]:
    return TOKEN_DATASETS.names(pattern)


def parse_token_spec(spec: str, split: str | None = None) -> tuple[str, str, str]:
    """``"jsonl:a.jsonl:messages@val"`` -> ``("jsonl", "a.jsonl:messages", "val")``."""
    match = _SPLIT.match(spec)
    body, spec_split = (match["body"], match["split"]) if match else (spec, None)
    if split is not None and split not in SPLITS:
        raise SpecError(f"token dataset {spec!r}: unknown split {split!r}; splits: {', '.join(SPLITS)}")
    if spec_split and split and spec_split != split:
        raise SpecError(f"token dataset {spec!r} names split {spec_split!r} but --split is {split!r}")
    kind, _, arg = body.partition(":")
    return kind, arg, spec_split or split or "all"


def get_token_dataset(spec: str, tokenizer, seq_len: int, *, split: str | None = None,
                      pack: bool | None = None) -> TokenSource:
    """Tokenise the data a spec names into rows of ``seq_len`` tokens, in memory (module docstring).

    Args:
        spec: ``KIND:ARG[@SPLIT]`` or ``package.module:factory[@SPLIT]``.
        tokenizer: a ``Tokenizer`` (``get_tokenizer``).
        seq_len: tokens per row, at least 2.
        split: ``all``, ``train`` or ``val``, unless the spec names one (default all).
        pack: join documents into full rows (default: True for text, False for records).

    Raises:
        SpecError: an unknown kind or split, seq_len below 2.
        DatasetError: no file matches, a bad record or JSON line, an unknown field, a token id
            outside the vocabulary, a record longer than seq_len (unpacked), no tokens at all.
    """
    stream = stream_token_dataset(spec, tokenizer, seq_len, split=split, pack=pack)
    rows = concatenate_rows(list(stream))
    return TokenSource(spec, rows.tokens, rows.loss_mask, rows.lengths, rows.keys, tokenizer, stream.description)


def stream_token_dataset(spec: str, tokenizer, seq_len: int, *, split: str | None = None,
                         pack: bool | None = None) -> TokenStream:
    """The rows ``get_token_dataset`` gives, as a stream a pass at a time (same arguments and errors;
    the spec, its files and its reader are checked here, the records when a pass reads them)."""
    if not isinstance(seq_len, int) or seq_len < 2:
        raise SpecError(f"seq_len must be an integer of at least 2 (a row needs a token and its next), "
                        f"got {seq_len!r}")
    kind, arg, split = parse_token_spec(spec, split)
    stream = TokenStream(spec, kind, arg, split, tokenizer, seq_len, pack)
    stream.corpus = _read(spec, kind, arg, split)
    return stream


@dataclass
class TokenStream:
    """A token dataset read a pass at a time: iterating gives its ``TokenRows`` in order, reading the
    corpus again each time; ``description`` is complete once a pass has ended (None before)."""

    spec: str
    kind: str
    arg: str
    split: str
    tokenizer: object
    seq_len: int
    pack: bool | None
    corpus: Corpus | None = None  # the next pass's reader (made ahead, so a bad spec fails at once)
    description: dict | None = None
    position: dict | None = None  # where the last block read ends (``rows_from``)

    def __iter__(self) -> Iterator[TokenRows]:
        return self.rows_from(None)

    @property
    def identity(self) -> dict:
        """What decides this stream's rows and where its ``position``s fall (a position resumes only
        the stream that made it)."""
        return {"spec": self.spec, "split": self.split, "seq_len": self.seq_len, "pack": self.pack,
                "tokenizer": self.tokenizer.identity, "batch": [BATCH_CHARS, BATCH_RECORDS]}

    def rows_from(self, position: dict | None) -> Iterator[TokenRows]:
        """The stream's rows, from the start, or from just after the block whose ``position`` this is:
        the records before it are read but not tokenised. After each block, ``self.position`` is
        where that block ends (JSON: records read, counts, the packer's state)."""
        corpus, self.corpus = self.corpus or _read(self.spec, self.kind, self.arg, self.split), None
        pack = corpus.pack if self.pack is None else bool(self.pack)
        position = position or {"records": 0, "packer": None,
                                "counts": dict.fromkeys(("documents", "corpus_tokens", "rows", "tokens", "targets"), 0)}
        counts, done = dict(position["counts"]), [int(position["records"])]
        packer = None if not pack else PackedRows(self.seq_len, self.tokenizer.eos_id, self.tokenizer.pad_id) \
            if position["packer"] is None else PackedRows.from_state(self.seq_len, self.tokenizer.eos_id,
                                                                     self.tokenizer.pad_id, position["packer"])
        for rows in _cut_rows(self._documents(corpus, counts, done), self.seq_len, self.tokenizer, packer,
                              corpus.split_by == "tokens", self.spec):
            counts.update(rows=counts["rows"] + len(rows), tokens=counts["tokens"] + int(rows.lengths.sum()),
                          targets=counts["targets"] + int(rows.loss_mask.sum()))
            self.position = {"records": done[0], "counts": dict(counts),
                             "packer": packer.state() if packer is not None else None}
            yield rows
        if not counts["targets"]:
            raise DatasetError(f"token dataset {self.spec!r} ({self.split}) has no target token (chats without an "
                               "assistant message? records of one token?)")
        self.description = {"spec": self.spec, "kind": self.kind, "split": self.split,
                            "split_rule": _split_rule(corpus.split_by), "seq_len": self.seq_len, "packing": pack,
                            "separator": self.tokenizer.eos_id if pack else None, **counts,
                            "tokenizer": self.tokenizer.identity, **corpus.about}

    def count_rows(self, up_to: int) -> int:
        """How many rows the stream has, counted up to ``up_to`` (reading only as far as that takes)."""
        rows = 0
        for block in self:
            rows += len(block)
            if rows >= up_to:
                return up_to
        return rows

    def _documents(self, corpus: Corpus, counts: dict, done: list[int]) -> Iterator[list[Document]]:
        """Batches of the split's non-empty documents, counted, from record ``done[0]`` on (the ones
        before it read, not tokenised); ``done[0]`` counts the records read."""
        records = corpus.records
        for _ in itertools.islice(records, done[0]):
            pass
        for records in _batches(records):
            documents = to_documents(records, self.tokenizer, self.spec)
            documents = [d for d in _take_split(documents, done[0], corpus.split_by, self.split) if len(d.ids)]
            done[0] += len(records)
            counts["documents"] += len(documents)
            counts["corpus_tokens"] += sum(len(d.ids) for d in documents)
            yield documents
        if not counts["documents"]:
            raise DatasetError(f"token dataset {self.spec!r} ({self.split}) holds no tokens")


def _read(spec: str, kind: str, arg: str, split: str) -> Corpus:
    if kind not in TOKEN_DATASETS and "." in kind and arg:
        return factory_corpus(spec, f"{kind}:{arg}", split)
    reader = TOKEN_DATASETS.get(kind)
    return reader(spec, arg, split)


def _batches(records: Iterator[Record]) -> Iterator[list[Record]]:
    """Records in batches of about ``BATCH_CHARS`` characters of text, at most ``BATCH_RECORDS``."""
    batch, chars = [], 0
    for record in records:
        batch.append(record)
        chars += len(record.value) if isinstance(record.value, str) else 1
        if chars >= BATCH_CHARS or len(batch) >= BATCH_RECORDS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _take_split(documents: list[Document], first: int, split_by: str, split: str) -> list[Document]:
    """The split's part of these documents, the first of which is record ``first`` of the corpus."""
    if split == "all" or split_by == "done":
        return documents
    if split_by == "records":
        return [d for i, d in enumerate(documents, first) if (i % VAL_EVERY == VAL_EVERY - 1) == (split == "val")]
    cuts = [len(d.ids) - len(d.ids) // VAL_EVERY for d in documents]  # split_by == "tokens"
    return [d.part(cut, len(d.ids)) if split == "val" else d.part(0, cut) for d, cut in zip(documents, cuts)]


def _split_rule(split_by: str) -> str:
    return {"tokens": "val: the last 1/10 of each document's tokens",
            "records": "val: every 10th record (index % 10 == 9)",
            "done": "the source's own splits"}[split_by]


def _cut_rows(batches: Iterator[list[Document]], seq_len: int, tokenizer, packer: PackedRows | None,
              cut_documents: bool, spec: str) -> Iterator[TokenRows]:
    """Rows of the documents, a batch at a time: packed into one stream (by ``packer``), or each
    document cut on its own (text), or one row per record."""
    for documents in batches:
        if packer is not None:
            rows = packer.add(documents)
        elif cut_documents:
            rows = concatenate_rows([document_rows(d, seq_len, tokenizer.pad_id) for d in documents]) if documents \
                else None
        else:
            for document in documents:
                if len(document.ids) > seq_len:
                    raise DatasetError(f"token dataset {spec!r}: record {document.key} has {len(document.ids)} "
                                       f"tokens, more than seq_len {seq_len}; raise seq_len or pack the records")
            rows = record_rows(documents, seq_len, tokenizer.pad_id)
        if rows is not None and len(rows):
            yield rows
    if packer is not None and (rows := packer.finish()) is not None:
        yield rows
