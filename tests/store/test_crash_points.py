"""Kills at every metadata write, concurrent writers, and resumes over damage: whatever moment a
dump died at, rerunning the same command finishes the job, and nobody else's teacher breaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from logitcache.cli import cli
from logitcache.store import open_store, verify_store
from tests import killpoints
from tests.conftest import store_contents

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def dump_args(store, *extra) -> list[str]:
    return ["dump", str(store), "--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train",
            "--rows-per-shard", "512", "--no-progress", *extra]


def run(kill_at: int, args: list[str]) -> subprocess.CompletedProcess:
    """The CLI in its own process (forked from a warm server), killed right after metadata write
    ``kill_at`` (0: never)."""
    return killpoints.run(kill_at, args, env=ENV, cwd=REPO, timeout=300)


def in_pairs(commands, kill_points) -> dict:
    """``commands(k)`` (a list of runs, one after another) for every kill point, two kill points at
    a time: each is its own store and its own processes, and a run spends much of its time
    writing and waiting on the disk. Returns {k: [CompletedProcess, ...]}."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(kill_points, pool.map(lambda k: [step() for step in commands(k)], kill_points), strict=True))


def metadata_writes(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stderr
    return int(result.stderr.rsplit("metadata writes: ", 1)[1].split()[0])


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, int]:
    """A never-killed dump, and how many metadata writes it made."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    return store, metadata_writes(run(0, dump_args(store)))


def test_a_kill_after_any_metadata_write_is_finished_by_the_same_command(reference, tmp_path):
    store_ref, writes = reference
    assert writes >= 8  # root, keys, labels, attrs, teachers, teacher, its arrays, status, complete
    stores = {k: tmp_path / f"killed{k}.zarr" for k in range(1, writes + 1)}
    runs = in_pairs(lambda k: [lambda: run(k, dump_args(stores[k])), lambda: run(0, dump_args(stores[k]))], stores)
    for k, (killed, rerun) in runs.items():
        assert killed.returncode == 137, (k, killed.stderr)
        assert rerun.returncode == 0, (k, rerun.stderr)
        assert store_contents(stores[k]) == store_contents(store_ref), k
        assert verify_store(stores[k]).ok, k


def test_a_second_teacher_killed_anywhere_breaks_nothing_for_the_first(reference, tmp_path):
    store_ref, _ = reference
    counted = tmp_path / "count.zarr"
    shutil.copytree(store_ref, counted)
    writes = metadata_writes(run(0, dump_args(counted, "--teacher-name", "second")))
    assert writes >= 5
    stores = {k: tmp_path / f"shared{k}.zarr" for k in range(1, writes + 1)}
    for store in stores.values():
        shutil.copytree(store_ref, store)
    killed = in_pairs(lambda k: [lambda: run(k, dump_args(stores[k], "--teacher-name", "second"))], stores)
    for k, store in stores.items():  # in this process, one store at a time (the CLI runner is not thread-safe)
        assert killed[k][0].returncode == 137, (k, killed[k][0].stderr)
        # Every team's view of the first teacher is untouched.
        assert invoke("info", store).exit_code == 0, k
        assert invoke("verify", store, "--teacher", "default").exit_code == 0, k
        assert open_store(store).teacher_names in (["default"], ["default", "second"]), k
        packed = invoke("pack", store, tmp_path / f"p{k}.zip")
        assert packed.exit_code == 0 or "'second'" in packed.output, (k, packed.output)
    reruns = in_pairs(lambda k: [lambda: run(0, dump_args(stores[k], "--teacher-name", "second"))], stores)
    for k, store in stores.items():
        assert reruns[k][0].returncode == 0, (k, reruns[k][0].stderr)
        assert verify_store(store).ok and open_store(store).teacher_names == ["default", "second"], k


def test_two_identical_dumps_started_together_leave_one_good_store(tmp_path):
    """The same command twice at once: one writes, the other is refused in one line; never both
    deleting each other's arrays. Repeated, since the race is about timing."""
    from concurrent.futures import ThreadPoolExecutor

    for trial in range(4):
        store = tmp_path / f"race{trial}.zarr"
        with ThreadPoolExecutor(max_workers=2) as pool:  # two processes forked at once from the warm server
            done = list(pool.map(lambda _: run(0, dump_args(store)), range(2)))
        results = [(d.returncode, d.stderr) for d in done]
        codes = sorted(code for code, _ in results)
        assert codes[0] == 0, results
        for code, stderr in results:
            if code:
                lines = [ln for ln in stderr.splitlines() if ln.startswith("Error")]
                assert len(lines) == 1 and "Traceback" not in stderr, stderr
                assert "being written by another process" in lines[0] or "already holds a complete" in lines[0]
        assert verify_store(store).ok, trial


def test_two_teachers_dumped_at_once_into_one_new_store_both_complete(tmp_path):
    store = tmp_path / "two.zarr"
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:  # two processes forked at once from the warm server
        done = list(pool.map(lambda name: run(0, dump_args(store, "--teacher-name", name)), ("a", "b")))
    for result in done:
        assert result.returncode == 0, result.stderr
    assert verify_store(store).ok and open_store(store).teacher_names == ["a", "b"]


def test_a_running_dump_holds_its_teacher(tmp_path):
    """While one dump writes a teacher, a second dump of it fails at once and names the holder. The
    holder sleeps 0.5 s a batch (45 s in all, killed once the second has answered), so however loaded
    the machine, it still holds the teacher when the second asks."""
    store = tmp_path / "held.zarr"
    slow = subprocess.Popen([sys.executable, "-m", "logitcache", "dump", str(store), "--teacher",
                             "tests.factories:slow_teacher", "--dataset", "digits@train", "--rows-per-shard", "64",
                             "--batch-size", "16", "--no-progress"], env={**ENV, "LOGITCACHE_TEST_SLEEP": "0.5"},
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (store / "teachers" / "default" / "zarr.json").exists():
            time.sleep(0.1)
        second = invoke("dump", store, "--teacher", "tests.factories:slow_teacher", "--dataset", "digits@train",
                        "--rows-per-shard", "64", "--batch-size", "16", "--no-progress", "--overwrite")
        assert second.exit_code == 1 and f"pid {slow.pid}" in second.output, second.output
        assert slow.poll() is None  # the holder was not disturbed
    finally:
        slow.kill()
        slow.wait()
    rerun = run(0, ["dump", str(store), "--teacher", "tests.factories:slow_teacher", "--dataset", "digits@train",
                    "--rows-per-shard", "64", "--batch-size", "16", "--no-progress"])
    assert rerun.returncode == 0 and verify_store(store).ok, rerun.stderr


def test_a_corrupt_chunk_in_an_unfinished_shard_is_rewritten_on_resume(reference, tmp_path):
    """A killed writer may leave garbage where the next shard goes; the resumed dump replaces it."""
    store_ref, writes = reference
    store = tmp_path / "resume.zarr"
    assert run(writes - 1, dump_args(store)).returncode == 137  # the teacher made, no shard written yet
    last = open_store(store).teacher("default").num_shards - 1
    (store / f"teachers/default/logits/c/{last}").mkdir(parents=True)
    (store / f"teachers/default/logits/c/{last}/0").write_bytes(b"\x00garbage" * 40)
    rerun = run(0, dump_args(store))
    assert rerun.returncode == 0, rerun.stderr
    assert store_contents(store) == store_contents(store_ref)


def test_the_same_command_on_a_complete_teacher_has_nothing_to_do(reference, tmp_path):
    store_ref, _ = reference
    store = tmp_path / "done.zarr"
    shutil.copytree(store_ref, store)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    again = run(0, dump_args(store))
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before  # not one byte rewritten
