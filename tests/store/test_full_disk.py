"""A disk that fills during a dump or while train writes a checkpoint: one `Error:` line, nothing
half-written left behind, and the rerun after space is freed gives the same store, bit for bit.
Real small file systems (tmpfs), mounted where the tests run as root; skipped elsewhere."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import killpoints
from tests.conftest import make_store, store_contents

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 60 KB at tmp_path/disk; ``grow()`` frees space by enlarging it (contents kept)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a small file system needs root")

    try:
        yield SmallDisk(disk)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


class SmallDisk(type(Path())):
    def grow(self) -> None:
        subprocess.run(["mount", "-o", "remount,size=16m", str(self)], check=True)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert done.returncode == 1 and "Traceback" not in output and len(errors) == 1, output
    return errors[0]


def cli(*args) -> subprocess.CompletedProcess:
    """The CLI in its own process, forked from the warm ``tests.killpoints`` server (never killed)."""
    return killpoints.run(0, list(args), env=ENV, cwd=REPO, timeout=300)


def test_a_dump_that_fills_the_disk_is_one_line_and_resumes_to_identical_bytes(small_disk, tmp_path):
    options = ["--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train", "--codec", "fp32",
               "--rows-per-shard", "256", "--batch-size", "64", "--no-progress"]
    failed = cli("dump", small_disk / "s.zarr", *options)
    error = one_error_line(failed)
    assert error.startswith("Error: cannot write shard") and "rerun the same command to resume" in error
    small_disk.grow()
    resumed = cli("dump", small_disk / "s.zarr", *options)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    reference = make_store(tmp_path / "reference.zarr", codec="fp32")
    assert store_contents(small_disk / "s.zarr") == store_contents(reference)


def test_a_checkpoint_that_fills_the_disk_is_one_line_and_leaves_no_partial_file(small_disk):
    run = small_disk / "run"
    failed = cli("train", "--out", run, "--student", "mlp:hidden=2048", "--dataset", "digits@train", "--loss", "ce",
                 "--epochs", "1", "--no-progress")
    error = one_error_line(failed)
    assert error.startswith(f"Error: cannot write {run}") and "no space left" in error
    assert not list(run.glob(".*.partial"))
