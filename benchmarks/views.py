"""Multi-view stores: bytes per view against FKD's and TinyViT's layouts at equal KL, and what
replayed views buy a student on real data.

    python -m benchmarks.views [--views 8] [--seeds 3] [--epochs 30] [--augment crop=0.35-1] [--student cnn:width=8]

Part 1, bytes per view. Logits of K views per sample from two sources: a CNN trained here on
scikit-learn's digits, run on K random crops of every training digit (C=10, real), and realistic
synthetic ImageNet-sized logits (C=1000, benchmarks/synthetic.py). logitcache's layouts are
written through the real multi-view store writer, so their bytes are what lands on disk (view
parameters, compression, checksums and shard indexes included). The other two layouts are
rebuilt from their papers' descriptions and compressed with the same blosc/zstd settings, which
only flatters them (FKD ships uncompressed pickles):

- FKD (Shen & Xing, ECCV 2022): per crop, the top-k probabilities (fp16) with their class indices
  (int16), the crop box (4 x fp32) and a flip flag (uint8); the other classes share the rest of the
  mass evenly ("marginal smoothing").
- TinyViT (Wu et al., ECCV 2022): per view, top-k values (fp16) and indices (int16) and the
  augmentation's random seed (int32); the rest of the mass is spread evenly.

Each layout's KL(teacher || stored) at T=1 is measured on the same rows; the table gives, for a
few KL budgets, the fewest bytes per view with which each layout stays within the budget.

Part 2, accuracy. A CNN teacher is trained on digits with random crops, then dumped three ways:
plain (the teacher sees each clean image once), 1 replayed view and K replayed views per sample.
The same student (a small CNN by default) trains the same number of epochs, with KLDiv at T=4, from:
(0) the plain store without augmentation; (a) the plain store with fresh random crops of the same
distribution — the classic offline-KD bug, targets that do not match the input; (b) the 1-view
store; (c) the K-view store. Mean and standard deviation of the last-epoch validation top-1 over
several seeds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numcodecs
import numpy as np
import torch

from benchmarks.synthetic import realistic_logits
from logitcache.views.view_specs import parse_augment

# Digits are not mirror-symmetric, so no flip. --augment replaces it; the environment carries it to
# FreshCrops, which train() imports as a module of its own.
AUGMENT = os.environ.setdefault("BENCH_VIEWS_AUGMENT", "crop=0.35-1")
CROPS = parse_augment(AUGMENT)
BLOSC = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)


# -- part 1: bytes per view -----------------------------------------------------------------------

def kl_rows(p_log: np.ndarray, q_log: np.ndarray) -> float:
    """Mean KL(p || q) over rows, from log-probabilities."""
    return float((np.exp(p_log) * (p_log - q_log)).sum(axis=1).mean())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    wide = logits.astype(np.float64)
    top = wide.max(axis=1, keepdims=True)
    return wide - top - np.log(np.exp(wide - top).sum(axis=1, keepdims=True))


def compressed(*arrays: np.ndarray) -> int:
    return sum(len(BLOSC.encode(np.ascontiguousarray(a))) for a in arrays)


def topk_smoothed(log_p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k probabilities as fp16, their int16 indices, and the decoded log-probabilities with
    the rest of the mass spread evenly (FKD's marginal smoothing, TinyViT's sparse labels)."""
    n, c = log_p.shape
    index = np.argsort(-log_p, axis=1, kind="stable")[:, :k]
    values = np.exp(np.take_along_axis(log_p, index, axis=1)).astype(np.float16)
    kept = values.astype(np.float64)
    rest = np.clip(1 - kept.sum(axis=1, keepdims=True), 1e-12, None) / max(c - k, 1)
    probs = np.repeat(rest, c, axis=1)
    np.put_along_axis(probs, index, np.clip(kept, 1e-12, None), axis=1)
    probs /= probs.sum(axis=1, keepdims=True)
    return values, index.astype(np.int16), np.log(probs)


def fkd_layout(log_p: np.ndarray, k: int, rng) -> tuple[float, float]:
    values, index, decoded = topk_smoothed(log_p, k)
    n = len(log_p)
    boxes = rng.uniform(0, 1, (n, 4)).astype(np.float32)  # crop coordinates, as FKD records them
    flips = rng.integers(0, 2, n).astype(np.uint8)
    return compressed(values, index, boxes, flips) / n, kl_rows(log_p, decoded)


def tinyvit_layout(log_p: np.ndarray, k: int, rng) -> tuple[float, float]:
    values, index, decoded = topk_smoothed(log_p, k)
    n = len(log_p)
    seeds = rng.integers(0, 2**31, n).astype(np.int32)
    return compressed(values, index, seeds) / n, kl_rows(log_p, decoded)


def logitcache_layout(logits: np.ndarray, views: int, codec_name: str, hashes: bool) -> tuple[float, float]:
    """Bytes per view of a real multi-view teacher (logits + view_params [+ view_hashes])."""
    from logitcache.store import choose_layout, create_store, get_codec

    rows, c = logits.shape
    n = rows // views
    grouped = logits.reshape(n, views, c)
    params = np.stack([CROPS.draw(0, i, views) for i in range(n)])
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as folder:
        store = create_store(f"{folder}/s.zarr", keys=[str(i) for i in range(n)], labels=np.zeros(n, int),
                             dataset={"spec": "benchmark"})
        codec = get_codec(codec_name).for_classes(c)
        layout = choose_layout(n, c * views, 0, row_bytes=views * (codec.bytes_per_sample(c) + 18))
        record = {"count": views, "params": ["x0", "y0", "w", "h", "flip"], "dtype": "float16",
                  "hashes": "blake2b-64" if hashes else None}
        teacher = store.create_teacher("t", num_classes=c, codec=codec, layout=layout, settings={}, provenance={},
                                       views=record)
        for shard in range(teacher.num_shards):
            rows_ = slice(*layout.shard_rows(shard, n))
            extra = {"view_params": params[rows_]}
            if hashes:
                extra["view_hashes"] = rng.integers(0, 2**63, params[rows_].shape[:2], dtype=np.uint64)
            teacher.write_shard(shard, grouped[rows_], extra)
        decoded = teacher.read(0, n).reshape(rows, c)
        size = teacher.nbytes_stored() + teacher.nbytes_views()
    return size / rows, kl_rows(log_softmax(logits), log_softmax(decoded))


def bytes_table(title: str, logits: np.ndarray, views: int, ks: list[int]) -> None:
    log_p = log_softmax(logits)
    rng = np.random.default_rng(0)
    results = []  # (layout, setting, bytes/view, KL)
    for codec in ["fp16", "u8", *(f"topk:{k}" for k in ks)]:
        size, kl = logitcache_layout(logits, views, codec, hashes=False)
        results.append(("logitcache", codec, size, kl))
    size, kl = logitcache_layout(logits, views, "u8", hashes=True)
    results.append(("logitcache", "u8 + view hashes", size, kl))
    for k in ks:
        results.append(("FKD", f"top-{k}", *fkd_layout(log_p, k, rng)))
        results.append(("TinyViT", f"top-{k}", *tinyvit_layout(log_p, k, rng)))
    c = logits.shape[1]
    print(f"\n### {title}: {len(logits)} views, raw fp32 = {4 * c} bytes/view\n")
    print("| layout | setting | bytes/view | KL(teacher ‖ stored) T=1 |")
    print("|---|---|---:|---:|")
    for layout, setting, size, kl in results:
        print(f"| {layout} | {setting} | {size:.1f} | {kl:.2e} |")
    print("\nfewest bytes/view within a KL budget (T=1):\n")
    print("| KL budget | logitcache | FKD | TinyViT |")
    print("|---|---:|---:|---:|")
    for budget in (1e-1, 1e-2, 1e-3, 1e-4):
        cells = []
        for layout in ("logitcache", "FKD", "TinyViT"):
            fits = [(size, setting) for name, setting, size, kl in results if name == layout and kl <= budget
                    and "hashes" not in setting]
            cells.append(f"{min(fits)[0]:.1f} ({min(fits)[1]})" if fits else "-")
        print(f"| {budget:.0e} | " + " | ".join(cells) + " |")


def trained_teacher(folder: Path, epochs: int) -> str:
    from logitcache.train import TrainConfig, train

    train(TrainConfig(out=str(folder / "teacher"), student="cnn:width=32", dataset="benchmarks.views:fresh_crops",
                      val_dataset="digits@val", loss="ce", epochs=epochs, progress=False), log=lambda *_: None)
    return f"checkpoint:{folder / 'teacher' / 'last.pt'}"


def digits_view_logits(teacher: str, views: int) -> np.ndarray:
    from logitcache.sources import get_dataset, get_model
    from logitcache.views.replay import DumpViews

    model = get_model(teacher, 10).eval()
    dataset = DumpViews(get_dataset("digits@train", for_views=True), CROPS, views, seed=0, hashes=False)
    images = torch.cat([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        return model(images).numpy()


# -- part 2: accuracy -----------------------------------------------------------------------------

class FreshCrops(torch.utils.data.Dataset):
    """digits@train with a new random crop (same distribution as the stores' views) at every read."""

    def __init__(self, split=None):
        from logitcache.sources import get_dataset

        self.inner = get_dataset("digits@train")
        self.keys, self.targets, self.classes = self.inner.keys, self.inner.labels.tolist(), self.inner.classes

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, index):
        from logitcache.views.view_specs import apply_view

        image, label = self.inner.dataset[index]
        seed = int(torch.randint(0, 2**31 - 1, ()))  # from torch's generator: seeded per epoch by train
        return apply_view(image, CROPS.draw(seed, index, 1)[0]), label


def fresh_crops(split=None):
    return FreshCrops(split)


def accuracy(folder: Path, teacher: str, views: int, seeds: int, epochs: int, student: str) -> None:
    from logitcache.dump import DumpConfig, dump
    from logitcache.train import TrainConfig, train

    stores = {}
    for name, options in (("plain", {}), ("1 view", dict(augment=AUGMENT, views=1)),
                          (f"{views} views", dict(augment=AUGMENT, views=views))):
        stores[name] = str(folder / f"{name.replace(' ', '-')}.zarr")
        dump(DumpConfig(store=stores[name], teacher=teacher, dataset="digits@train", codec="fp16", progress=False,
                        **options), log=lambda *_: None)
    runs = [
        ("(0) plain store, no augmentation", stores["plain"], "digits@train"),
        ("(a) plain store + fresh random crops (mismatched targets)", stores["plain"], "benchmarks.views:fresh_crops"),
        ("(b) 1-view store, replayed", stores["1 view"], "digits@train"),
        (f"(c) {views}-view store, replayed", stores[f"{views} views"], "digits@train"),
    ]
    print(f"\n### Student accuracy on digits@val: {student}, KLDiv T=4, {epochs} epochs, {seeds} seeds, "
          f"views {AUGMENT}\n")
    print("| student trained from | val top-1 mean | sd | per seed | s/run |")
    print("|---|---:|---:|---|---:|")
    for title, store, dataset in runs:
        scores, seconds = [], []
        for seed in range(seeds):
            started = time.perf_counter()
            summary = train(TrainConfig(out=str(folder / "runs" / f"{len(scores)}-{title[:3]}"), student=student,
                                        dataset=dataset, val_dataset="digits@val", store=store, loss="kl",
                                        temperature=4.0, epochs=epochs, lr=0.05, batch_size=64, seed=seed,
                                        progress=False), log=lambda *_: None)
            seconds.append(time.perf_counter() - started)
            scores.append(100 * summary.last["val_top1"])
        per_seed = ", ".join(f"{s:.2f}" for s in scores)
        print(f"| {title} | {statistics.mean(scores):.2f} % | {statistics.stdev(scores):.2f} | {per_seed} | "
              f"{statistics.mean(seconds):.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=8, help="K, views per sample")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="student epochs (the teacher trains 30)")
    parser.add_argument("--n", type=int, default=1024, help="samples of synthetic C=1000 logits (x K views)")
    parser.add_argument("--augment", default=os.environ["BENCH_VIEWS_AUGMENT"], help="the view spec of part 2 (and of the digits in part 1)")
    parser.add_argument("--student", default="cnn:width=8", help="the student of part 2")
    parser.add_argument("--skip-bytes", action="store_true", help="part 2 only")
    args = parser.parse_args()
    os.environ["BENCH_VIEWS_AUGMENT"] = args.augment
    global AUGMENT, CROPS  # noqa: PLW0603 - one setting for the whole benchmark
    AUGMENT, CROPS = args.augment, parse_augment(args.augment)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        teacher = trained_teacher(folder, epochs=30)
        if not args.skip_bytes:
            bytes_table(f"digits CNN teacher on {args.views} views ({AUGMENT}) per sample (C=10)",
                        digits_view_logits(teacher, args.views), args.views, [1, 2, 3, 5, 9])
            bytes_table(f"synthetic realistic logits (C=1000), {args.views} views per sample",
                        realistic_logits(args.n * args.views, 1000), args.views, [1, 5, 10, 20, 50, 100, 200, 500])
        accuracy(folder, teacher, args.views, args.seeds, args.epochs, args.student)


if __name__ == "__main__":
    main()
