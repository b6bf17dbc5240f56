"""Documents to rows of ``seq_len`` tokens, as they come: the packing rule of ``token_datasets.py``, kept
without ever holding more than a batch of documents and one row's overlap.

    >>> packer = PackedRows(seq_len=256, separator=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    >>> rows = packer.add(documents)          # every row whose tokens have all arrived (or None)
    >>> last = packer.finish()                # the rest, the last row right-padded
    >>> rows = record_rows(documents, 256, pad_id)   # unpacked records: one row each

Packed, the documents form one stream (the separator, a target, between a text and the next
document) cut into rows that start every ``seq_len - 1`` tokens: row k is tokens
[k(L-1), k(L-1) + L), so every token after the first is a target in exactly one row. A row is cut
as soon as its L tokens are in; the stream's end decides only the last rows (those that start
before its last token, or the one row of a one-token stream).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from ._token_documents import Document


@dataclass
class TokenRows:
    """Consecutive rows of a token dataset (``token_datasets.py``'s module docstring says what each holds)."""

    tokens: np.ndarray  # (b, L) int64
    loss_mask: np.ndarray  # (b, L) bool: tokens[i, t + 1] is a target
    lengths: np.ndarray  # (b,) int64
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)


class PackedRows:
    """Rows cut from a stream of documents fed a batch at a time (module docstring)."""

    def __init__(self, seq_len: int, separator: int | None, pad_id: int):
        self.seq_len, self.separator, self.pad_id = seq_len, separator, pad_id
        self._ids = np.empty(0, dtype=np.int64)  # the stream from the next row's start on
        self._targets = np.empty(0, dtype=bool)
        self._offset = 0  # stream position of _ids[0]
        self._owners: list[tuple[int, str, int]] = []  # (stream position, key, offset in its record) per document
        self._previous_plain: bool | None = None  # None: nothing added yet
        self._finished = False

    def add(self, documents: list[Document]) -> TokenRows | None:
        """Take these documents; return the rows now complete."""
        ids, targets, position = [self._ids], [self._targets], self._offset + len(self._ids)
        for document in documents:
            if self._previous_plain and self.separator is not None:  # chats and given ids end themselves
                ids.append(np.array([self.separator], dtype=np.int64))
                targets.append(np.ones(1, dtype=bool))  # a text's end is worth predicting
                position += 1
            self._owners.append((position, document.key, document.start))
            ids.append(document.ids)
            targets.append(document.targets)
            position += len(document.ids)
            self._previous_plain = document.plain
        self._ids, self._targets = np.concatenate(ids).astype(np.int64, copy=False), np.concatenate(targets)
        step, available = self.seq_len - 1, len(self._ids)
        count = (available - self.seq_len) // step + 1 if available >= self.seq_len else 0
        return self._cut(np.arange(count) * step) if count else None

    def state(self) -> dict:
        """What the packer holds between batches (less than a row of tokens and their owners), as
        JSON: ``from_state`` continues from it exactly, so a stream can resume mid-corpus."""
        return {"ids": base64.b64encode(self._ids.astype("<u4").tobytes()).decode(),
                "targets": base64.b64encode(np.packbits(self._targets).tobytes()).decode(),
                "offset": int(self._offset),
                "owners": [[int(position), str(key), int(start)] for position, key, start in self._owners],
                "previous_plain": self._previous_plain, "finished": self._finished}

    @classmethod
    def from_state(cls, seq_len: int, separator: int | None, pad_id: int, state: dict) -> PackedRows:
        packer = cls(seq_len, separator, pad_id)
        packer._ids = np.frombuffer(base64.b64decode(state["ids"]), dtype="<u4").astype(np.int64)
        bits = np.frombuffer(base64.b64decode(state["targets"]), dtype=np.uint8)
        packer._targets = np.unpackbits(bits, count=len(packer._ids)).astype(bool)
        packer._offset, packer._previous_plain = int(state["offset"]), state["previous_plain"]
        packer._finished = bool(state["finished"])
        packer._owners = [(int(position), str(key), int(start)) for position, key, start in state["owners"]]
        return packer

    def finish(self) -> TokenRows | None:
        """The rows left at the end of the stream: those starting before its last token."""
        end = self._offset + len(self._ids)
        if self._finished or self._previous_plain is None or self._offset >= max(end - 1, 1):
            return None
        self._finished = True
        return self._cut(np.arange(0, max(end - 1, 1) - self._offset, self.seq_len - 1))

    def _cut(self, starts: np.ndarray) -> TokenRows:
        """Rows at ``starts`` (relative to the buffer), then the buffer from the next row's start."""
        n, length = len(self._ids), self.seq_len
        index = starts[:, None] + np.arange(length)[None, :]  # (rows, L)
        tokens = np.where(index < n, self._ids[np.minimum(index, n - 1)], self.pad_id).astype(np.int64)
        following = index + 1
        loss_mask = (following < n) & (np.arange(length)[None, :] < length - 1)
        loss_mask &= self._targets[np.minimum(following, n - 1)]
        lengths = np.minimum(n - starts, length).astype(np.int64)
        keys = self._keys(starts + self._offset)
        consumed = int(starts[-1]) + length - 1
        self._ids, self._targets = self._ids[consumed:], self._targets[consumed:]
        self._offset += consumed
        begins = np.asarray([owner[0] for owner in self._owners])
        self._owners = self._owners[max(int(np.searchsorted(begins, self._offset, side="right")) - 1, 0):]
        return TokenRows(tokens, loss_mask, lengths, keys)

    def _keys(self, starts: np.ndarray) -> list[str]:
        """A row's key: the document its first token belongs to (a separator, to the one before it)
        and the offset of that token in the document's record."""
        begins = np.asarray([owner[0] for owner in self._owners])
        owners = np.searchsorted(begins, starts, side="right") - 1
        return [f"{self._owners[o][1]}#{self._owners[o][2] + s - self._owners[o][0]}"
                for o, s in zip(owners.tolist(), starts.tolist())]


def document_rows(document: Document, seq_len: int, pad_id: int) -> TokenRows:
    """One document cut on its own (unpacked text): the packing rule on a stream of one."""
    packer = PackedRows(seq_len, None, pad_id)
    parts = [rows for rows in (packer.add([document]), packer.finish()) if rows is not None]
    return concatenate_rows(parts)


def record_rows(documents: list[Document], seq_len: int, pad_id: int) -> TokenRows:
    """Unpacked records that fit a row each: one right-padded row per record, keyed by the record."""
    tokens = np.full((len(documents), seq_len), pad_id, dtype=np.int64)
    loss_mask = np.zeros((len(documents), seq_len), dtype=bool)
    lengths = np.asarray([len(d.ids) for d in documents], dtype=np.int64)
    for row, document in enumerate(documents):
        n = len(document.ids)
        tokens[row, :n] = document.ids
        loss_mask[row, : n - 1] = document.targets[1:n]
    return TokenRows(tokens, loss_mask, lengths, [d.key for d in documents])


def concatenate_rows(parts: list[TokenRows]) -> TokenRows:
    """Row blocks one after another, as one block."""
    return TokenRows(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("tokens", "loss_mask",
                                                                                       "lengths")),
                     [key for part in parts for key in part.keys])
