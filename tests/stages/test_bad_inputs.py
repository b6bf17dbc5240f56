"""Bad input to sources and pipelines: one clear line, a non-zero exit, no traceback, nothing written.

Every test runs the real CLI on real data (digits, the factories in tests/factories.py, files
written here); the stderr test runs it as a separate process.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from logitcache.cli import cli
from logitcache.store import open_store

REPO = Path(__file__).resolve().parents[2]
TEACHER = "tests.factories:linear_teacher"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def dump(store, *args, teacher=TEACHER, dataset="digits@train"):
    return invoke("dump", store, "--teacher", teacher, "--dataset", dataset, "--no-progress", *args)


def train(out, *args, dataset="digits@train"):
    return invoke("train", "--out", out, "--student", "mlp:hidden=8", "--dataset", dataset, "--loss", "ce",
                  "--epochs", "1", "--no-progress", *args)


def assert_refused(result, says: str, *unwritten: Path) -> None:
    """Exit non-zero through the CLI's own error (no exception escaped), with exactly one line that
    says ``says``, and none of ``unwritten`` created."""
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    assert escaped is None, f"{type(escaped).__name__} escaped the CLI:\n{result.output}"
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert says in lines[0], result.output
    for path in unwritten:
        assert not written(path), f"{path} was written: {written(path)}"


def written(path: Path) -> list[str]:
    """The files at ``path``, less the lock a writer takes before it reads its inputs (a directory
    holding only its lock holds no store or run)."""
    files = [path] if Path(path).is_file() else [p for p in Path(path).rglob("*") if p.is_file()]
    return [str(f) for f in files if not (f.name == ".lock" or ".logitcache-locks" in f.parts)]


def logits(store) -> np.ndarray:
    teacher = open_store(store).teacher()
    return teacher.take(np.arange(teacher.num_samples))


# 1. Transforms are applied or refused, never dropped.

def test_a_factory_without_a_transform_parameter_refuses_a_transform(tmp_path):
    result = dump(tmp_path / "s.zarr", "--transform", "normalize=mnist", dataset="tests.factories:shuffled_digits")
    assert_refused(result, "its factory takes no transform argument, so --transform", tmp_path / "s.zarr")


def test_a_factory_with_a_transform_parameter_applies_it_and_the_store_says_so(tmp_path):
    plain, normalized = tmp_path / "plain.zarr", tmp_path / "normalized.zarr"
    assert dump(plain, dataset="tests.factories:transformable_digits").exit_code == 0
    result = dump(normalized, "--transform", "normalize=mnist", dataset="tests.factories:transformable_digits")
    assert result.exit_code == 0, result.output
    assert not np.array_equal(logits(plain), logits(normalized))
    assert open_store(plain).dataset["transform"] == "factory"
    for store in (open_store(normalized),):
        assert store.dataset["transform"] == "normalize=mnist"
        assert store.teacher().attrs["settings"]["transform"] == "normalize=mnist"


@pytest.mark.parametrize("spec, says", [
    ("bogus", "unknown transform step 'bogus' in 'bogus'; steps: center_crop, color_jitter, erasing, flip"),
    ("resize=abc", "resize needs a positive integer, got 'abc'"),
    ("to_tensor,flip=0.3", "flip takes no value, got flip=0.3"),
])
@pytest.mark.parametrize("dataset", ["tests.factories:shuffled_digits", "tests.factories:transformable_digits",
                                     "digits@train"])
def test_bad_transform_specs_are_refused_by_dump_and_train(tmp_path, spec, says, dataset):
    assert_refused(dump(tmp_path / "s.zarr", "--transform", spec, dataset=dataset), says, tmp_path / "s.zarr")
    assert_refused(train(tmp_path / "run", "--transform", spec, dataset=dataset), says, tmp_path / "run")


@pytest.mark.parametrize("args, says", [
    (["--transform", "to_tensor"], "its factory takes no transform argument, so --transform cannot be applied"),
    (["--augment", "flip"], "its factory takes no transform argument, so --augment cannot be applied"),
])
def test_train_refuses_steps_a_factory_dataset_would_drop(tmp_path, args, says):
    assert_refused(train(tmp_path / "run", *args, dataset="tests.factories:shuffled_digits"), says, tmp_path / "run")


def test_augment_on_a_factory_dataset_needs_the_transform_it_goes_in_front_of(tmp_path):
    result = train(tmp_path / "run", "--augment", "flip", dataset="tests.factories:transformable_digits")
    assert_refused(result, "--augment needs --transform too with a factory dataset", tmp_path / "run")


def test_a_registered_dataset_without_a_location_refuses_one(tmp_path):
    assert_refused(dump(tmp_path / "s.zarr", dataset="digits:/data/mnist@train"),
                   "dataset 'digits' takes no location", tmp_path / "s.zarr")


# 2. Factory datasets that cannot describe their samples.

@pytest.mark.parametrize("factory, says", [
    ("empty_dataset", "dataset 'tests.factories:empty_dataset' is empty"),
    ("text_label_dataset", "sample 0 has label 'cat', not an integer class index"),
    ("negative_label_dataset", "has labels from -1 to 1, but 2 classes"),
    ("out_of_range_label_dataset", "has labels from 0 to 5, but 2 classes"),
    ("duplicate_key_dataset", "key 'a' names more than one sample"),
    ("short_keys_dataset", "gives 1 keys but 3 labels"),
    ("failing_dataset", "the factory failed: OSError: the share /mnt/data is not mounted"),
    ("splitless_dataset", "the factory failed: TypeError"),
    ("lengthless_dataset", "the factory's dataset has no length"),
    ("NOT_A_FACTORY", "'NOT_A_FACTORY' is not callable"),
])
def test_factory_datasets_that_cannot_describe_their_samples(tmp_path, factory, says):
    assert_refused(dump(tmp_path / "s.zarr", dataset=f"tests.factories:{factory}"), says, tmp_path / "s.zarr")


@pytest.mark.parametrize("kind", ["dataset", "teacher"])
def test_a_module_that_fails_to_import(tmp_path, monkeypatch, kind):
    package = tmp_path / f"broken_{kind}"  # a package per test: sys.modules keeps packages once imported
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "factories.py").write_text("raise RuntimeError('half-edited module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert_refused(dump(tmp_path / "s.zarr", **{kind: f"broken_{kind}.factories:build"}),
                   f"cannot import 'broken_{kind}.factories' (RuntimeError: half-edited module)", tmp_path / "s.zarr")


def test_an_image_folder_with_a_file_name_that_is_not_utf8(tmp_path):
    from tests.factories import write_image_folder

    write_image_folder(tmp_path / "pets", classes=2, per_class=2)
    folder = bytes(tmp_path / "pets" / "class1")
    os.rename(folder + b"/img1.png", folder + b"/caf\xe9.png")  # Latin-1, as an old archive may hold
    result = dump(tmp_path / "s.zarr", "--transform", "resize=8,center_crop=8,to_tensor",
                  teacher="tests.factories:image_teacher", dataset=f"imagefolder:{tmp_path / 'pets'}")
    assert_refused(result, "is not valid UTF-8", tmp_path / "s.zarr")


def test_damaged_torchvision_dataset_files(tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(b"junk")
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 1) + b"\x00")
    assert_refused(dump(tmp_path / "s.zarr", dataset=f"mnist:{tmp_path / 'mnist'}"),
                   "mnist data under", tmp_path / "s.zarr")
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "meta.bin").write_bytes(b"junk")
    assert_refused(dump(tmp_path / "s.zarr", dataset=f"imagenet:{tmp_path / 'imagenet'}@val"),
                   "imagenet data under", tmp_path / "s.zarr")


# 3. Model specs, checkpoints and weight files.

@pytest.mark.parametrize("teacher, says", [
    ("mlp:bogus=1", "unknown argument(s) bogus; it takes hidden, depth, dropout"),
    ("mlp:hidden=abc", "hidden takes an integer, got 'abc'"),
    ("mlp:hidden=-1", "cannot build model 'mlp:hidden=-1': RuntimeError"),
    ("torchvision:resnet18:bogus=1", "cannot build torchvision model 'resnet18': TypeError"),
    ("tests.factories:not_a_module_teacher", "the factory returned an object of type function"),
    ("tests.factories:failing_teacher", "ValueError: no pretrained head for 10 classes"),
])
def test_model_specs_that_cannot_be_built(tmp_path, teacher, says):
    assert_refused(dump(tmp_path / "s.zarr", teacher=teacher), says, tmp_path / "s.zarr")


def _checkpoint(**fields):
    return {"format": "logitcache-checkpoint", "version": 1, "model_spec": "mlp", "num_classes": 10,
            "model": {}, **fields}


CHECKPOINTS = {
    "junk": (b"\x80\x02junk" * 8, "not a file torch.save wrote (KeyError"),
    "empty": (b"", "not a file torch.save wrote (EOFError)"),
    "version": (_checkpoint(version="2"), "unreadable version '2'"),
    "no-spec": ({k: v for k, v in _checkpoint().items() if k != "model_spec"}, "model_spec is not a model spec"),
    "classes": (_checkpoint(num_classes="ten"), "num_classes is not a positive integer"),
    "model": (_checkpoint(model=[1, 2]), "model is not a state dict of tensors"),
    "itself": (None, "leads back to itself"),
    "bad-spec": (_checkpoint(model_spec="mlp:hidden=abc"), "cannot rebuild its model: model 'mlp:hidden=abc'"),
}


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_damaged_checkpoints(tmp_path, case):
    content, says = CHECKPOINTS[case]
    path = tmp_path / "teacher.pt"
    if case == "itself":
        content = _checkpoint(model_spec=f"checkpoint:{path}")
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    assert_refused(dump(tmp_path / "s.zarr", teacher=f"checkpoint:{path}"), says, tmp_path / "s.zarr")


@pytest.mark.parametrize("content, says", [(b"\x80\x02junk" * 8, "KeyError"), (b"", "EOFError")])
def test_weights_files_torch_cannot_read(tmp_path, content, says):
    (tmp_path / "w.pt").write_bytes(content)
    result = dump(tmp_path / "s.zarr", "--weights", tmp_path / "w.pt", teacher="mlp")
    assert_refused(result, f"cannot read weights {tmp_path / 'w.pt'} safely (weights_only=True): not a file "
                   f"torch.save wrote ({says}", tmp_path / "s.zarr")


# 4. torch's own noise stays off the terminal.

@pytest.mark.parametrize("scheme, says", [("export", "is not a torch.export program"),
                                          ("torchscript", "is not a TorchScript module")])
def test_a_model_file_torch_cannot_load_prints_one_line_on_stderr(tmp_path, scheme, says):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)  # a torch.save file: neither an export program nor TorchScript
    store = tmp_path / "s.zarr"
    process = subprocess.run(
        [sys.executable, "-m", "logitcache", "dump", str(store), "--teacher", f"{scheme}:{path}",
         "--dataset", "digits@train", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert process.returncode != 0
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path} {says}"), process.stderr
    assert process.stdout == "" and not written(store)


# 5. Pipelines are checked whole, before any step runs.

PIPELINE = """{top}
[pipeline]
runs = "{tmp}/runs"
{pipeline}
[dump]
store = "{tmp}/digits.zarr"
teacher = "tests.factories:linear_teacher"
dataset = "digits@train"
{dump}
[defaults]
student = "mlp:hidden=8"
dataset = "digits@train"
epochs = 1
[students.a]
loss = "ce"
{student}
{tables}
"""

PIPELINE_CASES = {
    "dump-type": ({"dump": 'batch_size = "abc"'}, '[dump] batch_size = "abc" is a string; expected an integer'),
    "student-type": ({"student": 'epochs = "two"'}, '[students.a] epochs = "two" is a string; expected an integer'),
    "string-for-table": ({"top": 'students.b = "mlp"'}, '[students.b] must be a table of options, but it is "mlp"'),
    "teacher-not-table": ({"top": 'teacher = "cnn"'}, "[teacher] must be a table of options"),
    "array-items": ({"student": 'milestones = [1, "x"]'}, '[students.a] milestones = [1, "x"] is an array; '
                    "expected an array of integers"),
    "bool-for-number": ({"student": "lr = true"}, "[students.a] lr = true is a boolean; expected a number"),
    "pipeline-type": ({"pipeline": "name = 3"}, "[pipeline] name = 3 is an integer; expected a string"),
    "pipeline-key": ({"pipeline": 'runz = "x"'}, "[pipeline] has unknown key 'runz'"),
    "range": ({"student": "epochs = 0"}, "[students.a] --epochs must be at least 1, got 0"),
    "transform": ({"student": 'transform = "bogus"'}, "[students.a] unknown transform step 'bogus'"),
    "missing": ({"tables": '[teacher]\ndataset = "digits@train"'}, "[teacher]: missing option(s) student"),
}


@pytest.mark.parametrize("case", PIPELINE_CASES)
def test_a_bad_pipeline_value_stops_it_before_any_step(tmp_path, case):
    parts, says = PIPELINE_CASES[case]
    text = PIPELINE.format(tmp=tmp_path, **{k: parts.get(k, "") for k in ("top", "pipeline", "dump", "student",
                                                                            "tables")})
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert_refused(invoke("run", path, "--no-progress"), f"pipeline {path}: {says}",
                   tmp_path / "digits.zarr", tmp_path / "runs")


def test_the_pipeline_template_is_valid_so_each_case_tests_only_its_change(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(PIPELINE.format(tmp=tmp_path, top="", pipeline="", dump="", student="", tables=""))
    result = invoke("run", path, "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "digits.zarr").exists() and (tmp_path / "runs" / "results.md").exists()
