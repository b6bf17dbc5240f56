"""Both stages under real torchrun processes (gloo on CPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from logitcache.store import open_store
from tests.conftest import store_contents

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def torchrun(*args, nproc=2, env=None, **kwargs):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "logitcache", *map(str, args)]
    return subprocess.run(command, cwd=REPO, env={**ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_two_process_dump_is_byte_identical_to_one_process(tmp_path, digits_store):
    result = torchrun("dump", tmp_path / "two.zarr", "--teacher", "tests.factories:linear_teacher", "--dataset",
                      "digits@train", "--codec", "fp32", "--rows-per-shard", "256", "--batch-size", "64",
                      "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("dumped 1437 samples") == 1  # rank 0 reports for all
    assert store_contents(tmp_path / "two.zarr") == store_contents(digits_store)
    assert open_store(tmp_path / "two.zarr").teacher().attrs["run"]["processes"] == 2


def test_interrupted_two_process_dump_finishes_in_one_process_identically(tmp_path, slow_teacher_reference):
    store = tmp_path / "s.zarr"
    args = ["dump", store, "--teacher", "tests.factories:slow_teacher", "--dataset", "digits@train", "--codec", "fp32",
            "--rows-per-shard", "256", "--batch-size", "64", "--no-progress"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "logitcache", *map(str, args)]
    launcher = subprocess.Popen(command, cwd=REPO, env={**ENV, "LOGITCACHE_TEST_SLEEP": "0.15"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = store / "teachers" / "default" / "shard_done" / "c"
    deadline = time.time() + 120
    while (not done.exists() or len(list(done.iterdir())) < 2) and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    for pid in [launcher.pid, *_descendants(launcher.pid)]:  # torchrun's workers run in their own sessions
        os.kill(pid, signal.SIGKILL)
    launcher.wait()
    assert not open_store(store).teacher("default").is_complete
    finish = subprocess.run([sys.executable, "-m", "logitcache", *map(str, args)], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert store_contents(store) == store_contents(slow_teacher_reference)


def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_failure_on_one_rank_fails_every_rank_clearly(tmp_path):
    result = torchrun("dump", tmp_path / "nan.zarr", "--teacher", "tests.factories:nan_teacher", "--dataset",
                      "digits@train", "--rows-per-shard", "256", "--no-progress")
    assert result.returncode != 0
    assert result.stderr.count("Error: the teacher produced NaN/inf logits") == 2  # the same line on both ranks
    assert not open_store(tmp_path / "nan.zarr").teacher("default").is_complete


def test_ddp_training_checkpoints_and_repeats_exactly(tmp_path, digits_store):
    def run(name):
        result = torchrun("train", "--out", tmp_path / name, "--student", "mlp:hidden=16", "--dataset", "digits@train",
                          "--val-dataset", "digits@val", "--store", digits_store, "--loss", "dist", "--epochs", "2",
                          "--batch-size", "32", "--no-progress")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("trained 2 epochs") == 1
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"} for line in lines]

    first, second = run("a"), run("b")
    assert first == second and [r["epoch"] for r in first] == [1, 2]
    assert (tmp_path / "a" / "last.pt").exists() and (tmp_path / "a" / "best.pt").exists()
    steps = (tmp_path / "a" / "steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 2 * 23  # ceil(1437 / 2) = 719 samples per rank, 23 batches of 32


def test_multi_view_dump_and_training_under_torchrun(tmp_path):
    from tests.conftest import make_store

    views = ["--augment", "crop=0.4-1,flip", "--views", "3", "--record-view-hashes"]
    single = make_store(tmp_path / "one.zarr", augment="crop=0.4-1,flip", views=3, record_view_hashes=True)
    result = torchrun("dump", tmp_path / "two.zarr", "--teacher", "tests.factories:linear_teacher", "--dataset",
                      "digits@train", "--rows-per-shard", "256", "--batch-size", "64", "--no-progress", *views)
    assert result.returncode == 0, result.stderr
    assert store_contents(tmp_path / "two.zarr") == store_contents(single)

    def run(name):
        result = torchrun("train", "--out", tmp_path / name, "--student", "mlp:hidden=16", "--dataset", "digits@train",
                          "--store", single, "--loss", "kl", "--epochs", "2", "--batch-size", "32", "--mixup", "0.2",
                          "--no-progress")
        assert result.returncode == 0, result.stderr
        return (tmp_path / name / "steps.csv").read_text()

    assert run("a") == run("b")


def _one_ddp_epoch(tmp_path):
    """A store, and the train command (without --epochs) that has just run one epoch from it under torchrun."""
    from tests.conftest import make_store

    store = make_store(tmp_path / "s.zarr", codec="fp32")
    args = ("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train", "--store",
            store, "--loss", "kl", "--batch-size", "128", "--no-progress")
    result = torchrun(*args, "--epochs", "1")
    assert result.returncode == 0, result.stderr
    return store, args


def test_a_ddp_resume_after_its_store_was_redumped_is_refused_on_every_rank(tmp_path):
    """Rank 0 records the teacher's digest; every rank checks the resume against that one record."""
    store, args = _one_ddp_epoch(tmp_path)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["targets"]["store"]["teachers"] == {
        "default": open_store(store).teacher().digest}
    from tests.conftest import make_store

    make_store(store, codec="fp16", overwrite=True)
    result = torchrun(*args, "--epochs", "2", "--resume")
    assert result.returncode != 0 and str(REPO / "logitcache") not in result.stderr, result.stderr  # torchrun's own only
    assert result.stderr.count("Error: --resume would train on other targets than the run learnt from: teacher "
                               f"'default' in {store} is now") == 2, result.stderr


def test_a_ddp_resume_whose_run_files_rank_0_cannot_write_stops_every_rank_in_one_line(tmp_path):
    """steps.csv made a directory: rank 0's error is every rank's, not a peer's lost connection."""
    store, args = _one_ddp_epoch(tmp_path)
    (tmp_path / "run" / "steps.csv").unlink()
    (tmp_path / "run" / "steps.csv").mkdir()
    result = torchrun(*args, "--epochs", "2", "--resume")
    assert result.returncode != 0 and str(REPO / "logitcache") not in result.stderr, result.stderr  # torchrun's own only
    assert result.stderr.count(f"Error: {tmp_path / 'run' / 'steps.csv'} is not a file") == 2, result.stderr
