"""A background shard writer: compression and I/O run beside the teacher, never in its way.

    >>> with BackgroundWriter(teacher, on_written=count_correct) as writer:   # called with (shard, stored)
    ...     for shard, logits in produce_shards():
    ...         writer.submit(shard, logits)        # blocks only when `max_pending` shards wait

The queue is bounded, so memory stays at most ``max_pending + 1`` shards. An error on the
writer thread (non-finite logits, a failed write) is raised in the producer at its next
``submit`` or at exit, and no later shard is written. When the producer fails instead, the shards
it already queued are finished (they are whole and correct, and a resume need not redo them);
an interrupt (Ctrl-C) finishes only the shard in hand.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

_STOP = object()


class BackgroundWriter:
    def __init__(
        self,
        teacher,
        on_written: Callable[[int, np.ndarray], None] | None = None,
        max_pending: int = 2,
        before_write: Callable[[], None] | None = None,
    ):
        self.teacher = teacher
        self.on_written = on_written
        self.before_write = before_write  # e.g. the writer's lock: raise if it is no longer held
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="logitcache-writer", daemon=True)
        self._thread.start()

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
                if self.on_written is not None:
                    self.on_written(shard, stored)
            except BaseException as err:  # handed to the producer thread, re-raised there
                self._error = err

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

    def close(self) -> None:
        """Wait until every queued shard is written; raise the writer's error if it had one."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_if_failed()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        if not isinstance(exc, Exception):  # interrupted: finish the shard in hand, drop the rest
            self._error = self._error or exc
        self._queue.put(_STOP)
        self._thread.join()
