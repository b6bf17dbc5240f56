"""Stores written before format v3, packing and zip files from strangers, S3 leases and credentials,
and the smaller failure paths of the integrity work: each one line, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from logitcache.store import open_store, verify_store
from tests.conftest import invoke, make_store, one_error

REPO = Path(__file__).resolve().parents[2]
LEGACY = REPO / "tests" / "data" / "legacy"  # made by logitcache 0.2.0 (format v1 and v2), see its README


def child_env(**extra) -> dict:
    """The environment for a CLI subprocess, read now (the S3 fixture sets its variables late)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def train_args(store, out, *extra):
    return ["train", "--out", out, "--student", "mlp:hidden=8", "--dataset", "digits@train", "--store", store,
            "--loss", "kl", "--epochs", "1", "--no-progress", *extra]


# -- stores written before v3 ------------------------------------------------------------------

@pytest.mark.parametrize("version", [1, 2])
def test_legacy_stores_open_verify_and_train_as_before(version, tmp_path):
    store = tmp_path / f"v{version}.zarr"
    shutil.copytree(LEGACY / f"v{version}.zarr", store)
    info = invoke("info", store)
    assert info.exit_code == 0 and f"format v{version}: an older format, still read" in info.output
    assert "digest    none" in info.output
    result = invoke("verify", store, "--dataset", "digits@train")
    assert result.exit_code == 0 and "written before format v3" in result.output, result.output
    assert invoke(*train_args(store, tmp_path / "run")).exit_code == 0
    assert json.loads((store / "zarr.json").read_text())["attributes"]["logitcache"]["version"] == version


def test_legacy_stores_still_catch_accidents(tmp_path):
    """Without digests, chunk checksums and the ledger-against-status check still hold."""
    store = tmp_path / "v1.zarr"
    shutil.copytree(LEGACY / "v1.zarr", store)
    (store / "teachers/default/shard_done/c/1").unlink()
    assert "not in its ledger" in one_error(invoke(*train_args(store, tmp_path / "run")))
    one_error(invoke("verify", store))


def test_a_teacher_added_to_a_legacy_store_raises_it_to_v3(tmp_path):
    store = tmp_path / "v1.zarr"
    shutil.copytree(LEGACY / "v1.zarr", store)
    make_store(store, teacher_name="new", rows_per_shard=512)
    opened = open_store(store)
    assert opened.version == 3 and opened.teacher_names == ["default", "new"]
    assert opened.teacher("new").digest.startswith("sha256:") and opened.teacher("default").digest is None
    assert verify_store(store).ok


# -- packing and zip files ---------------------------------------------------------------------

def test_pack_from_a_zip_gives_the_same_zip_contents(digits_store, tmp_path):
    assert invoke("pack", digits_store, tmp_path / "a.zip").exit_code == 0
    assert invoke("pack", tmp_path / "a.zip", tmp_path / "b.zip").exit_code == 0
    zips = [zipfile.ZipFile(tmp_path / name) for name in ("a.zip", "b.zip")]
    read = [{n: z.read(n) for n in z.namelist()} for z in zips]
    assert read[0] == read[1] and not any(".logitcache-locks" in name for name in read[0])


def test_pack_refuses_a_missing_directory_and_a_symbolic_link(digits_store, tmp_path):
    assert "does not exist" in one_error(invoke("pack", digits_store, tmp_path / "no" / "dir" / "x.zip"))
    store = tmp_path / "linked.zarr"
    shutil.copytree(digits_store, store)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (store / "teachers/default/notes").symlink_to(secret)
    assert "symbolic link" in one_error(invoke("pack", store, tmp_path / "x.zip"))
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize("entry", ["../escape.txt", "/abs.txt", "teachers/../../up.txt"])
def test_a_zip_naming_entries_outside_the_store_is_refused(digits_store, tmp_path, entry):
    assert invoke("pack", digits_store, tmp_path / "good.zip").exit_code == 0
    hostile = tmp_path / "hostile.zip"
    with zipfile.ZipFile(tmp_path / "good.zip") as good, zipfile.ZipFile(hostile, "w") as bad:
        for name in good.namelist():
            bad.writestr(name, good.read(name))
        bad.writestr(entry, b"x")
    for argv in (["info", hostile], ["verify", hostile], train_args(hostile, tmp_path / "run")):
        assert "outside the store" in one_error(invoke(*argv))


def test_a_store_path_that_is_a_file_or_a_zip_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    dump = ["dump", "--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train", "--no-progress"]
    assert "not a directory" in one_error(invoke(dump[0], tmp_path / "file", *dump[1:]))
    assert "read-only" in one_error(invoke(dump[0], tmp_path / "x.zip", *dump[1:]))
    assert not (tmp_path / "x.zip").exists()


def test_num_classes_a_teacher_ignores_is_refused(tmp_path):
    line = one_error(invoke("dump", tmp_path / "s.zarr", "--teacher", "tests.factories:ten_class_teacher",
                            "--dataset", "digits@train", "--num-classes", "5", "--no-progress"))
    assert "--num-classes 5" in line and "outputs 10" in line
    assert not (tmp_path / "s.zarr").exists()


def test_a_checksum_error_in_train_is_one_line_and_no_asyncio_noise(tmp_path):
    """Several inner chunks per shard are read at once; one fails: nothing may be left pending."""
    store = make_store(tmp_path / "s.zarr", codec="fp32", num_classes=100, rows_per_shard=1024,
                       teacher="tests.factories:linear_teacher")
    chunk = store / "teachers/default/logits/c/0/0"
    data = bytearray(chunk.read_bytes())
    data[300] ^= 1
    chunk.write_bytes(bytes(data))
    for trial in range(3):
        argv = [str(a) for a in train_args(store, tmp_path / f"r{trial}")]
        result = subprocess.run([sys.executable, "-m", "logitcache", *argv], env=child_env(), cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error:"), result.stderr


# -- S3: leases and credentials ----------------------------------------------------------------

def s3_dump(url, *extra, sleep: float = 0.15):
    return subprocess.Popen([sys.executable, "-m", "logitcache", "dump", url, "--teacher",
                             "tests.factories:slow_teacher", "--dataset", "digits@train", "--rows-per-shard", "128",
                             "--batch-size", "16", "--no-progress", *extra],
                            env=child_env(LOGITCACHE_TEST_SLEEP=str(sleep)), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_objects(s3, bucket: str, prefix: str, writer, seconds: float = 120) -> None:
    """Until an object under ``prefix`` exists (or the writer ended, or time ran out)."""
    deadline = time.time() + seconds
    while time.time() < deadline and writer.poll() is None and not s3.client().list_objects_v2(
            Bucket=bucket.removeprefix("s3://"), Prefix=prefix).get("KeyCount"):
        time.sleep(0.1)


def test_s3_two_dumps_of_one_teacher_one_is_refused(s3, bucket):
    """The second waits out one lease time (6 s here) in case the holder is dead; the holder
    (about 30 s of teacher time, longer than the second's start-up and wait even on a loaded
    machine, where the shard writes themselves now take next to nothing) keeps renewing, so the
    second is refused."""
    url = f"{bucket}/race.zarr"
    first = s3_dump(url, sleep=0.35)
    wait_for_objects(s3, bucket, "race.zarr/.logitcache-locks/teacher-default/", first)
    second = s3_dump(url)
    assert second.wait(timeout=300) == 1
    assert "being written by another process" in second.stderr.read()
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert verify_store(url).ok


def test_s3_a_killed_holders_lease_runs_out_and_the_rerun_finishes(s3, bucket):
    url = f"{bucket}/killed.zarr"
    first = s3_dump(url)
    wait_for_objects(s3, bucket, "killed.zarr/teachers/default/shard_done/c/", first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    rerun = s3_dump(url)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert verify_store(url).ok
    left = s3.client().list_objects_v2(Bucket=bucket[5:], Prefix="killed.zarr/.logitcache-locks/teacher-default/")
    assert [item["Key"].rsplit("/", 1)[1] for item in left["Contents"]] == ["000000000002.json"]  # a tombstone
    tombstone = s3.client().get_object(Bucket=bucket[5:], Key=left["Contents"][0]["Key"])["Body"].read()
    assert json.loads(tombstone)["expires"] == 0


def test_s3_a_stalled_holder_that_was_overtaken_stops_before_writing(s3, bucket, monkeypatch):
    """A holder that stops renewing (a paused machine) is overtaken once its lease runs out; when it
    wakes, it must find out before it writes another shard, even after the taker finished."""
    from logitcache.errors import StoreLockedError
    from logitcache.store._lock import _Lease

    monkeypatch.setenv("LOGITCACHE_LEASE_SECONDS", "1")
    url = f"{bucket}/stall.zarr"
    stalled = _Lease(url, "teacher-default", None)
    stalled.acquire()
    stalled._stop.set()  # its heartbeat stops, as in a paused VM
    time.sleep(1.5)  # past the 1 s lease
    taker = _Lease(url, "teacher-default", None)
    taker.acquire()
    taker.release()  # finished: leaves a tombstone, never lower generation numbers
    with pytest.raises(StoreLockedError, match="lease"):
        stalled.ensure_held()
    again = _Lease(url, "teacher-default", None)
    again.acquire()
    assert again.generation == 3  # generations only grow, so the stalled holder's 1 never returns
    again.release()


def test_s3_without_any_credentials_is_one_line(s3, bucket):
    env = {k: v for k, v in child_env().items() if not k.startswith("AWS_") or k == "AWS_ENDPOINT_URL"}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    for argv in (["info", f"{bucket}/x.zarr"], ["verify", f"{bucket}/x.zarr"]):
        result = subprocess.run([sys.executable, "-m", "logitcache", *argv], env=env, cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and "no credentials" in lines[0], result.stderr


def test_a_reordered_dataset_without_keys_is_not_called_relabelled(tmp_path):
    store = make_store(tmp_path / "p.zarr", dataset="tests.factories:positional_digits")
    line = one_error(invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset",
                            "tests.factories:reversed_positional_digits", "--store", store, "--loss", "kl",
                            "--epochs", "1", "--no-progress"))
    assert "reordered or relabelled" in line and "suggests reordered" in line


def test_a_chunk_lost_from_a_complete_legacy_teacher_is_damage_not_an_unfinished_dump(tmp_path):
    store = tmp_path / "v1.zarr"
    shutil.copytree(LEGACY / "v1.zarr", store)
    for chunk in (store / "teachers/default/logits/c/1").iterdir():
        chunk.unlink()
    line = one_error(invoke(*train_args(store, tmp_path / "run")))
    assert "marked complete" in line and "is missing" in line and "rerun it to resume" not in line


@pytest.mark.parametrize("name", ["zarr.json", "a" * 300, "x.partial"])
def test_teacher_names_the_store_uses_or_the_filesystem_refuses_are_one_line(tmp_path, name):
    line = one_error(invoke("dump", tmp_path / "s.zarr", "--teacher", "tests.factories:linear_teacher",
                            "--dataset", "digits@train", "--teacher-name", name, "--no-progress"))
    assert "--teacher-name" in line and not (tmp_path / "s.zarr").exists()


def test_info_describes_a_teacher_written_through_the_api_without_settings(tmp_path):
    """Stores made by other tools may leave out provenance and settings: info shows '-', no traceback."""
    import numpy as np

    from logitcache.store import choose_layout, create_store, get_codec

    store = create_store(tmp_path / "api.zarr", keys=["a", "b", "c"], labels=[0, 1, 0], dataset={"spec": "mine"})
    teacher = store.create_teacher("t", num_classes=2, codec=get_codec("fp16"), layout=choose_layout(3, 2, 2),
                                   settings={}, provenance={})
    teacher.write_shard(0, np.arange(6, dtype=np.float32).reshape(3, 2))
    teacher.mark_complete(metrics={"top1": 0.5, "top5": 1.0})
    result = invoke("info", tmp_path / "api.zarr")
    assert result.exit_code == 0 and "model     - (- parameters)" in result.output, result.output
    assert invoke("verify", tmp_path / "api.zarr").exit_code == 0


def test_allow_partial_with_nothing_written_is_one_line(tmp_path):
    store = tmp_path / "empty.zarr"
    from tests import killpoints  # the same kill points as the crash tests

    result = killpoints.run(10, ["dump", store, "--teacher", "tests.factories:linear_teacher", "--dataset",
                                 "digits@train", "--no-progress"], env=child_env(), cwd=REPO, timeout=300)
    assert result.returncode == 137  # the teacher is made, no shard written
    line = one_error(invoke(*train_args(store, tmp_path / "run", "--allow-partial")))
    assert "no shard is written" in line


def test_an_unfinished_teacher_whose_done_shard_lost_its_digests_is_refused(tmp_path):
    """Otherwise a resume would trust that shard unchecked and seal it into the teacher digest."""
    store = make_store(tmp_path / "s.zarr")
    meta = json.loads((store / "teachers/default/zarr.json").read_text())
    meta["attributes"]["logitcache_teacher"]["status"] = "writing"  # as if killed before completion
    (store / "teachers/default/zarr.json").write_text(json.dumps(meta))
    (store / "teachers/default/chunk_digests/c/1/0").unlink()
    assert "chunk digests are missing" in one_error(invoke(*train_args(store, tmp_path / "r", "--allow-partial")))
    line = one_error(invoke("dump", store, "--teacher", "tests.factories:linear_teacher", "--dataset",
                            "digits@train", "--rows-per-shard", "256", "--batch-size", "64", "--no-progress"))
    assert "--overwrite" in line


def test_completion_refuses_a_teacher_whose_chunk_digests_were_lost(tmp_path):
    """The last guard: a teacher is never sealed with digests missing (they would hash as zeros)."""
    import numpy as np

    from logitcache.errors import CorruptStoreError
    from logitcache.store import choose_layout, create_store, get_codec, open_store

    store = create_store(tmp_path / "s.zarr", keys=[str(i) for i in range(8)], labels=[0] * 8,
                         dataset={"spec": "mine"})
    teacher = store.create_teacher("t", num_classes=2, codec=get_codec("fp32"),
                                   layout=choose_layout(8, 2, 4, rows_per_chunk=2, rows_per_shard=4),
                                   settings={}, provenance={})
    for shard in range(2):
        teacher.write_shard(shard, np.ones((4, 2), np.float32))
    (tmp_path / "s.zarr/teachers/t/chunk_digests/c/1/0").unlink()
    reopened = open_store(tmp_path / "s.zarr", read_only=False).teacher("t", check=False)
    with pytest.raises(CorruptStoreError, match="chunk digests are missing"):
        reopened.mark_complete(metrics={})
    assert not open_store(tmp_path / "s.zarr").teacher("t", check=False).is_complete


@pytest.mark.parametrize("threads", [1, 4])
def test_a_failing_producer_still_gets_the_shards_it_queued_written(tmp_path, threads):
    """A teacher that fails in shard 2 loses only shard 2: shards 0 and 1, already queued, are whole and kept
    (one writer thread: shard 1 is only queued when the producer fails; four: both are in hand)."""
    import threading

    import numpy as np

    from logitcache.store import BackgroundWriter, choose_layout, create_store, get_codec

    store = create_store(tmp_path / "s.zarr", keys=[str(i) for i in range(12)], labels=[0] * 12,
                         dataset={"spec": "mine"})
    teacher = store.create_teacher("t", num_classes=2, codec=get_codec("fp32"),
                                   layout=choose_layout(12, 2, 4, rows_per_chunk=4, rows_per_shard=4),
                                   settings={}, provenance={})
    producer_failed = threading.Event()
    with pytest.raises(ValueError, match="teacher failed"):
        # the writer holds shard 0 until the producer has failed, so shard 1 is still only queued
        with BackgroundWriter(teacher, before_write=lambda: producer_failed.wait(2.0), threads=threads) as writer:
            writer.submit(0, np.zeros((4, 2), np.float32))
            writer.submit(1, np.ones((4, 2), np.float32))
            producer_failed.set()
            raise ValueError("teacher failed in shard 2")
    assert teacher.shard_done().tolist() == [True, True, False]


def test_an_interrupt_finishes_the_shard_in_hand_and_drops_the_queued_one(tmp_path):
    """Ctrl-C is answered quickly: one writer thread holds shard 0 (finished, whole); shard 1, only queued, is
    dropped for the resume to redo, never half-written."""
    import threading

    import numpy as np

    from logitcache.store import BackgroundWriter, choose_layout, create_store, get_codec

    store = create_store(tmp_path / "s.zarr", keys=[str(i) for i in range(12)], labels=[0] * 12,
                         dataset={"spec": "mine"})
    teacher = store.create_teacher("t", num_classes=2, codec=get_codec("fp32"),
                                   layout=choose_layout(12, 2, 4, rows_per_chunk=4, rows_per_shard=4),
                                   settings={}, provenance={})
    in_hand, interrupted = threading.Event(), threading.Event()

    def hold_until_interrupted():
        in_hand.set()
        interrupted.wait(2.0)

    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter(teacher, before_write=hold_until_interrupted, threads=1) as writer:
            writer.submit(0, np.zeros((4, 2), np.float32))
            assert in_hand.wait(2.0)
            writer.submit(1, np.ones((4, 2), np.float32))
            interrupted.set()
            raise KeyboardInterrupt
    assert teacher.shard_done().tolist() == [True, False, False]
