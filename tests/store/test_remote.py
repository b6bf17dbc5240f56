"""Stores in object storage (a real S3 server on loopback), zip files, teams sharing one store."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from logitcache.cli import cli
from logitcache.store import open_store, verify_store
from logitcache.train import TrainConfig, train
from tests.conftest import make_store, store_contents

REPO = Path(__file__).resolve().parents[2]
DUMP_ARGS = ["--teacher", "tests.factories:slow_teacher", "--dataset", "digits@train", "--codec", "fp32",
             "--rows-per-shard", "256", "--batch-size", "64", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, output
    return lines[0]


def test_dump_info_verify_and_train_on_s3(s3, bucket, digits_store, tmp_path):
    url = f"{bucket}/digits.zarr"
    make_store(url, codec="fp32")
    assert s3.contents(url) == store_contents(digits_store)  # the same bytes as on local disk
    info = invoke("info", url)
    assert info.exit_code == 0 and "'default': complete" in info.output
    assert invoke("verify", url, "--dataset", "digits@train").exit_code == 0
    for name, store in (("s3", url), ("local", str(digits_store))):
        train(TrainConfig(out=str(tmp_path / name), student="mlp:hidden=8", dataset="digits@train", store=store,
                          loss="kl", epochs=1, progress=False), log=lambda *_: None)
    assert (tmp_path / "s3" / "steps.csv").read_text() == (tmp_path / "local" / "steps.csv").read_text()


def test_multi_view_store_on_s3_matches_local_and_replays(s3, bucket, tmp_path):
    views = dict(codec="fp32", augment="crop=0.4-1,flip", views=2, record_view_hashes=True)
    url = f"{bucket}/views.zarr"
    make_store(url, **views)
    local = make_store(tmp_path / "views.zarr", **views)
    assert s3.contents(url) == store_contents(local)
    checked = invoke("verify", url, "--dataset", "digits@train")
    assert checked.exit_code == 0 and "every hash matches" in checked.output
    for name, store in (("s3", url), ("local", str(local))):
        train(TrainConfig(out=str(tmp_path / name), student="mlp:hidden=8", dataset="digits@train", store=store,
                          loss="kl", epochs=1, progress=False), log=lambda *_: None)
    assert (tmp_path / "s3" / "steps.csv").read_text() == (tmp_path / "local" / "steps.csv").read_text()


def _shards_done(s3, url: str) -> int:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/teachers/default/shard_done/c/")
    return listing.get("KeyCount", 0)


def _dump_process(url: str, **env):
    return subprocess.Popen([sys.executable, "-m", "logitcache", "dump", url, *DUMP_ARGS], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "LOGITCACHE_TEST_SLEEP": "0.15", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_shards(s3, url, count, process):
    deadline = time.time() + 120
    while _shards_done(s3, url) < count and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)


def test_server_down_mid_dump_then_resume_gives_identical_bytes(s3, bucket, slow_teacher_reference):
    url = f"{bucket}/outage.zarr"
    process = _dump_process(url, LOGITCACHE_RETRY_DELAYS="0.2")
    _wait_for_shards(s3, url, 2, process)
    s3.stop()
    try:
        _, stderr = process.communicate(timeout=180)
    finally:
        s3.start()
    assert process.returncode == 1
    assert "lost the connection" in one_error_line(stderr) or "cannot reach" in one_error_line(stderr)
    assert not open_store(url).teacher("default").is_complete
    rerun = _dump_process(url)
    stdout, stderr = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, stderr
    assert "resumed" in stdout
    assert s3.contents(url) == store_contents(slow_teacher_reference)


def test_short_outage_is_ridden_out_by_retries(s3, bucket, slow_teacher_reference):
    url = f"{bucket}/blip.zarr"
    process = _dump_process(url, LOGITCACHE_RETRY_DELAYS="3,3,3")
    _wait_for_shards(s3, url, 1, process)
    s3.stop()
    time.sleep(1.5)
    s3.start()
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    assert "resumed" not in stdout
    assert s3.contents(url) == store_contents(slow_teacher_reference)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_and_missing_bucket(s3, bucket):
    result = invoke("info", "s3://nowhere/x.zarr", "--storage-option", f"endpoint_url=http://127.0.0.1:{_free_port()}")
    assert result.exit_code == 1 and "cannot reach s3://nowhere/x.zarr" in one_error_line(result.output)
    result = invoke("dump", "s3://no-such-bucket/x.zarr", "--teacher", "tests.factories:linear_teacher",
                    "--dataset", "digits@train", "--no-progress")
    assert result.exit_code == 1 and "bucket does not exist" in one_error_line(result.output)
    result = invoke("info", f"{bucket}/missing.zarr")
    assert result.exit_code == 1 and "no store at" in one_error_line(result.output)


def test_wrong_credentials(tmp_path):
    """A second S3 server that checks credentials (moto with authentication on)."""
    pytest.importorskip("moto.server")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong",
               "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "PYTHONPATH": str(REPO)}
        for argv in (["info", "s3://team/x.zarr"],
                     ["dump", "s3://team/x.zarr", "--teacher", "tests.factories:linear_teacher", "--dataset", "digits",
                      "--no-progress"]):
            result = subprocess.run([sys.executable, "-m", "logitcache", *argv],
                                    capture_output=True, text=True, env=env, timeout=120)
            assert result.returncode == 1
            assert "access denied" in one_error_line(result.stderr) and "check the credentials" in result.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_pack_into_zip_and_train_from_it_with_forked_workers(tmp_path, digits_store):
    packed = tmp_path / "digits.zip"
    result = invoke("pack", digits_store, packed)
    assert result.exit_code == 0 and "packed" in result.output
    assert verify_store(str(packed)).ok and "'default': complete" in invoke("info", packed).output
    runs = {}
    for name, store in (("zip", packed), ("dir", digits_store)):
        train(TrainConfig(out=str(tmp_path / name), student="mlp:hidden=8", dataset="digits@train", store=str(store),
                          loss="kl", epochs=1, workers=2, cache_budget=2 * 256 * 10 * 4, progress=False),
              log=lambda *_: None)
        runs[name] = (tmp_path / name / "steps.csv").read_text()
    assert runs["zip"] == runs["dir"]
    again = invoke("pack", digits_store, packed)
    assert again.exit_code == 1 and "--overwrite" in one_error_line(again.output)
    result = invoke("dump", packed, "--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train",
                    "--teacher-name", "more", "--no-progress")
    assert result.exit_code == 1 and "read-only" in one_error_line(result.output)


def test_unfinished_store_is_not_packed(tmp_path):
    from logitcache.errors import NonFiniteLogitsError

    with pytest.raises(NonFiniteLogitsError):
        make_store(tmp_path / "s.zarr", teacher="tests.factories:nan_teacher")
    result = invoke("pack", tmp_path / "s.zarr", tmp_path / "s.zip")
    assert result.exit_code == 1 and "does not verify" in one_error_line(result.output)
    assert not (tmp_path / "s.zip").exists()


def test_asyncio_reports_of_requests_an_outage_broke_are_dropped_and_others_kept(s3, bucket, caplog):
    """A server that goes away mid-request leaves aiohttp tasks whose failure asyncio prints with a
    traceback at exit; the call that made them reports the outage in one line, so the report is
    dropped once a remote store is opened. Any other asyncio error is still reported."""
    import logging

    from logitcache.store._backend import zarr_store

    zarr_store(f"{bucket}/any.zarr", read_only=True)
    asyncio_log = logging.getLogger("asyncio")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for error in (ConnectionResetError("Cannot write to closing transport"), ValueError("a bug")):
            try:
                raise error
            except type(error):
                asyncio_log.error("Task exception was never retrieved", exc_info=True)
    assert [record.exc_info[0] for record in caplog.records] == [ValueError]
