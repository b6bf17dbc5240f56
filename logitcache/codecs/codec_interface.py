"""What every logit codec is: the arrays it stores (``ArraySpec``) and the interface (``Codec``).

    >>> class MyCodec(SparseCodec):     # name, description, arrays, encode, sparse_targets
    ...     target_type = TopKTargets   # what it trains as; see codecs/topk.py for a whole one
    >>> register_codec(MyCodec())       # codecs/catalog.py; now ``--codec`` takes its name

A codec owns everything that depends on how it stores a row: its numpy encode and decode, its
reduction of a token dump's logits on the device (``reduce_logits``), its batch decode to torch
(``decode_batch``, ``training_targets``) and its typed training targets (``target_types.py``). The
rest of logitcache asks it what it is through the capabilities below (``has_dense_form``,
``has_sparse_form``, ``sampled_at``, ``keeps_logsumexp``, ``description``, ``mass_note``), never by
its name. A teacher's record names its codec and C (``for_classes``), and, for sparse codecs whose
class ids are bit-packed (``packed_ids.py``, format v5), their bits (``with_index_bits``), and for
samples whose ids are kept as gaps (format v6), that they are (``with_index_gaps``), and whether
their log-probabilities are one sum per row (format v7, ``with_logprob_sum``). numpy only
at import; torch is imported inside the methods that make tensors.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import SpecError
from .packed_ids import HIGH_FILL, MAX_INDEX_BITS, PACKED_VERSION, high_width, join_ids, least_index_bits, split_ids
from .target_types import DenseTargets, Targets

if TYPE_CHECKING:
    import torch

FLOAT16_MAX = float(np.finfo(np.float16).max)
BFLOAT16_NAN_BITS = 0x7FC0


@dataclass(frozen=True)
class ArraySpec:
    """One stored array: its dtype, its per-row shape, and its fill value."""

    dtype: str
    per_class: bool  # True: (N, width or C); False: (N,)
    fill_value: float | int
    width: int | None = None  # a row of `width` entries instead of C (sparse codecs)


class Codec(ABC):
    """Base class. Subclasses set ``name``, ``description``, ``arrays``, and implement encode/decode."""

    name: str
    description: str  # one line for people (``logitcache info``)
    arrays: dict[str, ArraySpec]

    #: The typed targets ``training_targets`` gives: ``DenseTargets`` (decoded logits) or a sparse kind.
    target_type: ClassVar[type[Targets]] = DenseTargets
    #: False for codecs whose rows are no distribution (sample:K): ``decode`` refuses, only sparse losses read them.
    has_dense_form: ClassVar[bool] = True
    #: The temperature the stored classes were drawn at (sample:K[:T]), which the KL must use; else None.
    sampled_at: float | None = None
    #: True if a token teacher also stores each position's log-sum-exp of the raw logits (``reduce_logits``'s).
    keeps_logsumexp: ClassVar[bool] = False
    #: For ``info``: where the probability mass not stored exactly went (codecs that store less than all of it).
    mass_note: ClassVar[str] = ""
    #: The bits each class id is kept in (``packed_ids.py``; sparse codecs above 65,536 classes), else None.
    index_bits: int | None = None
    #: True where a row's ascending class ids are kept as gaps (``packed_ids.to_gaps``; sample:K, format v6).
    index_gaps: bool = False
    #: True where a row keeps one log-probability sum instead of per-class values (sample:K, format v7).
    logprob_sum: bool = False

    @property
    def format_version(self) -> int:
        """The store format version that first describes this codec's arrays: a teacher stored with
        it raises its store to that version, so an older reader refuses the store (1: every version)."""
        return 1

    def with_index_bits(self, bits: int | None) -> Codec:
        """This codec with its class ids as a teacher's record says: in ``bits`` bits (format v5), or
        whole uint16/uint32 (None: every teacher before v5, and every one up to 65,536 classes).

        Raises:
            SpecError: ``bits`` for a codec that packs no ids, or too few or too many for its classes.
        """
        if bits is not None:
            raise SpecError(f"codec {self.name} keeps no class ids to pack (index_bits {bits!r})")
        return self

    def with_index_gaps(self, gaps: bool) -> Codec:
        """This codec with its class ids as a teacher's record says: as gaps (format v6), or as ids
        (False: every teacher before v6, and every codec but sample:K).

        Raises:
            SpecError: ``gaps`` is not a bool, or True for a codec that keeps no ascending ids.
        """
        if gaps is not False:
            raise SpecError(f"codec {self.name} keeps no ascending class ids to store as gaps (index_gaps {gaps!r})")
        return self

    def with_logprob_sum(self, row_sum: bool) -> Codec:
        """This codec with its log-probabilities as a teacher's record says: one sum per row (format
        v7), or per class (False: every teacher before v7, and every codec but sample:K).

        Raises:
            SpecError: ``row_sum`` is not a bool, or True for a codec that keeps no such sum.
        """
        if row_sum is not False:
            raise SpecError(f"codec {self.name} keeps no log-probability sum per row (logprob_sum {row_sum!r})")
        return self

    @property
    def form_name(self) -> str:
        """The name that spells what this codec writes now: its ``name``, except for a form a
        teacher's record selects under an older name (a ``sample:K`` before v7 writes ``sample:K:fp16``)."""
        return self.name

    @property
    def has_sparse_form(self) -> bool:
        """True when its training targets are sparse (not dense logits): a KL loss reads them as they are."""
        return self.target_type is not DenseTargets

    @abstractmethod
    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """float32 (n, C) finite logits -> one numpy array per name in ``arrays``."""

    def encode_shard(self, logits: np.ndarray, shard: int) -> dict[str, np.ndarray]:
        """Encode one shard (codecs that draw random numbers seed them by shard)."""
        return self.encode(logits)

    def uniforms(self, shard: int, rows: int) -> np.ndarray | None:
        """(rows, K) uniform draws in [0, 1) for one shard, for codecs that draw (``reduce_logits`` takes
        them, so a token dump's draws do not depend on the device's generator); None for the others."""
        return None

    @abstractmethod
    def decode(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """The arrays ``encode`` made -> float32 (n, C) logits (u8: up to a per-row constant)."""

    def for_classes(self, num_classes: int) -> Codec:
        """This codec configured for C classes (sparse codecs pick their index dtype by C)."""
        return self

    def bytes_per_sample(self, num_classes: int) -> int:
        """Uncompressed bytes one sample takes in this codec."""
        return sum(
            np.dtype(spec.dtype).itemsize * ((spec.width or num_classes) if spec.per_class else 1)
            for spec in self.arrays.values()
        )

    def stored_mass(self, stored: dict[str, np.ndarray]) -> np.ndarray | None:
        """(n,) fraction of each row's probability mass held exactly (1 for dense codecs); None where
        the stored form keeps no class's probability to weigh (``sample:K``'s counts or row sums)."""
        return np.ones(len(next(iter(stored.values()))), dtype=np.float64)

    def rows_ok(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """(n,) True where a row was written (unwritten rows decode to NaN)."""
        return np.isfinite(self.decode(stored)).all(axis=1)

    def top_classes(self, stored: dict[str, np.ndarray], k: int) -> np.ndarray:
        """(n, k) class indices, most probable first (ties: lower index first)."""
        logits = self.decode(stored)
        k = min(k, logits.shape[1])
        top = np.sort(np.argpartition(-logits, k - 1, axis=1)[:, :k], axis=1)  # O(C), not a full sort
        order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    def label_hits(self, stored: dict[str, np.ndarray], labels: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Bools shaped like ``labels``: the label is the most probable class, and among the ``k`` most
        probable, exactly as ``top_classes`` ranks them. ``labels`` is (n,), or (m, n) for m label sets
        answered from one decoding (the dump asks for the dataset's labels and the teacher's own top-1).
        By the argmax and by counting the classes above and tied with each label (``_dense_hits``);
        rows where ties with the label could go either way ask ``top_classes``."""
        labels = np.asarray(labels, dtype=np.int64)
        logits = self.decode(stored)
        first = logits.argmax(axis=1)  # a class with the largest value
        hits = [self._dense_hits(stored, logits, first, one, k) for one in labels.reshape(-1, labels.shape[-1])]
        return tuple(np.stack(found).reshape(labels.shape) for found in zip(*hits))

    def _dense_hits(self, stored: dict, logits: np.ndarray, first: np.ndarray, labels: np.ndarray, k: int) -> tuple:
        """A label that is the argmax and ties with no other class is the top-1, so among the top k
        (one count over those rows); for the others, the classes above the label, and tied with it
        only where that leaves it among the top k. A tie that ``top_classes``'s partition breaks
        (at the top, or at the k-th place) is answered by it."""
        k = min(k, logits.shape[1])
        top1 = first == labels
        topk = top1.copy()
        hit, rest = np.flatnonzero(top1), np.flatnonzero(~top1)
        tied_at_top = _count(logits[hit] == logits[hit, labels[hit]][:, None]) > 1
        unsure = [hit[tied_at_top]]
        if rest.size:
            rows = logits[rest]
            value = rows[np.arange(len(rest)), labels[rest]][:, None]
            above = _count(rows > value)
            close = np.flatnonzero(above < k)
            tied = _count(rows[close] == value[close]) - 1  # other classes equal to the label's value
            topk[rest[close]] = above[close] + tied < k
            unsure.append(rest[close[((above[close] == 0) & (tied > 0)) | (above[close] + tied >= k)]])
        unsure = np.concatenate(unsure)
        if unsure.size:
            top = self.top_classes({name: values[unsure] for name, values in stored.items()}, k)
            top1[unsure], topk[unsure] = top[:, 0] == labels[unsure], (top == labels[unsure, None]).any(axis=1)
        return top1, topk

    def sparse_targets(self, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The rows as sparse training targets, numpy arrays named as ``target_type``'s fields (else None)."""
        return None

    def decode_batch(self, stored: dict[str, np.ndarray]) -> torch.Tensor:
        """``decode``'s float32 (n, C) values as a tensor; dense codecs cast through torch (numpy's
        float16 casts are ~20x slower), exactly as ``decode`` rounds."""
        import torch

        return torch.from_numpy(self.decode(stored))

    def training_targets(self, stored: dict[str, np.ndarray]) -> Targets:
        """The rows as typed training targets (``target_type``): dense codecs' decoded logits."""
        return DenseTargets(self.decode_batch(stored))

    def reduce_logits(self, logits: torch.Tensor, uniforms: np.ndarray | None) -> tuple[dict, torch.Tensor,
                                                                                         torch.Tensor | None]:
        """A token dump's finite (P, V) float32 logits, on their device -> (the stored arrays on the
        host, the probability mass they hold per row, the rows' log-sum-exp where it was computed, else
        None). Dense codecs copy the logits to the host and encode them there, as image dumps do;
        ``logits`` may be masked in place meanwhile but is given back as it was."""
        import torch

        return self.encode(to_host(logits)[0]), torch.ones(len(logits)), None


class SparseCodec(Codec):
    """A codec that keeps K entries per row: class indices and their values, and trains from sparse
    targets (``sparse_targets`` names ``target_type``'s fields).

    A codec that ``packs_indices`` (it has ``k`` and ``num_classes``, and its arrays start with
    ``index_arrays()``) keeps ids as uint16 up to 65,536 classes, and in ceil(log2 C) bits above
    (``index_bits``: their low 16 bits in ``indices``, the others bit-packed in ``indices_high``), or
    as uint32 where a teacher's record says so (stores before format v5): it writes them with
    ``store_indices`` and reads them with ``read_indices``."""

    packs_indices: ClassVar[bool] = False
    k: int
    num_classes: int | None

    @property
    def format_version(self) -> int:
        return PACKED_VERSION if self.index_bits is not None else 1

    def with_index_bits(self, bits):
        # docstring inherited
        if not self.packs_indices:
            return super().with_index_bits(bits)
        least = max(17, least_index_bits(self.num_classes))
        if bits is not None and (type(bits) is not int or not least <= bits <= MAX_INDEX_BITS):
            raise SpecError(f"codec {self.name}: index_bits {bits!r} is not a width for the ids of "
                            f"{self.num_classes} classes (from {least} to {MAX_INDEX_BITS} bits)")
        if bits == self.index_bits:
            return self
        twin = copy.copy(self)
        twin.index_bits = bits
        rest = {name: spec for name, spec in self.arrays.items() if name not in ("indices", "indices_high")}
        twin.arrays = {**twin.index_arrays(), **rest}
        return twin

    def index_arrays(self) -> dict[str, ArraySpec]:
        """The arrays of the ids: ``indices`` (N, K) uint16/uint32 filled with the dtype's maximum;
        with ``index_bits``, uint16 low bits and ``indices_high`` (N, ceil(K * (bits - 16) / 8)) uint8
        filled with 255 (``packed_ids.py``)."""
        if self.index_bits is None:
            dtype = index_dtype(self.num_classes)
            return {"indices": ArraySpec(dtype, True, int(np.iinfo(dtype).max), width=self.k)}
        return {"indices": ArraySpec("uint16", True, 65535, width=self.k),
                "indices_high": ArraySpec("uint8", True, HIGH_FILL, width=high_width(self.k, self.index_bits))}

    @property
    def padding_id(self) -> int:
        """The id that pads a row's unused entries: every bit of its stored width set."""
        return (1 << self.index_bits) - 1 if self.index_bits is not None else int(np.iinfo(index_dtype(
            self.num_classes)).max)

    def store_indices(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """(n, K) class ids (or ``padding_id``) -> the stored id arrays: cast, or split and packed."""
        if self.index_bits is None:
            return {"indices": ids.astype(index_dtype(self.num_classes))}
        low, high = split_ids(ids, self.index_bits)
        return {"indices": low, "indices_high": high}

    def read_indices(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """The stored id arrays -> (n, K) int64 class ids (an unwritten row's are ``padding_id``)."""
        if self.index_bits is None:
            return stored["indices"].astype(np.int64)
        return join_ids(stored["indices"], stored["indices_high"], self.index_bits)

    def label_hits(self, stored, labels, k=5):
        # docstring inherited; ranked by the stored indices (``top_classes``), nothing is decoded
        labels = np.asarray(labels, dtype=np.int64)
        top = self.top_classes(stored, k)
        hits = [(top[:, 0] == one, (top == one[:, None]).any(axis=1)) for one in labels.reshape(-1, labels.shape[-1])]
        return tuple(np.stack(found).reshape(labels.shape) for found in zip(*hits))

    @abstractmethod
    def sparse_targets(self, stored):
        """docstring inherited"""

    def training_targets(self, stored):
        import torch

        return self.target_type(**{key: torch.from_numpy(values) for key, values in self.sparse_targets(stored).items()})


def index_dtype(num_classes: int | None) -> str:
    """The dtype of a sparse codec's whole class indices: uint16 up to 65,536 classes, else uint32
    (above 65,536, stores before format v5; newer ones pack them: ``packed_index_bits``)."""
    return "uint16" if num_classes is not None and num_classes <= 65536 else "uint32"


def logsumexp(values: np.ndarray) -> np.ndarray:
    """log(sum(exp(row))) of each row of a (n, C) array, shifted by the row's maximum."""
    top = values.max(axis=1)
    return top + np.log(np.exp(values - top[:, None]).sum(axis=1))


def cast(values: np.ndarray, dtype) -> np.ndarray:
    """``values.astype(dtype)`` between float32 and float16, bit for bit as numpy rounds (to nearest,
    ties to even), by torch's vectorised cast: numpy converts half floats one at a time, 5-10x
    slower, and every shard of an fp16 teacher goes through it on the way in and out. NaN payloads
    may differ (only finite rows are ever encoded; a NaN decodes to a NaN)."""
    dtype = np.dtype(dtype)
    if values.dtype == dtype:
        return values
    torch = _torch()
    if torch is None or not values.flags.writeable or {values.dtype, dtype} != {np.dtype(np.float16),
                                                                               np.dtype(np.float32)}:
        return values.astype(dtype)  # torch shares no read-only memory; other dtypes are numpy's
    wanted = torch.float16 if dtype == np.float16 else torch.float32
    return torch.from_numpy(np.ascontiguousarray(values)).to(wanted).numpy()


def _torch():
    """torch if it is installed (logitcache's stages need it; the format does not), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


GRAIN = 32768  # torch's parallel grain (at::internal::GRAIN_SIZE): smaller ops run on the calling thread


def float32_slices(values: torch.Tensor, then=None) -> torch.Tensor:
    """``values.float()`` (and ``then(rows, part)`` on each part) on the calling thread, in slices under
    torch's parallel grain: a memory-bound cast gains nothing from an intra-op parallel region, and
    one stalls for a whole time slice whenever the cores are busy (DataLoader workers, other jobs)."""
    import torch

    out = torch.empty(values.shape, dtype=torch.float32)
    step = max(1, GRAIN // max(1, values[0].numel() if len(values) else 1))
    for start in range(0, len(values), step):
        rows = slice(start, start + step)
        part = out[rows].copy_(values[rows])
        if then is not None:
            then(rows, part)
    return out


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """Tensors (on any device) as numpy arrays on the host."""
    return [tensor.detach().cpu().numpy() for tensor in tensors]


def _count(flags: np.ndarray) -> np.ndarray:
    """Trues per row of a bool (n, C) array, as int64 (numpy's own count per axis is ~1.6x slower)."""
    wide = np.uint16 if flags.shape[1] < 2**16 else np.uint32
    return flags.view(np.uint8).sum(axis=1, dtype=wide).astype(np.int64)
