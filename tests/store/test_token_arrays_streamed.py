"""A token store's own arrays (tokens, loss mask, lengths, keys) read a block of chunks at a time:
``verify`` checks them streamed, with memory a block's, and still finds a damaged or moved chunk and
a broken rule, as the whole read does."""

from __future__ import annotations

import shutil
import tracemalloc

import numpy as np
import pytest
import zarr

import logitcache.store._root as root_module
import logitcache.store._tokens as tokens_module
from logitcache.errors import CorruptStoreError
from logitcache.store import create_token_store, open_store, verify_store
from logitcache.store._tokens import check_stored_sequences, token_fingerprint

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
