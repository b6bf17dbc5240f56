"""Records to token documents: text, chat messages or token ids, with which tokens are targets.

    >>> document = to_document(Record("chats.jsonl:1", messages), tokenizer, spec)
    >>> document.ids, document.targets        # targets[j]: token j is predicted (from token j - 1)
    >>> documents = to_documents(records, tokenizer, spec)   # many: their texts encoded in one batch

Chat messages (a list of ``{"role", "content"}``): only the assistant's tokens are targets.

- With a tokenizer that has a chat template, the conversation is rendered with it; an assistant
  turn is the text the template adds for that message after the generation prompt (so its
  end-of-turn marker is a target, the prompt is not). Each piece is tokenised on its own.
- Otherwise with logitcache's simple template: every message is ``<|ROLE|>\\n`` then its content
  then the end-of-text token (a newline for a tokenizer without one); an assistant message's
  content and end token are targets.

Token ids given with a ``loss_mask`` use the stored meaning: ``loss_mask[t]`` says token ``t + 1``
is a target (so the last entry is False); without one, every token after the first is a target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError
from ._token_corpora import Record


@dataclass
class Document:
    """A record's tokens. ``plain``: text, every token a target (packing joins plain documents
    with a target end-of-text token). ``start``: where ``ids`` begin in the record's tokens."""

    key: str
    ids: np.ndarray  # (n,) int64
    targets: np.ndarray  # (n,) bool; targets[j]: token j is a training target
    plain: bool
    start: int = 0

    def part(self, begin: int, end: int) -> Document:
        return Document(self.key, self.ids[begin:end], self.targets[begin:end], self.plain, self.start + begin)


def to_documents(records: list[Record], tokenizer, spec: str) -> list[Document]:
    """``to_document`` of each record; the texts among them go to the tokenizer in one batch."""
    documents = [None if isinstance(r.value, str) else to_document(r, tokenizer, spec) for r in records]
    texts = [index for index, document in enumerate(documents) if document is None]
    encoded = tokenizer.encode_batch([records[index].value for index in texts])
    for index, ids in zip(texts, encoded):
        ids = np.asarray(ids).reshape(-1).astype(np.int64, copy=False)
        documents[index] = Document(records[index].key, ids, np.ones(len(ids), dtype=bool), plain=True)
        _check_ids(ids, tokenizer, f"token dataset {spec!r}: record {records[index].key}")
    return documents


def to_document(record: Record, tokenizer, spec: str) -> Document:
    """Tokenise a record and check its ids fit the tokenizer's vocabulary.

    Raises:
        DatasetError: the value is not text, messages or ids; a bad loss mask; an id out of range.
    """
    where = f"token dataset {spec!r}: record {record.key}"
    value = record.value
    if isinstance(value, str):
        ids = np.asarray(tokenizer.encode(value), dtype=np.int64).reshape(-1)
        document = Document(record.key, ids, np.ones(len(ids), dtype=bool), plain=True)
    elif _is_chat(value):
        ids, targets = encode_chat(value, tokenizer, where)
        document = Document(record.key, ids, targets, plain=False)
    elif _is_ids(value):
        ids = np.asarray(value, dtype=np.int64).reshape(-1)
        document = Document(record.key, ids, _targets(record.loss_mask, len(ids), where), plain=False)
    else:
        raise DatasetError(f"{where} holds a {type(value).__name__}, not text, chat messages "
                           "({'role', 'content'}) or token ids")
    _check_ids(document.ids, tokenizer, where)
    return document


def _is_chat(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(m, dict) for m in value)


def _is_ids(value) -> bool:
    array = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    return array is not None and array.ndim == 1 and (array.dtype.kind in "iu" or array.size == 0)


def _targets(loss_mask, n: int, where: str) -> np.ndarray:
    targets = np.zeros(n, dtype=bool)
    if loss_mask is None:
        targets[1:] = True
        return targets
    mask = np.asarray(loss_mask)
    if mask.shape != (n,) or mask.dtype.kind not in "biu" or not np.isin(mask, (0, 1)).all():
        raise DatasetError(f"{where}: loss_mask must be {n} booleans (one per token), got shape {mask.shape}")
    if n and mask[-1]:
        raise DatasetError(f"{where}: loss_mask marks its last position, but loss_mask[t] means token t+1 is "
                           "a target and there is no token after the last (a per-token mask? shift it left)")
    targets[1:] = mask[:-1].astype(bool)
    return targets


def _check_ids(ids: np.ndarray, tokenizer, where: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        bad = int(ids[(ids < 0) | (ids >= tokenizer.vocab_size)][0])
        raise DatasetError(f"{where}: token id {bad} is outside the vocabulary of tokenizer {tokenizer.spec!r} "
                           f"(ids 0-{tokenizer.vocab_size - 1})")


def encode_chat(messages, tokenizer, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a conversation and which are targets (the assistant's), see the module docstring."""
    for index, message in enumerate(messages):
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise DatasetError(f"{where}: message {index} is not {{'role': str, 'content': str}}: "
                               f"{str(message)[:80]}")
    pieces = _template_pieces(messages, tokenizer, where) if tokenizer.chat_template else _simple_pieces(
        messages, tokenizer)
    ids, targets = [], []
    for piece, target in pieces:
        piece_ids = tokenizer.encode(piece) if isinstance(piece, str) else piece
        ids += piece_ids
        targets += [target] * len(piece_ids)
    return np.asarray(ids, dtype=np.int64).reshape(-1), np.asarray(targets, dtype=bool).reshape(-1)


def _simple_pieces(messages, tokenizer) -> list[tuple]:
    end = [tokenizer.eos_id] if tokenizer.eos_id is not None else "\n"
    pieces = []
    for message in messages:
        assistant = message["role"] == "assistant"
        pieces += [(f"<|{message['role']}|>\n", False), (message["content"], assistant), (end, assistant)]
    return [(piece, target) for piece, target in pieces if len(piece)]


def _template_pieces(messages, tokenizer, where: str) -> list[tuple[str, bool]]:
    """The rendered conversation cut where each assistant reply starts and ends: a reply is what
    rendering it adds to the conversation before it (with the generation prompt)."""
    full = tokenizer.render_chat(messages)
    spans, position = [], 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render_prefix(messages[:index], tokenizer)
        after = tokenizer.render_chat(messages[: index + 1])
        if not (full.startswith(after) and after.startswith(before) and len(before) >= position):
            raise DatasetError(f"{where}: the chat template of tokenizer {tokenizer.spec!r} does not render a "
                               "conversation's beginning as a prefix of it, so its assistant turns cannot be "
                               "found")
        spans.append((len(before), len(after)))
        position = len(after)
    pieces, position = [], 0
    for begin, end in spans:
        pieces += [(full[position:begin], False), (full[begin:end], True)]
        position = end
    pieces.append((full[position:], False))
    return [(piece, target) for piece, target in pieces if piece]


def _render_prefix(messages, tokenizer) -> str:
    """The conversation so far with the generation prompt; templates that cannot render an empty
    conversation start from nothing."""
    if messages:
        return tokenizer.render_chat(messages, add_generation_prompt=True)
    try:
        return tokenizer.render_chat([], add_generation_prompt=True)
    except DatasetError:
        return ""
