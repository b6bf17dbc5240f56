"""The GPU figures of issue 15 in one run: dump vs bare inference, cached vs label-only and online
vs cached training, with ImageNet-shaped work on one CUDA device (``benchmarks/gpu.sh`` runs this,
then the ceilings benchmark with its models on the GPU).

    python -m benchmarks.gpu                   # CUDA: resnet50 teacher at 224 px, bf16; resnet18 student
    python -m benchmarks.gpu --smoke           # anywhere: the same code path, tiny, on the CPU

(a) dump: ``dump()`` of torchvision resnet50 (random weights, 1000 classes, bf16 autocast, fp16
store) over N synthetic 3x224x224 images against the bare inference loop (the same DataLoader,
batches and forward, outputs copied to the host and thrown away). Target: dump / inference <= 1.05.
(b) train, one epoch each, resnet18 student, bf16: label-only, ``--loss kl`` from the store, and
online KD (resnet50 in the loop). Targets: cached / label-only <= 1.05; online / cached >= 1.8.
Rounds are interleaved; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, Dataset

BANK = 256  # distinct random images; sample i shows image i % BANK (loading must not be the bottleneck)


class Images(Dataset):
    """GPU_N synthetic images of GPU_SIZE px, 1000 classes, seeded."""

    def __init__(self, n: int, size: int, classes: int = 1000):
        generator = torch.Generator().manual_seed(0)
        self.bank = torch.randn(min(n, BANK), 3, size, size, generator=generator)
        self.targets = torch.randint(0, classes, (n,), generator=generator).tolist()
        self.keys = [f"img/{i:07d}" for i in range(n)]
        self.classes = [str(c) for c in range(classes)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.bank[index % len(self.bank)], self.targets[index]


def images(split=None):
    return Images(int(os.environ["GPU_N"]), int(os.environ["GPU_SIZE"]))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_inference(args) -> float:
    from logitcache.sources import get_model

    dataset = images()
    model = get_model(args.teacher, 1000).to(args.device).eval()
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                        pin_memory=args.device.startswith("cuda"))
    _sync(args.device)
    began = time.perf_counter()
    with torch.inference_mode(), torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16):
        for inputs, _ in loader:
            model(inputs.to(args.device, non_blocking=True)).float().cpu().numpy()
    _sync(args.device)
    return time.perf_counter() - began


def whole_dump(args, store: str) -> float:
    from logitcache.dump import DumpConfig, dump

    config = DumpConfig(store=store, teacher=args.teacher, dataset="benchmarks.gpu:images", codec="fp16",
                        batch_size=args.batch_size, workers=args.workers, device=args.device, bf16=True,
                        progress=False, overwrite=True)
    return dump(config, log=lambda *_: None).seconds


def epoch(args, folder: str, name: str, **options) -> float:
    from logitcache.train import TrainConfig, train

    config = TrainConfig(out=f"{folder}/{name}", student=args.student, dataset="benchmarks.gpu:images", epochs=1,
                         batch_size=args.batch_size, workers=args.workers, device=args.device, bf16=True,
                         progress=False, overwrite=True, **options)
    return train(config, log=lambda *_: None).history[0]["epoch_seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25600)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--teacher", default="torchvision:resnet50")
    parser.add_argument("--student", default="torchvision:resnet18")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny, on the CPU: checks the path, measures nothing")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.size, args.batch_size, args.workers, args.rounds, args.device = 64, 32, 16, 0, 1, "cpu"
        args.teacher, args.student = "torchvision:resnet18", "torchvision:resnet18"
    os.environ["GPU_N"], os.environ["GPU_SIZE"] = str(args.n), str(args.size)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"N={args.n} images of {args.size} px, batch {args.batch_size}, {args.workers} workers, "
          f"teacher {args.teacher}, student {args.student}, bf16, device {args.device}")
    with tempfile.TemporaryDirectory() as folder:
        store = f"{folder}/teacher.zarr"
        bare_inference(args)  # warm-up: cudnn autotuning, allocator, worker start-up
        times = {"inference": [], "dump": []}
        for round_ in range(args.rounds):
            times["inference"].append(bare_inference(args))
            times["dump"].append(whole_dump(args, store))
            print(f"round {round_ + 1}: inference {args.n / times['inference'][-1]:,.0f} img/s, "
                  f"dump {args.n / times['dump'][-1]:,.0f} img/s", flush=True)
        median = {k: statistics.median(v) for k, v in times.items()}
        print(f"dump / inference time = {median['dump'] / median['inference']:.3f} (target <= 1.05)")
        epoch(args, folder, "warm-up", loss="ce")
        times = {"label-only": [], "cached": [], "online": []}
        for round_ in range(args.rounds):
            times["label-only"].append(epoch(args, folder, "ce", loss="ce"))
            times["cached"].append(epoch(args, folder, "kl", loss="kl", store=store))
            times["online"].append(epoch(args, folder, "online", loss="kl", online_teacher=args.teacher))
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {args.n / v[-1]:,.0f} img/s" for k, v in times.items()),
                  flush=True)
        median = {k: statistics.median(v) for k, v in times.items()}
        print(f"cached / label-only time = {median['cached'] / median['label-only']:.3f} (target <= 1.05)")
        print(f"online / cached time     = {median['online'] / median['cached']:.3f} (target >= 1.8)")


if __name__ == "__main__":
    main()
