"""A run records the targets it learnt from (each store's teacher digests and sample fingerprint), and
``train --resume`` refuses, in one line, a store re-dumped since: real stores, real ``dump --overwrite``
between a run and its resume, for an image store and a token store; runs recorded before the record
still resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from logitcache.sources.checkpoints import load_checkpoint
from logitcache.store import open_store
from logitcache.train.run_targets import short, targets_changes
from tests.conftest import invoke, make_store, one_error

REPO = Path(__file__).resolve().parents[2]
HAMLET = REPO / "data" / "text" / "shakespeare" / "hamlet.md"
LM_STUDENT = "gpt:n_layer=1,n_head=2,n_embd=16,block_size=64"


def image_train(out, store, *extra, loss="kl"):
    return invoke("train", "--out", out, "--student", "mlp:hidden=8", "--dataset", "digits@train", "--store", store,
                  "--loss", loss, "--batch-size", "128", "--no-progress", *extra)


def lm_train(out, store, *extra, loss="kl"):
    return invoke("train", "--out", out, "--student", LM_STUDENT, "--store", store, "--loss", loss,
                  "--optimizer", "adamw", "--lr", "0.01", "--batch-size", "16", "--no-progress", *extra)


def lm_dump(store, text, codec, *extra, teacher="tests.factories:tiny_lm", split="train"):
    result = invoke("dump", store, "--teacher", teacher, "--dataset", f"text:{text}@{split}", "--tokenizer", "bytes",
                    "--seq-len", "64", "--codec", codec, "--batch-size", "32", "--rows-per-shard", str(64 * 64),
                    "--no-progress", *extra)
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "hamlet-start.md"
    path.write_text(HAMLET.read_text()[:3_000])
    return path


def recorded_targets(run: Path) -> tuple[dict, dict]:
    """The targets record of config.json and of last.pt's options."""
    config = json.loads((run / "config.json").read_text())
    return config.get("targets"), json.loads(load_checkpoint(run / "last.pt")["config"]).get("targets")


def forget_targets(run: Path) -> None:
    """Make ``run`` look recorded before the targets were: no record in config.json or last.pt."""
    config = json.loads((run / "config.json").read_text())
    del config["targets"]
    (run / "config.json").write_text(json.dumps(config))
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    options = json.loads(checkpoint["config"])
    del options["targets"]
    checkpoint["config"] = json.dumps(options)
    torch.save(checkpoint, run / "last.pt")


def test_an_image_run_records_its_teachers_digest_and_refuses_a_resume_after_a_redump(tmp_path):
    store = make_store(tmp_path / "s.zarr", codec="fp32")
    digest = open_store(store).teacher().digest
    assert image_train(tmp_path / "run", store, "--epochs", "1").exit_code == 0
    in_config, in_checkpoint = recorded_targets(tmp_path / "run")
    assert in_config == in_checkpoint == {"store": {"path": str(store), "teachers": {"default": digest},
                                                    "samples": open_store(store).fingerprint}, "val_store": None}
    make_store(store, codec="fp16", overwrite=True)  # the same samples, other targets
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    line = one_error(image_train(tmp_path / "run", store, "--epochs", "2", "--resume"))
    new = open_store(store).teacher().digest
    assert line == (f"Error: --resume would train on other targets than the run learnt from: teacher 'default' in "
                    f"{store} is now {short(new)} (the run learnt from {short(digest)}); start a new --out (or pass "
                    "--overwrite instead of --resume), or re-dump the targets it learnt from"), line
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before  # nothing written
    make_store(store, codec="fp32", overwrite=True)  # re-dumped as it was: the very targets again
    assert open_store(store).teacher().digest == digest
    resumed = image_train(tmp_path / "run", store, "--epochs", "2", "--resume")
    assert resumed.exit_code == 0 and "resuming" in resumed.output, resumed.output


def test_a_run_recorded_before_the_targets_record_still_resumes(tmp_path):
    store = make_store(tmp_path / "s.zarr", codec="fp32")
    assert image_train(tmp_path / "run", store, "--epochs", "1").exit_code == 0
    forget_targets(tmp_path / "run")
    make_store(store, codec="fp16", overwrite=True)  # nothing recorded to tell it by
    resumed = image_train(tmp_path / "run", store, "--epochs", "2", "--resume")
    assert resumed.exit_code == 0 and "resuming" in resumed.output, resumed.output
    in_config, in_checkpoint = recorded_targets(tmp_path / "run")  # from now on, recorded
    assert in_config == in_checkpoint and in_config["store"]["teachers"] == {
        "default": open_store(store).teacher().digest}


def test_a_label_only_image_run_does_not_record_the_store_it_does_not_read(tmp_path):
    store = make_store(tmp_path / "s.zarr", codec="fp32")
    assert image_train(tmp_path / "run", store, "--epochs", "1", loss="ce").exit_code == 0
    assert recorded_targets(tmp_path / "run") == ({"store": None, "val_store": None},) * 2
    make_store(store, codec="fp16", overwrite=True)
    assert image_train(tmp_path / "run", store, "--epochs", "2", "--resume", loss="ce").exit_code == 0


def test_a_token_run_refuses_a_resume_after_its_store_or_val_store_was_redumped(tmp_path, text):
    store, val = lm_dump(tmp_path / "lm.zarr", text, "topk:8"), lm_dump(tmp_path / "val.zarr", text, "topk:8",
                                                                       split="val")
    assert lm_train(tmp_path / "run", store, "--val-store", val, "--epochs", "1").exit_code == 0
    recorded, _ = recorded_targets(tmp_path / "run")
    assert recorded["store"]["teachers"] == {"default": open_store(store).teacher().digest}
    assert recorded["val_store"]["teachers"] == {"default": open_store(val).teacher().digest}
    lm_dump(val, text, "topk:4", "--overwrite", split="val")
    line = one_error(lm_train(tmp_path / "run", store, "--val-store", val, "--epochs", "2", "--resume"))
    assert f"--resume would train on other targets than the run learnt from: teacher 'default' in {val} is now" in line
    lm_dump(val, text, "topk:8", "--overwrite", split="val")  # as it was
    lm_dump(store, text, "fp16", "--overwrite")
    line = one_error(lm_train(tmp_path / "run", store, "--val-store", val, "--epochs", "2", "--resume"))
    assert f"teacher 'default' in {store} is now" in line and "start a new --out" in line, line


def test_a_label_only_token_run_is_held_to_its_sequences_not_to_a_teacher(tmp_path, text):
    store = lm_dump(tmp_path / "lm.zarr", text, "topk:8")
    assert lm_train(tmp_path / "run", store, "--epochs", "1", loss="ce").exit_code == 0
    recorded, _ = recorded_targets(tmp_path / "run")
    assert recorded["store"] == {"path": str(store), "teachers": {}, "samples": open_store(store).fingerprint}
    lm_dump(store, text, "topk:4", "--overwrite")  # another teacher, the same sequences: ce reads none of it
    assert lm_train(tmp_path / "run", store, "--epochs", "2", "--resume", loss="ce").exit_code == 0
    other = lm_dump(tmp_path / "other.zarr", text, "topk:8", split="val")
    shutil.rmtree(store)
    shutil.copytree(other, store)  # another store copied to the same path
    line = one_error(lm_train(tmp_path / "run", store, "--epochs", "3", "--resume", loss="ce"))
    assert f"{store} now holds other samples (fingerprint {short(open_store(store).fingerprint)}" in line, line


def test_targets_changes_names_a_teacher_the_store_no_longer_serves():
    before = {"store": {"path": "s.zarr", "teachers": {"a": "sha256:" + "1" * 64}, "samples": "sha256:ff"}}
    after = {"store": {"path": "s.zarr", "teachers": {"b": "sha256:" + "2" * 64}, "samples": "sha256:ff"}}
    assert targets_changes(before, after) == ["s.zarr no longer serves the teacher 'a' the run learnt from (it reads 'b')"]
    unresolved = {"store": {"path": "s.zarr", "teachers": {}, "samples": "sha256:ff"}}
    assert targets_changes(before, unresolved) == []  # the task's read of the store says why it has no teacher
    assert targets_changes(before, before) == [] and targets_changes(None, after) == []
    assert targets_changes(before, {"store": None, "val_store": None}) == []  # not read now: the options say why


def test_the_record_reads_the_stored_digest_not_the_data(tmp_path):
    """The record is the teacher's attribute: with its logits and chunk digests gone, it is the same."""
    from logitcache.train import TrainConfig
    from logitcache.train.resolve import resolve
    from logitcache.train.run_targets import targets_record

    store = make_store(tmp_path / "s.zarr", codec="fp32")
    digest = open_store(store).teacher().digest
    resolved = resolve(TrainConfig(out=str(tmp_path / "run"), student="mlp", dataset="digits@train", store=str(store),
                                   loss="kl"), log=lambda *_: None)
    for array in ("logits", "chunk_digests"):
        shutil.rmtree(store / "teachers" / "default" / array)
    assert targets_record(resolved.config, open_store(store), tokens=False)["store"]["teachers"] == {"default": digest}
