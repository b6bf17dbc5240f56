"""The fast paths of issue 15 against the slow ones they replace: shard bytes against zarr's (every
array kind: codecs, views, features, a token teacher's logsumexp; an array the fast path cannot
serve left to zarr), parallel writers against one, batched targets and features against per-row
ones, the stored-precision table against ``Teacher.decode``, workers against none, the vectorised
sample codec against its loop, and the KL loss's written-out gradient against autograd's."""

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from logitcache.codecs.codec_interface import logsumexp
from logitcache.codecs.sample import SAMPLE_SEED
from logitcache.dump.loop import AccuracyCounts
from logitcache.errors import CorruptStoreError
from logitcache.features.cached_features import FeaturePairs, TeacherFeatures
from logitcache.losses import kd_loss
from logitcache.losses._kd_gradient import KDivergence as _KDivergence
from logitcache.losses._kd_gradient import kd_value as _kd_value
from logitcache.sources import get_dataset
from logitcache.store import (
    BackgroundWriter,
    _shard_io,
    choose_layout,
    create_store,
    get_codec,
    open_store,
)
from logitcache.store._shards import MISSING, ShardBytes
from logitcache.store._teacher import Teacher
from logitcache.train.paired_data import EpochSampler, PairedDataset, TeacherLogits
from logitcache.views.replay import ViewReplay
from tests.conftest import invoke, make_store, store_contents

CODECS = ["fp32", "fp16", "bf16", "u8", "topk:3", "sample:4:2"]


def logits_like_a_teacher(n, classes, seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, classes)) * rng.uniform(0.5, 8, (n, 1))).astype(np.float32)
    logits[:40] = 2.0  # constant rows: a u8 chunk of them is all fill (0), which zarr leaves out
    return logits


def new_teacher(path, codec, n=300, classes=10):
    store = create_store(path, keys=[str(i) for i in range(n)], labels=np.arange(n) % classes,
                         dataset={"spec": "test"})
    layout = choose_layout(n, classes, 1, rows_per_chunk=32, rows_per_shard=128)
    return store.create_teacher("t", num_classes=classes, codec=get_codec(codec).for_classes(classes), layout=layout,
                                settings={}, provenance={})


def write_all(teacher, logits):
    for shard in range(teacher.num_shards):
        start, stop = teacher.layout.shard_rows(shard, teacher.num_samples)
        teacher.write_shard(shard, logits[start:stop])


@pytest.mark.parametrize("codec", CODECS)
def test_shard_bytes_are_the_bytes_zarr_writes(tmp_path, codec):
    teacher = new_teacher(tmp_path / "s.zarr", codec)
    teacher.__dict__["_io"] = None  # zarr writes this one
    write_all(teacher, logits_like_a_teacher(300, 10))
    store = teacher.group.store_path.store
    for name, array in teacher.arrays.items():
        shards, values = ShardBytes.for_array(array), array[:]
        for shard in range(teacher.num_shards):
            start, stop = teacher.layout.shard_rows(shard, teacher.num_samples)
            key = f"{array.store_path.path}/{array.metadata.encode_chunk_key((shard, 0)[:array.ndim])}"
            written = sync(store.get(key, prototype=default_buffer_prototype()))
            ours = shards.encode(values[start:stop])
            assert (written is None and ours is None) or written.to_bytes() == ours, (name, shard)
    if codec == "u8":  # the all-fill chunk really was left out, by both
        data = ShardBytes.for_array(teacher.arrays["logits"]).encode(teacher.arrays["logits"][:128])
        assert ShardBytes.for_array(teacher.arrays["logits"]).index(data[-4 * 16 - 4:])[0, 0] == MISSING


def test_fast_writes_make_the_store_zarr_makes_and_read_the_same(tmp_path):
    logits = logits_like_a_teacher(300, 10)
    fast, slow = new_teacher(tmp_path / "fast.zarr", "u8"), new_teacher(tmp_path / "slow.zarr", "u8")
    slow.__dict__["_io"] = None
    write_all(fast, logits)
    write_all(slow, logits)
    assert store_contents(tmp_path / "fast.zarr") == store_contents(tmp_path / "slow.zarr")
    teacher = open_store(tmp_path / "fast.zarr").teacher("t")
    assert teacher._io is not None
    for start, stop in [(0, 300), (5, 77), (127, 129), (299, 300), (128, 256)]:
        ours = teacher.read_stored(start, stop)
        assert all(np.array_equal(ours[n], a[start:stop]) for n, a in teacher.arrays.items())
    chunks = teacher.read_chunks([9, 0, 3])
    assert np.array_equal(chunks[0]["logits"], teacher.arrays["logits"][288:300])


def test_a_flipped_byte_or_a_short_shard_fails_the_fast_read(tmp_path):
    teacher = new_teacher(tmp_path / "s.zarr", "fp16")
    write_all(teacher, logits_like_a_teacher(300, 10))
    teacher.mark_complete()
    chunk = tmp_path / "s.zarr/teachers/t/logits/c/1/0"
    data = bytearray(chunk.read_bytes())
    data[100] ^= 1
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="rows 128-160: checksum mismatch"):
        open_store(tmp_path / "s.zarr").teacher("t").read(130, 140)
    chunk.write_bytes(bytes(data[:-10]))
    with pytest.raises(CorruptStoreError, match="checksum mismatch"):
        open_store(tmp_path / "s.zarr").teacher("t").read_chunks([5])


def test_an_object_that_reads_back_differently_is_not_marked_done(tmp_path, monkeypatch):
    teacher = new_teacher(tmp_path / "s.zarr", "fp16")
    original = zarr.storage.LocalStore.set

    async def bad_disk(self, key, value):
        if "/logits/c/" in key:
            value = default_buffer_prototype().buffer.from_bytes(value.to_bytes()[:-1] + b"\0")
        await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", bad_disk)
    with pytest.raises(CorruptStoreError, match="shard 0 of 'logits' read back differently"):
        teacher.write_shard(0, logits_like_a_teacher(128, 10))
    assert not teacher.shard_done().any()


def test_parallel_writers_write_the_store_one_writer_writes(tmp_path, monkeypatch):
    stores = {}
    for threads in (1, 4):
        monkeypatch.setattr(_shard_io, "threads", lambda threads=threads: threads)
        stores[threads] = make_store(tmp_path / f"{threads}.zarr", codec="sample:3", rows_per_shard=64)
    assert store_contents(stores[1]) == store_contents(stores[4])


def test_parallel_writers_finish_in_any_order_and_count_in_shard_order(tmp_path):
    teacher = new_teacher(tmp_path / "s.zarr", "sample:4:2:fp16", n=1000)  # per class: a mass to sum in order
    logits = logits_like_a_teacher(1000, 10)
    counted = AccuracyCounts(np.arange(1000) % 10, teacher)
    calls = []
    with BackgroundWriter(teacher, on_written=lambda s, stored, raw: (calls.append(s), counted(s, stored, raw)),
                          threads=4) as writer:
        for shard in reversed(range(teacher.num_shards)):
            start, stop = teacher.layout.shard_rows(shard, 1000)
            writer.submit(shard, logits[start:stop])
    assert sorted(calls) == list(range(teacher.num_shards)) and teacher.shard_done().all()
    in_order = AccuracyCounts(np.arange(1000) % 10, teacher)
    for shard in range(teacher.num_shards):
        start, stop = teacher.layout.shard_rows(shard, 1000)
        in_order(shard, teacher.read_stored(start, stop), logits[start:stop])
    assert counted.totals() == in_order.totals() and counted.totals()[3] == 1000  # the teacher's own rows too


def sample_codec_loop(codec, logits, shard):
    """SampleCodec.encode_shard as it was: one row at a time."""
    wide = logits.astype(np.float64) / codec.temperature
    logp = wide - logsumexp(wide)[:, None]
    cdf = np.cumsum(np.exp(logp), axis=1)
    draws = np.random.default_rng([SAMPLE_SEED, shard]).random((len(logits), codec.k))
    # ids as gaps (format v6): a row's first id, then each id less the one before less one; padding 0
    padding = 0 if codec.index_gaps else codec.arrays["indices"].fill_value
    out = {"indices": np.full((len(logits), codec.k), padding, codec.arrays["indices"].dtype),
           "counts": np.zeros((len(logits), codec.k), np.uint16),
           "logprobs": np.full((len(logits), codec.k), np.nan, "float16" if codec.logprob_sum else codec.values),
           "logprob_sum": np.full(len(logits), np.nan, np.float32)}  # format v7: sum_k (count_k / K) log p_k
    for row in range(len(logits)):
        picked = np.minimum(np.searchsorted(cdf[row], draws[row] * cdf[row, -1], side="right"), logits.shape[1] - 1)
        unique, count = np.unique(picked, return_counts=True)
        ids = np.concatenate([unique[:1], np.diff(unique) - 1]) if codec.index_gaps else unique
        out["indices"][row, :len(unique)], out["counts"][row, :len(unique)] = ids, count
        out["logprobs"][row, :len(unique)] = logp[row, unique]
        terms = np.zeros(codec.k)
        terms[:len(unique)] = count * logp[row, unique]
        out["logprob_sum"][row] = terms.sum() / codec.k
    return {name: values for name, values in out.items() if name in codec.arrays}


@pytest.mark.parametrize("classes, spec", [(1, "sample:3"), (7, "sample:12:0.5"), (300, "sample:50:4:fp32"),
                                           (300, "sample:12:fp16"), (4096, "sample:12")])
def test_the_vectorised_sample_codec_draws_what_the_loop_drew(classes, spec):
    codec = get_codec(spec).for_classes(classes)
    logits = logits_like_a_teacher(200, classes, seed=classes)
    for shard in (0, 3):
        ours, loop = codec.encode_shard(logits, shard), sample_codec_loop(codec, logits, shard)
        assert ours.keys() == loop.keys() and all(np.array_equal(ours[k].view(np.uint8), loop[k].view(np.uint8))
                                                  for k in loop)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "bf16", "u8"])
def test_label_hits_rank_as_top_classes_does(codec):
    rng = np.random.default_rng(1)
    logits = np.round(rng.normal(size=(3000, 7)) * 2).astype(np.float32)  # ties everywhere
    stored, labels = get_codec(codec).encode(logits), rng.integers(0, 7, 3000)
    top = get_codec(codec).top_classes(stored, 5)
    top1, top5 = get_codec(codec).label_hits(stored, labels)
    assert np.array_equal(top1, top[:, 0] == labels) and np.array_equal(top5, (top == labels[:, None]).any(1))
    # Many classes tied at the top (a constant row; three levels): the partition's choice, whatever it is.
    tied = np.concatenate([np.zeros((4, 1000)), rng.integers(0, 3, (60, 1000))]).astype(np.float32)
    stored, labels = get_codec(codec).encode(tied), rng.integers(0, 1000, 64)
    labels[:4] = [0, 1, 999, 500]
    for k in (1, 5):
        top = get_codec(codec).top_classes(stored, k)
        top1, topk = get_codec(codec).label_hits(stored, labels, k)
        assert np.array_equal(top1, top[:, 0] == labels) and np.array_equal(topk, (top == labels[:, None]).any(1))


@pytest.mark.parametrize("codec", CODECS)
def test_the_table_keeps_the_stored_precision_and_decodes_as_the_teacher_does(tmp_path, codec):
    teacher = new_teacher(tmp_path / "s.zarr", codec)
    write_all(teacher, logits_like_a_teacher(300, 10))
    teacher.mark_complete()
    sparse = codec.startswith(("sample", "topk"))
    logits = TeacherLogits.open(str(tmp_path / "s.zarr"), sparse=sparse)
    assert {k: v.dtype for k, v in logits.reader.table.items()} == {k: a.dtype for k, a in teacher.arrays.items()}
    rows = np.random.default_rng(0).permutation(300)[:77]
    got = logits.take(rows)
    if sparse:
        want = teacher.codec.sparse_targets({k: a[:][rows] for k, a in teacher.arrays.items()})
        assert all(torch.equal(getattr(got, k), torch.from_numpy(want[k])) for k in want)  # typed targets: fields
    if not codec.startswith("sample"):  # topk decodes densely too, for the losses that need it
        dense = TeacherLogits.open(str(tmp_path / "s.zarr"))
        assert torch.equal(dense.take(rows), torch.from_numpy(teacher.take(rows)))


@pytest.mark.parametrize("budget", [1 << 30, 2 * 256 * 3 * 10 * 2])  # in memory; streamed through a 2-chunk cache
def test_batched_targets_are_the_per_row_targets(tmp_path, budget):
    path = make_store(tmp_path / "v.zarr", codec="fp16", augment="crop=0.5-1", views=3)
    logits = TeacherLogits.open(str(path), budget_bytes=budget)
    assert logits.in_memory == (budget > 1 << 20)
    rows = np.random.default_rng(2).permutation(1437)[:200]
    views = rows % 3
    one_by_one = torch.stack([logits[int(r)][int(v)] for r, v in zip(rows, views)])
    assert torch.equal(logits.take(rows, views), one_by_one)
    assert torch.equal(logits.take(rows)[np.arange(200), views], one_by_one)
    assert logits.in_memory or len(logits.reader.cache) <= logits.window_blocks


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("budget", [1 << 30, 3 * 256 * 10 * 4])
def test_the_loader_gives_the_batches_a_per_row_dataloader_gives(digits_store, workers, budget):
    source = get_dataset("digits@train")
    logits = TeacherLogits.open(str(digits_store), budget_bytes=budget, workers=workers)
    sampler = EpochSampler(logits.rows, seed=4, block_rows=None if logits.in_memory else logits.block_rows,
                           window_blocks=logits.window_blocks)
    sampler.set_epoch(2)
    paired = PairedDataset(source.dataset, logits)
    fast = list(paired.loader(sampler, 100, workers=workers, drop_last=True))
    slow = list(DataLoader(paired, batch_size=100, sampler=sampler, drop_last=True))
    assert len(fast) == len(slow) == 14
    for ours, theirs in zip(fast, slow):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_kd_loss_value_is_the_references_and_its_gradient_autograds():
    generator = torch.Generator().manual_seed(0)
    for temperature in (1.0, 4.0):
        student = (torch.randn(64, 1000, generator=generator) * 5).requires_grad_()
        teacher = torch.randn(64, 1000, generator=generator) * 5
        ours = kd_loss(student, teacher, temperature)
        (grad,) = torch.autograd.grad(ours, student)
        reference = _kd_value(student, teacher, temperature)
        (expected,) = torch.autograd.grad(reference, student)
        assert ours.item() == reference.item()
        assert torch.allclose(grad, expected, atol=1e-7, rtol=1e-5)
    student = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: _KDivergence.apply(s, teacher, 2.0), (student,))


FEATURES = "s1=2:attention,s2=5,emb=11:pool"


def zarr_only(monkeypatch):
    """Every teacher opened from now on reads and writes through zarr alone (the reference)."""
    monkeypatch.setattr(Teacher, "_io", property(lambda self: None))


@pytest.mark.parametrize("options", [dict(codec="fp16", feature_codec="bf16"),
                                     dict(codec="topk:3", augment="crop=0.5-1", views=2)])
def test_feature_arrays_take_the_fast_path_and_hold_zarrs_bytes(tmp_path, monkeypatch, options):
    fast = make_store(tmp_path / "fast.zarr", teacher="tests.feature_factories:conv_teacher", features=FEATURES,
                      **options)
    teacher = open_store(fast).teacher()
    assert set(teacher._io.arrays) == set(teacher.content_arrays) >= {"features/s1", "features/s2", "features/emb"}
    zarr_only(monkeypatch)
    slow = make_store(tmp_path / "slow.zarr", teacher="tests.feature_factories:conv_teacher", features=FEATURES,
                      **options)
    assert store_contents(fast) == store_contents(slow)
    ours, theirs = open_store(fast).teacher().read_features(5, 300), open_store(slow).teacher().read_features(5, 300)
    assert all(np.array_equal(ours[n], theirs[n]) for n in theirs)


def test_a_token_teachers_logsumexp_takes_the_fast_path_and_holds_zarrs_bytes(tmp_path, monkeypatch):
    text = tmp_path / "hamlet.md"
    text.write_text((Path(__file__).resolve().parents[2] / "data/text/shakespeare/hamlet.md").read_text()[:6000])
    args = ["--teacher", "tests.factories:tiny_lm", "--dataset", f"text:{text}", "--tokenizer", "bytes", "--seq-len",
            "64", "--codec", "topk:4", "--batch-size", "8", "--rows-per-shard", str(64 * 16), "--no-progress"]
    assert invoke("dump", tmp_path / "fast.zarr", *args).exit_code == 0
    teacher = open_store(tmp_path / "fast.zarr").teacher()
    assert "logsumexp" in teacher._io.arrays and set(teacher._io.arrays) == set(teacher.content_arrays)
    zarr_only(monkeypatch)
    assert invoke("dump", tmp_path / "slow.zarr", *args).exit_code == 0
    assert store_contents(tmp_path / "fast.zarr") == store_contents(tmp_path / "slow.zarr")


def test_an_array_the_fast_path_cannot_serve_is_left_to_zarr_and_the_rest_keep_it(tmp_path, monkeypatch):
    """An array configured in a way ``ShardBytes`` does not know (simulated here for features/emb and
    view_params) is written, read back and read by zarr; the teacher's other arrays keep the fast
    path; the store is zarr's, byte for byte; its chunks are still checked against the digests."""
    options = dict(teacher="tests.feature_factories:conv_teacher", features=FEATURES, codec="u8",
                   augment="crop=0.5-1", views=2)
    zarr_only(monkeypatch)
    reference = make_store(tmp_path / "zarr.zarr", **options)
    monkeypatch.undo()
    known = ShardBytes.for_array.__func__

    def only_some(cls, array):
        return None if array.path.endswith(("features/emb", "view_params")) else known(cls, array)

    monkeypatch.setattr(ShardBytes, "for_array", classmethod(only_some))
    mixed = make_store(tmp_path / "mixed.zarr", **options)
    teacher = open_store(mixed).teacher()
    assert set(teacher._io.arrays) == set(teacher.content_arrays) - {"features/emb", "view_params"}
    assert store_contents(mixed) == store_contents(reference)
    zarr_teacher = open_store(reference).teacher()
    assert teacher._zarr_names(teacher.content_arrays) == ["view_params", "features/emb"]
    for start, stop in [(0, 1437), (3, 70), (255, 257)]:
        assert np.array_equal(teacher.read(start, stop), zarr_teacher.read(start, stop))
        ours, theirs = teacher.read_features(start, stop), zarr_teacher.read_features(start, stop)
        assert all(np.array_equal(ours[n], theirs[n]) for n in theirs)
        assert np.array_equal(teacher.read_view_params(start, stop), zarr_teacher.read_view_params(start, stop),
                              equal_nan=True)
    rows, last = teacher.layout.rows_per_chunk, -(-1437 // teacher.layout.rows_per_chunk) - 1
    chunks = teacher.read_chunks([last, 0, 1])
    assert np.array_equal(chunks[1]["logits"], zarr_teacher.arrays["logits"][:rows])
    assert np.array_equal(chunks[0]["logits"], zarr_teacher.arrays["logits"][last * rows:])
    shard0, shard1 = (mixed / "teachers/default/features/emb/c" / f"{s}/0/0" for s in (0, 1))
    first, second = shard0.read_bytes(), shard1.read_bytes()
    shard0.write_bytes(second)
    shard1.write_bytes(first)  # whole objects swapped: every CRC holds, the digests do not
    with pytest.raises(CorruptStoreError, match="digest mismatch"):
        open_store(mixed).teacher().read(0, 10)
    with pytest.raises(CorruptStoreError, match="digest mismatch"):
        open_store(mixed).teacher().read_chunks([last, 0])


@pytest.mark.parametrize("views", [0, 3])
@pytest.mark.parametrize("budget", [1 << 30, 2 * 64 * 3 * 16 * 4])  # in memory; streamed
def test_the_feature_loader_gives_the_batches_a_per_item_dataloader_gives(tmp_path, views, budget):
    options = dict(augment="crop=0.5-1", views=views) if views else {}
    path = make_store(tmp_path / "f.zarr", teacher="tests.feature_factories:conv_teacher", features=FEATURES,
                      **options)
    store = open_store(path)
    logits = TeacherLogits.open(store, budget_bytes=1 << 30)
    features = TeacherFeatures(store, "default", ["emb", "s1"], logits.rows, budget)
    assert features.in_memory == (budget > 1 << 20)
    source = get_dataset("digits@train", for_views=bool(views))
    replay = ViewReplay(store.teacher().read_view_params(0, 1437), None, normalize=source.view_normalize) \
        if views else None
    pairs = FeaturePairs(PairedDataset(source.dataset, logits, replay), features, views)
    sampler = EpochSampler(logits.rows, seed=3, views=views)
    sampler.set_epoch(1)
    fast = list(pairs.loader(sampler, 100, drop_last=True))
    slow = list(DataLoader(pairs, batch_size=100, sampler=sampler, drop_last=True))
    assert len(fast) == len(slow) == 14
    for ours, theirs in zip(fast, slow):
        assert all(torch.equal(a, b) for a, b in zip(ours[:3], theirs[:3]))
        assert ours[3].keys() == theirs[3].keys() and all(torch.equal(ours[3][k], theirs[3][k]) for k in theirs[3])


@pytest.mark.parametrize("codec", ["fp16", "topk:3"])
def test_label_hits_answer_several_label_sets_as_one_set_each(codec):
    rng = np.random.default_rng(3)
    stored = get_codec(codec).for_classes(7).encode(np.round(rng.normal(size=(500, 7)) * 2).astype(np.float32))
    sets = rng.integers(0, 7, (2, 500))
    both = get_codec(codec).label_hits(stored, sets)
    for i in range(2):
        one = get_codec(codec).label_hits(stored, sets[i])
        assert np.array_equal(both[0][i], one[0]) and np.array_equal(both[1][i], one[1])


@pytest.mark.parametrize("drop_last", [False, True])
def test_array_batches_are_the_batch_samplers_batches_as_arrays(drop_last):
    from torch.utils.data import BatchSampler

    from logitcache.train.sampler import ArrayBatches, EpochSampler

    for sampler in (EpochSampler(np.arange(1000), seed=3, views=2), range(37)):
        expected = list(BatchSampler(sampler, 64, drop_last))
        batches = list(ArrayBatches(sampler, 64, drop_last))
        assert len(ArrayBatches(sampler, 64, drop_last)) == len(expected) == len(batches)
        assert [batch.tolist() for batch in batches] == expected
        assert all(batch.dtype == np.int64 for batch in batches)


def test_scattered_chunks_read_alike_from_a_directory_and_a_zip(tmp_path):
    """A local store reads its files directly, chunk by chunk; any other store (here a zip) groups a
    shard's scattered chunks into range requests with gaps. Both give the same checked rows, and an
    absent chunk (an unwritten shard) reads as missing on both."""
    store = tmp_path / "s.zarr"
    teacher = new_teacher(store, "fp16", n=1000)
    write_all(teacher, logits_like_a_teacher(1000, 10))
    teacher.mark_complete()
    assert invoke("pack", store, tmp_path / "s.zip").exit_code == 0
    local, packed = (open_store(path).teacher("t") for path in (store, tmp_path / "s.zip"))
    assert local._io._root is not None and packed._io._root is None
    chunks = -(-local.num_samples // local.layout.rows_per_chunk)
    per_shard = local.layout.rows_per_shard // local.layout.rows_per_chunk
    assert chunks > 2 * per_shard >= 4
    wanted = [0, 2, 3, per_shard - 1, per_shard + 1, 2 * per_shard, chunks - 1]
    for got, expected in zip(packed.read_chunks(wanted), local.read_chunks(wanted)):
        assert all(np.array_equal(got[name], expected[name]) for name in expected)
    runs = [("logits", 0, 0, 3), ("logits", 1, 1, 2), ("logits", 999, 0, 2)]  # shard 999: no object
    for io in (local._io, packed._io):
        fetched = io._fetch_runs(runs)
        assert [[i for i, _ in run] for run in fetched] == [[0, 1, 2], [1], [0, 1]]
        assert all(data is not None for _, data in fetched[0] + fetched[1]) and all(
            data is None for _, data in fetched[2])


def test_a_shard_that_vanishes_after_its_index_was_read_is_damage_not_missing_rows(tmp_path):
    teacher = new_teacher(tmp_path / "s.zarr", "fp16", n=1000)
    write_all(teacher, logits_like_a_teacher(1000, 10))
    teacher.mark_complete()
    reader = open_store(tmp_path / "s.zarr").teacher("t")
    reader.read_chunks([1])  # shard 0's index is read and kept
    (tmp_path / "s.zarr" / reader._io._key("logits", 0)).unlink()
    with pytest.raises(CorruptStoreError, match="changed while it was read"):
        reader.read_chunks([2])
