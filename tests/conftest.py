"""Shared fixtures: real stores on disk made by real dumps of small, deterministic teachers."""

from __future__ import annotations

import json
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


def store_contents(path: Path) -> dict[str, bytes]:
    """Every file of a store, with the volatile ``run`` record (timestamps) removed from metadata."""
    contents = {}
    for file in sorted(Path(path).rglob("*")):
        if not file.is_file():
            continue
        data = file.read_bytes()
        if file.name == "zarr.json":
            meta = json.loads(data)
            teacher = meta.get("attributes", {}).get("logitcache_teacher")
            if teacher:
                teacher.pop("run", None)
            data = json.dumps(meta, sort_keys=True).encode()
        contents[file.relative_to(path).as_posix()] = data
    return contents


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory) -> Path:
    """A complete fp32 store of the linear teacher on digits@train; tests must not modify it."""
    return make_store(tmp_path_factory.mktemp("stores") / "digits.zarr", codec="fp32")
