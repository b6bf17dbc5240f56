"""What does distilling from the cache cost? Steps/s of the same student trained three ways,
interleaved in one run: labels only, from the cached logits, and online KD with the teacher in
the loop. Also: logits/s the loader delivers, in memory and streamed under a memory cap.

    python -m benchmarks.train_throughput [--teacher resnet56] [--student resnet20] [--n 1280] [--rounds 3]

Targets on a CPU: cached / label-only time <= 1.05, online / cached time >= 1.8; the loader
must deliver logits far faster than the student consumes samples.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from logitcache.dump import DumpConfig, dump
from logitcache.train import TrainConfig, train


def epoch_seconds(folder: str, name: str, args, **options) -> float:
    config = TrainConfig(out=f"{folder}/{name}", student=args.student, dataset="benchmarks.synthetic:cifar_like",
                         epochs=1, batch_size=args.batch_size, device=args.device, progress=False,
                         overwrite=True, **options)
    return train(config, log=lambda *_: None).history[0]["epoch_seconds"]


def training_comparison(args, folder: str) -> None:
    store = f"{folder}/teacher.zarr"
    dump(DumpConfig(store=store, teacher=args.teacher, dataset="benchmarks.synthetic:cifar_like", codec="fp16",
                    device=args.device, progress=False), log=lambda *_: None)
    steps = args.n // args.batch_size
    times = {"label-only": [], "cached": [], "online": []}
    epoch_seconds(folder, "warmup", args, loss="ce")
    for round_ in range(1, args.rounds + 1):
        times["label-only"].append(epoch_seconds(folder, "ce", args, loss="ce"))
        times["cached"].append(epoch_seconds(folder, "cached", args, loss="dist", store=store))
        times["online"].append(epoch_seconds(folder, "online", args, loss="dist", online_teacher=args.teacher))
        print(f"round {round_}: " + ", ".join(f"{k} {v[-1]:.2f} s ({steps / v[-1]:.2f} steps/s)" for k, v in times.items()))
    median = {k: statistics.median(v) for k, v in times.items()}
    print("median steps/s: " + ", ".join(f"{k} {steps / v:.2f}" for k, v in median.items()))
    print(f"cached / label-only time = {median['cached'] / median['label-only']:.3f} (target <= 1.05)")
    print(f"online / cached time     = {median['online'] / median['cached']:.3f} (target >= 1.8)")
    student_rate = args.n / median["cached"]
    print(f"the student consumes {student_rate:.0f} samples/s")


class NoInputs(torch.utils.data.Dataset):
    """Zero-size inputs, so the loader benchmark measures the logits path alone."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return torch.empty(0), 0


def loader_comparison(args, folder: str) -> None:
    from logitcache.train.paired_data import EpochSampler, PairedDataset, TeacherLogits

    from benchmarks.synthetic import realistic_logits
    from logitcache.store import choose_layout, create_store, get_codec

    n, c = args.loader_n, 1000
    store = create_store(f"{folder}/c1000.zarr", keys=[str(i) for i in range(n)], labels=np.zeros(n, int),
                         dataset={"spec": "benchmark"})
    layout = choose_layout(n, c, 2)
    teacher = store.create_teacher("t", num_classes=c, codec=get_codec("fp16"), layout=layout, settings={},
                                   provenance={})
    for shard in range(teacher.num_shards):
        teacher.write_shard(shard, realistic_logits(layout.rows_per_shard, c, seed=shard)[: np.diff(layout.shard_rows(shard, n))[0]])
    teacher.mark_complete()
    cap = 64 << 20
    for label, budget in (("in memory", 8 << 30), (f"streamed, {cap >> 20} MiB cap", cap)):
        for workers in (0, 2):
            logits = TeacherLogits.open(f"{folder}/c1000.zarr", budget_bytes=budget, workers=workers)
            sampler = EpochSampler(logits.rows, seed=0, block_rows=None if logits.in_memory else logits.block_rows,
                                   window_blocks=logits.window_blocks)
            loader = DataLoader(PairedDataset(NoInputs(n), logits), batch_size=256, sampler=sampler,
                                num_workers=workers)
            started = time.perf_counter()
            delivered = sum(len(batch[2]) for batch in loader)
            seconds = time.perf_counter() - started
            assert delivered == n
            print(f"loader, C=1000, random order, {label}, {workers} workers: {delivered / seconds:,.0f} logits/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--n", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loader-n", type=int, default=65536)
    args = parser.parse_args()
    os.environ["BENCH_N"] = str(args.n)
    print(f"teacher {args.teacher}, student {args.student}, {args.n} synthetic 3x32x32 samples, C=100, "
          f"batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as folder:
        training_comparison(args, folder)
        loader_comparison(args, folder)


if __name__ == "__main__":
    main()
