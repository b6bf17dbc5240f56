"""``dump --generate``: the teacher writes a response to each prompt, and the store keeps prompt and
response tokens, the loss mask on the response, and the teacher's targets at every response
position from the very logits that chose the token (sequence-level KD, as DistillKit's caches).

    >>> dump(DumpConfig(store="answers.zarr", teacher="checkpoint:runs/gpt/best.pt", generate=True,
    ...                 dataset="jsonl:data/prompts.jsonl:prompt", tokenizer="bytes", seq_len=128,
    ...                 max_new_tokens=64, temperature=0.8, top_p=0.95, codec="topk:8"))

The store is an ordinary token store: students train from it as from any other. A sequence is one
prompt and its response (``--seq-len`` must hold the longest prompt and ``--max-new-tokens``);
the response ends at the tokenizer's end-of-text token or at ``--max-new-tokens``. The sampling
settings, the decoder (KV cache or recomputed) and the prompts' fingerprint are the teacher's
settings, so ``info`` shows them and a resume must match them. Generation runs in one process,
into a local store; ``generate_rows.py`` says how the rows are made and kept until the store is.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from ..devices import resolve_device
from ..errors import ConfigError, DatasetError, LogitCacheError, NonFiniteLogitsError, StoreMismatchError
from ..sources import get_model
from ..sources.prompts import read_prompts
from ..sources.tokenizers import get_tokenizer
from ..store import Layout, Teacher, local_path, open_store
from ..store._tokens import StoredSequences, choose_token_layout
from .generate_rows import GeneratedRows, Journal, ResponseWriter
from .generate_steps import Sampling, make_decoder
from .reduce import DeviceReducer
from .settings import dump_codec, software, weights_digest
from .token_dump import TokenJob
from .token_teacher import TokenTeacher

JOURNAL_SUFFIX = ".generating"  # the folder beside the store that keeps generated shards until the store has them


def sampling_of(config) -> Sampling:
    """The sampling a config asks for (``--greedy`` is temperature 0)."""
    if config.greedy and config.temperature not in (0, 1):
        raise ConfigError(f"--greedy takes no --temperature (got {config.temperature}): greedy is temperature 0")
    return Sampling(0.0 if config.greedy else float(config.temperature), float(config.top_p),
                    int(config.max_new_tokens), int(config.seed))


class GenerateJob(TokenJob):
    """A token dump whose sequences the teacher writes: prompts in, responses and targets out."""

    def __init__(self, config, dist):  # TokenJob's, with prompts for its corpus
        if dist.enabled:
            raise ConfigError("--generate runs in one process (its rows are written before its store); run it "
                              "without torchrun")
        folder = local_path(config.store)
        if folder is None:
            raise ConfigError(f"--generate writes into a local store (it keeps generated shards beside it until "
                              f"the store is made); {config.store} is remote: generate locally, then copy or pack")
        if config.batch_tokens < 1:
            raise ConfigError(f"--batch-tokens must be at least 1, got {config.batch_tokens}")
        self.config, self.sampling = config, sampling_of(config)
        self.tokenizer = get_tokenizer(config.tokenizer)
        self.prompts = read_prompts(config.dataset, self.tokenizer, config.split)
        _check_lengths(self.prompts, config.seq_len, self.sampling.max_new_tokens)
        self.device = resolve_device(dist.device(config.device))
        self.model = get_model(config.teacher, self.tokenizer.vocab_size,
                               weights=config.weights).to(self.device).eval()
        self.teacher = TokenTeacher(self.model, self.device, config.bf16)
        first = np.full((1, config.seq_len), self.tokenizer.pad_id, dtype=np.int64)
        first[0, :len(self.prompts.ids[0])] = self.prompts.ids[0]
        self.num_classes = self.teacher.probe(first, np.asarray([len(self.prompts.ids[0])]), self.tokenizer)
        self.sequences_per_batch = self.teacher.sequences_per_batch(config.seq_len, config.batch_size,
                                                                    config.batch_tokens)
        self.decoder = make_decoder(self.teacher, self.tokenizer.pad_id)
        self.codec = dump_codec(config, self.num_classes)
        self.settings, self.provenance = self._settings()
        self.journal = Journal(folder.with_name(folder.name + JOURNAL_SUFFIX), self.settings)
        self.writer = ResponseWriter(self.decoder, DeviceReducer(self.codec), self.prompts, self.sampling,
                                     config.seq_len, self.tokenizer.eos_id, self.tokenizer.pad_id, self.num_classes,
                                     self.device)
        self.source = GeneratedInputs(self)
        self.in_store = None  # the store, when it already holds this teacher's sequences
        self.generated = 0  # response tokens written by this run
        self.rows = None

    def _settings(self) -> tuple[dict, dict]:
        config, codec = self.config, self.codec
        row_bytes = codec.bytes_per_sample(self.num_classes) + 4
        layout = choose_token_layout(len(self.prompts), config.seq_len, row_bytes, config.rows_per_shard)
        settings = {
            "teacher": config.teacher, **weights_digest(config, self.model), "codec": codec.name,
            "layout": layout.to_dict(), "batch_size": self.sequences_per_batch, "bf16": config.bf16,
            "device_type": self.device.type, "tokenizer": self.tokenizer.identity, "seq_len": config.seq_len,
            "generate": {**self.sampling.to_dict(), "decoder": "kv-cache" if self.decoder.uses_cache else "recompute",
                         "prompts": self.prompts.fingerprint},
        }
        provenance = {
            "teacher": {"spec": config.teacher, "weights": config.weights,
                        "num_parameters": sum(p.numel() for p in self.model.parameters())},
            "dataset": self.description, "tokenizer": self.tokenizer.describe(), "software": software(),
        }
        return settings, provenance

    @property
    def description(self) -> dict:
        """The store's dataset record: the prompts, and how the teacher answered them."""
        return {**self.prompts.description, "generated_by": self.config.teacher,
                "generate": self.sampling.to_dict(), "seq_len": self.config.seq_len}

    @property
    def layout(self) -> Layout:
        return Layout.from_dict(self.settings["layout"])

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards(len(self.prompts) * self.config.seq_len)

    def prepare(self, log) -> None:
        """Under the teacher's lock, before the store is opened: every shard the journal lacks is
        generated into it, unless the store already holds this teacher's sequences."""
        started = time.perf_counter()
        self.in_store = self._store_with_these_settings()
        if self.in_store is not None:
            return
        existing = self._refuse_other_store()
        self.journal.open()
        missing = [s for s in range(self.num_shards) if not self.journal.has(s)]
        sequences = sum(self._shard_sequences(s)[1] - self._shard_sequences(s)[0] for s in missing)
        with tqdm(total=sequences, unit="response", disable=not self.config.progress,
                  desc=f"generate {self.config.teacher_name}", dynamic_ncols=True, mininterval=1.0) as bar:
            for shard in missing:
                rows = self.generate_shard(shard)
                self.journal.save(shard, rows)
                self.generated += int(rows.loss_mask.sum())
                bar.update(len(rows))
        if existing is not None and StoredSequences(existing).differs_from(self.source)[1]:
            self.journal.remove()  # answers no store here can take: not kept for a rerun
            raise StoreMismatchError(f"the teacher's answers differ from the token sequences of store "
                                     f"{self.config.store} (other prompts, teacher or settings): a store holds one "
                                     "teacher's answers — dump into another STORE path")
        self.prepare_seconds = time.perf_counter() - started

    def _store_with_these_settings(self):
        """The store, when it holds this teacher made with these very settings (so its sequences are
        these responses, and a rerun must not generate them again); else None."""
        if self.config.overwrite:
            return None
        try:
            store = open_store(self.config.store)
            if store.is_tokens and store.has_teacher(self.config.teacher_name):
                if store.teacher(self.config.teacher_name, check=False).attrs["settings"] == self.settings:
                    return store
        except LogitCacheError:
            pass
        return None

    def follow_codec(self, codec) -> None:
        """Reduce to ``codec``, a stored teacher's: its record, not this code's defaults, says how its
        rows are kept (a ``sample:K`` teacher written before format v7 keeps per-class log-probabilities)."""
        self.codec = self.writer.reducer.codec = codec

    def _refuse_other_store(self):
        """An existing store that cannot hold these answers is refused before they are generated; one
        that can is returned, to be compared with them once they are (None: no store yet)."""
        try:
            store = open_store(self.config.store)
        except LogitCacheError:
            return None  # nothing there yet (or what the dump's own open will name)
        shape = (len(self.prompts), self.config.seq_len)
        if not store.is_tokens or (store.num_samples, store.seq_len) != shape:
            held = f"{store.num_samples} sequences of {store.seq_len} tokens" if store.is_tokens else \
                "labelled samples"
            raise StoreMismatchError(f"{self.config.store} holds {held}, not the answers to {shape[0]} prompts in "
                                     f"sequences of {shape[1]}: a store holds one dataset — dump into another STORE path")
        return store

    def _shard_sequences(self, shard: int) -> tuple[int, int]:
        start, stop = self.layout.shard_rows(shard, len(self.prompts) * self.config.seq_len)
        return start // self.config.seq_len, stop // self.config.seq_len

    def generate_shard(self, shard: int) -> GeneratedRows:
        """The shard's sequences, batch by batch, as the dump writes them (also ``verify``'s rebuild)."""
        first, last = self._shard_sequences(shard)
        length = self.config.seq_len
        uniforms = self.codec.uniforms(shard, (last - first) * length)
        parts = []
        for lo in range(first, last, self.sequences_per_batch):
            hi = min(lo + self.sequences_per_batch, last)
            draws = None if uniforms is None else uniforms[(lo - first) * length:(hi - first) * length]
            parts.append(self.writer.batch(lo, hi, draws))
        rows = GeneratedRows.join(parts)
        if rows.bad.size:
            sequences = sorted({first + int(row) // length for row in rows.bad})
            keys = ", ".join(repr(self.prompts.keys[s]) for s in sequences[:5])
            raise NonFiniteLogitsError(f"the teacher produced NaN/inf logits while answering {len(sequences)} "
                                       f"prompts (keys: {keys}{', …' if len(sequences) > 5 else ''}); the shards "
                                       "generated before are kept")
        return rows

    def shard_rows(self, shard: int) -> GeneratedRows:
        """A shard's rows: from the journal, else generated again (the same bytes)."""
        return self.journal.load(shard) if self.journal.has(shard) else self.generate_shard(shard)

    def _write_shards(self, teacher: Teacher, pending: list[int], show: bool, held) -> int:
        # docstring inherited: each pending shard's targets were reduced when its tokens were chosen
        from ..store import BackgroundWriter

        with BackgroundWriter(teacher, before_write=held) as writer:
            for shard in pending:
                rows = self.shard_rows(shard)
                writer.submit_encoded(shard, rows.stored, rows.stats)
        return sum(np.diff(teacher.layout.shard_rows(s, teacher.num_samples))[0] for s in pending)

    def write(self, dist, store, teacher: Teacher, lock, log):
        summary = super().write(dist, store, teacher, lock, log)
        self.journal.remove()  # the store holds everything it kept
        return summary

    def summary(self, store, teacher: Teacher, written: int, seconds: float, resumed: int | None = None):
        if teacher.is_complete:
            self.journal.remove()  # a dump killed after completing, before removing it
        return replace(super().summary(store, teacher, written, seconds, resumed), generated=self.generated)


class GeneratedInputs:
    """What ``resume.open_for_dump`` reads of a token corpus, for generated sequences: the stream of
    rows (the journal's shards in order, or the store's own when it already holds them)."""

    def __init__(self, job: GenerateJob):
        self.job = job
        self.spec, self.tokenizer, self.vocab_size = job.config.dataset, job.tokenizer, job.num_classes
        self.stream = self

    @property
    def seq_len(self) -> int:
        return self.job.config.seq_len

    @property
    def description(self) -> dict:
        return self.job.description

    def __iter__(self):
        job = self.job
        if job.in_store is not None:
            stored = StoredSequences(job.in_store)
            for shard in range(job.num_shards):
                first, last = job._shard_sequences(shard)
                tokens, loss_mask, lengths = stored.rows(first, last)
                yield GeneratedRows(tokens, loss_mask, lengths, stored.keys(first, last), {}, np.zeros(0),
                                    np.zeros(0, dtype=np.int64))
            return
        for shard in range(job.num_shards):
            yield job.shard_rows(shard)


def _check_lengths(prompts, seq_len: int | None, max_new_tokens: int) -> None:
    """Every prompt and its longest response must fit one stored sequence."""
    longest = int(np.argmax([len(ids) for ids in prompts.ids]))
    need = len(prompts.ids[longest]) + max_new_tokens
    if seq_len is not None and need > seq_len:
        raise DatasetError(f"prompt {prompts.keys[longest]} has {len(prompts.ids[longest])} tokens: with "
                           f"--max-new-tokens {max_new_tokens} it needs --seq-len {need} or more (now {seq_len}); "
                           "raise --seq-len (up to the teacher's context), or shorten the prompts")
