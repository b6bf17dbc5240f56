"""Teacher features in a store: what is kept, the v4 version bump, the store's guarantees, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from logitcache.errors import CorruptStoreError, StoreMismatchError, StoreVersionError
from logitcache.features.cached_features import FeaturePairs, TeacherFeatures
from logitcache.sources import get_dataset
from logitcache.store import _store, open_store, verify_store
from tests import feature_factories
from tests.conftest import invoke, make_store, one_error, store_contents

FEATURES = "s1=2:attention,s2=5,s3=9:gram,emb=11:pool"
TEACHER = "tests.feature_factories:conv_teacher"


@pytest.fixture(scope="module")
def feature_store(tmp_path_factory):
    """digits@train through the seeded conv teacher, four features in fp32."""
    return make_store(tmp_path_factory.mktemp("features") / "f.zarr", teacher=TEACHER, features=FEATURES,
                      feature_codec="fp32", codec="fp32")


def reference_features(images: torch.Tensor) -> dict[str, np.ndarray]:
    """The four features computed straight from the teacher's layers (no hooks)."""
    model = feature_factories.conv_teacher().eval()
    with torch.no_grad():
        s1, s2 = model[:3](images), model[:6](images)
        s3 = model[:10](images)
        emb = model[:12](images)
    flat = s3.flatten(2)
    return {
        "s1": F.normalize(s1.pow(2).mean(1).flatten(1), dim=1).view(-1, 8, 8).numpy(),
        "s2": s2.numpy(),
        "s3": F.normalize(flat @ flat.transpose(1, 2), dim=2).numpy(),
        "emb": emb.numpy(),
    }


def test_features_are_the_teachers_reduced_outputs_in_a_v4_store(feature_store):
    store = open_store(feature_store)
    teacher = store.teacher()
    assert store.version == 4
    assert [(f["name"], f["layer"], f["reduce"], f["shape"], f["codec"]) for f in teacher.features] == [
        ("s1", "2", "attention", [8, 8], "fp32"), ("s2", "5", "map", [16, 8, 8], "fp32"),
        ("s3", "9", "gram", [16, 16], "fp32"), ("emb", "11", "pool", [16], "fp32")]
    images = torch.stack([get_dataset("digits@train").dataset[i][0] for i in range(300)])
    stored = teacher.read_features(0, 300)
    for name, values in reference_features(images).items():
        np.testing.assert_allclose(stored[name], values, rtol=1e-5, atol=1e-6)
    assert teacher.attrs["settings"]["features"] == teacher.features
    assert verify_store(feature_store).ok


def test_a_v3_reader_refuses_a_store_with_features(feature_store, digits_store, monkeypatch):
    assert open_store(digits_store).version == 3  # stores without features keep their v3 bytes
    monkeypatch.setattr(_store, "FORMAT_VERSION", 3)
    with pytest.raises(StoreVersionError, match="format v4, newer than the v3"):
        open_store(feature_store)


def test_fp16_features_and_info(tmp_path, feature_store):
    path = make_store(tmp_path / "h.zarr", teacher=TEACHER, features=FEATURES)
    exact, half = open_store(feature_store).teacher(), open_store(path).teacher()
    for name, values in half.read_features(0, 64).items():
        np.testing.assert_allclose(values, exact.read_features(0, 64)[name], rtol=2e-3, atol=2e-3)
    result = invoke("info", path)
    assert "feature   s2: layer 5, map 16x8x8, codec fp16:" in result.output, result.output
    data = json.loads(invoke("info", path, "--json").output)["teachers"]["default"]
    assert set(data["feature_bytes"]) == {"s1", "s2", "s3", "emb"} and data["feature_bytes"]["s2"] > 0


def _chunk(path, array: str, shard: int):
    chunk = path / "teachers" / "default" / "features" / array / "c" / str(shard)
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    return chunk


def test_feature_chunks_are_bound_to_their_place(tmp_path, feature_store):
    path = tmp_path / "swapped.zarr"
    shutil.copytree(feature_store, path)
    first, second = _chunk(path, "emb", 0), _chunk(path, "emb", 1)
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    teacher = open_store(path).teacher()  # metadata and ledger are fine
    with pytest.raises(CorruptStoreError, match="digest mismatch"):
        teacher.read_features(0, 10)
    with pytest.raises(CorruptStoreError, match="digest mismatch"):
        teacher.read(0, 10)  # a chunk's digest covers every array of its rows, logits and features
    assert not verify_store(path).ok
    _chunk(path, "s2", 1).unlink()
    with pytest.raises(CorruptStoreError, match="shard 1 of array 'features/s2' is missing"):
        open_store(path).teacher()


@pytest.mark.parametrize("damage", ["delete", "garbage", "null"])
def test_damaged_metadata_of_the_features_group_is_refused(tmp_path, feature_store, damage):
    """The arrays open by path without it, but a store with damaged metadata is not one verify passes."""
    path = tmp_path / "damaged.zarr"
    shutil.copytree(feature_store, path)
    metadata = path / "teachers" / "default" / "features" / "zarr.json"
    if damage == "delete":
        metadata.unlink()
    else:
        metadata.write_bytes({"garbage": b"\x00\xfe{", "null": b"null"}[damage])
    with pytest.raises(CorruptStoreError, match="features"):
        open_store(path).teacher()
    assert not verify_store(path).ok
    one_error(invoke("info", path))


def test_an_interrupted_feature_dump_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    options = dict(teacher="tests.feature_factories:interrupted_conv_teacher", features="s1=inner.5,e=inner.11:pool")
    reference = make_store(tmp_path / "straight.zarr", **options)
    monkeypatch.setenv("LOGITCACHE_TEST_FAIL_AFTER", "12")  # two probes, then 10 batches of 4-batch shards
    with pytest.raises(KeyboardInterrupt):
        make_store(tmp_path / "cut.zarr", **options)
    teacher = open_store(tmp_path / "cut.zarr").teacher("default")
    assert not teacher.is_complete and 0 < teacher.shard_done().sum() < teacher.num_shards
    with pytest.raises(StoreMismatchError, match="features differ"):
        make_store(tmp_path / "cut.zarr", **{**options, "features": "s1=inner.5"})
    monkeypatch.delenv("LOGITCACHE_TEST_FAIL_AFTER")
    make_store(tmp_path / "cut.zarr", **options)
    assert store_contents(tmp_path / "cut.zarr") == store_contents(reference)


def test_multi_view_stores_keep_each_views_features(tmp_path):
    path = make_store(tmp_path / "v.zarr", teacher=TEACHER, features="emb=11:pool", augment="flip", views=2,
                      codec="fp32", feature_codec="fp32")
    store = open_store(path)
    teacher = store.teacher()
    emb = teacher.read_features(0, 20)["emb"]
    assert emb.shape == (20, 2, 16) and teacher.feature_arrays["features/emb"].shape == (1437, 2, 16)
    params = teacher.read_view_params(0, 20)
    flipped = params[:, :, 4] >= 0.5
    same = np.isclose(emb[:, 0], emb[:, 1]).all(axis=1)
    assert (same == (flipped[:, 0] == flipped[:, 1])).all()  # a flip changes the embedding, the same view does not
    features = TeacherFeatures(store, "default", ["emb"], np.arange(1437), budget_bytes=0)  # streamed by chunk
    pairs = FeaturePairs([(None, 0, None)] * 2874, features, views=2)
    assert torch.equal(pairs[2 * 7 + 1][3]["emb"], torch.from_numpy(emb[7, 1]))


@pytest.mark.parametrize("extra, needle", [
    (["--features", "s1=layer3"], "the teacher has no module 'layer3'; close names:"),
    (["--features", "e=11:attention"], "reduce 'attention' needs a (batch, channels, height, width) map"),
    (["--features", "e=11:mean"], "unknown reduce 'mean'; choose pool, attention, gram, map"),
    (["--features", "e=11,e=9"], "'e' is given twice"),
    (["--features", "e=11", "--feature-codec", "u8"], "Invalid value for '--feature-codec'"),
])
def test_bad_feature_dumps_are_one_line(tmp_path, extra, needle):
    result = invoke("dump", tmp_path / "s.zarr", "--teacher", TEACHER, "--dataset", "digits@train", "--no-progress",
                    *extra)
    assert needle in one_error(result)
    assert not (tmp_path / "s.zarr" / "teachers").exists()


def test_a_teacher_with_features_raises_an_existing_store_to_v4(tmp_path, digits_store):
    path = tmp_path / "shared.zarr"
    shutil.copytree(digits_store, path)
    before = open_store(path).teacher("default").read(0, 50)
    make_store(path, teacher=TEACHER, teacher_name="feat", features="emb=11:pool")
    store = open_store(path)
    assert store.version == 4 and store.teacher_names == ["default", "feat"]
    assert np.array_equal(store.teacher("default").read(0, 50), before) and not store.teacher("default").features
    assert store.teacher("feat").read_features(0, 5)["emb"].shape == (5, 16)
