"""What do format v3's position-bound digests cost? Side by side, in one run, on the same store:

- hashing: sha256 over stored shard bytes, against blosc-zstd encoding of the same shards (the
  dump's own per-shard work) and against a plain memory copy (the physical floor);
- reading: every chunk of a teacher read with its digest checked (what ``train`` and ``verify``
  do) against the same reads without the check (what a v2 reader did);
- writing: every shard of a teacher written as v3 writes it (encode, write, read back, digests,
  ledger) against the same writes without digests, as a v2 writer did, interleaved.

    python -m benchmarks.integrity [--n 65536] [--classes 1000] [--codec fp16] [--rounds 3]

Ratios near 1.0 mean the digests are not what a GPU would wait on.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np


def _best(action, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--codec", default="fp16")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from benchmarks.synthetic import realistic_logits
    from logitcache.store import choose_layout, create_store, get_codec
    from logitcache.store._integrity import shard_chunk_digests

    logits = realistic_logits(args.n, args.classes)
    codec = get_codec(args.codec).for_classes(args.classes)
    layout = choose_layout(args.n, args.classes, 0, row_bytes=codec.bytes_per_sample(args.classes))
    with tempfile.TemporaryDirectory() as folder:
        store = create_store(f"{folder}/s.zarr", keys=[str(i) for i in range(args.n)], labels=np.zeros(args.n),
                             dataset={"spec": "synthetic"})
        teachers = {}

        def write_all(name: str, digests: bool):
            def write():
                teacher = _new_teacher(store, name, codec, layout, args.classes, digests)
                for shard in range(teacher.num_shards):
                    start, stop = layout.shard_rows(shard, args.n)
                    teacher.write_shard(shard, logits[start:stop])
                teachers[name] = teacher
            return write

        write_rates = {}
        for round_ in range(args.rounds):  # interleaved, so both see the same machine
            for name, digests in (("v3", True), ("v2", False)):
                seconds = _best(write_all(f"{name}-{round_}", digests), 1)
                write_rates.setdefault(name, []).append(seconds)
        teacher = teachers[f"v3-{args.rounds - 1}"]
        encoded = [codec.encode(logits[s:s + layout.rows_per_shard]) for s in range(0, args.n, layout.rows_per_shard)]
        raw_bytes = sum(v.nbytes for shard in encoded for v in shard.values())

        def digest_all():
            for i, shard in enumerate(encoded):
                start = i * layout.rows_per_shard
                shard_chunk_digests(shard, start, start + len(next(iter(shard.values()))), layout.rows_per_chunk)

        def encode_all():
            for shard in range(teacher.num_shards):
                start, stop = layout.shard_rows(shard, args.n)
                codec.encode(logits[start:stop])

        def copy_all():
            for shard in encoded:
                for values in shard.values():
                    values.copy()

        def read_checked():
            for shard in range(teacher.num_shards):
                teacher.read_stored(*layout.shard_rows(shard, args.n))

        def read_unchecked():
            for shard in range(teacher.num_shards):
                teacher._read_raw(*layout.shard_rows(shard, args.n), teacher.arrays)

        rates = {}
        for name, action in (("copy", copy_all), ("sha256 digests", digest_all), ("codec encode", encode_all),
                             ("read + check digests", read_checked), ("read, no digest check", read_unchecked)):
            rates[name] = raw_bytes / _best(action, args.rounds) / 1e9
    mb = raw_bytes / 1e6
    print(f"{args.n} rows x {args.classes} classes, codec {codec.name}: {mb:.1f} MB stored uncompressed, "
          f"{teacher.num_shards} shards of {layout.rows_per_shard} rows, chunks of {layout.rows_per_chunk}")
    print(f"{'what':<24} {'GB/s':>8}")
    for name, rate in rates.items():
        print(f"{name:<24} {rate:>8.2f}")
    print(f"digests / encode time:        {rates['codec encode'] / rates['sha256 digests']:.3f}")
    print(f"checked / unchecked read time: {rates['read, no digest check'] / rates['read + check digests']:.3f}")
    v3, v2 = (statistics.median(write_rates[k]) for k in ("v3", "v2"))
    print(f"whole shard writes (encode, compress, write, read back, ledger): v3 {raw_bytes / v3 / 1e9:.3f} GB/s, "
          f"without digests {raw_bytes / v2 / 1e9:.3f} GB/s; v3 / v2 time: {v3 / v2:.3f}")


def _new_teacher(store, name, codec, layout, classes, digests: bool):
    """A teacher written as v3 does, or (``digests=False``) as a v2 writer did: no digests at all."""
    from logitcache.store._schema import TEACHER_ATTR

    teacher = store.create_teacher(name, num_classes=classes, codec=codec, layout=layout, settings={},
                                   provenance={})
    if not digests:
        attrs = dict(teacher.group.attrs[TEACHER_ATTR])
        del attrs["integrity"]
        teacher.group.attrs[TEACHER_ATTR] = attrs
        del teacher.group["chunk_digests"]
        teacher = store.teacher(name, check=False)
    return teacher


if __name__ == "__main__":
    main()
