"""Every codec by name: plain names (``fp16``) and families parsed from a name (``topk:K[:fp32]``).

    >>> register_codec(MyCodec())                          # a plain name; twice raises
    >>> register_family("topk", "topk:K", parse_topk, examples=("topk:5",))   # names "topk:..." go to parse_topk
    >>> get_codec("topk:50"), list_codecs()                # ["bf16", "fp16", "fp32", "u8"]
    >>> codec_examples()                                   # every plain name and each family's examples
    >>> get_stored_codec("topk:8", 131072, index_bits=17)  # the codec a teacher's record describes
    >>> get_stored_codec("sample:12", 256)                 # no logprob_sum: per-class float16, as before v7
    >>> get_new_codec("sample:12", 256)                    # a dump's, checked against its classes

Each codec file registers itself when the package imports it; a plugin registers the same way, from
its own module. An unknown name raises a SpecError listing every plain name and family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..errors import SpecError

if TYPE_CHECKING:
    from .codec_interface import Codec


class Family(NamedTuple):
    """Codecs named ``FAMILY:...``: how the unknown-codec message shows them, their parser, examples."""

    usage: str
    parse: Callable[[str], Codec]
    examples: tuple[str, ...]


CODECS: dict[str, Codec] = {}  # plain name -> codec
FAMILIES: dict[str, Family] = {}  # family -> its usage, parser and examples


def register_codec(codec: Codec) -> Codec:
    """Make ``codec`` available by its name (``get_codec``, ``--codec``); returns it.

    Raises:
        ValueError: a codec or family has that name already.
    """
    if codec.name in CODECS or codec.name in FAMILIES:
        raise ValueError(f"codec {codec.name!r} is already registered")
    CODECS[codec.name] = codec
    return codec


def unregister_codec(name: str) -> None:
    """Forget the plain-named codec ``name`` (a plugin unloaded, or a test's codec after the test)."""
    del CODECS[name]


def register_family(family: str, usage: str, parse: Callable[[str], Codec], examples: tuple[str, ...] = ()) -> None:
    """Names ``FAMILY:...`` are codecs made by ``parse(name)`` (which raises SpecError on a bad one);
    ``usage`` (e.g. ``topk:K``) is how the unknown-codec message shows the family; ``examples`` are
    names of its members (``codec_examples``: what the registry's tests run every codec on).

    Raises:
        ValueError: a codec or family has that name already.
    """
    if family in FAMILIES or family in CODECS:
        raise ValueError(f"codec family {family!r} is already registered")
    FAMILIES[family] = Family(usage, parse, tuple(examples))


def list_codecs() -> list[str]:
    """Plain codec names accepted by ``get_codec`` and ``--codec`` (families: ``list_families``)."""
    return sorted(CODECS)


def list_families() -> list[str]:
    """The families' usages, in the order they were registered (``topk:K``, ``sample:K[:T]``)."""
    return [family.usage for family in FAMILIES.values()]


def codec_examples() -> list[str]:
    """Every plain codec name, then each family's examples: one of each kind of registered codec."""
    return list_codecs() + [name for family in FAMILIES.values() for name in family.examples]


def get_codec(name: str) -> Codec:
    """The codec called ``name``: a plain name (fp32, fp16, bf16, u8) or a family's (topk:K, sample:K[:T]).

    Raises:
        SpecError: no codec has that name (the message lists the ones that do), or a family's
            name is malformed.
    """
    if name in CODECS:
        return CODECS[name]
    family = FAMILIES.get(name.split(":")[0])
    if family is None:
        raise SpecError(f"unknown codec {name!r}; choose one of {', '.join(list_codecs() + list_families())}")
    return family.parse(name)


def get_stored_codec(name: str, num_classes: int, index_bits: int | None = None, index_gaps: bool = False,
                     logprob_sum: bool = False) -> Codec:
    """The codec a teacher's record describes: ``name`` for ``num_classes`` classes, its class ids
    bit-packed at ``index_bits`` (format v5 records them) or whole uint16/uint32 (None), kept as
    gaps or not (``index_gaps``, recorded from v6), its log-probabilities one sum per row or not
    (``logprob_sum``, recorded from v7: without it a ``sample:K`` keeps float16 ones per class).

    Raises:
        SpecError: an unknown or malformed name, or ``index_bits``/``index_gaps``/``logprob_sum`` the
            codec cannot have.
    """
    codec = get_codec(name).for_classes(num_classes).with_index_bits(index_bits).with_index_gaps(index_gaps)
    return codec.with_logprob_sum(logprob_sum)


def stored_codec(record: dict) -> Codec:
    """``get_stored_codec`` of a teacher's record (its attribute, as stored).

    Raises:
        SpecError: as ``get_stored_codec``.
    """
    return get_stored_codec(str(record.get("codec")), record["num_classes"], record.get("index_bits"),
                            record.get("index_gaps", False), record.get("logprob_sum", False))


def get_new_codec(name: str, num_classes: int) -> Codec:
    """The codec a dump writes a new teacher of ``num_classes`` classes with: ``get_codec(name)`` for
    them, refused if a row would keep more entries than there are classes (``sample:100000`` of 256
    would store 100,000-wide rows, where a dense codec keeps every class in less). Only new teachers:
    one written before this check still opens (``get_stored_codec``).

    Raises:
        SpecError: as ``get_codec``; or a row wider than the classes (naming them).
    """
    codec = get_codec(name).for_classes(num_classes)
    widest = max((spec.width or 0 for spec in codec.arrays.values()), default=0)
    if widest > num_classes:
        raise SpecError(f"codec {codec.name} keeps {widest} entries per row, more than the teacher's {num_classes} "
                        f"classes: give at most {num_classes}, or a dense codec (fp16 keeps every class)")
    return codec


def parse_entries(name: str, family: str) -> tuple[int, str, list[str]]:
    """A sparse family's ``FAMILY:K[:...]`` -> (K, the values' dtype from a ``fp16``/``fp32`` part,
    the other parts in order), for the families that keep K entries per row.

    Raises:
        SpecError: K is not a positive integer.
    """
    _, *parts = name.split(":")
    try:
        k = int(parts[0]) if parts else 0
    except ValueError:
        k = 0
    if k < 1:
        raise SpecError(f"codec {name!r} needs a positive number of entries, e.g. {family}:50")
    values, extra = "float16", []
    for part in parts[1:]:
        if part in ("fp16", "fp32"):
            values = "float16" if part == "fp16" else "float32"
        else:
            extra.append(part)
    return k, values, extra
