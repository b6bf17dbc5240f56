"""Where a store lives: a local directory, a zip file, or any fsspec URL (s3://, gs://, file://, …).

    >>> zarr_store("data/stores/digits.zarr", read_only=True)       # zarr's LocalStore
    >>> zarr_store("digits.zip", read_only=True)                    # zarr's ZipStore (read-only)
    >>> zarr_store("s3://bucket/digits.zarr", read_only=False,
    ...            storage_options={"endpoint_url": "http://127.0.0.1:9000"})   # zarr's FsspecStore

logitcache writes no storage backend of its own: these are zarr's stores over fsspec. This module
only picks one, fills S3 endpoint/credentials from the usual environment variables, turns the
errors of remote filesystems into logitcache's one-line errors, and retries transient ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from pathlib import Path

import zarr.storage

from ..errors import (
    CorruptStoreError,
    NotAStoreError,
    StoreAccessError,
    StoreConnectionError,
    StoreNotFoundError,
    StoreWriteError,
)

# Errors a remote filesystem raises when the network, not the request, failed.
_TRANSIENT = {
    "ConnectionError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "TimeoutError",
    "ConnectionClosedError", "ConnectionResetError", "ConnectionRefusedError", "IncompleteReadError",
}
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)  # on top of the filesystem's own retries: ~15 s before giving up
# The largest metadata object (zarr.json) read: a teacher's attributes with 21,841 class names take
# ~1 MB. zarr parses metadata whole, into objects several times its size, so it is bounded first.
MAX_METADATA_BYTES = 64 << 20


def retry_delays() -> tuple[float, ...]:
    """RETRY_DELAYS, or the seconds listed in LOGITCACHE_RETRY_DELAYS (e.g. "0.5,1")."""
    text = os.environ.get("LOGITCACHE_RETRY_DELAYS")
    return tuple(float(x) for x in text.split(",") if x.strip()) if text is not None else RETRY_DELAYS


def local_path(location: str) -> Path | None:
    """The filesystem path of a local location, or None for a URL."""
    if location.startswith("file://"):
        return Path(location[len("file://"):])
    return None if "://" in location else Path(location)


def is_zip(location: str) -> bool:
    return location.endswith(".zip")


def storage_options_for(location: str, options: dict | None) -> dict:
    """Options for fsspec: the ones given, plus an S3 endpoint from AWS_ENDPOINT_URL(_S3)."""
    options = dict(options or {})
    if location.startswith("s3://") and "endpoint_url" not in options:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    return options


def check_regular_file(path: Path, key: str) -> None:
    """Refuse to read an object that is no regular file: a device (a link to /dev/zero) or a pipe
    reads without end, or blocks, where a chunk should be. Absent objects pass (zarr says None)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as err:  # a link loop, or no permission
        raise CorruptStoreError(f"store object {key} cannot be read ({first_line(err)}); the store was damaged "
                                "or edited") from None
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise CorruptStoreError(f"store object {key} is not a regular file (a device, pipe or socket); refusing to "
                                "read it: the store was damaged or edited")


def check_object_kinds(path: Path, location: str) -> None:
    """Refuse a local store holding an object that is no regular file (``check_regular_file``), when
    it opens: one stat a file, so the one line comes before any read (a read refused among zarr's
    concurrent ones would leave its siblings pending). Reads check again: a store may change."""
    if not path.is_dir():
        return
    for folder, _, files in os.walk(path):
        for name in files:
            file = Path(folder) / name
            check_regular_file(file, file.relative_to(path).as_posix())


class RegularFilesStore(zarr.storage.LocalStore):
    """zarr's LocalStore that reads regular files only (``check_regular_file``): every read a stat more."""

    async def get(self, key, prototype=None, byte_range=None):
        check_regular_file(self.root / key, key)
        return await super().get(key, prototype, byte_range)


def zarr_store(location: str, *, read_only: bool, storage_options: dict | None = None):
    """zarr's own store for a location."""
    path = local_path(location)
    if path is not None and is_zip(location):
        if not read_only:
            raise StoreWriteError(f"{location}: zip stores are read-only; dump into a directory, then `logitcache pack`")
        _check_zip_entries(path, location)
        return zarr.storage.ZipStore(path, mode="r", read_only=True)
    if path is not None:
        check_metadata_sizes(path, location)
        check_object_kinds(path, location)
        return RegularFilesStore(path, read_only=read_only)
    _quiet_broken_requests()
    try:
        return zarr.storage.FsspecStore.from_url(
            location, storage_options=storage_options_for(location, storage_options), read_only=read_only
        )
    except (ImportError, ValueError) as err:
        raise StoreNotFoundError(f"cannot open {location}: {err} (for s3:// install s3fs)") from None


class _BrokenRequests(logging.Filter):
    """Drops asyncio's report of a request task that a network failure broke ("Task exception was
    never retrieved", with its traceback): the call that made the request fails with it too, and is
    retried or reported as one line (``retry_transient``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not (isinstance(error, OSError) or is_transient(error))


def _quiet_broken_requests() -> None:
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _BrokenRequests) for f in asyncio_log.filters):
        asyncio_log.addFilter(_BrokenRequests())


def _check_zip_entries(path: Path, location: str) -> None:
    """Refuse a zip that is not a zip, names an entry outside the store (``..``, absolute paths), or
    holds a metadata object that would inflate past MAX_METADATA_BYTES (a few MB of zip can declare
    gigabytes; zipfile reads no more than the declared size, so the declared size is the bound)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except FileNotFoundError:
        raise StoreNotFoundError(f"no store at {location}: the path does not exist") from None
    except (zipfile.BadZipFile, OSError) as err:
        raise NotAStoreError(f"{location} is not a readable zip file ({err})") from None
    for entry in entries:
        name = entry.filename
        if name.startswith("/") or "\\" in name or ".." in name.split("/"):
            raise NotAStoreError(f"{location} names an entry outside the store ({name!r}); refusing to read it")
        if name.rpartition("/")[2] == "zarr.json" and entry.file_size > MAX_METADATA_BYTES:
            raise _too_large(location, name, entry.file_size)


def check_metadata_sizes(path: Path, location: str) -> None:
    """Refuse a local store whose metadata objects (the root's, the teachers', their arrays' and
    features', at most four folders down) exceed MAX_METADATA_BYTES, or are no regular file (a
    device or a pipe has no size to bound, and reads without end), before zarr parses one."""
    if not path.is_dir():
        return
    for depth in range(5):
        for folder in [path] if depth == 0 else path.glob("/".join(["*"] * depth)):
            file = folder / "zarr.json"
            name = file.relative_to(path).as_posix()
            try:
                mode = os.stat(file).st_mode
            except (FileNotFoundError, NotADirectoryError):  # no metadata here (a chunk, a link to nowhere)
                continue
            except OSError as err:  # a link loop, an unreadable folder
                raise CorruptStoreError(f"{location}: metadata object {name} cannot be read ({first_line(err)}); "
                                        "the store was damaged or edited") from None
            if stat.S_ISDIR(mode):
                continue  # zarr reads no directory as metadata; the checks that need the object say it is missing
            if not stat.S_ISREG(mode):
                raise CorruptStoreError(f"{location}: metadata object {name} is not a regular file (a device, "
                                        "pipe or socket); refusing to read it")
            if file.stat().st_size > MAX_METADATA_BYTES:
                raise _too_large(location, name, file.stat().st_size)


def _too_large(location: str, name: str, size: int) -> CorruptStoreError:
    return CorruptStoreError(f"{location}: metadata object {name} is {size:,} bytes, over the "
                             f"{MAX_METADATA_BYTES >> 20} MiB a store's metadata may take; refusing to read it")


def probe_remote(location: str, storage_options: dict | None = None) -> bool:
    """One request: does ``location/zarr.json`` exist? Network and credential failures surface here
    as one clear error, before zarr fans out concurrent requests that would all fail alike."""
    if local_path(location) is not None:
        return True
    import fsspec

    with remote_errors(location):
        fs, path = fsspec.core.url_to_fs(location, **storage_options_for(location, storage_options))
        return fs.exists(f"{path.rstrip('/')}/zarr.json")


def is_transient(err: BaseException) -> bool:
    return any(cls.__name__ in _TRANSIENT for cls in type(err).__mro__)


@contextlib.contextmanager
def remote_errors(location: str):
    """Turn a remote filesystem's exceptions into one-line logitcache errors, and so the errors of
    damaged metadata that zarr raises while reading it: JSON nested past Python's recursion limit,
    a zip member that fails its CRC."""
    import zipfile

    try:
        yield
    except (StoreAccessError, StoreConnectionError):
        raise
    except RecursionError:
        raise CorruptStoreError(f"{location}: a metadata object is nested too deeply to read; the store was "
                                "damaged or edited") from None
    except zipfile.BadZipFile as err:
        raise CorruptStoreError(f"{location}: {first_line(err)}; the zip was damaged or edited") from None
    except PermissionError as err:
        raise StoreAccessError(f"{location}: access denied ({first_line(err)}); check the credentials") from None
    except Exception as err:
        if is_transient(err):
            raise StoreConnectionError(f"cannot reach {location}: {first_line(err)}") from None
        if type(err).__name__ == "NoCredentialsError":
            raise StoreAccessError(f"{location}: no credentials found; set AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY (or an AWS profile)") from None
        if type(err).__name__ == "ClientError" and "InvalidAccessKeyId" in str(err) + repr(err):
            raise StoreAccessError(f"{location}: the access key is not valid; check the credentials") from None
        raise


def retry_transient(action, location: str, delays=None):
    """Run ``action()``; on a transient network error wait and try again, then give up clearly.

    Only for idempotent actions (writing a whole shard, reading one): a retry rewrites the same bytes.
    """
    for delay in (*(retry_delays() if delays is None else delays), None):
        try:
            return action()
        except Exception as err:
            if not is_transient(err):
                raise
            if delay is None:
                raise StoreConnectionError(
                    f"lost the connection to {location} ({first_line(err)}); what was written is kept — "
                    "rerun the same command to resume"
                ) from None
            time.sleep(delay)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
