"""The files of one training run directory, written so a crash never leaves them torn.

    RUN_DIR/config.json     the resolved options            RUN_DIR/last.pt   latest epoch
    RUN_DIR/metrics.jsonl   one JSON object per epoch       RUN_DIR/best.pt   best val top-1
    RUN_DIR/metrics.csv     the same, as a table            RUN_DIR/steps.csv every step's lr and losses
    RUN_DIR/summary.json    written last: {"complete": true, ...}
    RUN_DIR/.lock           held (flock) by the one process writing the run; holds its pid and host

config.json and each checkpoint's options also hold ``targets``: what the run learnt from (``run_targets.py``).

One process writes a run directory at a time: ``RunFiles.lock`` takes an exclusive, non-blocking
``flock`` on ``.lock`` for the run's whole life. The kernel drops it when the process ends, however
it ends, so a crash never leaves a stale lock. ``.lock`` is not one of the run's files (a directory
holding only ``.lock`` holds no run) and is never deleted: deleting a lock file that another
process may already have opened would let two processes each hold "the" lock.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import socket
from pathlib import Path

from ..errors import ConfigError, FileWriteError, RunInUseError
from ..whole_files import write_failure, write_text_whole

try:
    import fcntl
except ImportError:  # Windows: no flock, so no lock (logitcache's multi-process paths are POSIX)
    fcntl = None

STEPS_HEADER = "epoch,step,lr,loss,ce,kd\n"
RUN_FILES = ("config.json", "metrics.jsonl", "metrics.csv", "steps.csv", "summary.json", "last.pt", "best.pt")
LOCK_FILE = ".lock"


class RunFiles:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.last = self.root / "last.pt"
        self.best = self.root / "best.pt"
        self.steps = self.root / "steps.csv"
        self.summary = self.root / "summary.json"

    def holds_run(self) -> bool:
        return any((self.root / name).exists() for name in RUN_FILES)

    def start(self, *, overwrite: bool, config: dict) -> None:
        """Begin a fresh run; an existing run is replaced only with ``overwrite``."""
        if self.holds_run():
            if not overwrite:
                raise ConfigError(
                    f"{self.root} already holds a training run; pass --resume to continue it "
                    "or --overwrite to start again"
                )
            for name in RUN_FILES:
                self.remove(self.root / name)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_text_whole(self.root / "config.json", json.dumps(config, indent=2) + "\n")
        except OSError as err:
            raise ConfigError(f"cannot write the run directory {self.root}: {err.strerror or err}") from None
        self.steps.write_text(STEPS_HEADER)

    def remove(self, path: Path) -> None:
        """Delete one of the run's files; one that cannot go (a directory in its place) is one line."""
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot remove {path} to write the run again: {err.strerror or err}; "
                              "move it away and rerun") from None

    def write_config(self, config: dict) -> None:
        write_text_whole(self.root / "config.json", json.dumps(config, indent=2) + "\n")

    @contextlib.contextmanager
    def lock(self):
        """Hold the run directory's exclusive lock for the ``with`` block, or raise RunInUseError at once."""
        if (self.root / "zarr.json").exists():  # --out given a store's path (meant --store): no run files in it
            raise ConfigError(f"--out {self.root} is a Zarr store (it holds zarr.json), not a run directory; "
                              "give the run a directory of its own")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # no link followed: the lock file is truncated and written, never a file a link leads to
            fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ConfigError(f"{self.root / LOCK_FILE} is a symbolic link; remove it and rerun") from None
            raise ConfigError(f"cannot write the run directory {self.root}: {err.strerror or err}") from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunInUseError(
                        f"{self.root} is in use: another training run ({_holder(fd)}) is writing it; "
                        "wait for it to end, or give another --out"
                    ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            yield
        finally:
            if fcntl is not None:  # DataLoader workers forked meanwhile share the lock: drop it for all
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append_steps(self, epoch: int, losses: list) -> None:
        """Rows appended once per epoch; a failed append (a full disk) is one line, and the rows of
        an epoch whose checkpoint was not written are dropped by the resume (``truncate_steps``)."""
        rows = "".join(f"{epoch},{step},{lr:.6g},{loss:.6f},{ce:.6f},{kd:.6f}\n" for step, lr, loss, ce, kd in losses)
        try:
            with self.steps.open("a") as handle:
                handle.write(rows)
        except OSError as err:
            raise FileWriteError(f"cannot write {self.steps}: {write_failure(err, self.root)}") from None

    def truncate_steps(self, last_epoch: int) -> None:
        """Keep only whole step rows of epochs up to ``last_epoch``: rows written before a crash (then
        redone), a row torn by a kill, and lines that are no row (damage) are dropped."""
        text = ""
        if self.steps.exists() or self.steps.is_symlink():
            if not self.steps.is_file():  # a directory, a FIFO (a read would wait forever), a symlink loop
                raise ConfigError(f"{self.steps} is not a file; move it away and rerun --resume")
            try:
                text = self.steps.read_bytes().decode(errors="replace")
            except OSError as err:
                raise ConfigError(f"cannot read {self.steps}: {err.strerror or err}") from None
        kept = [line for line in text.splitlines(keepends=True)[1:] if _row_epoch(line) <= last_epoch]
        write_text_whole(self.steps, STEPS_HEADER + "".join(kept))

    def write_metrics(self, history: list[dict]) -> None:
        write_text_whole(self.root / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        table = io.StringIO()
        # every record's keys: a run resumed from an older version's epochs may have metrics they lack
        writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(key for record in history for key in record)))
        writer.writeheader()
        writer.writerows(history)
        write_text_whole(self.root / "metrics.csv", table.getvalue())

    def finish(self, summary: dict) -> None:
        write_text_whole(self.summary, json.dumps(summary, indent=2) + "\n")

    def read_config(self) -> dict | None:
        """The recorded options (config.json), or None when there is none to read."""
        try:
            return json.loads((self.root / "config.json").read_text())
        except (OSError, ValueError):
            return None

    def is_complete(self, epochs: int) -> bool:
        """Whether the run finished ``epochs`` epochs: its summary says so, and holds the last and best
        epochs' records (a summary that is damaged, or not one, is no finished run; a --resume redoes it)."""
        summary = self.read_summary()
        return (summary is not None and summary.get("complete") is True and summary.get("epochs") == epochs
                and isinstance(summary.get("last"), dict) and isinstance(summary.get("best"), dict))

    def read_summary(self) -> dict | None:
        """summary.json, or None when there is none to read (missing, not JSON, not an object)."""
        try:
            summary = json.loads(self.summary.read_bytes())
        except (OSError, ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError: ValueErrors
            return None
        return summary if isinstance(summary, dict) else None


def _row_epoch(line: str) -> float:
    """The epoch of a whole steps.csv row; infinity for anything else (a torn or damaged line)."""
    fields = line.rstrip("\n").split(",")
    if not line.endswith("\n") or len(fields) != STEPS_HEADER.count(",") + 1 or not (fields[0].isascii() and fields[0].isdigit()):
        return math.inf
    return int(fields[0])


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it into the lock file."""
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "its pid and host not written yet"
