"""``verify --dataset`` of a ``dump --generate`` store: the teacher writes a sample of the stored
responses again, and they must be the stored ones.

    >>> problems, checked = check_generated(store, "default", "jsonl:data/prompts.jsonl:prompt")

The teacher, tokenizer, prompts and settings are the ones the store recorded; the prompts are read
from the dataset given, so a changed prompt file is named. A sample of the dump's own batches
(the first, the last and some between, ``SAMPLE_BATCHES`` in all) is generated again as the dump
cut them: the tokens, loss mask and lengths must be equal, and the targets equal, or (another
machine's kernels) within ``TOLERANCE`` once decoded.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..distributed import Distributed
from ..errors import LogitCacheError
from .dump_config import DumpConfig

SAMPLE_BATCHES = 4
TOLERANCE = 2e-2  # decoded targets, relative to their scale: fp16 storage and kernel noise, not another teacher
IGNORED = ("device_type",)  # a store written on a GPU may be checked on a CPU


def check_generated(store, name: str, dataset: str, split: str | None = None,
                    device: str = "cpu") -> tuple[list[str], list[str]]:
    """(problems, what was checked) for generating teacher ``name`` of ``store`` again over ``dataset``."""
    teacher = store.teacher(name)
    settings, provenance = teacher.attrs["settings"], teacher.attrs["provenance"]
    try:
        job = _job(store, teacher, settings, provenance, dataset, split, device)
    except LogitCacheError as err:
        return [f"teacher {name!r}: cannot generate its responses again: {err}"], []
    differ = sorted(k for k in set(settings) | set(job.settings) if k not in IGNORED
                    and settings.get(k) != job.settings.get(k))
    if differ:
        return [f"teacher {name!r}: the teacher, prompts or settings given now differ from the dump's "
                f"({', '.join(differ)}); the responses cannot be checked"], []
    problems, batches = [], _sample(job)
    rows = _stored_rows(store)
    for shard, first, last in batches:
        try:
            problem = _compare(job, teacher, rows, shard, first, last)
        except LogitCacheError as err:
            problem = str(err)
        if problem:
            problems.append(f"teacher {name!r}: sequences {first}-{last}: {problem}")
    checked = [] if problems else [f"teacher {name!r}: {sum(b[2] - b[1] for b in batches)} responses of "
                                   f"{len(batches)} batches written again: the same tokens and targets"]
    return problems, checked


def _job(store, teacher, settings, provenance, dataset, split, device):
    from .generate import GenerateJob

    generate = settings["generate"]
    batch = int(settings["batch_size"])
    config = DumpConfig(store=store.location, teacher=settings["teacher"],
                        weights=(provenance.get("teacher") or {}).get("weights"), dataset=dataset, split=split,
                        teacher_name=teacher.name, codec=settings["codec"], batch_size=batch,
                        batch_tokens=batch * settings["seq_len"], device=device, bf16=settings["bf16"],
                        seed=generate["seed"],
                        tokenizer=store.dataset["tokenizer"]["spec"], seq_len=settings["seq_len"], generate=True,
                        temperature=generate["temperature"], top_p=generate["top_p"],
                        max_new_tokens=generate["max_new_tokens"], progress=False)
    torch.manual_seed(config.seed)  # as dump does: a teacher without weights draws its own from it
    job = GenerateJob(config, Distributed())
    if job.settings["layout"] != settings["layout"]:  # the dump was given --rows-per-shard
        torch.manual_seed(config.seed)
        job = GenerateJob(replace(config, rows_per_shard=settings["layout"]["rows_per_shard"]), Distributed())
    job.follow_codec(teacher.codec)  # its rows as its record says they are kept
    return job


def _sample(job) -> list[tuple[int, int, int]]:
    """(shard, first, last) of SAMPLE_BATCHES of the dump's batches, spread from first to last."""
    batches = []
    for shard in range(job.num_shards):
        first, last = job._shard_sequences(shard)
        batches += [(shard, lo, min(lo + job.sequences_per_batch, last))
                    for lo in range(first, last, job.sequences_per_batch)]
    picks = np.unique(np.linspace(0, len(batches) - 1, min(SAMPLE_BATCHES, len(batches))).round().astype(int))
    return [batches[i] for i in picks]


def _stored_rows(store):
    from ..store._tokens import StoredSequences

    return StoredSequences(store)


def _compare(job, teacher, stored, shard: int, first: int, last: int) -> str | None:
    """What differs between batch [first, last) as stored and as generated again (None: nothing)."""
    length = job.config.seq_len
    start, _ = job.layout.shard_rows(shard, teacher.num_samples)
    uniforms = job.codec.uniforms(shard, (last - first) * length + first * length - start)
    draws = None if uniforms is None else uniforms[first * length - start:]
    again = job.writer.batch(first, last, draws)
    if again.bad.size:
        return "the teacher now gives NaN/inf logits"
    tokens, loss_mask, lengths = stored.rows(first, last)
    if not (np.array_equal(tokens, again.tokens) and np.array_equal(loss_mask, again.loss_mask)
            and np.array_equal(lengths, again.lengths)):
        changed = int((tokens != again.tokens).any(axis=1).sum())
        return f"the teacher writes other responses ({changed} of {last - first} differ)"
    kept = teacher.read_stored(first * length, last * length, arrays=list(again.stored))
    if all(np.array_equal(kept[n], again.stored[n], equal_nan=kept[n].dtype.kind == "f") for n in kept):
        return None
    codec = teacher.codec
    old, new = codec.decode({n: kept[n] for n in codec.arrays}), codec.decode({n: again.stored[n] for n in codec.arrays})
    rows = loss_mask.reshape(-1)
    old, new = old[rows], new[rows]
    scale = max(1.0, float(np.nanmax(np.abs(old))) if old.size else 1.0)
    if np.allclose(old, new, rtol=0, atol=TOLERANCE * scale, equal_nan=True):
        return None
    return f"the targets differ by up to {float(np.nanmax(np.abs(old - new))):.3g} (tolerance {TOLERANCE * scale:.3g})"
