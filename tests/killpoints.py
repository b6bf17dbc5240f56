"""Run the ``logitcache`` CLI and kill the process right after its K-th metadata write.

    $ python -m tests.killpoints K dump STORE --teacher ... # exit 137 right after write K
    $ python -m tests.killpoints 0 dump STORE ...           # no kill; prints "metadata writes: N"
    $ KILLPOINTS_KEY=shard_done/c/ python -m tests.killpoints 2 dump ...   # right after the 2nd shard's ledger entry
    $ KILLPOINTS_SET=logitcache.store._token_writes.INDEX_CHUNK_BYTES=512 ...   # module settings, comma-separated

A real kill (``os._exit``: no cleanup, no finally blocks, no flushing), at an exact point: the
crash tests use it to stop a dump after every one of its ``zarr.json`` writes in turn.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys

import zarr.storage

from logitcache.cli import cli


def _install(target: int) -> list[int]:
    count = [0]
    original = zarr.storage.LocalStore.set

    match = os.environ.get("KILLPOINTS_KEY")
    one_at_a_time = asyncio.Lock()  # parallel shard writers: no other counted write lands beside the K-th

    async def set_then_maybe_die(self, key, value):
        if not ((match in key) if match else key.endswith("zarr.json")):
            return await original(self, key, value)
        async with one_at_a_time:
            await original(self, key, value)
            count[0] += 1
            if count[0] == target:
                os._exit(137)

    zarr.storage.LocalStore.set = set_then_maybe_die
    return count


def main() -> None:
    for setting in filter(None, os.environ.get("KILLPOINTS_SET", "").split(",")):  # e.g. small chunks
        name, value = setting.split("=")
        module, attribute = name.rsplit(".", 1)
        setattr(importlib.import_module(module), attribute, type(getattr(importlib.import_module(module),
                                                                         attribute))(value))
    count = _install(int(sys.argv[1]))
    try:
        cli.main(sys.argv[2:], prog_name="logitcache", standalone_mode=True)
    except SystemExit as done:
        print(f"metadata writes: {count[0]}", file=sys.stderr)
        raise SystemExit(done.code) from None


if __name__ == "__main__":
    main()
