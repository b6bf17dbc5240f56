"""The dump engine on real stores: determinism, resume after SIGKILL, safety, codecs, metrics."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.dump import DumpConfig, dump
from logitcache.errors import ConfigError
from tests.conftest import invoke, one_error
from logitcache.errors import (
    ModelError,
    NonFiniteLogitsError,
    StoreExistsError,
    StoreMismatchError,
)
from logitcache.sources import get_dataset
from logitcache.store import open_store, verify_store
from tests.conftest import make_store, store_contents
from tests.factories import NAN_ROW, linear_teacher

REPO = Path(__file__).resolve().parents[2]


def expected_logits():
    source = get_dataset("digits@train")
    with torch.no_grad():
        return linear_teacher()(source.dataset.images).numpy(), source.labels


def test_dump_writes_raw_logits_labels_keys_and_provenance(digits_store):
    store = open_store(digits_store)
    teacher = store.teacher()
    logits, labels = expected_logits()
    assert teacher.is_complete and teacher.num_classes == 10
    assert np.allclose(teacher.read(0, store.num_samples), logits, atol=1e-5)  # fp32: raw, no temperature
    assert np.array_equal(store.labels, labels) and store.keys[0] == "digits/0001"
    attrs = teacher.attrs
    assert attrs["provenance"]["teacher"] == {"spec": "tests.factories:linear_teacher", "weights": None,
                                              "num_parameters": 650}
    assert attrs["settings"]["parameters_sha256"].startswith("sha256:")
    assert attrs["metrics"]["top1"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    assert {"torch", "zarr", "numcodecs", "python"} <= set(attrs["provenance"]["software"])
    assert attrs["run"]["sessions"] == 1 and attrs["run"]["finished_at"] >= attrs["run"]["started_at"]


def test_two_dumps_give_identical_bytes(tmp_path, digits_store):
    again = make_store(tmp_path / "again.zarr", codec="fp32")
    assert store_contents(again) == store_contents(digits_store)


def test_workers_and_batch_order_do_not_change_bytes(tmp_path):
    one = make_store(tmp_path / "one.zarr", codec="u8")
    two = make_store(tmp_path / "two.zarr", codec="u8", workers=2)
    assert store_contents(one) == store_contents(two)


@pytest.mark.parametrize("codec", ["fp16", "bf16", "u8"])
def test_codecs_through_dump_stay_close_to_the_teacher(tmp_path, codec):
    store = open_store(make_store(tmp_path / f"{codec}.zarr", codec=codec))
    decoded = torch.from_numpy(store.teacher().read(0, store.num_samples))
    exact = torch.from_numpy(expected_logits()[0])
    kl = torch.nn.functional.kl_div(decoded.log_softmax(1), exact.log_softmax(1), log_target=True,
                                    reduction="batchmean")
    assert kl < 2e-3


def test_interrupts_at_random_points_then_resume_give_identical_bytes(tmp_path, slow_teacher_reference):
    """Ctrl-C a real dump process, SIGKILL it, then rerun the same command to completion."""
    store = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "logitcache", "dump", str(store), "--teacher", "tests.factories:slow_teacher",
               "--dataset", "digits@train", "--codec", "fp32", "--rows-per-shard", "256", "--batch-size", "64",
               "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOGITCACHE_TEST_SLEEP": "0.15"}
    rng = np.random.default_rng(7)
    for interrupt in (signal.SIGINT, signal.SIGKILL):
        # Ctrl-C as a terminal delivers it, even when the test run itself was started in the background
        # by a shell, whose children inherit SIGINT as ignored.
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, preexec_fn=_default_sigint)
        written_before = _shards_done(store)
        target = written_before + int(rng.integers(1, 3))
        deadline = time.time() + 120
        while _shards_done(store) < target and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.3)))  # land anywhere inside the next shard
        process.send_signal(interrupt)
        _, stderr = process.communicate(timeout=60)
        if interrupt == signal.SIGINT:
            assert process.returncode == 130 and "rerun the same command to resume" in stderr, stderr
            assert "Traceback" not in stderr
        assert not open_store(store).teacher("default").is_complete
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "resumed" in finished.stdout
    # Every object, metadata included (less the run's timestamps), and no temp files left over.
    assert store_contents(store) == store_contents(slow_teacher_reference)
    assert verify_store(store).ok


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _shards_done(store: Path) -> int:
    folder = store / "teachers" / "default" / "shard_done" / "c"
    return len(list(folder.iterdir())) if folder.exists() else 0


def test_complete_store_is_not_overwritten_without_flag(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    before = store_contents(path)
    with pytest.raises(StoreExistsError, match="other settings; pass --overwrite"):
        make_store(path, codec="u8")
    assert make_store(path) == path  # the same settings again: nothing to do, nothing written
    assert store_contents(path) == before
    make_store(path, overwrite=True, codec="bf16")
    assert open_store(path).teacher().codec.name == "bf16"


def test_second_teacher_is_added_beside_the_first(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    first = store_contents(path)
    make_store(path, teacher_name="second", codec="u8")
    store = open_store(path)
    assert store.teacher_names == ["default", "second"]
    after = store_contents(path)
    assert {k: v for k, v in after.items() if k in first and not k.startswith("teachers/zarr")} == \
        {k: v for k, v in first.items() if not k.startswith("teachers/zarr")}


def test_unfinished_dump_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(NonFiniteLogitsError):
        make_store(path, teacher="tests.factories:nan_teacher")
    with pytest.raises(StoreMismatchError, match="parameters_sha256, teacher differ"):
        make_store(path)


def test_other_dataset_into_existing_store_is_refused(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    with pytest.raises(StoreMismatchError, match="dataset does not match"):
        make_store(path, dataset="digits@val", teacher_name="other")


def test_class_count_disagreeing_with_existing_teacher_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(NonFiniteLogitsError):
        make_store(path, teacher="tests.factories:nan_teacher")
    with pytest.raises(StoreMismatchError, match="has 10 classes but the model outputs 12"):
        make_store(path, teacher="tests.factories:nan_teacher", num_classes=12)


def test_non_finite_logits_name_the_keys_and_nothing_is_complete(tmp_path):
    path = tmp_path / "nan.zarr"
    key = get_dataset("digits@train").keys[NAN_ROW]
    with pytest.raises(NonFiniteLogitsError, match=rf"1 samples in rows 256-512 \(keys: '{key}'\)"):
        make_store(path, teacher="tests.factories:nan_teacher")
    teacher = open_store(path).teacher("default")
    assert not teacher.is_complete
    assert list(teacher.shard_done()[:2]) == [True, False]
    assert not verify_store(path).ok


def test_model_output_must_be_batch_by_classes(tmp_path):
    with pytest.raises(ModelError, match=r"output is \(1, 10, 8, 8\)"):
        make_store(tmp_path / "s.zarr", teacher="tests.factories:spatial_teacher")
    assert not (tmp_path / "s.zarr").exists()


def test_bf16_autocast_dump_runs_and_stores_float_logits(tmp_path):
    store = open_store(make_store(tmp_path / "s.zarr", bf16=True, codec="fp32"))
    assert store.teacher().attrs["settings"]["bf16"] is True
    assert np.allclose(store.teacher().read(0, 10), expected_logits()[0][:10], atol=0.5)


def test_summary_reports_throughput_size_and_accuracy(tmp_path):
    summary = dump(DumpConfig(store=str(tmp_path / "s.zarr"), teacher="tests.factories:linear_teacher",
                              dataset="digits@train", codec="fp16", progress=False))
    text = "\n".join(summary.lines())
    assert summary.samples == 1437 and summary.bytes_on_disk > 0
    assert summary.bytes_per_sample < 40 and summary.ratio_vs_fp32 > 1
    for word in ("samples/s", "bytes/sample", "smaller than raw fp32", "teacher top-1"):
        assert word in text


def test_topk_store_dumps_verifies_and_trains(tmp_path):
    from logitcache.train import TrainConfig, train

    path = make_store(tmp_path / "topk.zarr", codec="topk:3")
    store = open_store(path)
    teacher = store.teacher()
    assert teacher.codec.name == "topk:3" and 0.5 < teacher.attrs["metrics"]["mass_stored"] < 1
    assert verify_store(path).ok
    assert teacher.read(0, 5).shape == (5, 10)
    for loss in ("kl", "dist"):
        summary = train(TrainConfig(out=str(tmp_path / loss), student="mlp:hidden=8", dataset="digits@train",
                                    store=str(path), loss=loss, epochs=1, progress=False), log=lambda *_: None)
        assert summary.last["train_kd"] > 0


def test_a_head_wider_than_the_datasets_classes_is_refused_unless_asked_for(tmp_path):
    from tests.factories import write_image_folder

    for split in ("train", "val"):  # the root of a split folder: read as two classes, train and val
        write_image_folder(tmp_path / "pets" / split, classes=3, per_class=2)
    options = ["--teacher", "tests.factories:three_class_image_teacher", "--dataset", f"imagefolder:{tmp_path / 'pets'}",
               "--transform", "resize=16,center_crop=16,to_tensor", "--no-progress"]
    error = one_error(invoke("dump", tmp_path / "s.zarr", *options))
    assert "the teacher has 3 outputs but imagefolder:" in error and "has 2 classes (train, val)" in error
    assert "--num-classes 3" in error and not (tmp_path / "s.zarr").exists()
    result = invoke("dump", tmp_path / "s.zarr", *options, "--num-classes", "3")
    assert result.exit_code == 0, result.output


def test_views_beyond_what_a_store_holds_are_refused_before_anything_runs(tmp_path):
    error = one_error(invoke("dump", tmp_path / "s.zarr", "--teacher", "tests.factories:linear_teacher", "--dataset",
                             "digits@train", "--augment", "flip", "--views", "100000000"))
    assert "--views must be at most 4096" in error and not (tmp_path / "s.zarr").exists()


def test_a_teacher_without_weights_is_said_out_loud(tmp_path):
    result = invoke("dump", tmp_path / "s.zarr", "--teacher", "mlp:hidden=8", "--dataset", "digits@train",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert "note: mlp:hidden=8 was given no --weights" in result.output


def test_a_teacher_without_weights_is_built_from_the_seed_so_the_same_command_makes_the_same_store(tmp_path):
    for run in ("a", "b"):
        result = invoke("dump", tmp_path / f"{run}.zarr", "--teacher", "mlp:hidden=8", "--dataset", "digits@train",
                        "--no-progress")
        assert result.exit_code == 0, result.output
    assert store_contents(tmp_path / "a.zarr") == store_contents(tmp_path / "b.zarr")
    other = invoke("dump", tmp_path / "c.zarr", "--teacher", "mlp:hidden=8", "--dataset", "digits@train", "--seed",
                   "1", "--no-progress")
    assert other.exit_code == 0 and store_contents(tmp_path / "c.zarr") != store_contents(tmp_path / "a.zarr")


@pytest.mark.parametrize("field, value, says", [
    ("batch_size", "64", 'batch_size = "64" is a string; expected an integer'),
    ("rows_per_shard", 1.5, "rows_per_shard = 1.5 is a number; expected an integer"),
    ("codec", None, "codec = null is a NoneType; expected a string"),
])
def test_a_python_dump_config_of_the_wrong_type_is_one_config_error(tmp_path, field, value, says):
    config = DumpConfig(store=str(tmp_path / "s.zarr"), teacher="tests.factories:linear_teacher",
                        dataset="digits@train", progress=False, **{field: value})
    with pytest.raises(ConfigError, match=re.escape(says)):
        dump(config, log=lambda *_: None)
    assert not (tmp_path / "s.zarr").exists()
