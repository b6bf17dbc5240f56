"""Hostile store files: metadata that inflates or nests without bound, damaged zip members, packs
aimed at the wrong place. Each is one `Error:` line and a non-zero exit, and nothing is written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from logitcache.store._backend import MAX_METADATA_BYTES

from tests.conftest import invoke, one_error

DEEP = "[" * 200_000 + "]" * 200_000  # past any recursion limit a JSON parser keeps


def _nest(metadata: Path) -> None:
    text = metadata.read_text()
    metadata.write_text(text.replace('"attributes": {', f'"attributes": {{"deep": {DEEP}, ', 1))


@pytest.fixture
def copy(digits_store, tmp_path) -> Path:
    return Path(shutil.copytree(digits_store, tmp_path / "copy.zarr"))


def test_deeply_nested_root_metadata_is_one_line(copy):
    _nest(copy / "zarr.json")
    for verb in ("info", "verify"):
        assert "nested too deeply" in one_error(invoke(verb, copy))


def test_deeply_nested_teacher_metadata_fails_info_and_verify(copy):
    _nest(copy / "teachers" / "default" / "zarr.json")
    result = invoke("info", copy)
    assert "damaged: " in result.output and "nested too deeply" in result.output
    assert "teacher 'default' is damaged" in one_error(result)
    assert result.output.count("damaged or edited") == 1  # said once, not wrapped twice
    assert one_error(invoke("verify", copy))


def test_metadata_over_the_bound_is_refused_before_it_is_parsed(copy):
    metadata = copy / "teachers" / "default" / "zarr.json"
    text = metadata.read_bytes()
    metadata.write_bytes(text[:-1] + b" " * (MAX_METADATA_BYTES + 1) + text[-1:])
    assert "over the 64 MiB" in one_error(invoke("info", copy))


def test_a_zip_whose_metadata_inflates_past_the_bound_is_refused(digits_store, tmp_path):
    packed = tmp_path / "s.zip"
    assert invoke("pack", digits_store, packed).exit_code == 0
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(packed) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in source.infolist():
            data = source.read(entry.filename)
            if entry.filename == "zarr.json":  # a few hundred KB of zip declaring 64 MiB + 1 of metadata
                data = data[:-1] + b" " * (MAX_METADATA_BYTES + 1) + data[-1:]
            out.writestr(entry.filename, data)
    assert bomb.stat().st_size < 1 << 20
    assert "metadata object zarr.json" in one_error(invoke("info", bomb))


def test_a_zip_member_that_fails_its_crc_is_one_line_for_info(digits_store, tmp_path):
    packed = tmp_path / "s.zip"
    assert invoke("pack", digits_store, packed).exit_code == 0
    with zipfile.ZipFile(packed) as archive:
        entry = archive.getinfo("teachers/default/zarr.json")
    data = bytearray(packed.read_bytes())
    data[entry.header_offset + 30 + len(entry.filename) + len(entry.extra) + 5] ^= 0xFF  # a stored (not deflated) byte
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    result = invoke("info", damaged)
    assert "Bad CRC-32" in result.output
    assert "is damaged" in one_error(result)


def test_pack_refuses_a_destination_inside_the_store(copy):
    assert "inside the store it packs" in one_error(invoke("pack", copy, copy / "inside.zip"))
    assert not list(copy.glob("*.zip")) and not list(copy.glob(".*.partial"))


def test_pack_into_an_unwritable_place_is_one_line(digits_store):
    assert "cannot write /proc/x.zip" in one_error(invoke("pack", digits_store, "/proc/x.zip"))


def test_verify_refuses_negative_workers(digits_store):
    result = invoke("verify", digits_store, "--workers", "-1")
    assert result.exit_code == 2 and "-1 is not in the range x>=0" in result.output


@pytest.mark.parametrize("array", ["keys", "labels"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "link loop"])
def test_unreadable_metadata_of_the_samples_arrays_is_one_line_everywhere(copy, tmp_path, array, damage):
    metadata = copy / array / "zarr.json"
    text = metadata.read_bytes()
    metadata.unlink()
    if damage == "link loop":
        metadata.symlink_to("zarr.json")
    else:
        metadata.write_bytes({"empty": b"", "truncated": text[: len(text) // 2], "garbage": b"\x9c\xff" * 40}[damage])
    for verb in ("info", "verify", "pack"):
        line = one_error(invoke(verb, copy, *([tmp_path / "p.zip"] if verb == "pack" else [])))
        assert "damaged or edited" in line or (verb == "pack" and "symbolic link" in line), line
    one_error(invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
                     "--store", copy, "--loss", "kl", "--epochs", "1", "--no-progress"))


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_metadata_that_is_no_regular_file_is_refused_before_it_is_read(copy, kind):
    """A pipe would block the read for ever and /dev/zero would fill memory: both are refused unread
    (a subprocess with a deadline, so a regression fails instead of hanging the suite)."""
    metadata = copy / "teachers" / "default" / "logits" / "zarr.json"
    metadata.unlink()
    if kind == "fifo":
        os.mkfifo(metadata)
    else:
        metadata.symlink_to("/dev/zero")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "logitcache", "info", str(copy)], capture_output=True, text=True,
                          timeout=90, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is not a regular file" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["zarr.json", "teachers/zarr.json", "teachers/default/zarr.json"])
@pytest.mark.parametrize("damage", ["null", "[]", "link loop"])
def test_group_metadata_that_is_no_object_is_one_line_everywhere(copy, tmp_path, name, damage):
    metadata = copy / name
    metadata.unlink()
    if damage == "link loop":
        metadata.symlink_to("zarr.json")
    else:
        metadata.write_text(damage)
    for verb in ("info", "verify"):
        one_error(invoke(verb, copy))
    one_error(invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
                     "--store", copy, "--loss", "kl", "--epochs", "1", "--no-progress"))


def test_a_dump_into_a_teacher_with_unreadable_metadata_asks_for_overwrite_and_overwrite_redoes_it(copy):
    (copy / "teachers" / "default" / "zarr.json").write_text("null")
    dump = ["dump", copy, "--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train",
            "--rows-per-shard", "256", "--batch-size", "64", "--codec", "fp32", "--no-progress"]
    line = one_error(invoke(*dump))
    assert "cannot be read" in line and "pass --overwrite" in line
    assert invoke(*dump, "--overwrite").exit_code == 0 and invoke("verify", copy).exit_code == 0
    (copy / "teachers" / "zarr.json").write_text("null")  # the teachers group's own: no --overwrite mends it
    assert "the teachers of" in one_error(invoke(*dump, "--teacher-name", "other"))
    assert "the teachers of" in one_error(invoke(*dump, "--overwrite"))


@pytest.mark.parametrize("chunk", ["shard_done/c/0", "logits/c/0/0", "chunk_digests/c/0/0"])
def test_a_chunk_that_links_to_a_device_is_one_line_never_an_endless_read(copy, tmp_path, chunk):
    """A ledger, content or digest object linked to /dev/zero read without end (20 GB, then killed):
    every command now stats an object before it reads it (a subprocess with a deadline and a memory
    limit, so a regression fails instead of hanging the suite)."""
    path = copy / "teachers" / "default" / chunk
    assert path.is_file()
    path.unlink()
    path.symlink_to("/dev/zero")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    commands = [["info", str(copy)], ["verify", str(copy)],
                ["train", "--out", str(tmp_path / "run"), "--student", "mlp:hidden=8", "--dataset", "digits@train",
                 "--store", str(copy), "--loss", "kl", "--epochs", "1", "--no-progress"]]
    for command in commands:
        done = subprocess.run(["prlimit", "--as=6000000000", sys.executable, "-m", "logitcache", *command],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 1 and "Traceback" not in done.stderr, (command, done.stderr[-2000:])
        assert done.stderr.strip().splitlines()[-1].startswith("Error: "), (command, done.stderr[-2000:])
