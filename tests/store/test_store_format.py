"""The store format contract: creation, validation on open, fingerprints, teachers, read API."""

import hashlib
import json
import struct

import numpy as np
import pytest

from logitcache.errors import (
    NotAStoreError,
    StoreExistsError,
    StoreMismatchError,
    StoreNotFoundError,
    StoreVersionError,
    StoreWriteError,
)
from logitcache.store import (
    FORMAT_VERSION,
    choose_layout,
    create_store,
    dataset_fingerprint,
    describe_mismatch,
    get_codec,
    open_store,
)


def small_store(path, n=40):
    keys = [f"img/{i:03d}.png" for i in range(n)]
    store = create_store(path, keys=keys, labels=np.arange(n) % 4, dataset={"spec": "test"},
                         class_names=["a", "b", "c", "d"])
    return store, keys


def test_created_store_reads_back(tmp_path):
    store, keys = small_store(tmp_path / "s.zarr")
    again = open_store(tmp_path / "s.zarr")
    assert again.num_samples == 40 and list(again.keys) == keys
    assert again.labels.dtype == np.int64 and list(again.labels[:5]) == [0, 1, 2, 3, 0]
    assert again.class_names == ["a", "b", "c", "d"]
    assert again.fingerprint == dataset_fingerprint(keys, np.arange(40) % 4)
    assert again.teacher_names == []


def test_fingerprint_is_stable_and_sensitive():
    keys, labels = ["a", "b", "c"], [0, 1, 2]
    assert dataset_fingerprint(keys, labels) == dataset_fingerprint(list(keys), np.array(labels))
    # The byte layout docs/FORMAT.md specifies, rebuilt by hand: it cannot drift silently.
    layout = b"logitcache-dataset-v1\n" + struct.pack("<Q", 3)
    layout += b"".join(struct.pack("<Q", 1) + k.encode() for k in keys) + struct.pack("<3q", *labels)
    assert dataset_fingerprint(keys, labels) == "sha256:" + hashlib.sha256(layout).hexdigest()
    for other_keys, other_labels in [(["b", "a", "c"], labels), (keys, [0, 1, 1]), (["ab", "", "c"], labels)]:
        assert dataset_fingerprint(other_keys, other_labels) != dataset_fingerprint(keys, labels)


@pytest.mark.parametrize("keys, labels, says", [
    (["a", "b"], [0, 1], "has 2 samples but the store was made from 3"),
    (["b", "a", "c"], [1, 0, 2], "the same samples in another order"),
    (["a", "b", "x"], [0, 1, 2], "other samples"),
    (["a", "b", "c"], [0, 1, 1], "relabelled: 1 labels differ, first at index 2"),
])
def test_describe_mismatch_says_what_differs(keys, labels, says):
    assert says in describe_mismatch(["a", "b", "c"], np.array([0, 1, 2]), keys, np.array(labels))


def test_open_rejects_missing_path_non_store_and_foreign_zarr(tmp_path):
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        open_store(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAStoreError, match="not a logitcache store"):
        open_store(tmp_path / "plain")
    import zarr

    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w").attrs["hello"] = 1
    with pytest.raises(NotAStoreError, match="Zarr group but not a logitcache store"):
        open_store(tmp_path / "foreign.zarr")


def test_newer_format_version_is_refused(tmp_path):
    small_store(tmp_path / "s.zarr")
    meta_path = tmp_path / "s.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["logitcache"]["version"] = FORMAT_VERSION + 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreVersionError, match=f"v{FORMAT_VERSION + 1}, newer than the v{FORMAT_VERSION}"):
        open_store(tmp_path / "s.zarr")


def test_create_refuses_existing_and_unwritable(tmp_path):
    small_store(tmp_path / "s.zarr")
    with pytest.raises(StoreExistsError):
        small_store(tmp_path / "s.zarr")
    (tmp_path / "file").write_text("x")
    with pytest.raises((StoreWriteError, StoreExistsError)):
        small_store(tmp_path / "file" / "s.zarr")


def test_check_dataset(tmp_path):
    store, keys = small_store(tmp_path / "s.zarr")
    store.check_dataset(keys, np.arange(40) % 4)
    with pytest.raises(StoreMismatchError, match="relabelled"):
        store.check_dataset(keys, np.zeros(40, int))


def test_teachers_write_read_take_and_stay_separate(tmp_path):
    store, _ = small_store(tmp_path / "s.zarr")
    rng = np.random.default_rng(0)
    written = {}
    for name, codec in [("t16", "fp16"), ("t32", "fp32")]:
        layout = choose_layout(40, 4, 2, rows_per_shard=16)
        teacher = store.create_teacher(name, num_classes=4, codec=get_codec(codec), layout=layout,
                                       settings={}, provenance={})
        written[name] = rng.normal(size=(40, 4)).astype(np.float32)
        for shard in range(teacher.num_shards):
            teacher.write_shard(shard, written[name][slice(*layout.shard_rows(shard, 40))])
        teacher.mark_complete()
    reader = open_store(tmp_path / "s.zarr")
    assert reader.teacher_names == ["t16", "t32"]
    t32 = reader.teacher("t32")
    assert np.array_equal(t32.read(0, 40), written["t32"])
    assert np.array_equal(t32.take([39, 0, 17, 17]), written["t32"][[39, 0, 17, 17]])
    assert np.allclose(reader.teacher("t16").take([5, 30]), written["t16"][[5, 30]], atol=1e-2)
    with pytest.raises(StoreMismatchError, match="holds 2 complete teachers"):
        reader.teacher()
    with pytest.raises(StoreMismatchError, match="no teacher 'x'"):
        reader.teacher("x")


def test_layout_chunks_divide_shards_and_stay_near_targets():
    for n, c, itemsize in [(50_000, 100, 2), (1_281_167, 1000, 2), (1797, 10, 4), (7, 21841, 1)]:
        layout = choose_layout(n, c, itemsize)
        assert layout.rows_per_shard % layout.rows_per_chunk == 0
        assert layout.rows_per_chunk * c * itemsize <= 128 * 1024 or layout.rows_per_chunk == 1
    assert choose_layout(1000, 10, 2, rows_per_shard=100).rows_per_chunk == 4
