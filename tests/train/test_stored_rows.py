"""The one reader of stored rows (``stored_rows.StoredRows``): streamed through a window, pickled,
or held in memory, it gives the rows as stored; an ensemble whose teachers cut their rows into
different chunks (and store them with different codecs) streams whole chunks of each."""

import pickle

import numpy as np
import torch

from logitcache.store import Layout, create_store, get_codec
from logitcache.stored_rows import StoredRows
from logitcache.train.paired_data import TeacherLogits


def store_with_teachers(path, layouts: dict[str, tuple[str, Layout]], n=300, classes=10):
    store = create_store(path, keys=[str(i) for i in range(n)], labels=np.arange(n) % classes,
                         dataset={"spec": "test"})
    rng = np.random.default_rng(0)
    for name, (codec, layout) in layouts.items():
        teacher = store.create_teacher(name, num_classes=classes, codec=get_codec(codec).for_classes(classes),
                                       layout=layout, settings={}, provenance={})
        logits = (rng.normal(size=(n, classes)) * 4).astype(np.float32)
        for shard in range(teacher.num_shards):
            start, stop = teacher.layout.shard_rows(shard, n)
            teacher.write_shard(shard, logits[start:stop])
        teacher.mark_complete()
    return store


def test_streamed_pickled_and_in_memory_rows_are_the_stored_rows(tmp_path):
    store = store_with_teachers(tmp_path / "s.zarr", {"t": ("u8", Layout(32, 128))})
    teacher = store.teacher("t")
    row_bytes = teacher.codec.bytes_per_sample(10)
    memory = StoredRows([teacher], row_bytes, budget_bytes=1 << 20)
    window = StoredRows([teacher], row_bytes, budget_bytes=2 * 32 * row_bytes)  # two chunks: batches in halves
    assert memory.in_memory and not window.in_memory and window.window_blocks == 2 and window.block_rows == 32
    expected = teacher.read_stored(0, 300)
    rows = np.random.default_rng(1).permutation(300)[:150]
    for reader in (memory, window, pickle.loads(pickle.dumps(window))):
        got = reader.take(rows)
        assert got.keys() == expected.keys()
        assert all(np.array_equal(got[name], expected[name][rows]) for name in expected)
        assert len(reader.cache) <= reader.window_blocks


def test_an_ensemble_of_teachers_with_different_chunks_streams_whole_chunks_of_each(tmp_path):
    layouts = {"a": ("fp16", Layout(32, 128)), "b": ("u8", Layout(64, 128))}
    store = store_with_teachers(tmp_path / "s.zarr", layouts)
    memory = TeacherLogits.open(store, "a,b", temperature=2.0)
    streamed = TeacherLogits.open(store, "a,b", budget_bytes=3 * 64 * 10 * 4, temperature=2.0)
    assert memory.in_memory and not streamed.in_memory
    assert streamed.block_rows == 64 and streamed.window_blocks == 3
    rows = np.random.default_rng(2).permutation(300)
    assert torch.equal(streamed.take(rows), memory.take(rows))
