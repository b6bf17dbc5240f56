"""Training from the cache: fidelity to online KD, resume, run files, and every bad input."""

import csv
import json
import re

import pytest
import torch
from click.testing import CliRunner

from logitcache.cli import cli
from logitcache.sources.checkpoints import load_checkpoint
from logitcache.train import TrainConfig, train
from tests.conftest import make_store


def quiet(*_):
    pass


def run_config(tmp_path, name, **overrides):
    options = dict(out=str(tmp_path / name), student="mlp:hidden=16", dataset="digits@train",
                   val_dataset="digits@val", epochs=2, batch_size=32, lr=0.05, progress=False)
    options.update(overrides)
    return TrainConfig(**options)


def step_losses(run_dir):
    with open(run_dir / "steps.csv") as handle:
        return [(int(r["step"]), float(r["loss"]), float(r["kd"])) for r in csv.DictReader(handle)]


def final_weights(run_dir):
    return load_checkpoint(run_dir / "last.pt")["model"]


@pytest.mark.parametrize("loss", ["kl", "dist", "dkd"])
def test_training_from_the_cache_equals_online_distillation(tmp_path, digits_store, loss):
    """fp32 store + the teacher's own eval transform: same per-step losses and final weights."""
    train(run_config(tmp_path, "cached", store=str(digits_store), loss=loss, loss_options={"dkd": {"warmup": 1}}),
          log=quiet)
    train(run_config(tmp_path, "online", online_teacher="tests.factories:linear_teacher", loss=loss,
                     loss_options={"dkd": {"warmup": 1}}), log=quiet)
    cached, online = step_losses(tmp_path / "cached"), step_losses(tmp_path / "online")
    assert len(cached) == len(online) == 2 * 45
    for (step_a, loss_a, kd_a), (step_b, loss_b, kd_b) in zip(cached, online):
        assert step_a == step_b and kd_a > 0
        assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-5)
    for key, value in final_weights(tmp_path / "cached").items():
        assert torch.allclose(value, final_weights(tmp_path / "online")[key], atol=1e-5), key


def test_resume_continues_the_same_run(tmp_path, digits_store):
    config = dict(store=str(digits_store), loss="dist", epochs=4, augment="flip",
                  loss_options={"dist": {"beta": 2.0}})
    train(run_config(tmp_path, "straight", **config), log=quiet)

    def stop_after_epoch_two(line):
        if line.startswith("epoch 2/4"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(run_config(tmp_path, "resumed", **config), log=stop_after_epoch_two)
    assert not (tmp_path / "resumed" / "summary.json").exists()
    train(run_config(tmp_path, "resumed", resume=True, **config), log=quiet)

    def metrics(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"} for line in lines]

    assert metrics("resumed") == metrics("straight")
    assert step_losses(tmp_path / "resumed") == step_losses(tmp_path / "straight")
    for key, value in final_weights(tmp_path / "straight").items():
        assert torch.equal(value, final_weights(tmp_path / "resumed")[key]), key


def test_run_files_and_label_only_training_needs_no_store(tmp_path):
    summary = train(run_config(tmp_path, "ce", loss=None), log=quiet)
    run = tmp_path / "ce"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and 0 < records[-1]["val_top1"] <= 1
    assert records[-1]["train_kd"] == 0
    assert (run / "metrics.csv").read_text().startswith("epoch,lr,train_loss")
    assert json.loads((run / "summary.json").read_text())["complete"] is True
    assert json.loads((run / "config.json").read_text())["loss"] == "ce"
    assert load_checkpoint(run / "best.pt")["model_spec"] == "mlp:hidden=16"
    assert summary.best["val_top1"] == max(r["val_top1"] for r in records)


def test_a_trained_checkpoint_is_a_teacher_spec(tmp_path):
    train(run_config(tmp_path, "teacher", loss="ce", epochs=1), log=quiet)
    store = make_store(tmp_path / "s.zarr", teacher=f"checkpoint:{tmp_path / 'teacher' / 'best.pt'}")
    from logitcache.store import open_store

    settings = open_store(store).teacher().attrs["settings"]
    assert settings["weights_sha256"].startswith("sha256:")


def test_augmentation_with_a_single_view_store_warns(tmp_path, digits_store):
    lines = []
    train(run_config(tmp_path, "aug", store=str(digits_store), loss="kl", epochs=1, augment="flip"),
          log=lines.append)
    assert any("teacher never saw" in line for line in lines)


def test_streaming_logits_train_every_sample(tmp_path, digits_store):
    lines = []
    train(run_config(tmp_path, "stream", store=str(digits_store), loss="kl", epochs=1,
                     cache_budget=2 * 256 * 10 * 4), log=lines.append)
    assert any("streamed" in line for line in lines)
    assert len(step_losses(tmp_path / "stream")) == 45


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def partial_store(tmp_path):
    from logitcache.errors import NonFiniteLogitsError

    with pytest.raises(NonFiniteLogitsError):
        make_store(tmp_path / "partial.zarr", teacher="tests.factories:nan_teacher")
    return tmp_path / "partial.zarr"


TRAIN = ["train", "--out", "{tmp}/run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
         "--epochs", "1", "--no-progress"]

BAD_TRAIN = [
    ("student head size", ["--student", "tests.factories:seven_class_student", "--store", "{store}"],
     "outputs (7,) per sample but the store has 10 classes"),
    ("unknown loss", ["--store", "{store}", "--loss", "crd"], "Invalid value for '--loss'"),
    ("kd loss without a store", ["--loss", "kl"], "give --store"),
    ("negative kd weight", ["--store", "{store}", "--kd-weight", "-1"], "--kd-weight and --ce-weight must be >= 0"),
    ("zero temperature", ["--store", "{store}", "--temperature", "0"], "--temperature must be from 0.001 to 1000"),
    ("a vanishing temperature", ["--store", "{store}", "--temperature", "1e-30"], "--temperature must be from 0.001"),
    ("store/dataset mismatch", ["--store", "{store}", "--dataset", "digits@val"], "dataset does not match"),
    ("missing val data", ["--val-dataset", "imagefolder:{tmp}/none"], "does not exist"),
    ("dist with batch size 1", ["--store", "{store}", "--loss", "dist", "--batch-size", "1"], "at least 2"),
    ("unfinished store", ["--store", "{partial}"], "--allow-partial"),
    ("bad cache budget", ["--store", "{store}", "--cache-budget", "lots"], "is not a size"),
    ("bad milestones", ["--milestones", "a,b"], "comma-separated list"),
    ("negative lr gamma", ["--schedule", "step", "--milestones", "1", "--lr-gamma", "-1"], "--lr-gamma must be positive"),
    ("zero lr gamma", ["--lr-gamma", "0"], "--lr-gamma must be positive"),
]


@pytest.mark.parametrize("name, extra, expected", BAD_TRAIN, ids=[b[0] for b in BAD_TRAIN])
def test_bad_train_input_is_one_line_and_non_zero(tmp_path, digits_store, partial_store, name, extra, expected):
    values = {"tmp": tmp_path, "store": digits_store, "partial": partial_store}
    argv = [a.format(**values) for a in TRAIN]
    extra = [a.format(**values) for a in extra]
    for option in ("--student", "--dataset"):  # later options replace the defaults above
        if option in extra:
            index = argv.index(option)
            del argv[index:index + 2]
    result = invoke(*argv, *extra)
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and expected in errors[0], result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_existing_run_and_foreign_checkpoint_are_not_overwritten(tmp_path):
    args = ["train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
            "--epochs", "1", "--no-progress"]
    assert invoke(*args).exit_code == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    again = invoke(*args)
    assert again.exit_code != 0 and "--resume to continue it or --overwrite" in again.output
    other = invoke(*[a if a != "mlp:hidden=8" else "cnn" for a in args], "--resume")
    assert other.exit_code != 0 and "is a checkpoint of 'mlp:hidden=8', not --student 'cnn'" in other.output
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert invoke(*args, "--overwrite").exit_code == 0


def test_the_student_sees_the_inputs_the_stores_teacher_saw_and_says_so(tmp_path):
    """An ImageFolder's default is the ImageNet transform (224 px): a student of 20-pixel images once
    trained on 7x upscaled inputs while its teacher had seen them at 16 px, and nothing said so."""
    from tests.conftest import invoke
    from tests.factories import write_image_folder

    write_image_folder(tmp_path / "pets", classes=3, per_class=4)
    data, transform = f"imagefolder:{tmp_path / 'pets'}", "resize=16,center_crop=16,to_tensor"
    dumped = invoke("dump", tmp_path / "s.zarr", "--teacher", "tests.factories:image_teacher", "--dataset", data,
                    "--transform", transform, "--no-progress")
    assert dumped.exit_code == 0, dumped.output
    options = ["train", "--student", "tests.factories:image_teacher", "--store", tmp_path / "s.zarr", "--dataset", data,
               "--val-dataset", data, "--loss", "kl", "--epochs", "1", "--batch-size", "4", "--no-progress"]
    result = invoke(*options, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert f"inputs: {transform} (the store's: what the teacher saw)" in result.output
    assert "warning" not in result.output
    other = invoke(*options, "--out", tmp_path / "b", "--transform", "resize=24,center_crop=24,to_tensor",
                   "--val-transform", "resize=24,center_crop=24,to_tensor")
    assert other.exit_code == 0, other.output
    assert f"warning: the store's teacher saw inputs made by {transform!r}" in other.output
    assert "inputs: resize=24,center_crop=24,to_tensor (--transform)" in other.output


def test_epoch_lines_name_only_what_the_run_has(tmp_path, digits_store):
    lines = []
    train(TrainConfig(out=str(tmp_path / "a"), student="mlp:hidden=8", dataset="digits@train", loss="ce", epochs=1,
                      progress=False), log=lines.append)
    epoch = next(line for line in lines if line.startswith("epoch 1/1"))
    assert "kd" not in epoch and "val" not in epoch and "n/a" not in epoch  # label-only, no validation set
    lines.clear()
    summary = train(TrainConfig(out=str(tmp_path / "b"), student="mlp:hidden=8", dataset="digits@train",
                                val_dataset="digits@val", store=str(digits_store), loss="kl", epochs=1, progress=False),
                    log=lines.append)
    epoch = next(line for line in lines if line.startswith("epoch 1/1"))
    assert ", kd " in epoch and "val top-1" in epoch and "top-5" in epoch  # 10 classes: top-5 says something
    assert ", top-5 " in summary.lines()[1]  # and the closing summary's last epoch too


def test_top5_is_not_shown_for_five_classes_or_fewer(tmp_path):
    from tests.conftest import invoke
    from tests.factories import write_image_folder

    write_image_folder(tmp_path / "pets", classes=3, per_class=4)
    data = f"imagefolder:{tmp_path / 'pets'}"
    result = invoke("train", "--student", "tests.factories:image_teacher", "--dataset", data, "--val-dataset", data,
                    "--transform", "resize=16,center_crop=16,to_tensor", "--val-transform",
                    "resize=16,center_crop=16,to_tensor", "--loss", "ce", "--epochs", "1", "--out", tmp_path / "r",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    epoch = next(line for line in result.output.splitlines() if line.startswith("epoch 1/1"))
    assert "val top-1" in epoch and "top-5" not in epoch
    assert "last epoch: val top-1 " in result.output and "top-5" not in result.output  # nor the closing summary


def test_chunked_loss_is_refused_for_an_image_student(tmp_path, digits_store):
    from tests.conftest import invoke, one_error

    result = invoke("train", "--out", tmp_path / "r", "--student", "mlp", "--dataset", "digits@train", "--store",
                    digits_store, "--loss", "kl", "--chunked-loss", "--epochs", "1", "--no-progress")
    assert "--chunked-loss is for language-model students" in one_error(result)


@pytest.mark.parametrize("field, value, says", [
    ("epochs", "3", 'epochs = "3" is a string; expected an integer'),
    ("lr", "x", 'lr = "x" is a string; expected a number'),
    ("batch_size", 2.5, "batch_size = 2.5 is a number; expected an integer"),
    ("milestones", "1,2", 'milestones = "1,2" is a string; expected an array of integers'),
    ("seed", None, "seed = null is a NoneType; expected an integer"),
])
def test_a_python_train_config_of_the_wrong_type_is_one_config_error(tmp_path, field, value, says):
    from logitcache.errors import ConfigError

    config = TrainConfig(**{"out": str(tmp_path / "run"), "student": "mlp:hidden=8", "dataset": "digits@train",
                            "epochs": 1, "progress": False, field: value})
    with pytest.raises(ConfigError, match=re.escape(says)):
        train(config, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
