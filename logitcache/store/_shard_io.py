"""A teacher's arrays written and read through zarr's store API a shard at a time, with ``ShardBytes``
doing the encoding: every array's object of a shard written at once and read back byte for byte;
any chunks read with few requests per array and shard (a local store's files read directly), and
decompressed on a thread pool.

    >>> io = ShardIO.for_arrays(teacher.content_arrays, n, 64, 4096)  # the arrays it can serve (None: none)
    >>> io.write(shard, encoded)            # ValueError naming the array if an object reads back differently
    >>> io.read(start, stop, ["logits"])    # {"logits": the stored rows}, each chunk's CRC-32C checked

``io.arrays`` are the arrays it serves; any other array of the teacher is left to zarr by the caller.

Blosc, CRC-32C and sha256 release the GIL, so the pool (``pool()``: one per process, as many threads
as CPUs, at most 8) runs them in parallel; a forked DataLoader worker makes its own.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from ._backend import check_regular_file
from ._shards import MISSING, ShardBytes

MAX_THREADS = 8
GAP_BYTES = 1 << 20  # chunks of a remote shard at most this far apart are read with one request
_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def threads() -> int:
    """How many threads encode, decode and hash in parallel: the CPUs this process may use, up to 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


def pool() -> ThreadPoolExecutor:
    """This process's thread pool (made again after a fork: threads do not survive one)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(threads(), thread_name_prefix="logitcache"))
        return _pool[1]


def parallel_map(function, items) -> list:
    """``[function(item) for item in items]``, split into one task per pool thread (a future per
    128 KiB chunk would cost more than the chunk), the calling thread running the first itself.
    Never call it from inside a task it runs."""
    items = list(items)
    count = threads()
    if len(items) < 2 or count == 1:
        return [function(item) for item in items]
    size = -(-len(items) // count)
    groups = [items[i:i + size] for i in range(0, len(items), size)]
    futures = [pool().submit(lambda group: [function(item) for item in group], group) for group in groups[1:]]
    results = [function(item) for item in groups[0]]
    for future in futures:
        results += future.result()
    return results


async def _gather(coroutines: list):
    return await asyncio.gather(*coroutines)  # made on zarr's event loop, which ``sync`` runs it on


class ShardIO:
    """The arrays of one teacher that ``ShardBytes`` handles, all cut into the teacher's chunks and shards."""

    def __init__(self, arrays: dict, layouts: dict[str, ShardBytes], num_samples: int):
        first = next(iter(arrays.values()))
        self.arrays, self.layouts, self.num_samples = arrays, layouts, num_samples
        self.store = first.store_path.store
        self._root = Path(self.store.root) if isinstance(self.store, LocalStore) else None  # read directly
        self.chunk_rows = next(iter(layouts.values())).chunk_rows
        self.shard_rows = self.chunk_rows * next(iter(layouts.values())).chunks_per_shard
        self._indexes: dict[tuple[str, int], np.ndarray | None] = {}

    @classmethod
    def for_arrays(cls, arrays: dict, num_samples: int, rows_per_chunk: int, rows_per_shard: int) -> ShardIO | None:
        """For those of ``arrays`` that ``ShardBytes`` encodes byte for byte as zarr does, cut into
        ``rows_per_chunk`` / ``rows_per_shard`` (the teacher's layout); None if there is none. An
        array configured any other way is left out, and its caller leaves it to zarr: an array kind
        this code does not know costs speed, never a byte of difference."""
        layouts = {name: ShardBytes.for_array(array) for name, array in arrays.items()}
        layouts = {name: shards for name, shards in layouts.items() if shards is not None
                   and (shards.chunk_rows, shards.chunk_rows * shards.chunks_per_shard) == (rows_per_chunk,
                                                                                           rows_per_shard)}
        if not layouts:
            return None
        return cls({name: arrays[name] for name in layouts}, layouts, num_samples)

    def _key(self, name: str, shard: int) -> str:
        array = self.arrays[name]
        return f"{array.store_path.path}/{array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))}"

    def write(self, shard: int, encoded: dict[str, np.ndarray]) -> None:
        """Write the objects of one shard (``encoded``: its rows of every array), read them back and
        compare them byte for byte with what was encoded.

        Raises:
            ValueError: an object reads back differently (the message names its array).
        """
        objects = {name: self.layouts[name].encode(values, map=parallel_map) for name, values in encoded.items()}
        keys = {name: self._key(name, shard) for name in objects}
        for name in objects:
            self._indexes.pop((name, shard), None)
        buffer = default_buffer_prototype().buffer

        async def put():
            await asyncio.gather(*(self.store.set(keys[n], buffer.from_bytes(data)) if data is not None
                                   else self.store.delete(keys[n]) for n, data in objects.items()))

        sync(put())
        for (name, data), back in zip(objects.items(), self._get_many([(keys[n], None) for n in objects])):
            if (back is None) != (data is None) or (back is not None and back.tobytes() != data):
                raise ValueError(name)

    def read(self, start: int, stop: int, names: list[str], check=None) -> dict[str, np.ndarray]:
        """Rows [start, stop) of the named arrays as stored (unwritten chunks hold the fill value).

        Raises:
            ValueError: a chunk or shard index fails its CRC-32C.
        """
        return self.read_ranges([(start, stop)], names, check)[0]

    def read_ranges(self, ranges: list[tuple[int, int]], names: list[str], check=None,
                    extra: list[dict] | None = None) -> list[dict[str, np.ndarray]]:
        """``read`` for several row ranges at once: the requests of every array and shard the ranges
        touch (``_fetch_runs``) sent together; every chunk decompressed, and ``check(start, stop,
        arrays)`` run on each chunk's rows of every named array, on the pool. ``extra``: per range, arrays read elsewhere
        (by zarr) over the range's chunk-aligned rows, checked with the chunk and returned with it."""
        extra = extra or [{} for _ in ranges]
        rows = self.chunk_rows
        runs = []  # (range number, name, shard, first chunk, end chunk) within the shard
        spans = []
        for number, (start, stop) in enumerate(ranges):
            lo, hi = start // rows * rows, min(-(-stop // rows) * rows, self.num_samples)
            spans.append((lo, hi))
            for shard in range(lo // self.shard_rows, -(-hi // self.shard_rows)):
                base = shard * self.shard_rows
                first, end = (max(lo, base) - base) // rows, -(-(min(hi, base + self.shard_rows) - base) // rows)
                runs += [(number, name, shard, first, end) for name in names]
        pieces = self._fetch_runs([run[1:] for run in runs])
        jobs: dict[tuple[int, int], dict] = {}  # (range, its first row's offset in it) -> {name: bytes}
        for (number, name, shard, *_), chunks in zip(runs, pieces):
            for i, data in chunks:
                jobs.setdefault((number, shard * self.shard_rows + i * rows - spans[number][0]), {})[name] = data
        out = [{name: np.empty((hi - lo, *self.layouts[name].row_shape), self.layouts[name].dtype) for name in names}
               if hi - lo > rows else {} for lo, hi in spans]

        def decode(job) -> None:
            (number, row), data = job
            lo, hi = spans[number]
            arrays = {name: self._decode(name, data[name])[:hi - lo - row] for name in names}
            arrays.update({name: values[row:row + rows] for name, values in extra[number].items()})
            if check is not None:
                check(lo + row, min(lo + row + rows, hi), arrays)
            if hi - lo > rows:
                for name in names:
                    out[number][name][row:row + len(arrays[name])] = arrays[name]
            else:  # a range of one chunk: its decoded rows, not a copy of them
                out[number].update(arrays)

        parallel_map(decode, jobs.items())
        for arrays, (lo, hi), others in zip(out, spans, extra):
            if hi - lo > rows:
                arrays.update(others)
        return [{name: arrays[name][start - lo:stop - lo] for name in [*names, *others]}
                for (start, stop), (lo, _), arrays, others in zip(ranges, spans, out, extra)]

    def _chunks_in(self, shard: int) -> int:
        """Inner chunks of ``shard`` that hold rows of the array (the last shard may be short)."""
        base = shard * self.shard_rows
        return -(-(min(self.num_samples, base + self.shard_rows) - base) // self.chunk_rows)

    def _load_indexes(self, runs: list) -> None:
        wanted = sorted({(name, shard) for name, shard, *_ in runs} - set(self._indexes))
        tails = self._get_many([(self._key(name, shard), -self.layouts[name].index_bytes) for name, shard in wanted])
        for (name, shard), tail in zip(wanted, tails):
            self._indexes[name, shard] = None if tail is None else self.layouts[name].index(tail)

    def _get_many(self, requests: list[tuple[str, tuple[int, int] | int | None]]) -> list[np.ndarray | None]:
        """The bytes of each (key, byte range): (start, stop), -n for the last n bytes, None for the
        whole object; None where the object is absent. All sent together through the store; a local
        store's files are read directly (zarr's asynchronous get costs ~0.25 ms a request here, ten
        times the read of a chunk), which reads the same bytes."""
        if self._root is not None:
            return parallel_map(lambda request: self._read_file(*request), requests)
        prototype = default_buffer_prototype()

        def ranged(wanted):
            if wanted is None:
                return None
            return SuffixByteRequest(-wanted) if isinstance(wanted, int) else RangeByteRequest(*wanted)

        got = sync(_gather([self.store.get(key, prototype=prototype, byte_range=ranged(wanted))
                            for key, wanted in requests]))
        return [None if data is None else data.as_numpy_array() for data in got]

    def _read_file(self, key: str, wanted) -> np.ndarray | None:
        """``_get_many``'s answer for one key of a local store (None: no such file, as zarr's)."""
        check_regular_file(self._root / key, key)  # a device or a pipe would read without end, or block
        try:
            with open(self._root / key, "rb") as file:
                if wanted is None:
                    return np.frombuffer(file.read(), np.uint8)
                size = file.seek(0, os.SEEK_END)
                start, stop = (max(0, size + wanted), size) if isinstance(wanted, int) else wanted
                file.seek(start)
                return np.frombuffer(file.read(max(0, min(stop, size) - start)), np.uint8)  # reads until done
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def _fetch_runs(self, runs: list[tuple]) -> list[list[tuple[int, np.ndarray | None]]]:
        """(chunk, bytes or None for an absent chunk) for every chunk of every run (name, shard,
        first chunk, end chunk), all requests sent together (``_requests``)."""
        requests = self._requests(runs)
        objects = self._get_many([(self._key(name, shard), None if index is None else (start, stop))
                                  for name, shard, index, start, stop, _ in requests])
        got: dict[tuple[str, int, int], np.ndarray] = {}  # (name, shard, chunk) -> its bytes
        for request, data in zip(requests, objects):
            name, shard = request[:2]
            got.update({(name, shard, i): part for i, part in self._chunks_of(*request, data)})
        return [[(i, got.get((name, shard, i))) for i in range(first, end)] for name, shard, first, end in runs]

    def _requests(self, runs: list[tuple]) -> list[tuple]:
        """(name, shard, index, byte start, byte end, chunks) per request: index None for a whole
        object (a run over a whole shard); otherwise the runs of an array's shard, read with one
        range request each group of chunks whose gaps are under ``GAP_BYTES`` (remote: a request
        costs more than a few chunks read too many) or that touch (local: a read costs ~20 us, a
        megabyte read for nothing ~800 us). A shard absent from the store has no request."""
        whole = dict.fromkeys((name, shard) for name, shard, first, end in runs
                              if first == 0 and end == self._chunks_in(shard))
        parts = [run for run in runs if tuple(run[:2]) not in whole]
        self._load_indexes(parts)
        gap = 0 if self._root is not None else GAP_BYTES
        pieces: dict[tuple[str, int], list[list]] = {}  # (name, shard) -> [[byte start, byte end, chunks]]
        for name, shard, first, end in parts:
            index = self._indexes[name, shard]
            present = [] if index is None else [i for i in range(first, end) if index[i, 0] != MISSING]
            pieces.setdefault((name, shard), []).extend(
                [int(index[i, 0]), int(index[i, 0] + index[i, 1]), {i}] for i in present)
        requests = [(name, shard, None, None, None, None) for name, shard in whole]
        for (name, shard), found in pieces.items():
            merged = []
            for start, stop, chunks in sorted(found, key=lambda piece: piece[0]):
                if merged and start - merged[-1][1] <= gap:
                    merged[-1][1], merged[-1][2] = max(merged[-1][1], stop), merged[-1][2] | chunks
                else:
                    merged.append([start, stop, chunks])
            requests += [(name, shard, self._indexes[name, shard], *group) for group in merged]
        return requests

    def _chunks_of(self, name: str, shard: int, index, start, stop, chunks, data: np.ndarray | None) -> list:
        """[(chunk, bytes)] of a request's answer: its ``chunks`` out of bytes [start, stop) of the
        shard's object, located by the ``index`` the range was taken from; with no index, every
        chunk present in the whole object (None: absent, every chunk missing).

        Raises:
            ValueError: an object whose index was read is gone (deleted or replaced since).
        """
        if index is None:
            if data is None:
                self._indexes[name, shard] = None
                return []
            layout = self.layouts[name]
            index = self._indexes[name, shard] = layout.index(data[-layout.index_bytes:])
            chunks, start = np.flatnonzero(index[:, 0] != MISSING).tolist(), 0
        elif data is None or len(data) != stop - start:
            self._indexes.pop((name, shard), None)
            raise ValueError(f"shard {shard} of {name!r} changed while it was read (gone or shorter)")
        return [(i, data[int(index[i, 0]) - start:int(index[i, 0] + index[i, 1]) - start]) for i in sorted(chunks)]

    def _decode(self, name: str, data) -> np.ndarray:
        layout = self.layouts[name]
        return layout.fill_chunk() if data is None else layout.decode_chunk(data)
