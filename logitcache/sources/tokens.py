"""Token datasets by spec string: rows of token ids with the positions whose next token is a target.

    >>> tokenizer = get_tokenizer("bytes")
    >>> source = get_token_dataset("text:data/text/shakespeare/*.md@train", tokenizer, seq_len=256)
    >>> source.tokens.shape, source.lengths[-1], source.keys[:2]
    ((2063, 256), 71, ['hamlet.md#0', 'hamlet.md#255'])

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError, SpecError
from . import _token_corpora  # noqa: F401 - registers the built-in kinds
from ._registry import TOKEN_DATASETS, register_token_dataset
from ._token_corpora import Corpus, factory_corpus
from ._token_documents import Document, to_document

__all__ = ["SPLITS", "TokenSource", "get_token_dataset", "list_token_datasets", "parse_token_spec",
           "register_token_dataset"]

SPLITS = ("all", "train", "val")
VAL_EVERY = 10  # records: every 10th is val; text: the last 1/10 of each document's tokens
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
    """Tokenise the data a spec names into rows of ``seq_len`` tokens (module docstring).

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
    if not isinstance(seq_len, int) or seq_len < 2:
        raise SpecError(f"seq_len must be an integer of at least 2 (a row needs a token and its next), "
                        f"got {seq_len!r}")
    kind, arg, split = parse_token_spec(spec, split)
    corpus = _read(spec, kind, arg, split)
    documents = [to_document(record, tokenizer, spec) for record in corpus.records]
    documents = [d for d in _take_split(documents, corpus.split_by, split) if len(d.ids)]
    if not documents:
        raise DatasetError(f"token dataset {spec!r} ({split}) holds no tokens")
    pack = corpus.pack if pack is None else bool(pack)
    tokens, loss_mask, lengths, keys = _rows(documents, seq_len, tokenizer, pack, corpus.split_by == "tokens", spec)
    if not loss_mask.any():
        raise DatasetError(f"token dataset {spec!r} ({split}) has no target token (chats without an assistant "
                           "message? records of one token?)")
    description = {"spec": spec, "kind": kind, "split": split, "split_rule": _split_rule(corpus.split_by),
                   "seq_len": seq_len, "packing": pack, "separator": tokenizer.eos_id if pack else None,
                   "documents": len(documents), "corpus_tokens": sum(len(d.ids) for d in documents),
                   "rows": len(keys), "tokens": int(lengths.sum()),
                   "targets": int(loss_mask.sum()), "tokenizer": tokenizer.identity, **corpus.about}
    return TokenSource(spec, tokens, loss_mask, lengths, keys, tokenizer, description)


def _read(spec: str, kind: str, arg: str, split: str) -> Corpus:
    if kind not in TOKEN_DATASETS and "." in kind and arg:
        return factory_corpus(spec, f"{kind}:{arg}", split)
    reader = TOKEN_DATASETS.get(kind)
    return reader(spec, arg, split)


def _take_split(documents: list[Document], split_by: str, split: str) -> list[Document]:
    if split == "all" or split_by == "done":
        return documents
    if split_by == "records":
        val = [i % VAL_EVERY == VAL_EVERY - 1 for i in range(len(documents))]
        return [d for d, is_val in zip(documents, val) if is_val == (split == "val")]
    cuts = [len(d.ids) - len(d.ids) // VAL_EVERY for d in documents]  # split_by == "tokens"
    return [d.part(cut, len(d.ids)) if split == "val" else d.part(0, cut) for d, cut in zip(documents, cuts)]


def _split_rule(split_by: str) -> str:
    return {"tokens": "val: the last 1/10 of each document's tokens",
            "records": "val: every 10th record (index % 10 == 9)",
            "done": "the source's own splits"}[split_by]


def _rows(documents: list[Document], seq_len: int, tokenizer, pack: bool, cut_documents: bool, spec: str):
    """(tokens, loss_mask, lengths, keys) of all rows, documents packed or one after another."""
    if not pack and not cut_documents:
        for document in documents:
            if len(document.ids) > seq_len:
                raise DatasetError(f"token dataset {spec!r}: record {document.key} has {len(document.ids)} tokens, "
                                   f"more than seq_len {seq_len}; raise seq_len or pack the records")
    groups = [documents] if pack else [[d] for d in documents]
    parts = [_cut(group, tokenizer.eos_id, seq_len, tokenizer.pad_id) for group in groups]
    tokens, loss_mask, lengths = (np.concatenate([p[i] for p in parts]) for i in range(3))
    keys = [k for p in parts for k in p[3]] if pack or cut_documents else [d.key for d in documents]
    return tokens, loss_mask, lengths, keys


def _cut(documents: list[Document], separator: int | None, seq_len: int, pad_id: int):
    """Documents joined into one stream (``separator`` after each text but the last), cut into rows
    of ``seq_len`` that start every ``seq_len - 1`` tokens, so each target is in exactly one row."""
    pieces, targets, begins, position = [], [], [], 0
    for index, document in enumerate(documents):
        if index and separator is not None and documents[index - 1].plain:  # chats and given ids end themselves
            pieces.append(np.array([separator], dtype=np.int64))
            targets.append(np.ones(1, dtype=bool))  # a text's end is worth predicting
            position += 1
        begins.append(position)
        position += len(document.ids)
        pieces.append(document.ids)
        targets.append(document.targets)
    ids, targets = np.concatenate(pieces).astype(np.int64), np.concatenate(targets).astype(bool)
    n = len(ids)
    starts = np.arange(0, max(n - 1, 1), seq_len - 1)
    index = starts[:, None] + np.arange(seq_len)[None, :]  # (rows, L)
    tokens = np.where(index < n, ids[np.minimum(index, n - 1)], pad_id).astype(np.int64)
    following = index + 1
    loss_mask = (following < n) & (np.arange(seq_len)[None, :] < seq_len - 1)
    loss_mask &= targets[np.minimum(following, n - 1)]
    lengths = np.minimum(n - starts, seq_len).astype(np.int64)
    # a row's key: the document its first token belongs to (a separator, to the one before it) and the offset
    owners = np.searchsorted(np.asarray(begins), starts, side="right") - 1
    keys = [f"{documents[o].key}#{documents[o].start + s - begins[o]}" for o, s in zip(owners, starts)]
    return tokens, loss_mask, lengths, keys
