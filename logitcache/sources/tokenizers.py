"""Tokenizers by spec string: ``bytes``, a local Hugging Face tokenizer directory, or a factory.

    >>> tokenizer = get_tokenizer("bytes")                  # UTF-8 bytes: vocabulary 256, eos 0
    >>> tokenizer = get_tokenizer("hf:models/qwen")         # or just "models/qwen": a local directory
    >>> tokenizer = get_tokenizer("mypkg.tok:build")        # build() returns a tokenizer
    >>> ids = tokenizer.encode("To be, or not to be")       # no special tokens added
    >>> arrays = tokenizer.encode_batch(["To be,", "or not"])  # the same ids, as arrays, many texts at once
    >>> tokenizer.decode(ids), tokenizer.vocab_size, tokenizer.identity

Specs (the registered tokenizers, ``register_tokenizer``, then a directory, then a factory):

- ``bytes``: every UTF-8 byte is a token (ids 0-255); id 0 (NUL, which text never holds) is
  the end of text. Needs no files.
- ``hf:DIR`` or a path to a directory: a tokenizer saved with ``save_pretrained`` (nothing is
  downloaded). Loaded with ``transformers.AutoTokenizer`` (``local_files_only``), or, when
  transformers is not installed, from ``DIR/tokenizer.json`` with the ``tokenizers`` package.
- ``package.module:factory``: ``factory()`` returns a Hugging Face tokenizer (transformers' or
  a ``tokenizers.Tokenizer``), or any object with ``encode(str) -> list[int]`` and
  ``vocab_size``; it may also have ``decode(ids)``, ``eos_id`` (or ``eos_token_id``) and
  ``get_vocab()`` (token -> id).

``vocab_size`` is the number of ids a model's head must cover (for Hugging Face tokenizers
``len(tokenizer)``, so added tokens count). ``identity`` is a sha256 over the whole vocabulary
(token -> id, sorted) and the named special tokens, so one vocabulary saved in two directories
has one identity; a factory tokenizer without ``get_vocab`` is identified by its vocabulary
size, end-of-text id and the ids it gives a fixed probe text. ``pad_id`` is the tokenizer's pad
token, else its end-of-text token, else 0 (padding is never a target; see ``token_datasets.py``).

``encode_batch`` gives exactly ``encode``'s ids, faster: the byte tokenizer is one numpy view per
text, a Hugging Face tokenizer one call into the ``tokenizers`` package's ``encode_batch_fast``
(its Rust threads), and any other tokenizer ``encode`` per text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DatasetError, SpecError
from ._loading import call_user, quiet_torch
from ._registry import TOKENIZERS, import_object, register_tokenizer

__all__ = ["Tokenizer", "get_tokenizer", "list_tokenizers", "register_tokenizer"]

# A factory tokenizer without get_vocab is identified by what it does to this text.
PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 0123456789 \u00e9\u00df\u4e2d\U0001f600\n\t"
# Files one of which a directory must hold for transformers to load a tokenizer from it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")
NAMED_SPECIALS = ("bos", "eos", "pad", "unk")
LM_EXTRA = "pip install 'logitcache[lm]'"


class Tokenizer:
    """Text <-> token ids, with what a store records about the vocabulary.

    Attributes:
        spec: the spec it was built from.
        kind: ``bytes``, ``hf`` or ``factory``.
        vocab_size: ids are 0 .. vocab_size - 1.
        eos_id: the end-of-text id, or None.
        pad_id: the id that pads rows (never a target).
        chat_template: a Jinja chat template (Hugging Face tokenizers that have one), or None.
    """

    def __init__(self, spec: str, kind: str, *, vocab_size: int, eos_id: int | None, encode: Callable,
                 decode: Callable, vocabulary: Callable[[], dict], specials: dict, pad_id: int | None = None,
                 chat_template: str | None = None, render_chat: Callable | None = None,
                 encode_batch: Callable | None = None):
        self.spec, self.kind, self.vocab_size, self.eos_id = spec, kind, int(vocab_size), eos_id
        self.pad_id = int(pad_id if pad_id is not None else eos_id if eos_id is not None else 0)
        self.chat_template = chat_template
        self._encode, self._decode, self._vocabulary, self._specials = encode, decode, vocabulary, specials
        self._render_chat = render_chat
        self._encode_batch = encode_batch
        self._identity: str | None = None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        return call_user(self._encode, f"tokenizer {self.spec!r} failed to encode", DatasetError, text)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """``encode`` of every text (the same ids), as 1-D integer arrays, many texts in one call."""
        if self._encode_batch is None:
            return [np.asarray(self.encode(text), dtype=np.int64).reshape(-1) for text in texts]
        return call_user(self._encode_batch, f"tokenizer {self.spec!r} failed to encode", DatasetError, texts)

    def decode(self, ids) -> str:
        return self._decode([int(i) for i in ids])

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """``messages`` through the tokenizer's chat template, as text (needs a chat template)."""
        if self._render_chat is None:
            raise SpecError(f"tokenizer {self.spec!r} has no chat template")
        return call_user(self._render_chat, f"tokenizer {self.spec!r}: its chat template failed", DatasetError,
                         messages, add_generation_prompt)

    @property
    def identity(self) -> str:
        """``sha256:<hex>`` over the vocabulary (token -> id, sorted) and the named special tokens."""
        if self._identity is None:
            payload = {"vocab": sorted(self._vocabulary().items(), key=lambda item: (item[1], item[0])),
                       "special": self._specials, "vocab_size": self.vocab_size}
            text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
            self._identity = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self._identity

    def describe(self) -> dict:
        """What a store records about the tokenizer (JSON-able)."""
        return {"spec": self.spec, "kind": self.kind, "vocab_size": self.vocab_size, "identity": self.identity,
                "eos_id": self.eos_id, "pad_id": self.pad_id}

    def __repr__(self):
        return f"Tokenizer({self.spec!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def list_tokenizers(pattern: str = "*") -> list[str]:
    return TOKENIZERS.names(pattern)


def get_tokenizer(spec: str) -> Tokenizer:
    """Build the tokenizer a spec names (see the module docstring).

    Raises:
        SpecError: an unknown spec, a directory that is missing or holds no tokenizer files, a
            factory that cannot be imported or returns no tokenizer, transformers missing.
    """
    name, colon, arg = spec.partition(":")
    if name in TOKENIZERS and bool(colon) == _takes_arg(name):
        return TOKENIZERS.get(name)(spec, arg)
    if Path(spec).is_dir():  # a bare directory is read as hf:DIR
        return hf_tokenizer(spec, spec)
    if colon and name and all(part.isidentifier() for part in name.split(".")):
        return _factory_tokenizer(spec)
    known = ", not ".join(_quoted(n) for n in TOKENIZERS.names())
    raise SpecError(f"unknown tokenizer {spec!r}: not {known} or a directory that exists, "
                    "not package.module:factory")


def _takes_arg(name: str) -> bool:
    return ":" in TOKENIZERS.about(name).grammar


def _quoted(name: str) -> str:
    """``'bytes'``, ``hf:DIR``: a name that takes no argument is written as it is."""
    grammar = TOKENIZERS.about(name).grammar
    return grammar if _takes_arg(name) else repr(grammar)


@register_tokenizer("bytes", grammar="bytes", description="UTF-8 bytes, 256 ids")
def bytes_tokenizer(spec: str, arg: str) -> Tokenizer:
    return Tokenizer("bytes", "bytes", vocab_size=256, eos_id=0, encode=lambda text: list(text.encode("utf-8")),
                     decode=lambda ids: bytes(ids).decode("utf-8", errors="replace"),
                     vocabulary=lambda: {f"<0x{i:02X}>": i for i in range(256)}, specials={"eos": "<0x00>"},
                     encode_batch=lambda texts: [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts])


@register_tokenizer("hf", grammar="hf:DIR", description="a local Hugging Face tokenizer (a bare DIR works too)")
def hf_tokenizer(spec: str, directory: str) -> Tokenizer:
    path = Path(directory)
    if not directory or not path.is_dir():
        raise SpecError(f"tokenizer {spec!r}: directory {directory!r} does not exist")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise SpecError(f"tokenizer {spec!r}: {directory} holds no tokenizer files (looked for "
                        f"{', '.join(TOKENIZER_FILES)}); save one there with tokenizer.save_pretrained")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return _tokenizers_file(spec, path)
    with quiet_torch():
        hf = call_user(AutoTokenizer.from_pretrained, f"tokenizer {spec!r}: transformers cannot load {directory}",
                       SpecError, str(path), local_files_only=True)
    return _from_transformers(spec, "hf", hf)


def _from_transformers(spec: str, kind: str, hf) -> Tokenizer:
    """A transformers tokenizer (PreTrainedTokenizerBase), wrapped."""
    specials = {name: getattr(hf, f"{name}_token", None) for name in NAMED_SPECIALS}
    specials = {name: str(token) for name, token in specials.items() if token is not None}
    template = getattr(hf, "chat_template", None)
    template = template if isinstance(template, str) else None  # a dict of named templates: not supported

    def render(messages, add_generation_prompt):
        return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    return Tokenizer(spec, kind, vocab_size=len(hf), eos_id=hf.eos_token_id, pad_id=hf.pad_token_id,
                     encode=lambda text: hf.encode(text, add_special_tokens=False, verbose=False),
                     decode=lambda ids: hf.decode(ids), vocabulary=hf.get_vocab, specials=specials,
                     chat_template=template, render_chat=render if template else None,
                     encode_batch=_batch_of(getattr(hf, "backend_tokenizer", None)))


def _batch_of(raw) -> Callable | None:
    """``encode_batch`` through a ``tokenizers.Tokenizer``. transformers switches truncation and
    padding off around its own encode; a backend that has either set is left to transformers."""
    if raw is None or getattr(raw, "truncation", None) is not None or getattr(raw, "padding", None) is not None:
        return None

    def encode_batch(texts):
        return [np.asarray(e.ids, dtype=np.int64) for e in raw.encode_batch_fast(texts, add_special_tokens=False)]
    return encode_batch


def _tokenizers_file(spec: str, path: Path) -> Tokenizer:
    """``DIR/tokenizer.json`` with the ``tokenizers`` package alone (transformers not installed)."""
    file = path / "tokenizer.json"
    try:
        from tokenizers import Tokenizer as RawTokenizer
    except ImportError:
        raise SpecError(f"tokenizer {spec!r} needs transformers or tokenizers: {LM_EXTRA}") from None
    if not file.is_file():
        raise SpecError(f"tokenizer {spec!r}: without transformers only tokenizer.json can be read, and "
                        f"{path} has none: {LM_EXTRA}")
    raw = call_user(RawTokenizer.from_file, f"tokenizer {spec!r}: cannot read {file}", SpecError, str(file))
    config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the later file wins, as in transformers
        if (path / name).is_file():
            config.update(call_user(_read_json, f"tokenizer {spec!r}: cannot read {path / name}", SpecError,
                                    path / name))
    specials = {name: _token_text(config.get(f"{name}_token")) for name in NAMED_SPECIALS}
    specials = {name: token for name, token in specials.items() if token is not None}
    chat = (path / "chat_template.jinja").is_file() or config.get("chat_template")
    eos_id = raw.token_to_id(specials["eos"]) if "eos" in specials else None
    pad_id = raw.token_to_id(specials["pad"]) if "pad" in specials else None

    def no_chat(messages, add_generation_prompt):
        raise SpecError(f"tokenizer {spec!r}: rendering its chat template needs transformers: {LM_EXTRA}")

    return Tokenizer(spec, "hf", vocab_size=raw.get_vocab_size(with_added_tokens=True), eos_id=eos_id,
                     pad_id=pad_id, encode=lambda text: raw.encode(text, add_special_tokens=False).ids,
                     decode=lambda ids: raw.decode(ids, skip_special_tokens=False),
                     vocabulary=lambda: raw.get_vocab(with_added_tokens=True), specials=specials,
                     chat_template="(needs transformers)" if chat else None, render_chat=no_chat if chat else None,
                     encode_batch=_batch_of(raw))


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return str(value) if value is not None else None


def _factory_tokenizer(spec: str) -> Tokenizer:
    factory = import_object(spec, "tokenizer")
    made = call_user(factory, f"tokenizer {spec!r}: the factory failed", SpecError)
    if hasattr(made, "get_vocab") and hasattr(made, "apply_chat_template"):  # transformers'
        return _from_transformers(spec, "factory", made)
    if type(made).__module__.startswith("tokenizers") and hasattr(made, "get_vocab_size"):  # tokenizers'
        return Tokenizer(spec, "factory", vocab_size=made.get_vocab_size(with_added_tokens=True), eos_id=None,
                         encode=lambda text: made.encode(text, add_special_tokens=False).ids,
                         decode=lambda ids: made.decode(ids, skip_special_tokens=False),
                         vocabulary=lambda: made.get_vocab(with_added_tokens=True), specials={},
                         encode_batch=_batch_of(made))
    return _duck_tokenizer(spec, made)


def _duck_tokenizer(spec: str, made) -> Tokenizer:
    """Any object with ``encode(str) -> list[int]`` and an integer ``vocab_size``."""
    size = getattr(made, "vocab_size", None)
    if not callable(getattr(made, "encode", None)) or not isinstance(size, int) or size < 1:
        raise SpecError(f"tokenizer {spec!r}: the factory returned a {type(made).__name__}, which has no "
                        "encode(str) method and positive integer vocab_size")
    eos_id = getattr(made, "eos_id", getattr(made, "eos_token_id", None))
    pad_id = getattr(made, "pad_id", None)
    for name, value in (("eos", eos_id), ("pad", pad_id)):
        if value is not None and not (isinstance(value, int) and 0 <= value < size):
            raise SpecError(f"tokenizer {spec!r}: its {name} id {value!r} is not an id below its vocab_size {size}")
    if callable(getattr(made, "get_vocab", None)):
        vocabulary = made.get_vocab
    else:
        def vocabulary():  # identified by its behaviour: what it makes of a fixed text
            return {"<probe>": call_user(made.encode, f"tokenizer {spec!r}: encode failed", DatasetError,
                                         PROBE_TEXT)}
    decode = made.decode if callable(getattr(made, "decode", None)) else _no_decode(spec)
    return Tokenizer(spec, "factory", vocab_size=size, eos_id=eos_id, encode=made.encode, decode=decode,
                     vocabulary=vocabulary, specials={"eos": eos_id} if eos_id is not None else {}, pad_id=pad_id)


def _no_decode(spec: str):
    def decode(ids):
        raise SpecError(f"tokenizer {spec!r} has no decode method")
    return decode

