"""Background shard writers: encoding, compression and I/O run beside the teacher, never in its way.

    >>> with BackgroundWriter(teacher, on_written=count_correct) as writer:   # (shard, stored, logits)
    ...     for shard, logits in produce_shards():
    ...         writer.submit(shard, logits)        # blocks only when `max_pending` shards wait

``threads`` writer threads (default: the CPUs, up to 8) each take whole shards, so a fast teacher
is never held up by one core's worth of encoding: numpy, blosc, CRC-32C and sha256 release the GIL.
Every shard is its own set of objects (chunks, digests, ledger entry), so the order in which
shards finish changes no byte of the store; ``on_written`` may be called from any writer thread,
for any shard order. The queue is bounded: memory stays at ``max_pending + threads`` shards.

An error on a writer thread (a failed write) is raised in the producer at its next ``submit`` or at
exit; no shard is started after it (the shards other threads have in hand are finished). When the
producer fails instead, the shards it already queued are finished (they are whole and correct, and
a resume need not redo them); an interrupt (Ctrl-C) finishes only the shards in hand.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

from . import _shard_io

_STOP = object()


class BackgroundWriter:
    def __init__(
        self,
        teacher,
        on_written: Callable[[int, dict, np.ndarray | None], None] | None = None,
        max_pending: int | None = None,
        before_write: Callable[[], None] | None = None,
        threads: int | None = None,
    ):
        self.teacher = teacher
        self.on_written = on_written
        self.before_write = before_write  # e.g. the writer's lock: raise if it is no longer held
        count = threads or _shard_io.threads()
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending or count)
        self._error: BaseException | None = None
        if teacher.has_digests:  # made once here, not raced for by the threads
            teacher.chunk_digests  # noqa: B018
        self._threads = [threading.Thread(target=self._run, name=f"logitcache-writer-{i}", daemon=True)
                         for i in range(count)]
        for thread in self._threads:
            thread.start()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # drain without writing after a failure
            shard, logits, views, stats, features = item
            try:
                if self.before_write is not None:
                    self.before_write()
                if logits is None:  # already encoded (a token dump's device reduction)
                    stored = self.teacher.write_encoded(shard, views, stats)
                else:
                    stored = self.teacher.write_shard(shard, logits, views, features)
                if self.on_written is not None:  # with the logits it was given (None: given encoded)
                    self.on_written(shard, stored, logits)
            except BaseException as err:  # handed to the producer thread, re-raised there
                self._error = self._error or err

    def _raise_if_failed(self):
        if self._error is not None:
            raise self._error

    def submit(self, shard: int, logits: np.ndarray, views: dict | None = None, features: dict | None = None) -> None:
        """Queue one whole shard of float32 logits (and, for a multi-view teacher, its view arrays; for a
        teacher with features, its float32 features by name)."""
        self._raise_if_failed()
        self._queue.put((shard, logits, views, None, features))

    def submit_encoded(self, shard: int, encoded: dict[str, np.ndarray], stats: np.ndarray | None = None) -> None:
        """Queue one whole shard of already-encoded arrays (``Teacher.write_encoded``)."""
        self._raise_if_failed()
        self._queue.put((shard, None, encoded, stats, None))

    def _stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()

    def close(self) -> None:
        """Wait until every queued shard is written; raise a writer's error if there was one."""
        if any(thread.is_alive() for thread in self._threads):
            self._stop()
        self._raise_if_failed()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        if not isinstance(exc, Exception):  # interrupted: finish the shards in hand, drop the rest
            self._error = self._error or exc
        self._stop()
