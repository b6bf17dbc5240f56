"""Prompts for a teacher to answer (``dump --generate``): records of a token dataset, each made the
token ids the teacher continues.

    >>> prompts = read_prompts("jsonl:data/prompts.jsonl:prompt", tokenizer)
    >>> prompts.keys[0], prompts.ids[0]        # 'prompts.jsonl:1', array([...]) int64
    >>> prompts.fingerprint                    # sha256 over the keys and ids: what the store's settings pin

A record's value is text (tokenised as it is) or chat messages (a list of ``{"role", "content"}``),
rendered with the tokenizer's chat template and its generation prompt, so the teacher's answer is
the assistant's turn. A tokenizer without a chat template cannot know where a turn starts, so chat
records with one are refused rather than guessed. Any record kind of ``token_datasets`` serves
(``jsonl:FILE[:FIELD]`` is the usual one), with its splits (``@train``, ``@val``: every 10th record).
Prompts are few and short beside a corpus, so they are read whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError, SpecError
from ._token_documents import Document, _check_ids, _is_chat
from .token_datasets import _read, _split_rule, _take_split, parse_token_spec


@dataclass
class Prompts:
    """The prompts of a spec, in order: their keys and token ids, and what a store records of them."""

    spec: str
    keys: list[str]
    ids: list[np.ndarray]  # each (n,) int64, n >= 1
    description: dict

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def fingerprint(self) -> str:
        """sha256 over every key and its ids: two prompt sets with it are the same prompts."""
        digest = hashlib.sha256(b"logitcache-prompts-v1\n")
        for key, ids in zip(self.keys, self.ids):
            raw = key.encode("utf-8")
            digest.update(np.asarray([len(raw), len(ids)], dtype="<u8").tobytes() + raw)
            digest.update(np.ascontiguousarray(ids, dtype="<u4").tobytes())
        return "sha256:" + digest.hexdigest()


def read_prompts(spec: str, tokenizer, split: str | None = None) -> Prompts:
    """Every prompt of ``spec`` as token ids.

    Raises:
        SpecError: not a token dataset spec (an image dataset, an unknown kind).
        DatasetError: no file, no such field, a value neither text nor chat messages, an empty
            prompt, chat records with a tokenizer without a chat template, an id out of range.
    """
    kind, arg, split = parse_token_spec(spec, split)
    try:
        corpus = _read(spec, kind, arg, split)
    except SpecError as err:
        raise SpecError(f"--generate reads prompts from token data such as jsonl:FILE:FIELD: {err}") from None
    if corpus.split_by == "tokens" and split != "all":
        raise SpecError(f"prompts {spec!r}: a split of {kind} data cuts documents, not prompts; give records "
                        "(jsonl, parquet, hf) or no split")
    documents = []
    for index, record in enumerate(corpus.records):
        ids = _prompt_ids(record, tokenizer, spec)
        documents += _take_split([Document(record.key, ids, np.zeros(len(ids), dtype=bool), plain=True)],
                                 index, corpus.split_by, split)
    if not documents:
        raise DatasetError(f"prompts {spec!r} ({split}) holds no prompt")
    description = {"spec": spec, "kind": kind, "split": split, "split_rule": _split_rule(corpus.split_by),
                   "prompts": len(documents), "prompt_tokens": int(sum(len(d.ids) for d in documents)),
                   "tokenizer": tokenizer.identity, **corpus.about}
    return Prompts(spec, [d.key for d in documents], [d.ids for d in documents], description)


def _prompt_ids(record, tokenizer, spec: str) -> np.ndarray:
    """A record's prompt as token ids: text as it is, chat messages through the chat template."""
    where = f"prompts {spec!r}: record {record.key}"
    value = record.value
    if isinstance(value, str):
        text = value
    elif _is_chat(value):
        text = _render(value, tokenizer, where)
    else:
        raise DatasetError(f"{where} holds a {type(value).__name__}, not a text prompt or chat messages "
                           "({'role', 'content'})")
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64).reshape(-1)
    if not ids.size:
        raise DatasetError(f"{where} is an empty prompt: the teacher needs at least one token to continue")
    _check_ids(ids, tokenizer, where)
    return ids


def _render(messages, tokenizer, where: str) -> str:
    for index, message in enumerate(messages):
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise DatasetError(f"{where}: message {index} is not {{'role': str, 'content': str}}: "
                               f"{str(message)[:80]}")
    if not tokenizer.chat_template:
        raise DatasetError(f"{where} is a chat, but tokenizer {tokenizer.spec!r} has no chat template to render "
                           "it with; give text prompts, or a tokenizer that has one")
    return tokenizer.render_chat(list(messages), add_generation_prompt=True)
