"""Sharing stores: dump throughput with 1 vs 2 torchrun processes, and the loader reading a store
from a local S3 server vs local disk. Side by side, interleaved, in one run.

    python -m benchmarks.sharing [--teacher resnet56] [--n 8192] [--rounds 3] [--loader-n 32768]

The S3 server is moto on 127.0.0.1 (a Python process on the same 2 cores): its figures bound what
the S3 code path costs, they do not predict a real object store's bandwidth.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]


def timed_dump(store: str, processes: int, n: int, teacher: str) -> tuple[float, float]:
    """(whole command seconds, seconds of the dump itself as it reports them)."""
    args = ["dump", store, "--teacher", teacher, "--dataset", "benchmarks.synthetic:cifar_like", "--codec", "fp16",
            "--rows-per-shard", "1024", "--no-progress"]  # 8 shards for 8192 samples: work for every rank
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_N": str(n)}
    if processes == 1:
        command = [sys.executable, "-m", "logitcache", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                   "-m", "logitcache", *args]
        env["OMP_NUM_THREADS"] = str(max(1, os.cpu_count() // processes))
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    whole = time.perf_counter() - started
    inner = float(re.search(r"samples in ([\d.]+) s", result.stdout).group(1))
    return whole, inner


def dump_comparison(args, folder: str) -> None:
    print(f"dump: {args.teacher} teacher, {args.n} synthetic 3x32x32 samples, C=100; 1 process with "
          f"{os.cpu_count()} threads vs 2 processes with {max(1, os.cpu_count() // 2)} each")
    times = {1: [], 2: []}
    for round_ in range(args.rounds):
        for processes in (1, 2):
            times[processes].append(timed_dump(f"{folder}/d{processes}_{round_}.zarr", processes, args.n, args.teacher))
        print(f"round {round_ + 1}: " + ", ".join(
            f"{p} process{'es' if p > 1 else ''} {times[p][-1][0]:.1f} s (dump {times[p][-1][1]:.1f} s)" for p in (1, 2)))
    for index, label in ((1, "dump itself"), (0, "whole command")):
        one = statistics.median(t[index] for t in times[1])
        two = statistics.median(t[index] for t in times[2])
        print(f"median, {label}: 1 process {args.n / one:.0f} samples/s, 2 processes {args.n / two:.0f} samples/s, "
              f"2-process speed-up {one / two:.2f}x")


def loader_comparison(args, folder: str) -> None:
    from logitcache.train.paired_data import EpochSampler, PairedDataset, TeacherLogits

    from benchmarks.synthetic import realistic_logits
    from benchmarks.train_throughput import NoInputs
    from logitcache.store import choose_layout, create_store, get_codec

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    n, c = args.loader_n, 1000
    locations = {"local disk": f"{folder}/c1000.zarr", "local S3 server": "s3://bench/c1000.zarr"}
    for location in locations.values():
        store = create_store(location, keys=[str(i) for i in range(n)], labels=np.zeros(n, int),
                             dataset={"spec": "benchmark"})
        layout = choose_layout(n, c, 2)
        teacher = store.create_teacher("t", num_classes=c, codec=get_codec("fp16"), layout=layout, settings={},
                                       provenance={})
        for shard in range(teacher.num_shards):
            start, stop = layout.shard_rows(shard, n)
            teacher.write_shard(shard, realistic_logits(stop - start, c, seed=shard))
        teacher.mark_complete()
    print(f"\nloader: {n} samples of C=1000 fp16 logits, random order, batch 256")
    for label, budget in (("load all into memory", 8 << 30), ("streamed, 64 MiB cap", 64 << 20)):
        for where, location in locations.items():
            started = time.perf_counter()
            logits = TeacherLogits.open(location, budget_bytes=budget)
            sampler = EpochSampler(logits.rows, seed=0, block_rows=None if logits.in_memory else logits.block_rows,
                                   window_blocks=logits.window_blocks)
            loader = DataLoader(PairedDataset(NoInputs(n), logits), batch_size=256, sampler=sampler)
            delivered = sum(len(batch[2]) for batch in loader)
            seconds = time.perf_counter() - started
            print(f"{label:22s} from {where:16s}: {delivered / seconds:>9,.0f} logits/s (open + one epoch)")
    server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loader-n", type=int, default=32768)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        dump_comparison(args, folder)
        loader_comparison(args, folder)


if __name__ == "__main__":
    main()
