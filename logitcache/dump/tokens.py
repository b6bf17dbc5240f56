"""The token dump: a causal language model over tokenised text, its next-token distributions into a
token store (format v4), reduced on the device.

    >>> dump(DumpConfig(store="lm.zarr", teacher="checkpoint:runs/gpt/best.pt", dataset="text:plays/*.md",
    ...                 tokenizer="bytes", seq_len=256, codec="sample:12"))

The sequences (token ids, loss mask, lengths, keys) go into the store before any teacher row, so
the store is self-contained and every teacher row is bound to the tokens it was computed from. They
are streamed there from the corpus (``dump/resume.py``), and the teacher reads its batches back from
the store, so host memory holds the shards in flight, never the corpus.
Sequences are batched within a shard, as images are, so a resumed or distributed dump runs the
teacher on exactly the batches an uninterrupted one does and writes the same bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..devices import resolve_device
from ..errors import CorruptStoreError, ModelError, NonFiniteLogitsError
from ..sources import get_model, lm_context_length
from ..sources.tokenizers import get_tokenizer
from ..sources.tokens import TokenStream, stream_token_dataset
from ..store import BackgroundWriter, Teacher, get_codec
from ..store._tokens import StoredSequences, choose_token_layout, token_layout_horizon
from .loop import autocast
from .reduce import STATS, DeviceReducer
from .resume import now_utc
from .settings import software, weights_digest
from .summary import TokenDumpSummary


@dataclass
class TokenInputs:
    """The corpus a token dump's store is made from (or checked against), as a stream, and the
    vocabulary its store records (the teacher head's width, which may exceed the tokenizer's)."""

    spec: str
    stream: TokenStream
    tokenizer: object
    vocab_size: int

    @property
    def description(self) -> dict | None:
        """What the dataset record says of the corpus; complete once a pass over it has ended."""
        return self.stream.description


class TokenJob:
    """What ``dump`` needs of a token dump: inputs, teacher, settings; then ``write`` and ``summary``."""

    def __init__(self, config, dist):
        self.config = config
        tokenizer = get_tokenizer(config.tokenizer)
        stream = stream_token_dataset(config.dataset, tokenizer, config.seq_len, split=config.split)
        self.device = resolve_device(dist.device(config.device))
        self.model = get_model(config.teacher, tokenizer.vocab_size, weights=config.weights).to(self.device).eval()
        self.num_classes = self._probe(tokenizer)
        self.source = TokenInputs(config.dataset, stream, tokenizer, self.num_classes)
        self.settings, self.provenance = self._settings()
        self.rows: StoredSequences | None = None  # the store's sequences, once it is open

    def _probe(self, tokenizer) -> int:
        """The teacher's context must hold a sequence, and its head every token id: (1, L, V >= vocab).
        It reads a sequence of id 0 first, so a too-small vocabulary is named rather than crashing."""
        length = self.config.seq_len
        context = lm_context_length(self.model)
        if context is not None and length > context:
            raise ModelError(f"--seq-len {length} is longer than the teacher's context of {context} tokens")
        sample = torch.zeros((1, length), dtype=torch.long, device=self.device)  # id 0: in every vocabulary
        with torch.inference_mode(), autocast(self.device, self.config.bf16):
            try:
                output = logits_of(self.model(sample))
            except Exception as err:
                raise ModelError(f"the teacher fails on a sequence of {length} tokens: {err}") from None
        if not isinstance(output, torch.Tensor) or output.ndim != 3 or tuple(output.shape[:2]) != (1, length):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ModelError(f"the teacher's output is {shape} for one sequence of {length} tokens; a token dump "
                             "needs a causal LM's (batch, positions, vocabulary) logits")
        vocab = int(output.shape[2])
        if vocab < tokenizer.vocab_size:  # every token id is below the tokenizer's size (checked when tokenised)
            raise ModelError(f"the teacher's head has {vocab} outputs but tokenizer {tokenizer.spec!r} has "
                             f"{tokenizer.vocab_size} ids: they were not made for each other")
        return vocab

    def _settings(self) -> tuple[dict, dict]:
        config, codec = self.config, get_codec(self.config.codec).for_classes(self.num_classes)
        row_bytes = codec.bytes_per_sample(self.num_classes) + 4  # + the row's log-sum-exp
        sequences = self.source.stream.count_rows(up_to=token_layout_horizon(config.seq_len, row_bytes))
        layout = choose_token_layout(sequences, config.seq_len, row_bytes, config.rows_per_shard)
        settings = {
            "teacher": config.teacher, **weights_digest(config, self.model), "codec": codec.name,
            "layout": layout.to_dict(), "batch_size": config.batch_size, "bf16": config.bf16,
            "device_type": self.device.type, "tokenizer": self.source.tokenizer.identity, "seq_len": config.seq_len,
        }
        provenance = {
            "teacher": {"spec": config.teacher, "weights": config.weights,
                        "num_parameters": sum(p.numel() for p in self.model.parameters())},
            "dataset": self.source.description, "tokenizer": self.source.tokenizer.describe(), "software": software(),
        }
        return settings, provenance

    def write(self, dist, store, teacher: Teacher, lock, log) -> TokenDumpSummary:
        """Write this rank's pending shards, then (rank 0) mark the teacher complete with its statistics."""
        started = time.perf_counter()
        self.rows = StoredSequences(store)
        done = teacher.shard_done()
        pending = [s for s in range(teacher.num_shards) if s % dist.world_size == dist.rank and not done[s]]
        error = None
        try:
            written = self._write_shards(teacher, pending, show=dist.is_main,
                                         held=lock.ensure_held if lock is not None else None)
        except Exception as err:  # every rank must reach the barrier; LogitCacheErrors are one line there
            error, written = err, 0
        dist.agree(error)
        written = int(dist.sum([written])[0])
        seconds = time.perf_counter() - started
        error = None
        if dist.is_main:
            try:
                lock.ensure_held()
                run = teacher.attrs["run"]
                run.update(finished_at=now_utc(), sessions=run["sessions"] + 1,
                           seconds=round(run["seconds"] + seconds, 3), processes=dist.world_size)
                teacher.mark_complete(metrics=token_metrics(teacher.shard_stats()), run=run)
            except Exception as err:
                error = err
        dist.agree(error)
        return self.summary(store, teacher, written, seconds, resumed=int(done.sum()))

    def _write_shards(self, teacher: Teacher, pending: list[int], show: bool, held) -> int:
        length, batch = self.config.seq_len, self.config.batch_size
        reducer = DeviceReducer(teacher.codec)
        bar = tqdm(total=sum(np.diff(teacher.layout.shard_rows(s, teacher.num_samples))[0] for s in pending),
                   unit="tok", unit_scale=True, disable=not (self.config.progress and show),
                   desc=f"dump {teacher.name}", dynamic_ncols=True, mininterval=1.0)
        with BackgroundWriter(teacher, before_write=held) as writer, bar:
            for shard in pending:
                start, stop = teacher.layout.shard_rows(shard, teacher.num_samples)
                uniforms = teacher.codec.uniforms(shard, stop - start)  # None: a codec that draws nothing
                pieces, stats = [], np.zeros(len(STATS))
                for first in range(start // length, stop // length, batch):
                    last = min(first + batch, stop // length)
                    rows = slice(first * length - start, last * length - start)
                    arrays, batch_stats = self._reduce_batch(reducer, first, last, None if uniforms is None
                                                             else uniforms[rows])
                    pieces.append(arrays)
                    stats += batch_stats
                    bar.update((last - first) * length)
                writer.submit_encoded(shard, {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]},
                                      stats)
        return sum(np.diff(teacher.layout.shard_rows(s, teacher.num_samples))[0] for s in pending)

    def _reduce_batch(self, reducer: DeviceReducer, first: int, last: int, uniforms) -> tuple[dict, np.ndarray]:
        """Sequences [first, last) through the teacher and the reducer, on the device."""
        device = self.device
        tokens, loss_mask, lengths = self.rows.rows(first, last)
        ids = torch.as_tensor(tokens, dtype=torch.long).to(device, non_blocking=True)
        with torch.inference_mode():
            with autocast(device, self.config.bf16):
                logits = logits_of(self.model(ids))
            if tuple(logits.shape) != (*ids.shape, self.num_classes):
                raise ModelError(f"the teacher's output changed shape to {tuple(logits.shape)} for sequences "
                                 f"{first}-{last}; it must be {(*ids.shape, self.num_classes)}")
            next_tokens = torch.roll(ids, -1, dims=1).flatten()
            is_target = torch.as_tensor(loss_mask, device=device).flatten()
            positions = torch.arange(ids.shape[1], device=device)
            is_real = (positions[None, :] < torch.as_tensor(lengths, device=device)[:, None])
            arrays, stats, bad = reducer(logits.flatten(0, 1), next_tokens, is_target, is_real.flatten(), uniforms)
        if bad.size:
            sequences = sorted({first + int(row) // ids.shape[1] for row in bad})
            keys = ", ".join(repr(self.rows.keys(s, s + 1)[0]) for s in sequences[:5])
            raise NonFiniteLogitsError(f"the teacher produced NaN/inf logits at {bad.size} positions of "
                                       f"{len(sequences)} sequences (keys: {keys}{', …' if len(sequences) > 5 else ''})"
                                       "; nothing was marked complete")
        return arrays, stats

    def summary(self, store, teacher: Teacher, written: int, seconds: float, resumed: int | None = None):
        metrics = teacher.attrs["metrics"] or token_metrics(teacher.shard_stats())
        return TokenDumpSummary(store.location, teacher.name, store.num_samples, store.seq_len,
                                int(store.dataset["num_tokens"]), written, seconds, teacher.nbytes_stored(),
                                teacher.num_classes, teacher.codec.name, metrics,
                                teacher.num_shards if resumed is None else resumed)


def logits_of(output):
    """A causal LM's logits: the tensor itself, or the ``logits`` of a Hugging Face output."""
    return getattr(output, "logits", output)


def token_metrics(shard_stats: np.ndarray) -> dict:
    """The teacher's own statistics over every target position, from the shards' sums."""
    if np.isnan(shard_stats).any():
        raise CorruptStoreError(f"{int(np.isnan(shard_stats).any(axis=1).sum())} shards marked done have no "
                                "statistics; the store was damaged or edited during the dump")
    targets, nll, hits, mass = shard_stats.sum(axis=0)
    if targets == 0:
        return {"targets": 0, "nll": None, "perplexity": None, "top1": None, "mass_stored": None}
    return {"targets": int(targets), "nll": nll / targets, "perplexity": float(np.exp(nll / targets)),
            "top1": hits / targets, "mass_stored": mass / targets}
