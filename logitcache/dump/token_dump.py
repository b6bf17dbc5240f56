"""The token dump: a causal language model over tokenised text, its next-token distributions into a
token store (format v4), reduced on the device.

    >>> dump(DumpConfig(store="lm.zarr", teacher="checkpoint:runs/gpt/best.pt", dataset="text:plays/*.md",
    ...                 tokenizer="bytes", seq_len=256, codec="sample:12"))

The sequences (token ids, loss mask, lengths, keys) go into the store before any teacher row, so
the store is self-contained and every teacher row is bound to the tokens it was computed from.
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
from ..errors import ConfigError, CorruptStoreError, NonFiniteLogitsError, OutOfMemoryError
from ..sources import get_model
from ..sources.tokenizers import get_tokenizer
from ..sources.token_datasets import TokenStream, stream_token_dataset
from ..store import BackgroundWriter, Teacher
from ..store._tokens import StoredSequences, choose_token_layout, token_layout_horizon
from .reduce import STATS, DeviceReducer
from .resume import mark_dumped
from .settings import dump_codec, software, weights_digest
from .summary import TokenDumpSummary
from .token_teacher import TokenTeacher, is_out_of_memory


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

    prepare_seconds = 0.0  # spent before the store was opened (a generating job's responses)

    def __init__(self, config, dist):
        if config.batch_tokens < 1:
            raise ConfigError(f"--batch-tokens must be at least 1, got {config.batch_tokens}")
        self.config = config
        tokenizer = get_tokenizer(config.tokenizer)
        stream = stream_token_dataset(config.dataset, tokenizer, config.seq_len, split=config.split)
        self.device = resolve_device(dist.device(config.device))
        self.model = get_model(config.teacher, tokenizer.vocab_size, weights=config.weights).to(self.device).eval()
        self.teacher = TokenTeacher(self.model, self.device, config.bf16)
        first = next(iter(stream), None)  # the first block of rows: the split is proven on its first sequence
        if first is None:
            raise ConfigError(f"--dataset {config.dataset} gives no sequences to dump")
        self.num_classes = self.teacher.probe(first.tokens[:1], first.lengths[:1], tokenizer)
        self.sequences_per_batch = self.teacher.sequences_per_batch(config.seq_len, config.batch_size,
                                                                    config.batch_tokens)
        self.source = TokenInputs(config.dataset, stream, tokenizer, self.num_classes)
        self.settings, self.provenance = self._settings()
        self.rows: StoredSequences | None = None  # the store's sequences, once it is open

    def _settings(self) -> tuple[dict, dict]:
        config, codec = self.config, dump_codec(self.config, self.num_classes)
        row_bytes = codec.bytes_per_sample(self.num_classes) + 4  # + the row's log-sum-exp
        sequences = self.source.stream.count_rows(up_to=token_layout_horizon(config.seq_len, row_bytes))
        layout = choose_token_layout(sequences, config.seq_len, row_bytes, config.rows_per_shard)
        settings = {
            "teacher": config.teacher, **weights_digest(config, self.model), "codec": codec.name,
            "layout": layout.to_dict(), "batch_size": self.sequences_per_batch,  # the sequences of a forward
            "bf16": config.bf16,
            "device_type": self.device.type, "tokenizer": self.source.tokenizer.identity, "seq_len": config.seq_len,
        }
        provenance = {
            "teacher": {"spec": config.teacher, "weights": config.weights,
                        "num_parameters": sum(p.numel() for p in self.model.parameters())},
            "dataset": self.source.description, "tokenizer": self.source.tokenizer.describe(), "software": software(),
        }
        return settings, provenance

    def prepare(self, log) -> None:
        """Nothing to make before the store: the corpus is streamed into it when it is created."""

    def write(self, dist, store, teacher: Teacher, lock, log) -> TokenDumpSummary:
        """Write this rank's pending shards, then (rank 0) mark the teacher complete with its statistics."""
        started = time.perf_counter() - self.prepare_seconds  # a generating job's responses count as its time
        self.rows = StoredSequences(store)
        if dist.is_main and self.teacher.split is None:
            log(self.teacher.unsplit_note(self.config.seq_len, min(self.sequences_per_batch, store.num_samples)))
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
        mark_dumped(teacher, lock, dist, seconds, lambda: token_metrics(teacher.shard_stats()))
        return self.summary(store, teacher, written, seconds, resumed=int(done.sum()))

    def _write_shards(self, teacher: Teacher, pending: list[int], show: bool, held) -> int:
        length, batch = self.config.seq_len, self.sequences_per_batch
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
        """Sequences [first, last) through the teacher and the reducer, on the device; running out of
        memory is one line that names the setting to lower (raised once the batch's tensors are freed)."""
        try:
            arrays, stats, bad = self._through_teacher(reducer, first, last, uniforms)
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err):
                raise
            arrays = None
        if arrays is None:
            raise self._out_of_memory(first, last)
        if bad.size:
            sequences = sorted({first + int(row) // self.config.seq_len for row in bad})
            keys = ", ".join(repr(self.rows.keys(s, s + 1)[0]) for s in sequences[:5])
            raise NonFiniteLogitsError(f"the teacher produced NaN/inf logits at {bad.size} positions of "
                                       f"{len(sequences)} sequences (keys: {keys}{', …' if len(sequences) > 5 else ''})"
                                       "; nothing was marked complete")
        return arrays, stats

    def _through_teacher(self, reducer: DeviceReducer, first: int, last: int, uniforms) -> tuple:
        """The reducer's (arrays, stats, non-finite rows) of sequences [first, last): the teacher's
        backbone once, its head a chunk of positions at a time (or whole, for a head not split)."""
        device = self.device
        tokens, loss_mask, lengths = self.rows.rows(first, last)
        ids = torch.as_tensor(tokens, dtype=torch.long).to(device, non_blocking=True)
        with torch.inference_mode():
            logits = self.teacher(ids, f"sequences {first}-{last}")  # (B*T, V)
            next_tokens = torch.roll(ids, -1, dims=1).flatten()
            is_target = torch.as_tensor(loss_mask, device=device).flatten()
            positions = torch.arange(ids.shape[1], device=device)
            is_real = (positions[None, :] < torch.as_tensor(lengths, device=device)[:, None])
            return reducer(logits, next_tokens, is_target, is_real.flatten(), uniforms)

    def _out_of_memory(self, first: int, last: int) -> OutOfMemoryError:
        length = self.config.seq_len
        resume = "the shards already written are kept, and the same command resumes after them"
        if last - first > 1:
            return OutOfMemoryError(
                f"the teacher ran out of memory on {self.device} with a batch of {last - first} sequences of {length} "
                f"tokens (sequences {first}-{last}): lower --batch-tokens (now {self.config.batch_tokens}) and add "
                f"--overwrite, since a resume must cut the same batches; or free memory: {resume}")
        whole = "" if self.teacher.split is not None else \
            f" (its head is not split, so its whole logits are {length * self.num_classes * 4 / 2**30:.1f} GiB)"
        return OutOfMemoryError(f"one sequence of {length} tokens is more than {self.device} has memory for{whole} "
                                f"(sequence {first}): a shorter --seq-len, or free memory: {resume}")

    def summary(self, store, teacher: Teacher, written: int, seconds: float, resumed: int | None = None):
        metrics = teacher.attrs["metrics"] or token_metrics(teacher.shard_stats())
        return TokenDumpSummary(store.location, teacher.name, store.num_samples, store.seq_len,
                                int(store.dataset["num_tokens"]), written, seconds, teacher.nbytes_stored(),
                                teacher.num_classes, teacher.codec.name, metrics,
                                teacher.num_shards if resumed is None else resumed)


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
