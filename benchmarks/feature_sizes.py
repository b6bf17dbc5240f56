"""Bytes per sample of every teacher signal a feature loss learns from, for the CIFAR recipes' teachers
(resnet56, resnet32x4 at 32 px) and torchvision's resnet50 at 224 px.

    python -m benchmarks.feature_sizes [--samples 64] [--imagenet-samples 8]

Each teacher is dumped through the real store writer (fp16, blosc/zstd, checksums, shard indexes) on
generated images (smooth random images, seeded; untrained weights, so the on-disk column shows how
post-ReLU activations compress, not a trained network's exact figure). ``raw`` is the fp16 size,
exact for any weights: C for pool, H·W for attention, C² for gram, C·H·W for map, times 2 bytes.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from logitcache.dump import DumpConfig, dump
from logitcache.store import nbytes_features, open_store

TEACHERS = {  # name: (model spec, dataset factory, the features the CIFAR/ImageNet recipes use)
    "resnet56 (CIFAR-100, 32 px)": ("resnet56", "benchmarks.feature_sizes:cifar_images",
                                    "s1=11:map,s2=20:map,s3=29:map,a3=29:attention,g3=29:gram,emb=31:pool"),
    "resnet32x4 (CIFAR-100, 32 px)": ("resnet32x4", "benchmarks.feature_sizes:cifar_images",
                                      "s1=7:map,s2=12:map,s3=17:map,a3=17:attention,g3=17:gram,emb=19:pool"),
    "torchvision resnet50 (ImageNet, 224 px)": (
        "torchvision:resnet50", "benchmarks.feature_sizes:imagenet_images",
        "s1=layer1:map,s2=layer2:map,s3=layer3:map,s4=layer4:map,a4=layer4:attention,g4=layer4:gram,emb=avgpool:pool"),
}
SAMPLES = {"cifar": 64, "imagenet": 8}


class SmoothImages(torch.utils.data.Dataset):
    """Seeded low-frequency random RGB images (a coarse random grid, bilinearly upsampled, plus a little noise)."""

    def __init__(self, count: int, side: int, classes: int):
        generator = torch.Generator().manual_seed(0)
        coarse = torch.rand(count, 3, 6, 6, generator=generator)
        images = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        self.images = (images + 0.05 * torch.randn(images.shape, generator=generator) - 0.5) / 0.25
        self.targets = torch.randint(0, classes, (count,), generator=generator).tolist()
        self.classes = [f"c{i}" for i in range(classes)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.images[index], self.targets[index]


def cifar_images(split=None):
    return SmoothImages(SAMPLES["cifar"], 32, 100)


def imagenet_images(split=None):
    return SmoothImages(SAMPLES["imagenet"], 224, 1000)


def measure(name: str, model: str, dataset: str, features: str, root: Path) -> list[tuple]:
    store = root / f"{model.replace(':', '_')}.zarr"
    torch.manual_seed(0)
    dump(DumpConfig(store=str(store), teacher=model, dataset=dataset, features=features, batch_size=8,
                    progress=False), log=lambda *_: None)
    teacher = open_store(store).teacher()
    n = teacher.num_samples
    rows = [(name, "logits", f"{teacher.num_classes}", 2 * teacher.num_classes, teacher.nbytes_stored() / n)]
    disk = nbytes_features(teacher)
    for f in teacher.features:
        signal = f"{f['reduce']} of {f['layer']}"
        rows.append((name, signal, "x".join(map(str, f["shape"])), 2 * math.prod(f["shape"]), disk[f["name"]] / n))
    return rows


def human(size: float) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--imagenet-samples", type=int, default=8)
    args = parser.parse_args()
    SAMPLES.update(cifar=args.samples, imagenet=args.imagenet_samples)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("| teacher | signal | shape per sample | raw fp16 | on disk |")
    print("|---|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, dataset, features) in TEACHERS.items():
            for row in measure(name, model, dataset, features, Path(tmp)):
                print(f"| {row[0]} | {row[1]} | {row[2]} | {human(row[3])} | {human(row[4])} |", flush=True)
    print(f"\nfor scale: a CIFAR image is {human(32 * 32 * 3)} as uint8; an ImageNet JPEG averages ~110 KB; "
          f"np {np.__version__}")


if __name__ == "__main__":
    main()
