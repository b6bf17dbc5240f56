"""Shared fixtures: real stores on disk made by real dumps of small, deterministic teachers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from logitcache.dump import DumpConfig, dump


def make_store(path: Path, **overrides) -> Path:
    """Dump ``tests.factories:linear_teacher`` over digits@train into ``path`` (small shards)."""
    options = dict(store=str(path), teacher="tests.factories:linear_teacher", dataset="digits@train",
                   rows_per_shard=256, batch_size=64, progress=False)
    options.update(overrides)
    dump(DumpConfig(**options), log=lambda *_: None)
    return path


def invoke(*args):
    """The CLI in this process; an exception that escapes it fails the test (no traceback allowed)."""
    from click.testing import CliRunner

    from logitcache.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_error(result) -> str:
    """The run failed with exactly one `Error:` line and no traceback; returns that line."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    return errors[0]


def edited_record_copy(store: Path, copy: Path, edit: dict) -> Path:
    """A copy of ``store`` with ``edit`` merged into its root record (``version``) or, for any other
    key, its default teacher's: a store a hand or a bug changed after it was written."""
    import shutil

    import zarr

    shutil.copytree(store, copy)
    group, key = ((zarr.open_group(str(copy), mode="r+"), "logitcache") if "version" in edit
                  else (zarr.open_group(str(copy / "teachers" / "default"), mode="r+"), "logitcache_teacher"))
    group.attrs[key] = {**group.attrs[key], **edit}
    return copy


def straight_and_cut_short(tmp_path: Path, options: dict, old_code) -> tuple[Path, Path]:
    """A whole store of ``options`` (``tests.factories:breaking_teacher``'s), and one whose dump the
    teacher broke after the probe and shards 0 and 1, written by the code ``old_code`` (a monkeypatch
    making the code of before) holds; ``old_code`` is undone after it."""
    from tests import factories

    straight = make_store(tmp_path / "straight.zarr", **options)
    old_code.setenv("LOGITCACHE_TEST_FAIL_AFTER", "9")
    with pytest.raises(factories.TeacherFailed):
        make_store(tmp_path / "cut.zarr", **options)
    old_code.undo()  # the code of now from here on
    return straight, tmp_path / "cut.zarr"


def store_contents(path: Path) -> dict[str, bytes]:
    """Every file of a store, with the volatile ``run`` record (timestamps) removed from metadata."""
    contents = {}
    for file in sorted(Path(path).rglob("*")):
        if not file.is_file():
            continue
        contents[file.relative_to(path).as_posix()] = _normalised(file.name, file.read_bytes())
    return contents


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory) -> Path:
    """A complete fp32 store of the linear teacher on digits@train; tests must not modify it."""
    return make_store(tmp_path_factory.mktemp("stores") / "digits.zarr", codec="fp32")


class S3Server:
    """moto's S3 server on 127.0.0.1 in this process; ``restart`` keeps its buckets and objects."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._factory = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"

    def stop(self):
        self.server.stop()

    def start(self):
        self.server = self._factory(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def contents(self, url: str) -> dict[str, bytes]:
        """Like ``store_contents``, for a store at s3://bucket/prefix."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        client, contents = self.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for item in page.get("Contents", []):
                if item["Key"][len(prefix) + 1:].startswith(".logitcache-locks/"):
                    continue  # the writers' leases: beside the store, not part of it
                data = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                contents[item["Key"][len(prefix) + 1:]] = _normalised(item["Key"], data)
        return contents


def _normalised(name: str, data: bytes) -> bytes:
    if not name.endswith("zarr.json"):
        return data
    meta = json.loads(data)
    teacher = meta.get("attributes", {}).get("logitcache_teacher")
    if teacher:
        teacher.pop("run", None)
    return json.dumps(meta, sort_keys=True).encode()


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server on loopback; credentials and endpoint via AWS_* variables."""
    pytest.importorskip("moto.server", reason="the dev extra installs moto[server]")
    pytest.importorskip("s3fs", reason="the dev extra installs s3fs")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log lines
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "LOGITCACHE_LEASE_SECONDS": "6"}  # a dead writer's lease runs out in 6 s, not 60
    saved = {key: os.environ.get(key) for key in (*env, "AWS_ENDPOINT_URL")}
    os.environ.update(env)
    server = S3Server()
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(s3, request) -> str:
    """A fresh bucket for one test, as an s3:// URL."""
    name = "t-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    s3.client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def slow_teacher_reference(tmp_path_factory) -> Path:
    """The store a never-interrupted ``slow_teacher`` dump writes (run here without its sleep)."""
    os.environ["LOGITCACHE_TEST_SLEEP"] = "0"
    try:
        return make_store(tmp_path_factory.mktemp("stores") / "slow.zarr", codec="fp32",
                          teacher="tests.factories:slow_teacher")
    finally:
        os.environ.pop("LOGITCACHE_TEST_SLEEP")


def _untracked(repo: Path) -> set[str]:
    """Files git would show as new in the repository (ignored build outputs excluded)."""
    import subprocess

    listed = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=all"],
                            capture_output=True, text=True, check=True).stdout
    return {line[3:] for line in listed.splitlines() if line.startswith("??")}


@pytest.fixture(scope="session", autouse=True)
def repository_stays_clean():
    """The suite writes only under temporary directories: fail if it leaves files in the repository."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        yield
        return
    before = _untracked(repo)
    yield
    left = sorted(_untracked(repo) - before)
    assert not left, f"the test suite left files in the repository: {', '.join(left[:10])}"
