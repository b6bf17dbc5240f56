"""Distil a language model from a token store in any PyTorch training loop.

    >>> from torch.utils.data import DataLoader
    >>> from logitcache.lm import TokenStoreDataset, collate_tokens, distillation_loss
    >>> data = TokenStoreDataset("data/stores/shakespeare.zarr")         # its only complete teacher
    >>> for batch in DataLoader(data, batch_size=16, shuffle=True, collate_fn=collate_tokens):
    ...     logits = model(batch["input_ids"])                            # (B, L, V), unshifted
    ...     loss = distillation_loss(logits, batch, temperature=1.0, kd_weight=1.0, ce_weight=1.0)
    ...     loss.backward(); optimizer.step(); optimizer.zero_grad()
    >>> loss = chunked_distillation_loss(model, batch, temperature=1.0)   # the same, never the (B, L, V) logits

Each item is one stored sequence, named as Hugging Face models and trainers expect:

- ``input_ids`` (L,) int64: the stored token ids; ``attention_mask`` (L,) int64: 1 on real tokens;
- ``labels`` (L,) int64: the token ids where they are training targets, -100 elsewhere. Hugging
  Face causal LMs shift labels inside the model, so ``labels[t + 1] = input_ids[t + 1]`` exactly
  when the store's ``loss_mask[t]`` is set (and ``labels[0]`` is always -100);
- the teacher's targets for the L positions (row t: its distribution over the token after t), as
  its codec stores them, never densified: ``teacher_logits`` (L, V) for dense codecs;
  ``teacher_indices``, ``teacher_logprobs`` (L, K) and ``teacher_tail`` (L,) for ``topk:K``;
  ``teacher_indices``, ``teacher_weights``, ``teacher_logprobs`` (L, K) and the sampling
  ``teacher_temperature`` () for ``sample:K[:T]`` (``teacher_logprobs``: the row's sum_k w_k log p_k
  in each used slot, which every loss reads as it reads each class's own, ``:fp16``/``:fp32``'s;
  ``:counts``: 0); with either sparse form the store's vocabulary, ``teacher_vocab_size`` (), which
  the loss checks the student's head against (dense rows show it).

Targets are read by whole sequences and decoded per batch (``TokenStoreDataset.batch``): held in
memory, compact as stored, when they fit ``cache_budget``, else read many chunks at a time (a chunk
holds whole sequences) through a window of them (``stored_rows.py``). Every read is checked against
the store's digests. The token ids and loss mask go through the same reader, under the same budget:
a corpus of billions of tokens is never held whole. ``chunked_distillation_loss`` takes the model,
not its logits, and computes the loss a chunk of positions at a time through its head
(``losses/chunked.py``): for logitcache's ``gpt``, any model with ``hidden_states``/``head_logits``,
and Hugging Face causal LMs. ``logitcache.hf.DistillationTrainer`` is the ``Trainer`` for these batches.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .codecs import Targets, targets_from_fields
from .errors import ConfigError, StoreIncompleteError, StoreMismatchError
from .lm_inputs import checked_labels, target_count
from .losses import IGNORE_INDEX, TokenLossSums, token_loss_sums
from .sources.lm_heads import SplitLM, split_lm
from .store import LogitStore, Teacher, open_store
from .store._tokens import SequenceRows, sequence_rows
from .stored_rows import ReadsStoredRows, StoredRows

CACHE_BUDGET = 4 << 30  # bytes of stored targets held in memory before they are read chunk by chunk
TEACHER_PREFIX = "teacher_"
TEACHER_COLUMNS = ("teacher_logits", "teacher_indices", "teacher_logprobs", "teacher_tail", "teacher_weights",
                   "teacher_temperature", "teacher_vocab_size")

__all__ = ["TEACHER_COLUMNS", "TeacherTargets", "TokenStoreDataset", "chunked_distillation_loss",
           "chunked_distillation_sums", "collate_tokens", "distillation_loss", "distillation_sums", "open_teacher",
           "teacher_of"]


class TeacherTargets(ReadsStoredRows):
    """One teacher's stored rows for whole sequences, decoded per batch into ``teacher_*`` tensors.

    In memory (as stored: ids and fp16 values stay small) when ``num_rows * row_bytes`` fits
    ``budget_bytes``, else read by chunk with at most ``window_blocks`` chunks cached
    (``stored_rows.StoredRows``).
    """

    def __init__(self, teacher: Teacher, seq_len: int, budget_bytes: int = CACHE_BUDGET, sequences=None):
        self.name, self.codec, self.seq_len, self.vocab_size = teacher.name, teacher.codec, seq_len, teacher.num_classes
        self.sample_temperature = self.codec.sampled_at
        row_bytes = sum(array.dtype.itemsize * int(np.prod(array.shape[1:])) for array in teacher.arrays.values())
        # a chunk holds whole sequences, so the shards holding each sequence's first row hold all of it
        first_rows = None if sequences is None else np.asarray(sequences, dtype=np.int64) * seq_len
        self.reader = StoredRows([teacher], row_bytes, budget_bytes, rows=first_rows)

    def stored(self, sequences: np.ndarray) -> dict[str, np.ndarray]:
        """The stored arrays of these sequences' positions, (len(sequences) * L, ...) in order."""
        return self.reader.take((sequences[:, None] * self.seq_len + np.arange(self.seq_len)).ravel())

    def batch(self, sequences: np.ndarray) -> dict[str, Tensor]:
        """``teacher_*`` tensors of shape (B, L, ...) for these sequences (module docstring)."""
        targets = self.codec.training_targets(self.stored(sequences))  # the codec's typed targets, by position
        out = targets.unflatten(0, (len(sequences), self.seq_len)).columns(TEACHER_PREFIX)
        if self.sample_temperature is not None:
            out["teacher_temperature"] = torch.full((len(sequences),), self.sample_temperature, dtype=torch.float32)
        if self.codec.has_sparse_form:  # a dense row's width is the vocabulary
            out["teacher_vocab_size"] = torch.full((len(sequences),), self.vocab_size, dtype=torch.int64)
        return out

    def targets_and_top1(self, sequences: np.ndarray) -> tuple[Targets, Tensor]:
        """From one read of the stored rows, what validation needs: the (B, L) typed targets (a
        ``sample`` row's temperature left out: the caller's to use) and the teacher's most probable
        next token, (B, L) (a ``sample`` row: its most drawn one)."""
        stored = self.stored(sequences)
        shape = (len(sequences), self.seq_len)
        top = torch.from_numpy(self.codec.top_classes(stored, 1)[:, 0].astype(np.int64)).reshape(shape)
        return self.codec.training_targets(stored).unflatten(0, shape), top


class TokenStoreDataset(Dataset):
    """The sequences of a token store (format v4), each with its teacher's targets (module docstring).

    The token ids and loss mask are read like the targets (``stored_rows.StoredRows``): held in
    memory when they fit ``cache_budget``, else a window of whole chunks; only the (N,) lengths and
    target counts are held whatever the corpus (checked a block at a time against the fingerprint).

    Args:
        store: a path or URL, or an open ``LogitStore``; it must be a token store.
        teacher: the teacher's name in the store (default: its only complete teacher).
        targets: False for the sequences alone (a label-only run reads no teacher).
        cache_budget: bytes of stored targets, and apart from them of token sequences, held in memory
            before they are read chunk by chunk.
        allow_partial: train on the sequences an unfinished dump has written.
        storage_options: fsspec options for a remote store.

    Raises:
        StoreMismatchError: not a token store, or no such teacher.
        StoreIncompleteError: the teacher is unfinished (without ``allow_partial``), or nothing is written.
    """

    def __init__(self, store, teacher: str | None = None, *, targets: bool = True, cache_budget: int = CACHE_BUDGET,
                 allow_partial: bool = False, storage_options: dict | None = None):
        store = store if isinstance(store, LogitStore) else open_store(store, storage_options=storage_options)
        if not store.is_tokens:
            raise StoreMismatchError(f"{store.location} holds labelled samples, not token sequences; a token store "
                                     "is made by `logitcache dump --tokenizer ...`")
        self.store, self.vocab_size = store, store.vocab_size
        self.teacher = open_teacher(store, teacher, allow_partial) if targets else None
        sequences = _written_sequences(self.teacher, store.seq_len) if self.teacher is not None else None
        counts = store.sequence_counts()
        source = SequenceRows(store)
        row_bytes = store.seq_len * sum(array.dtype.itemsize for array in source.arrays.values())
        self.rows = StoredRows([source], row_bytes, cache_budget, rows=sequences, reopen=sequence_rows,
                               reading="its token sequences")
        self._setup(counts["lengths"], counts["targets_per_sequence"], store.seq_len, sequences)
        self.targets = (TeacherTargets(self.teacher, store.seq_len, cache_budget, sequences)
                        if self.teacher is not None else None)

    @classmethod
    def from_arrays(cls, tokens, loss_mask, lengths, vocab_size: int | None = None) -> TokenStoreDataset:
        """Sequences without a teacher (a ``sources.TokenSource``'s arrays): label-only data."""
        dataset = cls.__new__(cls)
        dataset.store, dataset.teacher, dataset.targets, dataset.vocab_size = None, None, None, vocab_size
        dataset.rows = _HeldSequences(tokens, loss_mask)
        dataset._setup(lengths, dataset.rows.arrays["loss_mask"].sum(1), dataset.rows.arrays["tokens"].shape[1], None)
        return dataset

    def _setup(self, lengths, targets_per_sequence, seq_len: int, sequences) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.seq_len = int(seq_len)
        self.sequences = np.arange(len(self.lengths)) if sequences is None else np.asarray(sequences, dtype=np.int64)
        self.targets_per_sequence = np.asarray(targets_per_sequence, dtype=np.int64)[self.sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getstate__(self):  # DataLoader workers reopen the store themselves
        return {**self.__dict__, "teacher": None}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {name: values[0] for name, values in self.batch([index]).items()}

    @property
    def block_sequences(self) -> int | None:
        """When the sequences or the targets are read by window: the sequences of a block of the
        epoch's block shuffle (whole chunks of both), else None."""
        streamed = self._streamed()
        return math.lcm(*(block for block, _ in streamed)) if streamed else None

    @property
    def window_blocks(self) -> int:
        """Blocks of ``block_sequences`` that every streamed reader's window holds (at least one)."""
        block = self.block_sequences
        return max(1, min((window * size // block for size, window in self._streamed()), default=1))

    def _streamed(self) -> list[tuple[int, int]]:
        """(sequences per chunk, chunks in the window) of each reader that is not in memory."""
        streamed = [] if self.rows.in_memory else [(self.rows.block_rows, self.rows.window_blocks)]
        if self.targets is not None and not self.targets.in_memory:
            streamed.append((self.targets.block_rows // self.seq_len, self.targets.window_blocks))
        return streamed

    def batch(self, indices, teacher: bool = True) -> dict[str, Tensor]:
        """Items ``indices`` stacked, read and decoded at once: what ``collate_tokens`` of their
        items gives, faster (``teacher=False``: without the teacher's targets)."""
        sequences = self.sequences[np.asarray(indices, dtype=np.int64)]
        held = self.rows.take(sequences)  # the ids in the store's compact dtype, widened here
        tokens = held["tokens"].astype(np.int64)
        labels = np.full_like(tokens, IGNORE_INDEX)
        labels[:, 1:] = np.where(held["loss_mask"][:, :-1], tokens[:, 1:], IGNORE_INDEX)
        attention = (np.arange(self.seq_len) < self.lengths[sequences][:, None]).astype(np.int64)
        batch = {"input_ids": torch.from_numpy(tokens), "attention_mask": torch.from_numpy(attention),
                 "labels": torch.from_numpy(labels)}
        if teacher and self.targets is not None:
            batch.update(self.targets.batch(sequences))
        return batch


class _HeldSequences:
    """Sequences already in memory (a text corpus tokenised for this run), taken by row as
    ``StoredRows`` takes stored ones. numpy: its fancy indexing costs microseconds where torch's
    may wait on its thread pool."""

    in_memory = True

    def __init__(self, tokens, loss_mask):
        self.arrays = {"tokens": np.asarray(tokens), "loss_mask": np.asarray(loss_mask, dtype=bool)}

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.take(values, rows, axis=0) for name, values in self.arrays.items()}


def collate_tokens(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack ``TokenStoreDataset`` items into a batch (every stored sequence has the same length).

    Raises:
        ConfigError: no items, or items with other fields (two stores' or teachers' items mixed)."""
    if not items:
        raise ConfigError("collate_tokens got no items: a batch needs at least one sequence")
    names = set(items[0])
    if any(set(item) != names for item in items):
        other = next(set(item) for item in items if set(item) != names)
        raise ConfigError(f"collate_tokens got items with other fields ({', '.join(sorted(names ^ other))}): "
                          "items of two stores or teachers cannot share a batch")
    return {name: torch.stack([item[name] for item in items]) for name in items[0]}


def teacher_of(batch: dict) -> Targets | None:
    """A batch's teacher targets, typed from its ``teacher_*`` columns (``DenseTargets``,
    ``TopKTargets`` or ``SampledTargets``), or None if it has none."""
    teacher = {name[len(TEACHER_PREFIX):]: value for name, value in batch.items() if name.startswith(TEACHER_PREFIX)}
    return targets_from_fields(teacher) if teacher else None


def distillation_loss(student_logits: Tensor, batch: dict, temperature: float = 1.0, kd_weight: float = 1.0,
                      ce_weight: float = 1.0, num_items_in_batch: float | Tensor | None = None) -> Tensor:
    """``ce_weight * CE + kd_weight * KL(teacher_T || student_T) * T²`` per target token.

    Args:
        student_logits: (B, L, V) the student's logits for ``batch["input_ids"]``, unshifted (or a
            Hugging Face model's output, whose ``.logits`` they are).
        batch: a ``TokenStoreDataset`` batch: ``labels`` and the ``teacher_*`` targets.
        temperature: the KL's; a ``sample`` store's targets serve only the temperature they were drawn at.
        kd_weight, ce_weight: the weights of the two terms.
        num_items_in_batch: divide by this many target tokens instead of this batch's own (a step's
            total over accumulated micro-batches or devices, as the Hugging Face Trainer counts it).

    Raises:
        ConfigError: ``kd_weight`` > 0 but the batch has no teacher targets; ``temperature`` is not
            the one a ``sample`` store's tokens were drawn at, or outside 0.001-1000; a weight that
            is negative or not finite; logits or labels of another shape than the batch's.
    """
    checked_labels(batch, temperature, kd_weight, ce_weight)
    sums = distillation_sums(student_logits, batch, temperature, kd_weight)
    return sums.mean(ce_weight, kd_weight, target_count(num_items_in_batch))


def distillation_sums(student_logits: Tensor, batch: dict, temperature: float = 1.0,
                      kd_weight: float = 1.0) -> TokenLossSums:
    """``distillation_loss``'s CE and KL sums over the batch's target tokens and their count, apart
    (a trainer logs the two terms from them); the arguments are ``distillation_loss``'s."""
    student_logits = getattr(student_logits, "logits", student_logits)  # a Hugging Face model's output too
    labels = checked_labels(batch, temperature, kd_weight)
    if not (isinstance(student_logits, Tensor) and student_logits.dim() == 3 and student_logits.is_floating_point()
            and tuple(student_logits.shape[:2]) == tuple(labels.shape)):
        got = (f"a {student_logits.dtype} tensor of shape {tuple(student_logits.shape)}"
               if isinstance(student_logits, Tensor) else type(student_logits).__name__)
        raise ConfigError(f"student_logits must be float logits of shape ({labels.shape[0]}, {labels.shape[1]}, "
                          f"vocabulary) for this batch's {labels.shape[0]} x {labels.shape[1]} tokens, got {got}")
    return token_loss_sums(student_logits, batch["labels"], _batch_teacher(batch, kd_weight), temperature)


def chunked_distillation_loss(model, batch: dict, temperature: float = 1.0, kd_weight: float = 1.0,
                              ce_weight: float = 1.0, num_items_in_batch: float | Tensor | None = None,
                              chunk_size: int | None = None) -> Tensor:
    """``distillation_loss(model(batch["input_ids"]), batch, ...)`` without the (B, L, V) logits: the
    model's hidden states go through its head a chunk of positions at a time (``losses/chunked.py``),
    each chunk's gradient taken at once. Equal to the materialised loss up to float32 rounding.

    Args:
        model: a causal LM that splits at its head (``sources/lm_heads.py``: logitcache's ``gpt``, a
            model with ``hidden_states``/``head_logits``) or a Hugging Face causal LM, not wrapped in
            DistributedDataParallel (whose gradients sync only through its forward).
        batch: a ``TokenStoreDataset`` batch: ``input_ids`` (and ``attention_mask``, given to a
            Hugging Face model), ``labels`` and the ``teacher_*`` targets.
        chunk_size: positions per chunk over the batch (default: 128 MiB of float32 logits).
        The rest: as ``distillation_loss``'s.

    Raises:
        ConfigError: the model does not split at its head, or is wrapped; as ``distillation_loss``.
    """
    sums = chunked_distillation_sums(model, batch, temperature, kd_weight, ce_weight, chunk_size)
    return sums.mean(ce_weight, kd_weight, target_count(num_items_in_batch))


def chunked_distillation_sums(model, batch: dict, temperature: float = 1.0, kd_weight: float = 1.0,
                              ce_weight: float = 1.0, chunk_size: int | None = None) -> TokenLossSums:
    """``chunked_distillation_loss``'s sums and count, apart (as ``distillation_sums``); their
    gradient is taken for these weights (``TokenLossSums.weighted``)."""
    from .losses.chunked import chunked_head, chunked_token_loss_sums

    labels = checked_labels(batch, temperature, kd_weight, ce_weight)
    if not (isinstance(batch.get("input_ids"), Tensor) and tuple(batch["input_ids"].shape) == tuple(labels.shape)):
        raise ConfigError(f"batch['input_ids'] must be a tensor of the labels' shape {tuple(labels.shape)}")
    split, hidden_of = lm_split(model, batch["input_ids"])
    hidden = hidden_of(batch)  # (B, L, H)
    head = chunked_head(model, split.head_logits, hidden)
    return chunked_token_loss_sums(hidden, head, batch["labels"], _batch_teacher(batch, kd_weight), temperature,
                                   ce_weight, kd_weight, chunk_size)


def lm_split(model, input_ids: Tensor) -> tuple[SplitLM, Callable[[dict], Tensor]]:
    """``model``'s split at its head, proven on the first tokens of ``input_ids``, and how a batch
    becomes its hidden states (a Hugging Face model's from its base model, with ``attention_mask``).

    Raises:
        ConfigError: no such split, or a wrapper whose gradients sync through its forward."""
    if getattr(model, "module", None) is not None:
        raise ConfigError(f"a chunked loss needs the model itself, not {type(model).__name__}: its gradients "
                          "sync only through its forward; use distillation_loss(model(input_ids), batch)")
    probe = input_ids[:1, :16]
    hugging_face = not callable(getattr(model, "head_logits", None)) and hasattr(model, "base_model")
    if hugging_face:
        from .sources.hf_models import CausalLM

        split = _proven_split(model, CausalLM(model), probe)
        base = model.base_model

        def hidden_of(batch: dict) -> Tensor:  # what the model's forward gives its head
            return base(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                        use_cache=False).last_hidden_state
    else:
        split = _proven_split(model, model, probe)

        def hidden_of(batch: dict) -> Tensor:
            return split.hidden_states(batch["input_ids"])
    if split is None:
        raise ConfigError(f"{type(model).__name__} does not split at its head (hidden_states and head_logits giving "
                          "its own logits); use distillation_loss(model(input_ids), batch)")
    return split, hidden_of


def _proven_split(model, split_model, probe: Tensor) -> SplitLM | None:
    """``split_lm(split_model, probe)`` with ``model`` in eval mode meanwhile (dropout would make the
    two forwards differ), each module's mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        return split_lm(split_model, probe)
    finally:
        for module, training in modes:
            module.training = training


def _batch_teacher(batch: dict, kd_weight: float) -> Targets | None:
    teacher = teacher_of(batch) if kd_weight else None
    if kd_weight and teacher is None:
        raise ConfigError("the batch holds no teacher targets (teacher_* tensors): read it from a token store's "
                          "teacher, or pass kd_weight=0 for the cross-entropy alone")
    return teacher


def open_teacher(store: LogitStore, name: str | None = None, allow_partial: bool = False,
                 argument: str = "teacher=") -> Teacher:
    """The teacher called ``name``; without one, the store's only complete teacher, or its only
    teacher if none is complete yet (then refused unless ``allow_partial``). ``argument``: how the
    caller's user names a teacher (``--teacher`` for the CLI), said when the store holds several."""
    if name is None:  # the only complete teacher; or the only teacher, if none is complete yet
        complete, every = store.teacher_names, store.all_teacher_names
        if not complete and len(every) == 1:
            name = every[0]
        elif len(complete) != 1:
            raise StoreMismatchError(f"{store.location} holds {len(complete)} complete teachers "
                                     f"({', '.join(complete) or 'none'}); name one with {argument}")
    teacher = store.teacher(name)
    if not teacher.is_complete and not allow_partial:
        raise StoreIncompleteError(
            f"teacher {teacher.name!r} in {store.location} is {teacher.status} ({int(teacher.shard_done().sum())}/"
            f"{teacher.num_shards} shards); finish the dump, or pass --allow-partial to train on the written "
            "sequences only")
    return teacher


def _written_sequences(teacher: Teacher, seq_len: int) -> np.ndarray:
    """The sequences whose positions the teacher has written (all of them once it is complete)."""
    if teacher.is_complete:
        return np.arange(teacher.num_samples // seq_len)
    written = np.zeros(teacher.num_samples // seq_len, dtype=bool)
    for shard in np.flatnonzero(teacher.shard_done()):
        start, stop = teacher.layout.shard_rows(int(shard), teacher.num_samples)
        written[start // seq_len:stop // seq_len] = True
    if not written.any():
        raise StoreIncompleteError(f"teacher {teacher.name!r} in {teacher.store.location}: no shard is written yet, "
                                   "so there is nothing to train on; let the dump run first")
    return np.flatnonzero(written)
