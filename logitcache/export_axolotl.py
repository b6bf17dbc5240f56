"""A ``topk:K`` token store as the dataset axolotl's knowledge-distillation plugin trains from.

    $ logitcache export data/stores/lm-train.zarr --format axolotl data/axolotl/lm-train
    >>> from logitcache.export_axolotl import export_axolotl
    >>> export_axolotl("data/stores/lm-train.zarr", "data/axolotl/lm-train").line()

then, in axolotl's config: ``plugins: [axolotl.integrations.kd.KDPlugin]``, ``kd_trainer: true``,
``kd_temperature: 1.0`` and ``datasets: [{path: data/axolotl/lm-train}]`` (no ``type``: the rows
are tokenised already).

OUT is a Hugging Face dataset written with ``save_to_disk``, one row per stored sequence, cut to its
real tokens (n = ``lengths[i]``):

=================  =============  =============================================================
column             type           value
=================  =============  =============================================================
input_ids          int32 (n,)     the stored token ids
attention_mask     int8 (n,)      1
labels             int64 (n,)     ``tokens[t]`` where ``loss_mask[t - 1]``, else -100 (t = 0: -100)
target_token_ids   int32 (n, K)   row t: the teacher's top K for the token after t, most probable first
target_logprobs    float32 (n, K) their log-probabilities at T = 1, renormalised to sum to 1 over the K
target_mask        int8 (n, K)    row t: ``loss_mask[t]`` (``labels[t + 1] != -100``) K times
=================  =============  =============================================================

What axolotl reads, from its code (axolotl 0.19.0, the same files as main at 067b021c;
paths under ``src/axolotl/``):

- Loading: a local directory is opened with ``load_from_disk`` (``utils/data/shared.py`` L284-300),
  and a dataset holding ``input_ids``, ``attention_mask`` and ``labels`` is taken as tokenised and
  used as it is, no prompt strategy (``utils/data/wrappers.py`` L92-94, L134-141).
- Columns: the KD trainer keeps ``target_logprobs``, ``target_token_ids`` and ``target_mask``
  beside the model's columns and needs them with ``labels`` (``integrations/kd/trainer.py`` L56-67,
  L79-90). Its own preparation writes them as lists of per-position lists, one row per token of
  ``input_ids``, K wide (``integrations/kd/chat_template.py`` L70-176); the collator pads them to
  (B, T, K) float, long and int tensors, and ``labels`` with -100 (``integrations/kd/collator.py``
  L53-195).
- Alignment: the loss meets the student's hidden state at position t with target row t and the
  cross-entropy label ``labels[t + 1]`` (``integrations/kd/kernels/liger.py`` L310-333, L317-319),
  so row t is the teacher's distribution over the token after t, as the online teacher's collator
  builds it (the first prompt log-prob, None, skipped; each row masked by the label of the token it
  predicts: ``integrations/kd/collator_online_teacher.py`` L346-352, L416-420). That is logitcache's
  row ``i * L + t`` (docs/FORMAT.md, "Token stores"), so rows pass as they are.
  ``chat_template.py`` L108-118 still pads at the start and masks row t by ``labels[t]``: a
  leftover from when the trainer shifted the targets (``integrations/kd/trainer.py`` at 78ce268,
  L70-75); the trainer no longer does.
- Temperature: axolotl's preparation renormalises each position's top K to sum to 1 and rescales it
  to ``kd_temperature`` (``chat_template.py`` L142-163); the loss takes ``target_logprobs`` as
  "already temp-scaled and normalized" (``kernels/liger.py`` L23, L76), divides the student's
  logits by ``kd_temperature`` (L163), renormalises the student's top K only with
  ``kd_normalize_topk`` (L65-68) and scales by T² (L355). A tokenised dataset is not rescaled, so
  this export is for ``kd_temperature: 1.0``.
- The tail bucket (the mass outside the top K) has no column: it is dropped, and said so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codecs import TopKTargets
from .errors import (
    ConfigError,
    FileWriteError,
    LogitCacheError,
    StoreExistsError,
    StoreIncompleteError,
    StoreMismatchError,
)
from .store import LogitStore, Teacher, open_store
from .store._tokens import StoredSequences
from .whole_files import write_failure

IGNORE_INDEX = -100  # axolotl's label (and Hugging Face's) for a position that is not a target
BLOCK_BYTES = 64 << 20  # targets read, converted and handed to the dataset writer at a time
LM_EXTRA = "pip install 'logitcache[lm]'"


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    out: str
    teacher: str
    k: int
    sequences: int
    positions: int
    targets: int

    def line(self) -> str:
        return (f"wrote {self.sequences} sequences ({self.positions} positions, {self.targets} targets, top {self.k}) "
                f"of teacher {self.teacher!r} to {self.out}: axolotl datasets: [{{path: {self.out}}}], "
                "kd_temperature: 1.0")


def export_axolotl(store, out, *, teacher: str | None = None, overwrite: bool = False,
                   storage_options: dict | None = None, log: Callable[[str], object] = print) -> ExportSummary:
    """Write a ``topk:K`` token store's teacher as axolotl's KD dataset in ``out`` (module docstring).

    Args:
        store: a token store's path or URL.
        out: the local directory to write (``save_to_disk``); replaced only with ``overwrite``.
        teacher: the teacher's name (default: the store's only complete teacher).
        storage_options: fsspec options for a remote store.
        log: where the note on the dropped tail bucket goes.

    Raises:
        StoreMismatchError: an image store, or a teacher whose codec is not ``topk:K``.
        StoreIncompleteError: the teacher's dump is unfinished.
        StoreExistsError: ``out`` exists (without ``overwrite``, or it is not a dataset).
        FileWriteError: writing ``out`` failed.
    """
    datasets = _datasets()
    opened = open_store(store, storage_options=storage_options)
    source = _topk_teacher(opened, teacher)
    out = _check_out(out, overwrite)
    log(_tail_note(source))
    _write_directory(out, lambda partial, cache: _save(datasets, source, storage_options, partial, cache))
    return ExportSummary(str(out), source.name, source.codec.k, opened.num_samples, int(opened.lengths.sum()),
                         int(opened.loss_mask.sum()))


def _save(datasets, source: Teacher, storage_options: dict | None, partial: Path, cache: Path) -> None:
    """The rows into an Arrow cache about BLOCK_BYTES at a time (``sequence_rows``), then ``save_to_disk``."""
    store, quiet = source.store, datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()  # the command says what it wrote, in one line
    try:
        rows = datasets.Dataset.from_generator(
            sequence_rows, features=_features(datasets), cache_dir=str(cache),
            writer_batch_size=max(1, BLOCK_BYTES // (store.seq_len * _bytes_per_position(source))),
            gen_kwargs={"location": store.location, "teacher": source.name, "storage_options": storage_options})
        rows.info.description = json.dumps({"logitcache": {
            "store": store.location, "teacher": source.name, "codec": source.codec.name,
            "teacher_digest": source.digest, "temperature": 1.0, "top_k_renormalised": True, "tail": "dropped"}})
        rows.save_to_disk(str(partial))
    except datasets.exceptions.DatasetGenerationError as err:  # a store's error, raised inside the generator
        if isinstance(err.__cause__, (LogitCacheError, OSError)):
            raise err.__cause__ from None
        raise
    finally:
        if not quiet:
            datasets.utils.enable_progress_bars()


def sequence_rows(location: str, teacher: str, storage_options: dict | None) -> Iterator[dict[str, np.ndarray]]:
    """The dataset's rows, one per stored sequence, read a block of whole chunks at a time (the
    generator ``Dataset.from_generator`` runs; plain arguments, so the dataset's fingerprint is cheap)."""
    store = open_store(location, storage_options=storage_options)
    source = store.teacher(teacher)
    store.sequence_counts()  # the sequences checked against their fingerprint, a block at a time
    sequences, seq_len = StoredSequences(store), store.seq_len  # then read a range of whole chunks at a time
    rows_per_chunk = source.layout.rows_per_chunk  # whole sequences (FORMAT.md)
    block_rows = rows_per_chunk * max(1, BLOCK_BYTES // (rows_per_chunk * _bytes_per_position(source)))
    for start in range(0, source.num_samples, block_rows):
        stop = min(start + block_rows, source.num_samples)
        stored = source.read_targets(start, stop)  # checked against the chunks' digests
        ids, logprobs = stored["indices"].astype(np.int32), _renormalised(stored["logprobs"])
        tokens, loss_mask, lengths = sequences.rows(start // seq_len, stop // seq_len)
        for offset in range(len(lengths)):
            at = offset * seq_len
            yield _row(tokens[offset], loss_mask[offset], int(lengths[offset]), ids[at:], logprobs[at:])


def _row(tokens: np.ndarray, loss_mask: np.ndarray, length: int, ids: np.ndarray,
         logprobs: np.ndarray) -> dict[str, np.ndarray]:
    """One sequence's columns, cut to its real tokens; ``ids``/``logprobs`` start at its first row."""
    tokens, targets = tokens[:length].astype(np.int64), loss_mask[:length]
    labels = np.full(length, IGNORE_INDEX, dtype=np.int64)
    labels[1:] = np.where(targets[:-1], tokens[1:], IGNORE_INDEX)
    k = ids.shape[1]
    return {"input_ids": tokens.astype(np.int32), "attention_mask": np.ones(length, dtype=np.int8),
            "labels": labels, "target_token_ids": ids[:length], "target_logprobs": logprobs[:length],
            "target_mask": np.repeat(targets[:, None], k, axis=1).astype(np.int8)}


def _renormalised(logprobs: np.ndarray) -> np.ndarray:
    """(P, K) top-K log-probabilities -> float32 log-probabilities summing to 1 over the K (as axolotl's
    own preparation makes them), in float64 so fp16-stored values lose nothing more."""
    wide = logprobs.astype(np.float64)
    top = wide.max(axis=1, keepdims=True)
    return (wide - top - np.log(np.exp(wide - top).sum(axis=1, keepdims=True))).astype(np.float32)


def _topk_teacher(store: LogitStore, name: str | None) -> Teacher:
    """The teacher to export: a complete ``topk:K`` teacher of a token store, or one refusal line."""
    if not store.is_tokens:
        raise StoreMismatchError(f"{store.location} holds labelled samples, not token sequences; axolotl's KD format "
                                 "is for language models: export a token store (`logitcache dump --tokenizer ...`)")
    if name is None and not store.teacher_names and len(store.all_teacher_names) == 1:
        name = store.all_teacher_names[0]  # the only teacher, unfinished: refused below as such
    source = store.teacher(name)
    where, codec = f"teacher {source.name!r} in {store.location}", source.codec
    if codec.target_type is not TopKTargets:
        kind = ("sampled weights, not the log-probabilities of a top K" if codec.sampled_at is not None
                else "the whole distribution" if not codec.has_sparse_form else "not a top K")
        raise StoreMismatchError(f"{where} stores {codec.name} ({kind}); axolotl's KD format holds each position's "
                                 "top-K log-probabilities: dump the teacher with --codec topk:K (e.g. topk:64)")
    if not source.is_complete:
        raise StoreIncompleteError(f"{where} is {source.status} ({int(source.shard_done().sum())}/{source.num_shards} "
                                   "shards); finish its dump (rerun the same command), then export it")
    return source


def _check_out(out, overwrite: bool) -> Path:
    """OUT as a local path that may be written: absent, or (with ``overwrite``) a dataset or a file."""
    if "://" in str(out):
        raise ConfigError(f"{out}: export writes a local directory; copy it to remote storage afterwards")
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return out
    if not overwrite:
        raise StoreExistsError(f"{out} already exists; pass --overwrite to replace it")
    if out.is_dir() and not (out / "dataset_info.json").is_file():
        raise StoreExistsError(f"{out} is a directory but not a saved dataset, so --overwrite does not replace it; "
                               "choose another OUT")
    return out


def _tail_note(source: Teacher) -> str:
    mass = (source.attrs.get("metrics") or {}).get("mass_stored")
    share = f": {100 * (1 - mass):.2g}% on average here" if mass is not None else ""
    return (f"note: axolotl's format has no column for the tail bucket (the teacher's probability outside its top "
            f"{source.codec.k}{share}), so it is dropped and each position's top K is renormalised to sum to 1, as "
            "axolotl's own preparation does")


def _features(datasets):
    def values(dtype, depth=1):
        feature = datasets.Value(dtype)
        for _ in range(depth):
            feature = datasets.Sequence(feature)
        return feature

    return datasets.Features({"input_ids": values("int32"), "attention_mask": values("int8"), "labels": values("int64"),
                              "target_token_ids": values("int32", 2), "target_logprobs": values("float32", 2),
                              "target_mask": values("int8", 2)})


def _bytes_per_position(source: Teacher) -> int:
    """About the bytes a position takes on its way out: K ids (int64 as read, int32 out), K log-probabilities
    (float32 as read, float64 renormalised, float32 out), K mask bytes, and its id and label."""
    return source.codec.k * (8 + 4 + 4 + 8 + 4 + 1) + 16


def _write_directory(out: Path, write: Callable[[Path, Path], None]) -> None:
    """``write(partial, cache)`` into ``.OUT.partial`` beside OUT (a scratch directory there too),
    then the old OUT (if any) removed and the partial renamed: a failed export leaves the old OUT, or
    nothing, and never its partial or scratch directory."""
    partial, cache = out.with_name(f".{out.name}.partial"), None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        cache = Path(tempfile.mkdtemp(prefix=f".{out.name}.cache-", dir=out.parent))
        write(partial, cache)
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        elif out.exists() or out.is_symlink():
            out.unlink()
        os.replace(partial, out)
    except OSError as err:
        raise FileWriteError(f"cannot write {out}: {write_failure(err, out.parent)}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise LogitCacheError(f"export --format axolotl writes a Hugging Face dataset and needs the datasets "
                              f"package: {LM_EXTRA}") from None
    return datasets
