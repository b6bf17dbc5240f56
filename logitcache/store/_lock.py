"""One writer at a time: the lock a dump holds on its teacher (and, briefly, on the store's metadata).

    >>> with writer_lock("data/stores/digits.zarr", "teacher-default"):   # a second dump is refused
    ...     write_the_teacher()

- Local stores: ``flock`` on ``STORE/.logitcache-locks/NAME.lock``. The kernel drops the lock when
  its process dies, so a crash never leaves a stale lock; the file is removed on release.
- Object stores (s3://): a *lease*, ``STORE/.logitcache-locks/NAME/GENERATION.json``, created with a
  conditional write (If-None-Match: only one of two racing writers succeeds), renewed by a heartbeat
  thread and valid LEASE_SECONDS after its last renewal. A lease left by a crash is taken over once
  it expires, as the next generation, again by a conditional write; a holder that finds a newer
  generation has lost its lease and stops before it marks anything complete.

Locks live beside the Zarr hierarchy (no ``zarr.json``), so readers never see them and ``pack``
leaves them out. docs/SHARING.md says what holds on which storage.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone

from ..errors import StoreConnectionError, StoreLockedError, StoreWriteError
from ._backend import is_zip, local_path, remote_errors, storage_options_for

LOCK_DIR = ".logitcache-locks"
LEASE_SECONDS = 60.0  # how long a lease outlives its last renewal (LOGITCACHE_LEASE_SECONDS overrides)


def lease_seconds() -> float:
    return float(os.environ.get("LOGITCACHE_LEASE_SECONDS", LEASE_SECONDS))


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"


@contextlib.contextmanager
def writer_lock(location: str, name: str, storage_options: dict | None = None, wait: float = 0.0, what: str = ""):
    """Hold the lock ``name`` of the store at ``location`` for the ``with`` block.

    ``wait``: seconds to keep trying while another process holds it (0: fail at once). On an
    object store it is at least one lease time, so a rerun after a crash outwaits the dead holder's
    lease (a live holder keeps renewing it, and the wait ends in the error).

    Raises:
        StoreLockedError: another process holds it; the message names that process.
    """
    if is_zip(location):
        raise StoreWriteError(f"{location}: zip stores are read-only; dump into a directory, then `logitcache pack`")
    path = local_path(location)
    lock = _LocalLock(path, name) if path is not None else _Lease(location, name, storage_options)
    if path is None:
        wait = max(wait, lease_seconds() + 1)
    deadline = time.monotonic() + wait
    while True:
        try:
            lock.acquire()
            break
        except StoreLockedError as err:
            if time.monotonic() >= deadline:
                raise StoreLockedError(f"{what or location} is being written by another process ({err}); "
                                       "wait for it to finish, or stop it") from None
            time.sleep(0.2)
    try:
        yield lock
    except StoreConnectionError:
        lock.release(reachable=False)  # the store is unreachable: a lease would outwait nothing; it expires
        raise
    except BaseException:
        lock.release()
        raise
    lock.release()


class _LocalLock:
    def __init__(self, store: os.PathLike, name: str):
        self.directory = os.path.join(store, LOCK_DIR)
        self.path = os.path.join(self.directory, f"{name}.lock")
        self.fd = None

    def acquire(self) -> None:
        import fcntl

        try:
            os.makedirs(self.directory, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreWriteError(f"{os.path.dirname(self.directory)} exists and is not a directory") from None
        except OSError as err:
            raise StoreWriteError(f"cannot write in {os.path.dirname(self.directory)}: {err.strerror}") from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the last holder removed the folder between our makedirs and open
            raise StoreLockedError("the previous holder was just releasing it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_json(self.path)
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(_describe(holder)) from None
            raise
        # The holder before us may have removed the file between our open and our flock: then
        # we locked an orphan, and must try again on the file that is there now.
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            raise StoreLockedError("the previous holder was just releasing it")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_holder()).encode())
        except OSError as err:  # a full disk: the lock is held, but who holds it cannot be said
            os.close(fd)
            raise StoreWriteError(f"cannot write the lock {self.path}: {err.strerror}") from None
        self.fd = fd

    def ensure_held(self) -> None:
        """The kernel keeps an flock for as long as its process lives: nothing can take it away."""

    def release(self, reachable: bool = True) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)  # only when no other lock is in it
        os.close(self.fd)
        self.fd = None


def _read_json(path: str) -> dict:
    try:
        with open(path) as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class _Lease:
    """A lease on an object store: generations created by conditional writes, kept by a heartbeat."""

    def __init__(self, location: str, name: str, storage_options: dict | None):
        import fsspec

        self.location = location
        with remote_errors(location):
            self.fs, root = fsspec.core.url_to_fs(location, **storage_options_for(location, storage_options))
        self.prefix = f"{root.rstrip('/')}/{LOCK_DIR}/{name}"
        self.generation = None
        self.lost = False
        self.renewed = 0.0  # time.monotonic() of the last write of our record
        self._stop = threading.Event()
        self._thread = None

    def _generations(self) -> dict[int, str]:
        with remote_errors(self.location):
            self.fs.invalidate_cache(self.prefix)
            try:
                paths = self.fs.ls(self.prefix, detail=False)
            except FileNotFoundError:
                return {}
        found = {}
        for path in paths:
            stem = path.rsplit("/", 1)[-1].removesuffix(".json")
            if stem.isdigit():
                found[int(stem)] = path
        return found

    def _record(self) -> bytes:
        return json.dumps({**_holder(), "expires": time.time() + lease_seconds()}).encode()

    def acquire(self) -> None:
        generations = self._generations()
        if generations:
            newest = max(generations)
            with remote_errors(self.location):
                try:
                    holder = json.loads(self.fs.cat(generations[newest]))
                except (FileNotFoundError, ValueError):
                    holder = {}
            if holder.get("expires", 0) > time.time():
                raise StoreLockedError(_describe(holder) + f", lease valid until {time.ctime(holder['expires'])}")
        generation = max(generations, default=0) + 1
        try:
            with remote_errors(self.location):
                self.fs.pipe_file(f"{self.prefix}/{generation:012d}.json", self._record(), mode="create")
        except FileExistsError:
            raise StoreLockedError("another process took the lease at the same moment") from None
        except FileNotFoundError as err:  # e.g. the bucket does not exist
            raise StoreWriteError(f"cannot write a store at {self.location}: {err}") from None
        self.generation, self.renewed = generation, time.monotonic()
        self._thread = threading.Thread(target=self._heartbeat, name="logitcache-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(lease_seconds() / 4):
            try:
                generations = self._generations()
                # Taken over: a newer generation, or ours gone (a taker finished and tidied up).
                if max(generations, default=0) > self.generation or self.generation not in generations:
                    self.lost = True
                    return
                started = time.monotonic()
                with remote_errors(self.location):
                    self.fs.pipe_file(f"{self.prefix}/{self.generation:012d}.json", self._record())
                self.renewed = started
            except Exception:  # a missed renewal is retried next beat; expiry is the safety net
                continue

    def ensure_held(self) -> None:
        """Raise unless the lease is surely ours: not taken over, and renewed recently enough that
        it cannot have expired (a stalled process finds out here, before it writes on)."""
        stale = time.monotonic() - self.renewed > 0.9 * lease_seconds()
        if self.lost or stale:
            raise StoreLockedError(f"{self.location}: this dump {'lost' if self.lost else 'could not renew'} its "
                                   "lease, so another process may be writing; it stopped without marking anything "
                                   "complete — rerun the same command")

    def release(self, reachable: bool = True) -> None:
        """Stop renewing; mark our generation expired (a tombstone, so generation numbers only ever
        grow) and delete the older ones. With the store unreachable, just stop: it runs out by itself."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=None if reachable else 1.0)
        if self.generation is None or self.lost or not reachable:
            return
        with contextlib.suppress(Exception), remote_errors(self.location):
            tombstone = json.dumps({**_holder(), "expires": 0}).encode()
            self.fs.pipe_file(f"{self.prefix}/{self.generation:012d}.json", tombstone)
            older = [path for gen, path in self._generations().items() if gen < self.generation]
            if older:
                self.fs.rm(older)
        self.generation = None
