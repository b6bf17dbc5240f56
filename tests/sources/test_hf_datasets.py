"""Hugging Face image datasets (issue 14, item 2): a real ``save_to_disk`` directory and real Parquet
files made here, read offline, with stable keys, class names from ClassLabel, and a dump that
``verify --dataset`` checks against the same spec."""

import numpy as np
import pytest
from PIL import Image

from logitcache.errors import DatasetError, SpecError
from logitcache.sources import get_dataset
from tests.conftest import invoke, one_error

datasets = pytest.importorskip("datasets", reason="the hf extra (and dev) installs datasets")

CLASSES = ["cat", "dog", "fox"]


def images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (12, 10 + i % 3, 3), dtype=np.uint8)) for i in range(count)]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """datasets' Arrow cache (Parquet is converted into it) under the test's own directory."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def saved(tmp_path):
    """A DatasetDict as save_to_disk writes it: an Image column, a ClassLabel, an id column."""
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=CLASSES)})

    def split(name, count):
        return datasets.Dataset.from_dict({"id": [f"{name}-{i:03d}" for i in range(count)], "image": images(count),
                                           "label": [i % 3 for i in range(count)]}, features=features)

    datasets.DatasetDict(train=split("train", 6), test=split("test", 3)).save_to_disk(str(tmp_path / "pets"))
    return tmp_path / "pets"


def test_a_saved_dataset_dict_by_split(saved):
    source = get_dataset(f"hf:{saved}@train", transform="resize=8,center_crop=8,to_tensor")
    assert source.keys == [f"train-{i:03d}" for i in range(6)]  # the id column
    assert source.classes == CLASSES and list(source.labels) == [0, 1, 2, 0, 1, 2]
    image, label = source.dataset[4]
    assert image.shape == (3, 8, 8) and label == 1
    assert len(get_dataset(f"hf:{saved}@test")) == 3
    assert get_dataset(f"hf:{saved}@test").transform == "resize=256,center_crop=224,to_tensor,normalize=imagenet"
    with pytest.raises(SpecError, match="holds splits test, train; name one with @SPLIT"):
        get_dataset(f"hf:{saved}")
    with pytest.raises(SpecError, match="no 'val'"):
        get_dataset(f"hf:{saved}@val")


def test_parquet_files_with_named_columns_and_no_class_names(tmp_path, hf_cache):
    for part, seed in (("a", 0), ("b", 1)):  # two files, as the Hub shards a split
        data = datasets.Dataset.from_dict({"img": images(3, seed), "y": [4, 0, 2]},
                                          features=datasets.Features({"img": datasets.Image(),
                                                                      "y": datasets.Value("int64")}))
        data.to_parquet(str(tmp_path / f"train-{part}.parquet"))
    spec = f"parquet:{tmp_path}/train-*.parquet:image=img,label=y@train"
    source = get_dataset(spec, transform="tensor")
    assert source.keys == [f"train/{i:05d}" for i in range(6)]  # no id column, no stored paths: SPLIT/INDEX
    assert list(source.labels) == [4, 0, 2, 4, 0, 2] and source.classes == ["0", "1", "2", "3", "4"]
    assert source.dataset[3][0].shape == (3, 12, 10)
    assert get_dataset(f"parquet:{tmp_path}:label=y", transform="tensor").keys == \
        [f"all/{i:05d}" for i in range(6)]  # a directory: its *.parquet files
    with pytest.raises(SpecError, match="no label column found .* columns: img, y"):
        get_dataset(f"parquet:{tmp_path}/train-a.parquet")
    with pytest.raises(SpecError, match="unknown option.s. lable"):
        get_dataset(f"parquet:{tmp_path}/train-a.parquet:lable=y")
    with pytest.raises(DatasetError, match="no files match"):
        get_dataset(f"parquet:{tmp_path}/nothing-*.parquet")


def test_images_stored_with_paths_are_keyed_by_them(tmp_path, hf_cache):
    files = []
    for i, image in enumerate(images(4)):
        files.append(str(tmp_path / f"n0{i}_{i}.png"))
        image.save(files[-1])
    data = datasets.Dataset.from_dict({"image": files, "label": [0, 1, 0, 1]}).cast_column("image", datasets.Image())
    data = data.cast_column("label", datasets.ClassLabel(names=["a", "b"]))
    data.to_parquet(str(tmp_path / "val.parquet"))
    source = get_dataset(f"parquet:{tmp_path / 'val.parquet'}@val", transform="tensor")
    assert source.keys == files and source.classes == ["a", "b"]  # the paths the file stores, wherever it is


def test_a_dump_from_a_saved_dataset_verifies_against_the_same_spec(tmp_path, saved):
    from tests.factories import image_teacher  # noqa: F401 - the teacher below, by spec

    dataset = f"hf:{saved}@train"
    steps = "resize=8,center_crop=8,to_tensor"
    result = invoke("dump", tmp_path / "s.zarr", "--teacher", "tests.factories:image_teacher", "--dataset", dataset,
                    "--transform", steps, "--no-progress")
    assert result.exit_code == 0, result.output
    assert invoke("verify", tmp_path / "s.zarr", "--dataset", dataset).exit_code == 0
    from logitcache.store import open_store

    store = open_store(tmp_path / "s.zarr")
    assert list(store.keys) == [f"train-{i:03d}" for i in range(6)] and store.dataset["class_names"] == CLASSES
    mismatch = invoke("verify", tmp_path / "s.zarr", "--dataset", f"hf:{saved}@test")
    assert mismatch.exit_code != 0 and "FAIL" in mismatch.output and "failed verification" in one_error(mismatch)


def test_not_a_saved_dataset(tmp_path):
    assert "does not exist or is not a directory" in one_error(
        invoke("dump", tmp_path / "s.zarr", "--teacher", "cnn", "--dataset", f"hf:{tmp_path / 'none'}"))
    (tmp_path / "empty").mkdir()
    assert "cannot load" in one_error(
        invoke("dump", tmp_path / "s.zarr", "--teacher", "cnn", "--dataset", f"hf:{tmp_path / 'empty'}"))
