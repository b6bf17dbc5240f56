"""Training-run integrity: --resume continues the same run or refuses, one writer per run directory,
and a diverging run stops with an error instead of saving NaN weights."""

import csv
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from logitcache.train.run_files import RunFiles
from logitcache.train.train_config import TrainConfig
from torch import nn

from logitcache.cli import cli
from logitcache.errors import CheckpointError
from logitcache.sources.checkpoints import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
GATE = "LOGITCACHE_TEST_GATE"


class _Gated(nn.Module):
    """A real student whose forward pass waits while the file named by $LOGITCACHE_TEST_GATE is
    missing (and says, by a file next to it, that it is waiting): a test can hold a training run
    mid-way, deterministically, while it starts another one."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        gate = os.environ.get(GATE)
        if gate and not os.path.exists(gate):
            Path(f"{gate}.waiting.{os.getpid()}").touch()
            deadline = time.time() + 120
            while not os.path.exists(gate) and time.time() < deadline:
                time.sleep(0.02)
        return self.inner(x)


def gated_student(num_classes: int = 10) -> nn.Module:
    from logitcache.sources import get_model

    return _Gated(get_model("mlp:hidden=8", num_classes))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_error(output: str) -> str:
    """The single 'Error' line of a failed command (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, output
    return errors[0]


def train_args(out, *extra, **options):
    """`logitcache train` argv: a small KLDiv run; keyword options replace the defaults."""
    settings = {"out": out, "student": "mlp:hidden=8", "dataset": "digits@train", "loss": "kl", "epochs": 2,
                "batch_size": 32, **options}
    argv = ["train", "--no-progress"]
    for name, value in settings.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return [*argv, *map(str, extra)]


def run_files(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.name != ".lock"}


def steps(run: Path) -> list[dict]:
    with open(run / "steps.csv") as handle:
        return list(csv.DictReader(handle))


def epochs_of_steps(run: Path) -> list[int]:
    return [int(row["epoch"]) for row in steps(run)]


def assert_finite_checkpoint(path: Path):
    for name, value in load_checkpoint(path)["model"].items():
        assert torch.isfinite(value).all(), name


@pytest.fixture(scope="module")
def kl_run(tmp_path_factory, digits_store):
    """A finished 2-epoch KLDiv run (cosine schedule); tests copy it before touching it."""
    out = tmp_path_factory.mktemp("runs") / "kl"
    result = invoke(*train_args(out, store=digits_store))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def copied_run(kl_run, tmp_path):
    out = tmp_path / "kl"
    shutil.copytree(kl_run, out)
    return out


# 1. --resume continues the recorded run, or refuses and names every difference.

CHANGED = [
    ({"loss": "dist", "lr": 0.5, "temperature": 7},
     "loss (kl -> dist), temperature (4 -> 7), lr (0.05 -> 0.5)"),
    ({"epochs": 1}, "epochs (2 -> 1)"),
    ({"batch_size": 16, "seed": 3}, "batch-size (32 -> 16), seed (0 -> 3)"),
    ({"augment": "flip"}, "augment (none -> flip)"),
    ({"kd_weight": 2, "cache_budget": 1000}, "kd-weight (1 -> 2), cache-budget (4294967296 -> 1000)"),
    ({"schedule": "step", "milestones": "1"}, "schedule (cosine -> step), milestones (none -> 1)"),
]


@pytest.mark.parametrize("changes, expected", CHANGED, ids=["loss-lr-temperature", "fewer-epochs", "batch-seed",
                                                            "augment", "weights-cache", "schedule"])
def test_resume_with_other_options_is_refused_naming_every_difference(copied_run, digits_store, changes, expected):
    before = run_files(copied_run)
    result = invoke(*train_args(copied_run, "--resume", store=digits_store, **changes))
    assert result.exit_code != 0
    error = one_error(result.output)
    assert error.startswith("Error: --resume would change the run: ") and expected in error, error
    assert error.count(" -> ") == len(changes), error  # each named once, nothing else
    assert "--overwrite" in error and "new --out" in error
    assert run_files(copied_run) == before  # nothing was touched


def test_resume_that_adds_epochs_to_a_cosine_run_says_the_lr_jumps(copied_run, digits_store):
    result = invoke(*train_args(copied_run, "--resume", store=digits_store, epochs=3))
    assert result.exit_code == 0, result.output
    note = next(line for line in result.output.splitlines() if line.startswith("note:"))
    assert "extends this 2-epoch run" in note and "cosine" in note and "not the run --epochs 3" in note
    said = float(note.split(" to ")[-1].split(")")[0])
    first_of_epoch_3 = next(float(row["lr"]) for row in steps(copied_run) if row["epoch"] == "3")
    assert said == pytest.approx(first_of_epoch_3, rel=1e-2)  # the note states the lr the run then used
    assert epochs_of_steps(copied_run) == [1] * 45 + [2] * 45 + [3] * 45
    assert json.loads((copied_run / "config.json").read_text())["epochs"] == 3  # the run's options now
    shrink = invoke(*train_args(copied_run, "--resume", store=digits_store, epochs=2))
    assert shrink.exit_code != 0 and "epochs (3 -> 2)" in one_error(shrink.output)


def test_resume_may_change_how_it_runs_and_extend_a_step_schedule_exactly(tmp_path, digits_store):
    options = dict(store=digits_store, schedule="step", milestones="2")
    assert invoke(*train_args(tmp_path / "straight", **options, epochs=3)).exit_code == 0
    assert invoke(*train_args(tmp_path / "extended", **options, epochs=2)).exit_code == 0
    resumed = invoke(*train_args(tmp_path / "extended", "--resume", "--check-views", **options, epochs=3,
                                 workers=1))
    assert resumed.exit_code != 0 and "--check-views" in one_error(resumed.output)  # checks still run...
    resumed = invoke(*train_args(tmp_path / "extended", "--resume", **options, epochs=3, workers=1))
    assert resumed.exit_code == 0, resumed.output  # ...and workers and epochs may change
    assert "note:" not in resumed.output  # step decay does not depend on --epochs
    assert steps(tmp_path / "extended") == steps(tmp_path / "straight")
    straight, extended = (load_checkpoint(tmp_path / n / "last.pt")["model"] for n in ("straight", "extended"))
    assert all(torch.equal(straight[k], extended[k]) for k in straight)


def test_the_options_a_resume_may_change_are_real_options():
    from logitcache.train.train_config import MAY_CHANGE_ON_RESUME

    names = {item.name for item in fields(TrainConfig)}
    assert set(MAY_CHANGE_ON_RESUME) <= names
    for result_changing in ("loss", "lr", "temperature", "seed", "batch_size", "student", "store", "cache_budget"):
        assert result_changing not in MAY_CHANGE_ON_RESUME


# 2. One writer per run directory.

def test_two_simultaneous_resumes_one_writes_the_other_fails_at_once(tmp_path):
    out, gate = tmp_path / "run", tmp_path / "gate"
    student = f"{__name__}:gated_student"
    assert invoke(*train_args(out, loss="ce", student=student, epochs=1)).exit_code == 0
    command = [sys.executable, "-m", "logitcache", *train_args(out, "--resume", loss="ce", student=student, epochs=3)]
    runs = [subprocess.Popen(command, cwd=REPO, env={**ENV, GATE: str(gate)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.time() + 120  # until one has exited, or both wait at the gate (two writers)
    while (all(r.poll() is None for r in runs) and len(list(tmp_path.glob("gate.waiting.*"))) < 2
           and time.time() < deadline):
        time.sleep(0.05)
    gate.touch()
    outputs = [r.communicate(timeout=120) for r in runs]
    codes = [r.returncode for r in runs]
    assert sorted(code == 0 for code in codes) == [False, True], (codes, outputs)
    winner = runs[codes.index(0)]
    error = one_error(outputs[1 - codes.index(0)][1])
    assert f"{out} is in use" in error and f"pid {winner.pid} on {socket.gethostname()}" in error, error
    assert epochs_of_steps(out) == [1] * 45 + [2] * 45 + [3] * 45  # each epoch exactly once
    assert sorted(int(row["step"]) for row in steps(out)) == list(range(135))
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_held_run_directory_is_refused_by_fresh_and_overwriting_runs(tmp_path):
    out = tmp_path / "run"
    with RunFiles(out).lock():
        for extra in ([], ["--overwrite"], ["--resume"]):
            result = invoke(*train_args(out, *extra, loss="ce", epochs=1))
            assert result.exit_code != 0
            assert f"pid {os.getpid()} on {socket.gethostname()}" in one_error(result.output)
        assert not (out / "config.json").exists()
    assert invoke(*train_args(out, loss="ce", epochs=1)).exit_code == 0  # released: the lock file is no run


def test_a_run_directory_with_only_its_lock_file_holds_no_run(tmp_path):
    out = tmp_path / "run"
    failed = invoke(*train_args(out, loss="ce", dataset="imagefolder:/nonexistent"))
    assert failed.exit_code != 0 and [p.name for p in out.iterdir()] == [".lock"]
    assert not RunFiles(out).holds_run()
    assert invoke(*train_args(out, loss="ce", epochs=1)).exit_code == 0


# 3. Non-finite options are refused; a diverging run stops and never saves non-finite weights.

NON_FINITE = [("--lr", "inf"), ("--lr", "nan"), ("--temperature", "inf"), ("--kd-weight", "inf"),
              ("--ce-weight", "nan"), ("--momentum", "inf"), ("--weight-decay", "inf"), ("--dist-beta", "nan"),
              ("--dkd-beta", "inf"), ("--mixup", "inf"), ("--lr", "1e300"), ("--lr-gamma", "-inf")]


@pytest.mark.parametrize("option, value", NON_FINITE, ids=[f"{o}={v}" for o, v in NON_FINITE])
def test_non_finite_option_values_are_refused(tmp_path, digits_store, option, value):
    result = invoke(*train_args(tmp_path / "run", option, value, store=digits_store))
    assert result.exit_code != 0
    assert f"{option} must be a finite number" in one_error(result.output)
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_at_its_first_nan_step_and_writes_no_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = invoke(*train_args(out, loss="ce", lr="1e4"))
    assert result.exit_code != 0
    error = one_error(result.output)
    assert error.startswith("Error: epoch 1, step ") and "the training loss is nan" in error, error
    assert "no checkpoint" in error
    step = int(error.split("step ")[1].split()[0])
    assert 0 < step < 45
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists() and not (out / "summary.json").exists()


def test_divergence_keeps_the_last_finished_epoch_in_last_pt(tmp_path):
    out = tmp_path / "run"  # epoch 1 at lr 0.05, then 5e28
    result = invoke(*train_args(out, loss="ce", epochs=3, schedule="step", milestones="1", lr_gamma="1e30"))
    assert result.exit_code != 0
    error = one_error(result.output)
    assert error.startswith("Error: epoch 2, step ") and f"{out / 'last.pt'} keeps the weights of epoch 1" in error
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert_finite_checkpoint(out / "last.pt")
    assert_finite_checkpoint(out / "best.pt")
    assert epochs_of_steps(out) == [1] * 45
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_weights_that_overflow_on_an_epochs_last_step_are_never_saved(tmp_path):
    out = tmp_path / "run"  # one step per epoch: its loss is finite, the update it makes is not
    result = invoke(*train_args(out, loss="ce", epochs=1, batch_size=2048, schedule="constant", lr="1e38",
                                weight_decay="1e38"))
    assert result.exit_code != 0
    error = one_error(result.output)
    assert error.startswith("Error: epoch 1: after its last step the weights are not finite"), error
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.bias[1] = math.nan
    with pytest.raises(CheckpointError, match=r"weights are not finite \(bias\)"):
        save_checkpoint(tmp_path / "x.pt", model=model, model_spec="x", num_classes=2, state={})
    assert list(tmp_path.iterdir()) == []
    masked = nn.Linear(3, 2)
    masked.register_buffer("mask", torch.tensor([0.0, -math.inf]))  # inf buffers are legitimate, NaN ones not
    save_checkpoint(tmp_path / "y.pt", model=masked, model_spec="x", num_classes=2, state={})


# Under torchrun: the lock and the divergence stop every rank together (no hang).

def torchrun(*args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "logitcache", *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def test_under_torchrun_every_rank_stops_together(tmp_path):
    result = torchrun(*train_args(tmp_path / "nan", loss="ce", lr="1e4"))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: epoch 1, step ")]
    assert len(errors) == 2 and errors[0] == errors[1], result.stderr  # at the same step on both ranks
    assert not (tmp_path / "nan" / "last.pt").exists()
    held = tmp_path / "held"
    with RunFiles(held).lock():
        result = torchrun(*train_args(held, loss="ce", epochs=1))
    assert result.returncode != 0
    assert result.stderr.count(f"Error: {held} is in use") == 2, result.stderr  # the same line on both ranks
