"""A run killed at its worst moments, or whose files were damaged, then resumed or overwritten: it
ends with the files of a run never stopped, or fails with one line, never a traceback."""

import json
import shutil

import pytest
import torch

from logitcache.sources.checkpoints import load_checkpoint
from logitcache.train import TrainConfig, checkpointing, train
from tests.conftest import invoke, one_error

EPOCHS = 3


def config(out, **overrides):
    options = dict(out=str(out), student="mlp:hidden=8", dataset="digits@train", val_dataset="digits@val",
                   loss="ce", epochs=EPOCHS, batch_size=64, lr=0.7, schedule="constant", seed=5,
                   progress=False)  # val top-1 peaks at epoch 2 of 3
    return TrainConfig(**{**options, **overrides})


def quiet(*_):
    pass


def metrics(run) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(path) -> dict:
    return load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    train(config(out), log=quiet)
    return out


def best_epoch(run) -> int:
    return json.loads((run / "summary.json").read_text())["best"]["epoch"]


@pytest.mark.parametrize("which", ["best", "last"])
def test_a_kill_right_after_last_pt_is_written_loses_nothing_on_resume(tmp_path, straight, monkeypatch, which):
    """Killed between last.pt's rename and best.pt/metrics: the resume ends with the straight run's files."""
    kill_after = best_epoch(straight) if which == "best" else EPOCHS
    assert best_epoch(straight) < EPOCHS  # else the resume's own epochs would write best.pt again
    save = checkpointing.save_checkpoint

    def save_then_die(path, **kwargs):
        save(path, **kwargs)
        if kwargs["state"]["epoch"] == kill_after:
            raise KeyboardInterrupt  # the process dies here: nothing after the rename runs

    monkeypatch.setattr(checkpointing, "save_checkpoint", save_then_die)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(config(out), log=quiet)
    monkeypatch.setattr(checkpointing, "save_checkpoint", save)
    train(config(out, resume=True), log=quiet)
    assert metrics(out) == metrics(straight)
    assert (out / "metrics.csv").read_text().count("\n") == EPOCHS + 1
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(out / name)["epoch"] == load_checkpoint(straight / name)["epoch"], name
        expected = weights(straight / name)
        assert all(torch.equal(value, expected[key]) for key, value in weights(out / name).items()), name


def cli_args(out, *extra):
    return ["train", "--out", out, "--student", "mlp:hidden=8", "--dataset", "digits@train", "--val-dataset",
            "digits@val", "--loss", "ce", "--epochs", EPOCHS, "--batch-size", 64, "--lr", 0.7, "--schedule",
            "constant", "--seed", 5, "--no-progress", *extra]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """The straight run's first two epochs (a constant lr: --resume with --epochs 3 continues it exactly)."""
    out = tmp_path_factory.mktemp("runs") / "two"
    train(config(out, epochs=2), log=quiet)
    return out


@pytest.fixture
def copied(two_epochs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_epochs, out, symlinks=True)
    return out


def loop(path):
    (path.parent / "a").symlink_to(path.parent / "b")
    (path.parent / "b").symlink_to(path.parent / "a")
    path.unlink(missing_ok=True)
    path.symlink_to(path.parent / "a")


def directory(path):
    path.unlink(missing_ok=True)
    path.mkdir()


DAMAGED = [
    ("last.pt", directory, "--overwrite", "cannot remove {out}/last.pt to write the run again: Is a directory"),
    ("summary.json", directory, "--resume", "cannot remove {out}/summary.json to write the run again"),
    ("steps.csv", directory, "--resume", "{out}/steps.csv is not a file; move it away and rerun --resume"),
    ("last.pt", loop, "--resume", "checkpoint {out}/last.pt is not a file"),
]


@pytest.mark.parametrize("name, damage, flag, says", DAMAGED, ids=lambda v: getattr(v, "__name__", None))
def test_a_run_file_that_is_no_file_is_one_line(copied, name, damage, flag, says):
    damage(copied / name)
    assert says.format(out=copied) in one_error(invoke(*cli_args(copied, flag)))


def test_a_resume_drops_garbled_and_torn_step_rows(copied, straight):
    with (copied / "steps.csv").open("ab") as handle:
        handle.write(b"\xff\xfe not a row\nx,y,z\n\n1,3,0.7,1.0\n3,999,0.7,1.0,")  # junk, then a row a kill tore
    assert invoke(*cli_args(copied, "--resume")).exit_code == 0
    assert (copied / "steps.csv").read_text() == (straight / "steps.csv").read_text()


def test_out_naming_a_store_is_refused_and_the_store_is_left_alone(tmp_path, digits_store):
    store = tmp_path / "digits.zarr"
    shutil.copytree(digits_store, store)
    before = sorted(p.name for p in store.iterdir())
    for flag in ([], ["--overwrite"], ["--resume"]):
        result = invoke(*cli_args(store, *flag))
        assert f"--out {store} is a Zarr store (it holds zarr.json), not a run directory" in one_error(result)
    assert sorted(p.name for p in store.iterdir()) == before


def test_resume_of_a_run_that_lost_its_checkpoint_is_refused_not_restarted(copied):
    (copied / "last.pt").unlink()
    before = (copied / "metrics.jsonl").read_bytes()
    says = one_error(invoke(*cli_args(copied, "--resume")))
    assert f"{copied} records finished epochs (metrics.jsonl) but holds no last.pt to resume from" in says
    assert (copied / "metrics.jsonl").read_bytes() == before
    (copied / "metrics.jsonl").unlink()  # nothing finished: --resume starts the run
    assert invoke(*cli_args(copied, "--resume")).exit_code == 0


def _history(text):
    return lambda data: data.update(history=text)


def _options(**changes):
    return lambda data: data.update(config=json.dumps({**json.loads(data["config"]), **changes}))


def _nan_weights(data):
    name = next(iter(data["model"]))
    data["model"][name] = data["model"][name] * float("nan")


CRAFTED = [
    (_history("[]"), "is damaged: its 'history' is not one record per epoch from 1"),
    (_history('[{"epoch": "1"}, {"epoch": 2}]'), "is damaged: its 'history' is not one record per epoch from 1"),
    (_history('[{"epoch": 1, "val_top1": "high"}, {"epoch": 2}]'), "is damaged: its 'history' is not one"),
    (lambda data: data.update(optimizer="x"), "does not fit this student"),
    (_options(loss_options="x"), "records options this logitcache cannot read"),
    (_options(epochs="x"), "records options this logitcache cannot read"),
    (_nan_weights, "is damaged: the weights are not finite"),
]


@pytest.mark.parametrize("damage, says", CRAFTED)
def test_a_checkpoint_with_damaged_records_is_one_line(copied, damage, says):
    data = torch.load(copied / "last.pt", weights_only=True)
    damage(data)
    torch.save(data, copied / "last.pt")
    assert f"{copied}/last.pt {says}" in one_error(invoke(*cli_args(copied, "--resume")))


@pytest.mark.parametrize("planted", [".lock", ".metrics.csv.partial"])
def test_a_link_planted_in_a_run_directory_never_writes_its_target(copied, tmp_path, planted):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (copied / planted).unlink(missing_ok=True)
    (copied / planted).symlink_to(victim)
    result = invoke(*cli_args(copied, "--resume"))
    if planted == ".lock":
        assert f"{copied}/.lock is a symbolic link; remove it and rerun" in one_error(result)
    else:
        assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious"
