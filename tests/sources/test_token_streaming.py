"""Token datasets and token stores streamed: the same rows whatever the batches, the same store bytes
written a block at a time, the layout from a bounded count, and a kill while the token arrays are
written finished by the same command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import logitcache.sources._token_corpora as corpora
import logitcache.sources.token_datasets as tokens_module
from logitcache.errors import DatasetError
from logitcache.sources import get_token_dataset, get_tokenizer
from logitcache.sources.token_datasets import stream_token_dataset
from logitcache.store import create_token_store, open_store, verify_store
from logitcache.store._root import create_streamed_token_store
from logitcache.store._tokens import (
    StoredSequences,
    choose_token_layout,
    stored_token_fingerprint,
    token_layout_horizon,
)
from tests import killpoints
from tests.conftest import invoke, store_contents

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO / "data" / "text" / "shakespeare"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Documents of every size, empty ones too, with non-ASCII text."""
    directory = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(3)
    words = ["the", "king", "é", "中文", "fool", "\n", "!"]
    for index, size in enumerate([0, 1, 2, 3, 5, 17, 60, 200, 1, 900, 0, 40]):
        (directory / f"{index:02d}.txt").write_text(" ".join(rng.choice(words, size).tolist()), encoding="utf-8")
    return directory


def same_rows(a, b) -> bool:
    return (a.keys == b.keys and a.description == b.description
            and all(np.array_equal(getattr(a, n), getattr(b, n)) for n in ("tokens", "loss_mask", "lengths")))


@pytest.mark.parametrize("split", ["all", "train", "val"])
@pytest.mark.parametrize("seq_len, pack", [(2, None), (3, None), (7, False), (64, None)])
def test_rows_are_the_same_whatever_the_batches(corpus, monkeypatch, split, seq_len, pack):
    tokenizer = get_tokenizer("bytes")
    whole = get_token_dataset(f"text:{corpus}/*.txt@{split}", tokenizer, seq_len, pack=pack)
    for records, chars in ((1, 1), (2, 30), (5, 10_000)):
        monkeypatch.setattr(tokens_module, "BATCH_RECORDS", records)
        monkeypatch.setattr(tokens_module, "BATCH_CHARS", chars)
        assert same_rows(get_token_dataset(f"text:{corpus}/*.txt@{split}", tokenizer, seq_len, pack=pack), whole)


def test_records_in_small_batches_keep_their_split_and_keys(tmp_path, monkeypatch):
    path = tmp_path / "lines.jsonl"
    path.write_text("".join(f'{{"text": "line {i} {"ab" * (i % 7)}"}}\n' for i in range(45)), encoding="utf-8")
    tokenizer = get_tokenizer("bytes")
    whole = {split: get_token_dataset(f"jsonl:{path}@{split}", tokenizer, 32) for split in ("train", "val")}
    monkeypatch.setattr(tokens_module, "BATCH_RECORDS", 4)
    monkeypatch.setattr(corpora, "ROWS_PER_READ", 3)
    for split, rows in whole.items():
        assert same_rows(get_token_dataset(f"jsonl:{path}@{split}", tokenizer, 32), rows)
    assert whole["val"].keys == [f"lines.jsonl:{i}" for i in (10, 20, 30, 40)]


def test_a_stream_reads_again_each_pass_and_is_described_after_one(corpus):
    stream = stream_token_dataset(f"text:{corpus}/*.txt", get_tokenizer("bytes"), 16)
    assert stream.description is None
    assert stream.count_rows(up_to=3) == 3 and stream.description is None  # stopped early: not described
    first = [rows.keys for rows in stream]
    assert stream.description["rows"] == sum(map(len, first))
    assert [rows.keys for rows in stream] == first
    assert stream.count_rows(up_to=10**9) == stream.description["rows"]


def test_a_bad_spec_fails_when_the_stream_is_made_and_a_bad_record_when_it_is_read(tmp_path):
    with pytest.raises(DatasetError, match="no file matches"):
        stream_token_dataset(f"text:{tmp_path}/none/*.txt", get_tokenizer("bytes"), 8)
    (tmp_path / "a.txt").write_text("To be")
    (tmp_path / "b.txt").write_bytes("café".encode("latin-1"))
    stream = stream_token_dataset(f"text:{tmp_path}/*.txt", get_tokenizer("bytes"), 8)
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        list(stream)


def test_encode_batch_gives_encode_s_ids(tmp_path):
    from tests.sources.test_token_sources import write_tokenizer

    text = (SHAKESPEARE / "hamlet.md").read_text(encoding="utf-8")
    directory = write_tokenizer(tmp_path / "bpe", text[:20000], extra_tokens=["<|user|>"])
    pieces = [text[i: i + 997] for i in range(0, 30000, 997)] + ["", "<|user|> hi<|endoftext|>", "é中文\n\t"]
    for tokenizer in (get_tokenizer("bytes"), get_tokenizer(f"hf:{directory}")):
        assert [ids.tolist() for ids in tokenizer.encode_batch(pieces)] == [tokenizer.encode(p) for p in pieces]


def blocks_of(source, cuts):
    from logitcache.sources._token_packing import TokenRows

    edges = [0, *cuts, len(source.keys)]
    return [TokenRows(source.tokens[a:b], source.loss_mask[a:b], source.lengths[a:b], source.keys[a:b])
            for a, b in zip(edges, edges[1:])]


def test_a_store_written_a_block_at_a_time_has_the_bytes_of_one_written_at_once(tmp_path, monkeypatch):
    import logitcache.store._token_writes as root

    monkeypatch.setattr(root, "INDEX_CHUNK_ROWS", 8)  # many chunks of keys and lengths
    monkeypatch.setattr(root, "INDEX_CHUNK_BYTES", 5 * 64)  # five sequences of tokens a chunk
    source = blocks_of(get_token_dataset(f"text:{SHAKESPEARE}/hamlet.md", get_tokenizer("bytes"), 64), [101])[0]
    whole = tmp_path / "whole.zarr"
    create_token_store(whole, tokens=source.tokens, loss_mask=source.loss_mask, lengths=source.lengths,
                       keys=source.keys, vocab_size=256, tokenizer={"spec": "bytes"}, dataset={"spec": "x"})
    for index, cuts in enumerate(([1], [3, 4, 5, 60], list(range(1, 101)), [7, 8, 9, 100])):
        streamed = tmp_path / f"streamed{index}.zarr"
        create_streamed_token_store(streamed, blocks_of(source, cuts), vocab_size=256, tokenizer={"spec": "bytes"},
                                    describe=lambda: {"spec": "x"})
        assert store_contents(streamed) == store_contents(whole), cuts
    store = open_store(whole)
    assert stored_token_fingerprint(store.group, 256) == store.fingerprint
    assert "match token fingerprint" in " ".join(verify_store(whole).checked)
    sequences = StoredSequences(store)
    tokens, loss_mask, lengths = sequences.rows(3, 17)
    assert np.array_equal(tokens, source.tokens[3:17]) and np.array_equal(lengths, source.lengths[3:17])
    assert sequences.keys(99, 101) == source.keys[99:101]
    assert sequences.differs_from(blocks_of(source, [50])) == (101, False)
    other = blocks_of(source, [50])
    other[1].tokens = other[1].tokens.copy()
    other[1].tokens[-1, 0] ^= 1
    assert sequences.differs_from(other) == (101, True)
    assert sequences.differs_from(blocks_of(source, [50])[:1]) == (50, True)


def test_a_failed_streamed_creation_leaves_nothing(tmp_path):
    def rows():
        yield from blocks_of(get_token_dataset(f"text:{SHAKESPEARE}/hamlet.md", get_tokenizer("bytes"), 64), [5])[:1]
        raise DatasetError("the corpus broke")

    with pytest.raises(DatasetError, match="the corpus broke"):
        create_streamed_token_store(tmp_path / "s.zarr", rows(), vocab_size=256, tokenizer={}, describe=dict)
    assert not [p for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()]
    with pytest.raises(DatasetError, match="tokens must be"):
        create_streamed_token_store(tmp_path / "t.zarr", [], vocab_size=256, tokenizer={}, describe=dict)


@pytest.mark.parametrize("row_bytes", [4, 40, 1000, 70_000])
@pytest.mark.parametrize("seq_len", [2, 64, 2048])
def test_the_layout_needs_the_rows_counted_only_to_its_horizon(row_bytes, seq_len):
    horizon = token_layout_horizon(seq_len, row_bytes)
    for sequences in (horizon, horizon + 1, 2 * horizon + 3, 10**7):
        assert choose_token_layout(sequences, seq_len, row_bytes) == choose_token_layout(horizon, seq_len, row_bytes)


def test_a_dump_killed_while_writing_its_token_arrays_is_finished_by_the_same_command(tmp_path, monkeypatch):
    text = tmp_path / "hamlet.md"
    text.write_text((SHAKESPEARE / "hamlet.md").read_text(encoding="utf-8")[:24_000], encoding="utf-8")
    args = ["dump", None, "--teacher", "tests.factories:tiny_lm", "--dataset", f"text:{text}", "--tokenizer",
            "bytes", "--seq-len", "64", "--codec", "topk:4", "--rows-per-shard", str(64 * 128), "--no-progress"]
    whole = tmp_path / "whole.zarr"
    assert invoke(*[whole if a is None else a for a in args]).exit_code == 0
    for kill_at, key in ((1, "tokens/c/"), (1, "lengths/zarr.json"), (1, "loss_mask/c/")):
        store = tmp_path / f"killed-{kill_at}-{key.replace('/', '_')}.zarr"
        command = [str(store) if a is None else a for a in args]
        killed = killpoints.run(kill_at, command, cwd=REPO, timeout=300, env={**ENV, "KILLPOINTS_KEY": key})
        assert killed.returncode == 137, killed.stderr
        assert invoke(*command).exit_code == 0
        assert store_contents(store) == store_contents(whole), key


@pytest.mark.parametrize("split", ["all", "val"])
@pytest.mark.parametrize("seq_len, pack", [(3, None), (7, False), (64, None)])
def test_a_stream_resumed_from_any_blocks_position_gives_the_rest_and_the_same_description(corpus, monkeypatch,
                                                                                           split, seq_len, pack):
    """``rows_from(position)`` continues a stream mid-corpus: the records before are read, not
    tokenised, and the rows after, the counts and the description are those of one whole pass."""
    monkeypatch.setattr(tokens_module, "BATCH_RECORDS", 2)
    tokenizer = get_tokenizer("bytes")
    stream = stream_token_dataset(f"text:{corpus}/*.txt@{split}", tokenizer, seq_len, pack=pack)
    blocks, positions = [], []
    for block in stream:
        blocks.append(block)
        positions.append(stream.position)
    whole = stream.description
    assert len(blocks) > 2
    encoded = []
    monkeypatch.setattr(tokenizer, "encode_batch", lambda texts, _real=tokenizer.encode_batch:
                        encoded.extend(texts) or _real(texts))
    for k, position in enumerate(positions):
        encoded.clear()
        again = stream_token_dataset(f"text:{corpus}/*.txt@{split}", tokenizer, seq_len, pack=pack)
        rest = list(again.rows_from(json.loads(json.dumps(position))))  # as a store keeps it: JSON
        assert len(rest) == len(blocks) - k - 1 and all(same_block(a, b) for a, b in zip(rest, blocks[k + 1:]))
        assert again.description == whole
        assert len(encoded) <= 12 - position["records"]  # the records before were not tokenised


def same_block(a, b) -> bool:
    return a.keys == b.keys and all(np.array_equal(getattr(a, n), getattr(b, n)) for n in ("tokens", "loss_mask",
                                                                                              "lengths"))


@pytest.mark.parametrize("spec_split", ["val", "train"])
def test_a_record_stream_resumed_mid_corpus_keeps_its_record_split(tmp_path, monkeypatch, spec_split):
    """Records split by index (every 10th is val): resumed, the index goes on from the records read."""
    monkeypatch.setattr(tokens_module, "BATCH_RECORDS", 3)
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": "w " * (i % 5 + 1) + str(i)}) for i in range(40)))
    tokenizer, spec = get_tokenizer("bytes"), f"jsonl:{path}@{spec_split}"
    stream = stream_token_dataset(spec, tokenizer, 16)
    blocks, positions = [], []
    for block in stream:
        blocks.append(block)
        positions.append(json.loads(json.dumps(stream.position)))
    for k, position in enumerate(positions):
        again = stream_token_dataset(spec, tokenizer, 16)
        rest = list(again.rows_from(position))
        assert len(rest) == len(blocks) - k - 1 and all(same_block(a, b) for a, b in zip(rest, blocks[k + 1:]))
        assert again.description == stream.description
