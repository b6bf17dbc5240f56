"""A token store's own arrays (tokens, loss mask, lengths, keys) read a block of chunks at a time:
``verify`` checks them streamed, with memory a block's, and still finds a damaged or moved chunk and
a broken rule, as the whole read does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

import logitcache.store._token_writes as root_module
import logitcache.store._tokens as tokens_module
from logitcache.errors import CorruptStoreError
from logitcache.store import create_token_store, is_unfinished_creation, open_store, verify_store
from logitcache.store._root import create_streamed_token_store
from logitcache.store._tokens import check_stored_sequences, token_fingerprint
from tests.conftest import store_contents

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO / "data" / "text" / "shakespeare"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

SEQUENCES, LENGTH = 2048, 256  # 512 KiB of tokens and of mask, in 32 chunks of 64 sequences each


@pytest.fixture
def many_chunks(tmp_path, monkeypatch):
    """A byte-token store whose root arrays have 32 chunks, streamed one chunk per block."""
    monkeypatch.setattr(root_module, "INDEX_CHUNK_BYTES", 16 << 10)  # 64 sequences of 256 bytes a chunk
    monkeypatch.setattr(tokens_module, "STREAM_BLOCK_BYTES", 64 * LENGTH * 8)  # one such chunk a block
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (SEQUENCES, LENGTH), dtype=np.int64)
    lengths = rng.integers(2, LENGTH + 1, SEQUENCES)
    loss_mask = np.arange(LENGTH)[None, :] < lengths[:, None] - 1
    path = tmp_path / "lm.zarr"
    create_token_store(path, tokens=tokens, loss_mask=loss_mask, lengths=lengths,
                       keys=[f"doc#{i}" for i in range(SEQUENCES)], vocab_size=256,
                       tokenizer={"spec": "bytes"}, dataset={"spec": "test"})
    assert zarr.open_group(str(path), mode="r")["tokens"].chunks == (64, LENGTH)
    return path


def test_verify_reads_the_sequences_a_chunk_at_a_time(many_chunks):
    store = open_store(many_chunks)
    tracemalloc.start()
    try:
        counts = check_stored_sequences(store)
        streamed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert store.tokens.shape == (SEQUENCES, LENGTH)  # the whole read, for scale
        whole_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts["num_targets"] == int(store.loss_mask.sum()) and counts["num_tokens"] == int(store.lengths.sum())
    # a block: 64 sequences' tokens (16 KiB, 64 KiB as uint32 for the digest) and mask; whole: 2.5 MiB and more
    assert streamed_peak < 512 << 10 < (SEQUENCES * LENGTH * 4) < whole_peak, (streamed_peak, whole_peak)
    report = verify_store(many_chunks)
    assert report.problems == ["the store holds no teacher"]  # the sequences themselves are good
    assert f"{SEQUENCES} sequences of {LENGTH} positions" in report.checked[0], report


def _corrupt(path, _group):
    chunk = path / "tokens" / "c" / "5" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))


def _move(path, _group):  # a whole, valid chunk where another belongs: only the fingerprint can tell
    shutil.copyfile(path / "tokens" / "c" / "3" / "0", path / "tokens" / "c" / "7" / "0")


def _mask_into_padding(path, group):  # a broken rule under a fingerprint recomputed to match
    mask = group["loss_mask"][:]
    lengths = group["lengths"][:]
    mask[9, lengths[9] - 1] = True
    group["loss_mask"][:] = mask
    record = group.attrs["logitcache"]
    record["dataset"].update(num_targets=int(mask.sum()), fingerprint=token_fingerprint(
        group["keys"][:], group["tokens"][:], mask, lengths, 256))
    group.attrs["logitcache"] = record


@pytest.mark.parametrize("damage, says", [
    (_corrupt, "store array 'tokens' cannot be read"),
    (_move, "do not match the store's token fingerprint"),
    (_mask_into_padding, "loss_mask marks a position whose next token is padding"),
])
def test_streamed_verify_finds_a_damaged_moved_or_rule_breaking_chunk(many_chunks, damage, says):
    damage(many_chunks, zarr.open_group(str(many_chunks), mode="r+"))
    report = verify_store(many_chunks)
    assert says in report.problems[0] and len(report.problems) == 1, report.problems
    with pytest.raises(CorruptStoreError, match=says):  # the whole read says the same
        open_store(many_chunks).tokens


def test_a_dump_killed_mid_token_arrays_resumes_mid_corpus_and_ends_byte_identical(tmp_path):
    """A real kill (``tests.killpoints``: ``os._exit`` right after a chunk is stored, nothing cleaned
    up) after the 20th write into the tokens array, progress recorded after every block (a document);
    the same command continues from the last record, writing fewer chunks than a whole dump (counted
    by the same hook, without a kill), and the store is the uninterrupted dump's, byte for byte."""
    hamlet = (SHAKESPEARE / "hamlet.md").read_text(encoding="utf-8")[:24_000]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index in range(12):
        (corpus / f"{index:02d}.md").write_text(hamlet[index * 2000:(index + 1) * 2000], encoding="utf-8")
    settings = ",".join(["logitcache.store._token_writes.INDEX_CHUNK_BYTES=512",  # 8 sequences of 64 a chunk
                         "logitcache.store._token_writes.PROGRESS_SECONDS=0",
                         "logitcache.sources.token_datasets.BATCH_RECORDS=1"])

    def dump(store, kill: int) -> tuple[int, int]:
        """(exit code, token chunk writes) of the dump into ``store``, killed after ``kill`` (0: never)."""
        args = ["dump", str(store), "--teacher", "tests.factories:tiny_lm", "--dataset", f"text:{corpus}/*.md",
                "--tokenizer", "bytes", "--seq-len", "64", "--codec", "topk:4", "--rows-per-shard", str(64 * 128),
                "--no-progress"]
        env = {**ENV, "KILLPOINTS_KEY": "tokens/c/", "KILLPOINTS_SET": settings}
        done = subprocess.run([sys.executable, "-m", "tests.killpoints", str(kill), *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        written = [line for line in done.stderr.splitlines() if line.startswith("metadata writes: ")]
        return done.returncode, int(written[-1].split(": ")[1]) if written else -1

    whole = tmp_path / "whole.zarr"
    code, writes = dump(whole, 0)
    assert code == 0 and len(list((whole / "tokens" / "c").iterdir())) == 48, (code, writes)
    killed = tmp_path / "killed.zarr"
    assert dump(killed, 20) == (137, -1)
    code, resumed = dump(killed, 0)
    assert code == 0 and resumed <= writes - 8, (resumed, writes)  # the first blocks' chunks are not written again
    assert store_contents(killed) == store_contents(whole)


def _rows(tokens, lengths):
    loss_mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None] - 1
    return SimpleNamespace(tokens=tokens, loss_mask=loss_mask, lengths=lengths,
                           keys=[f"doc#{i}" for i in range(len(tokens))])


def _cut_short(path):
    """What a creation killed before its root attribute leaves: the arrays, no attribute."""
    group = zarr.open_group(str(path), mode="r+")
    del group.attrs["logitcache"]
    assert is_unfinished_creation(path)


@pytest.mark.parametrize("before", ["complete", "other rows", "damaged chunk", "image labels"])
def test_a_resumed_creation_keeps_the_chunks_that_hold_its_rows_and_ends_as_a_fresh_one(tmp_path, monkeypatch,
                                                                                          before):
    """The states a cut-short creation can leave, finished in-process: everything written (only the
    edge chunk is written again), a creation from other rows (rewritten from the first difference, the
    surplus dropped), a damaged chunk (rewritten), an image store's leftover labels (deleted)."""
    monkeypatch.setattr(root_module, "INDEX_CHUNK_BYTES", 16 << 10)  # 64 sequences a chunk
    rng = np.random.default_rng(1)
    rows = _rows(rng.integers(0, 256, (1000, LENGTH)), rng.integers(2, LENGTH + 1, 1000))
    made = {"vocab_size": 256, "tokenizer": {"spec": "bytes"}, "describe": lambda: {"spec": "test"}}
    fresh, path = tmp_path / "fresh.zarr", tmp_path / "resumed.zarr"
    create_streamed_token_store(fresh, [rows], **made)
    if before == "other rows":  # the same from chunk 2 on differs, and there were more of them
        other = rows.tokens.copy()
        other[200:] = (other[200:] + 1) % 256
        create_streamed_token_store(path, [_rows(np.concatenate([other, other[:300]]),
                                                 np.concatenate([rows.lengths, rows.lengths[:300]]))], **made)
    else:
        shutil.copytree(fresh, path)
    if before == "damaged chunk":
        (path / "tokens" / "c" / "9" / "0").write_bytes(b"not a chunk")
    if before == "image labels":
        zarr.open_group(str(path), mode="r+").create_array("labels", shape=(3,), dtype="int64")
    _cut_short(path)
    first_chunk = os.stat(path / "tokens" / "c" / "0" / "0").st_mtime_ns
    create_streamed_token_store(path, [rows], **made, resume=True)
    assert store_contents(path) == store_contents(fresh)
    assert os.stat(path / "tokens" / "c" / "0" / "0").st_mtime_ns == first_chunk  # kept, not written again


def test_ctrl_c_keeps_the_chunks_written_for_the_same_command_to_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(root_module, "INDEX_CHUNK_BYTES", 16 << 10)  # 64 sequences a chunk
    rng = np.random.default_rng(2)
    rows = _rows(rng.integers(0, 256, (600, LENGTH)), rng.integers(2, LENGTH + 1, 600))
    blocks = [_rows(rows.tokens[i:i + 100], rows.lengths[i:i + 100]) for i in range(0, 600, 100)]
    for block, first in zip(blocks, range(0, 600, 100)):
        block.keys = rows.keys[first:first + 100]

    def interrupted():
        yield from blocks[:3]
        raise KeyboardInterrupt

    made = {"vocab_size": 256, "tokenizer": {"spec": "bytes"}, "describe": lambda: {"spec": "test"}}
    path, fresh = tmp_path / "resumed.zarr", tmp_path / "fresh.zarr"
    with pytest.raises(KeyboardInterrupt):
        create_streamed_token_store(path, interrupted(), **made)
    assert is_unfinished_creation(path) and len(list((path / "tokens" / "c").iterdir())) == 4  # 300 rows: 4 chunks
    create_streamed_token_store(path, blocks, **made, resume=True)
    create_streamed_token_store(fresh, blocks, **made)
    assert store_contents(path) == store_contents(fresh)


@pytest.mark.parametrize("index_rows", [65536, 16])
@pytest.mark.parametrize("interrupt_at", [1, 3, 6, 9])
def test_a_stream_resumes_mid_corpus_from_its_last_progress_record(tmp_path, monkeypatch, interrupt_at, index_rows):
    """With a progress record after every block, a creation interrupted while tokenising record K is
    continued from the last record: the records before are not tokenised again, and the store is a
    fresh creation's, byte for byte. Keys and lengths come from the record while their arrays are
    not made (65,536 rows a chunk), from the arrays' partial chunks once they are (16), as tokens do."""
    from logitcache.sources import get_tokenizer
    from logitcache.sources.token_datasets import stream_token_dataset

    monkeypatch.setattr(root_module, "INDEX_CHUNK_BYTES", 5 * 64)  # five sequences of tokens a chunk
    monkeypatch.setattr(root_module, "INDEX_CHUNK_ROWS", index_rows)
    monkeypatch.setattr(root_module, "PROGRESS_SECONDS", 0.0)
    import logitcache.sources.token_datasets as datasets_module

    monkeypatch.setattr(datasets_module, "BATCH_RECORDS", 1)  # a block per document
    hamlet = (SHAKESPEARE / "hamlet.md").read_text(encoding="utf-8")[:12_000]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index in range(10):
        (corpus / f"{index:02d}.md").write_text(hamlet[index * 1200:(index + 1) * 1200], encoding="utf-8")
    tokenizer, spec = get_tokenizer("bytes"), f"text:{corpus}/*.md"
    made = {"vocab_size": 256, "tokenizer": {"spec": "bytes"}}

    def create(path, resume=False):
        stream = stream_token_dataset(spec, tokenizer, 64)
        return create_streamed_token_store(path, stream, **made, describe=lambda: stream.description, resume=resume)

    fresh, path = tmp_path / "fresh.zarr", tmp_path / "resumed.zarr"
    create(fresh)
    encoded, interrupting = [], [True]

    def encode_batch(texts, real=tokenizer.encode_batch):
        if interrupting[0] and len(encoded) == interrupt_at:
            raise KeyboardInterrupt
        encoded.extend(texts)
        return real(texts)

    monkeypatch.setattr(tokenizer, "encode_batch", encode_batch)
    with pytest.raises(KeyboardInterrupt):
        create(path)
    assert is_unfinished_creation(path) and "logitcache_creating" in zarr.open_group(str(path)).attrs
    encoded.clear()
    interrupting[0] = False
    create(path, resume=True)
    assert len(encoded) == 10 - interrupt_at  # only the records after the last progress record
    assert store_contents(path) == store_contents(fresh)
