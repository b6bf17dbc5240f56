"""What do format v3's position-bound digests cost? Side by side, in one run, on the same store:

- hashing: sha256 over stored shard bytes, against blosc-zstd encoding of the same shards (the
  dump's own per-shard work) and against a plain memory copy (the physical floor);
- reading: every chunk of a teacher read with its digest checked (what ``train`` and ``verify``
  do) against the same reads without the check (what a v2 reader did);
- writing: a whole dump of a near-free teacher, digests and all, against encoding alone.

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
        teacher = store.create_teacher("t", num_classes=args.classes, codec=codec, layout=layout, settings={},
                                       provenance={})

        def write_all():
            for shard in range(teacher.num_shards):
                start, stop = layout.shard_rows(shard, args.n)
                teacher.write_shard(shard, logits[start:stop])

        write_seconds = _best(write_all, 1)
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
    print(f"whole write (encode, write, read back, digests, ledger): {raw_bytes / write_seconds / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
