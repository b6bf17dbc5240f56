"""A shard of teacher-written rows (``dump --generate``): the responses and, from the same logits
that chose each token, the teacher's stored targets; and the journal that keeps finished shards.

    >>> writer = ResponseWriter(decoder, reducer, prompts, sampling, seq_len, eos_id, pad_id, batch)
    >>> rows = writer.shard(first, last, codec_uniforms)   # GeneratedRows of sequences [first, last)
    >>> journal = Journal(Path("lm.zarr.generating"), settings); journal.save(shard, rows)

Row ``i * L + t`` holds the teacher's distribution over the token after position t, so the step
that chooses response token j (at position ``len(prompt) + j``) reduces its logits into row
``len(prompt) + j - 1``, and the loss mask is True exactly there. Every other row (the prompt's,
the padding's) holds raw logits 0, the uniform distribution, as a token dump stores padding: the
teacher wrote no response there, and no loss reads it.

The store's root (its token sequences) must exist before any teacher row, but the sequences are
what the teacher writes; so a dump generates every shard first, each kept whole in the journal (a
file written whole, then renamed), makes the store from them, then writes the teacher's shards
from them. A killed dump's journal keeps the shards it finished; a shard missing from it is
generated again, to the same bytes (the batches are the shard's, the draws the rows').
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CorruptStoreError
from ..whole_files import write_text_whole, write_whole
from .generate_steps import Sampling, choose_tokens, row_uniforms
from .reduce import STATS

STORED_PREFIX = "stored."  # a journal file's codec arrays, beside the sequences


@dataclass
class GeneratedRows:
    """Consecutive sequences the teacher wrote (``TokenRows``' fields) and their rows' stored targets."""

    tokens: np.ndarray  # (b, L) int64
    loss_mask: np.ndarray  # (b, L) bool: True where the next token is a response token
    lengths: np.ndarray  # (b,) int64
    keys: list[str]
    stored: dict  # the codec's arrays (and log-sum-exp), b * L rows
    stats: np.ndarray  # float64, as reduce.STATS, over the response positions
    bad: np.ndarray  # rows (of these b * L) whose logits were not finite

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def join(parts: list[GeneratedRows]) -> GeneratedRows:
        offsets = np.cumsum([0] + [p.tokens.size for p in parts[:-1]])
        return GeneratedRows(np.concatenate([p.tokens for p in parts]), np.concatenate([p.loss_mask for p in parts]),
                             np.concatenate([p.lengths for p in parts]), [k for p in parts for k in p.keys],
                             {name: np.concatenate([p.stored[name] for p in parts]) for name in parts[0].stored},
                             np.sum([p.stats for p in parts], axis=0),
                             np.concatenate([p.bad + offset for p, offset in zip(parts, offsets)]).astype(np.int64))


class _ZeroLogits:
    """(P, V) raw logits 0, made a slice at a time (the reducer only slices and reads ``shape``)."""

    def __init__(self, positions: int, vocab: int, device):
        self.shape, self.device = (positions, vocab), device

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return torch.zeros((len(range(*rows.indices(self.shape[0]))), self.shape[1]), device=self.device)


class ResponseWriter:
    """Writes the responses of prompts a batch at a time, reducing each step's logits as it goes."""

    def __init__(self, decoder, reducer, prompts, sampling: Sampling, seq_len: int, eos_id: int | None,
                 pad_id: int, vocab: int, device):
        self.decoder, self.reducer, self.prompts, self.sampling = decoder, reducer, prompts, sampling
        self.seq_len, self.eos_id, self.pad_id, self.vocab, self.device = seq_len, eos_id, pad_id, vocab, device

    def batch(self, first: int, last: int, codec_uniforms: np.ndarray | None) -> GeneratedRows:
        """Sequences [first, last): prompt ``first + i`` and the teacher's response to it.
        ``codec_uniforms``: the codec's draws for these (last - first) * L rows, or None."""
        length, prompts = self.seq_len, self.prompts.ids[first:last]
        size = last - first
        tokens = np.full((size, length), self.pad_id, dtype=np.int64)
        for row, prompt in enumerate(prompts):
            tokens[row, :len(prompt)] = prompt
        lengths = np.asarray([len(p) for p in prompts], dtype=np.int64)
        draws = torch.as_tensor(np.stack([row_uniforms(self.sampling, first + r) for r in range(size)]))
        targets, pieces, stats, bad = [], [], np.zeros(len(STATS)), []
        with torch.inference_mode():
            logits = self.decoder.start(prompts, length)  # (B, V)
            going = np.arange(size)
            for step in range(self.sampling.max_new_tokens):
                chosen = choose_tokens(logits, draws[going, step], self.sampling)  # (b,)
                rows = going * length + lengths[going] - 1  # the rows whose next token was chosen
                stored, step_stats, step_bad = self.reducer(
                    logits, chosen, torch.ones(len(going), dtype=torch.bool, device=logits.device),
                    torch.ones(len(going), dtype=torch.bool, device=logits.device),
                    None if codec_uniforms is None else codec_uniforms[rows])
                bad += rows[step_bad.astype(np.int64)].tolist()
                targets.append(rows)
                pieces.append(stored)
                stats += step_stats
                chosen_ids = chosen.cpu().numpy()
                tokens[going, lengths[going]] = chosen_ids
                lengths[going] += 1
                goes_on = np.ones(len(going), dtype=bool) if self.eos_id is None else chosen_ids != self.eos_id
                if step + 1 == self.sampling.max_new_tokens or not goes_on.any():
                    break
                going = going[goes_on]
                logits = self.decoder.advance(torch.as_tensor(going, device=logits.device), chosen[goes_on])
        keys = self.prompts.keys[first:last]
        if bad:
            return GeneratedRows(tokens, np.zeros_like(tokens, dtype=bool), lengths, keys, {}, stats,
                                 np.asarray(bad, dtype=np.int64))
        return self._assemble(tokens, lengths, keys, np.concatenate(targets), pieces, stats, codec_uniforms)

    def _assemble(self, tokens, lengths, keys, targets, pieces, stats, codec_uniforms) -> GeneratedRows:
        """The batch's rows in order: the response rows from their steps, every other row the
        reduction of raw logits 0 (with its own codec draws, as a token dump's padding)."""
        positions = tokens.size
        loss_mask = np.zeros(positions, dtype=bool)
        loss_mask[targets] = True
        others = np.flatnonzero(~loss_mask)
        no = torch.zeros(len(others), dtype=torch.bool, device=self.device)
        filler, _, _ = self.reducer(_ZeroLogits(len(others), self.vocab, self.device),
                                    torch.zeros(len(others), dtype=torch.long, device=self.device), no, no,
                                    None if codec_uniforms is None else codec_uniforms[others])
        stored = {}
        for name in filler:
            values = np.concatenate([piece[name] for piece in pieces])
            stored[name] = np.empty((positions, *values.shape[1:]), dtype=values.dtype)
            stored[name][targets], stored[name][others] = values, filler[name]
        return GeneratedRows(tokens, loss_mask.reshape(tokens.shape), lengths, keys, stored, stats,
                             np.zeros(0, dtype=np.int64))


class Journal:
    """Finished shards of generated rows, one file each, in a folder beside the store; a folder
    made with other settings is emptied first. Removed once the teacher is complete."""

    def __init__(self, folder: Path, settings: dict):
        self.folder, self.settings = Path(folder), settings

    def open(self) -> None:
        recorded = self.folder / "settings.json"
        text = json.dumps(self.settings, sort_keys=True)
        if self.folder.exists() and (not recorded.is_file() or recorded.read_text() != text):
            shutil.rmtree(self.folder)
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            write_text_whole(recorded, text)

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:06d}.npz"

    def has(self, shard: int) -> bool:
        return self.path(shard).is_file()

    def save(self, shard: int, rows: GeneratedRows) -> None:
        arrays = {"tokens": rows.tokens, "loss_mask": rows.loss_mask, "lengths": rows.lengths,
                  "keys": np.asarray(rows.keys, dtype=str), "stats": rows.stats,
                  **{STORED_PREFIX + name: values for name, values in rows.stored.items()}}

        def write(partial: Path) -> None:
            with open(partial, "wb") as handle:
                np.savez(handle, **arrays)

        write_whole(self.path(shard), write)

    def load(self, shard: int) -> GeneratedRows:
        try:
            with np.load(self.path(shard), allow_pickle=False) as saved:
                arrays = {name: saved[name] for name in saved.files}
            return GeneratedRows(arrays["tokens"], arrays["loss_mask"], arrays["lengths"],
                                 [str(k) for k in arrays["keys"]],
                                 {n[len(STORED_PREFIX):]: v for n, v in arrays.items() if n.startswith(STORED_PREFIX)},
                                 arrays["stats"], np.zeros(0, dtype=np.int64))
        except (OSError, ValueError, KeyError) as err:
            raise CorruptStoreError(f"{self.path(shard)} cannot be read ({err}); delete {self.folder} and rerun "
                                    "(its shards are generated again, to the same bytes)") from None

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
