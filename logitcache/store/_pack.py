"""Pack a finished store into one zip file for shipping; zip stores open read-only anywhere.

    >>> pack_store("data/stores/digits.zarr", "digits.zip")      # verifies first, then copies
    >>> open_store("digits.zip").teacher().take([0, 1])

Only a store that verifies (every teacher complete, every checksum good) is packed. The zip is
written beside its destination and renamed into place, so a half-written zip never appears.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import zarr
import zarr.storage
from zarr.core.buffer import default_buffer_prototype

from ..errors import CorruptStoreError, StoreExistsError, StoreWriteError
from ._backend import local_path, remote_errors, zarr_store
from ._lock import LOCK_DIR
from ._verify import verify_store


def pack_store(location, destination, *, overwrite: bool = False, storage_options: dict | None = None) -> int:
    """Copy every object of a verified store into a zip file; returns the number of objects."""
    destination = Path(destination)
    if destination.suffix != ".zip":
        raise StoreExistsError(f"{destination}: a packed store's name must end in .zip")
    if destination.exists() and not overwrite:
        raise StoreExistsError(f"{destination} already exists; pass --overwrite to replace it")
    if not destination.parent.is_dir():
        raise StoreWriteError(f"cannot write {destination}: the directory {destination.parent} does not exist")
    _refuse_inside(str(location), destination)
    _refuse_links(str(location))
    report = verify_store(str(location), storage_options=storage_options)
    if not report.ok:
        raise CorruptStoreError(f"{location} does not verify, so it is not packed: {report.problems[0]}")
    source = zarr_store(str(location), read_only=True, storage_options=storage_options)
    zarr.open_group(source, mode="r")  # opens the store (a zip source is not open until then)
    partial = destination.with_name(f".{destination.name}.partial")

    async def copy() -> int:
        keys = sorted([key async for key in source.list() if _packable(key)])
        prototype = default_buffer_prototype()
        for key in keys:
            await target.set(key, await source.get(key, prototype))
        return len(keys)

    try:
        target = zarr.storage.ZipStore(partial, mode="w")
        with remote_errors(str(location)):
            count = zarr.core.sync.sync(copy())
        target.close()
        os.replace(partial, destination)
    except OSError as err:  # a full disk, a read-only or special file system: nothing is left behind
        raise StoreWriteError(f"cannot write {destination}: {err.strerror or err}") from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return count


def _refuse_inside(location: str, destination: Path) -> None:
    """A zip written into the store it packs would become one of the store's own objects."""
    path = local_path(location)
    if path is not None and destination.resolve().is_relative_to(path.resolve()):
        raise StoreWriteError(f"cannot write {destination} inside the store it packs ({location}); "
                              "write it elsewhere")


def _packable(key: str) -> bool:
    """Store objects, not a killed writer's temp files or the writers' locks."""
    return not key.endswith(".partial") and not key.startswith(LOCK_DIR + "/")


def _refuse_links(location: str) -> None:
    """A local store is packed from its own files only: a symbolic link could pull any file in."""
    path = local_path(location)
    if path is None or not path.is_dir():
        return
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            if os.path.islink(os.path.join(folder, name)):
                link = os.path.relpath(os.path.join(folder, name), path)
                raise CorruptStoreError(f"{location} holds a symbolic link ({link}); a store is packed from its "
                                        "own files only — replace the link with the file")
