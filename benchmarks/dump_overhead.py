"""Does writing the store slow the teacher down? Time (a) the teacher's inference loop alone and
(b) the full dump (same data, model, batches), interleaved, and print dump / inference.

    python -m benchmarks.dump_overhead [--teacher resnet56] [--n 2048] [--codec fp16] [--rounds 3] [--device cpu]

Target: dump / inference <= 1.05. The inference loop is the same DataLoader + inference_mode
forward the dump runs, with the outputs thrown away.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader


def inference_only(teacher: str, batch_size: int, device: str) -> float:
    from logitcache.devices import resolve_device
    from logitcache.sources import get_dataset, get_model

    started = time.perf_counter()  # like the dump: build data and model, then the loop
    source = get_dataset("benchmarks.synthetic:cifar_like")
    model = get_model(teacher, 100).to(resolve_device(device)).eval()
    loader = DataLoader(source.dataset, batch_size=batch_size)
    with torch.inference_mode():
        for inputs, _ in loader:
            model(inputs.to(device)).float().cpu().numpy()
    return time.perf_counter() - started


def full_dump(teacher: str, batch_size: int, codec: str, device: str) -> float:
    from logitcache.dump import DumpConfig, dump

    with tempfile.TemporaryDirectory() as folder:
        config = DumpConfig(store=f"{folder}/s.zarr", teacher=teacher, dataset="benchmarks.synthetic:cifar_like",
                            codec=codec, batch_size=batch_size, device=device, progress=False)
        started = time.perf_counter()
        summary = dump(config, log=lambda *_: None)
        return time.perf_counter() - started, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--codec", default="fp16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ["BENCH_N"] = str(args.n)
    print(f"teacher {args.teacher}, {args.n} synthetic 3x32x32 samples, C=100, batch {args.batch_size}, "
          f"codec {args.codec}, device {args.device}, torch threads {torch.get_num_threads()}")
    inference_only(args.teacher, args.batch_size, args.device)  # warm-up: allocator, kernels, caches
    ratios = []
    for round_ in range(1, args.rounds + 1):
        infer = inference_only(args.teacher, args.batch_size, args.device)
        whole, summary = full_dump(args.teacher, args.batch_size, args.codec, args.device)
        ratios.append(whole / infer)
        print(f"round {round_}: inference {infer:.2f} s ({args.n / infer:.0f} samples/s), "
              f"dump {whole:.2f} s ({args.n / whole:.0f} samples/s), dump/inference {whole / infer:.3f}")
    print(f"store: {summary.bytes_per_sample:.1f} bytes/sample, {summary.ratio_vs_fp32:.2f}x smaller than fp32")
    print(f"median dump/inference = {statistics.median(ratios):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
