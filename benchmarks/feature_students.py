"""Students that learn from cached teacher features, on real data: label-only, KD, and KD plus each
feature loss (AT, RKD, FitNet, ICKD, ReviewKD), over several seeds.

    python -m benchmarks.feature_students [--seeds 3] [--epochs 30] [--student cnn:width=8] [--work DIR]
                                          [--methods "KD + AT (weight 50)"]

The digits pipeline's teacher (cnn:width=32, trained here on labels, 20 epochs) is dumped once with
its logits and the features every loss needs; every student is the same small CNN, trained the same
epochs with the same schedule from that one store, each feature loss at its paper's weight
(logitcache/features/losses.py) on top of Hinton KD at T=4. The last-epoch validation top-1 on
digits@val is reported (mean, standard deviation and each seed), with the seconds per run. Runs that
finished before (their summary.json in --work) are read back, not trained again.

Teacher features (cnn:width=32; the student's layers are the same indices at a quarter of the width):
  a1, a2, a3 = layers 2, 5, 9 as AT attention maps (8x8, 8x8, 4x4)
  s1, s2, s3 = the same layers as whole maps (32x8x8, 64x8x8, 64x4x4)      FitNet's hint is s2
  g3 = layer 9 as ICKD's channel Gram (64x64)
  emb = layer 11, the pooled embedding (64)                                 RKD; ReviewKD's last level
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from logitcache.dump import DumpConfig, dump
from logitcache.store import open_store
from logitcache.train import TrainConfig, train

FEATURES = ("a1=2:attention,a2=5:attention,a3=9:attention,s1=2:map,s2=5:map,s3=9:map,g3=9:gram,emb=11:pool")
METHODS = {  # name: (loss, feature loss, the student's layers)
    "label-only": ("ce", None, None),
    "KD": ("kl", None, None),
    "KD + AT": ("kl", "at", "a1=2,a2=5,a3=9"),
    # AT's 1000 is calibrated on CIFAR's 32x32, 16x16 and 8x8 maps; its loss is a mean over positions of
    # unit-norm maps, so on 8x8 and 4x4 maps it is 16 to 64 times larger: a weight scaled down to match.
    "KD + AT (weight 50)": ("kl", "at=50", "a1=2,a2=5,a3=9"),
    "KD + RKD": ("kl", "rkd", "emb=11"),
    "KD + FitNet": ("kl", "fitnet", "s2=5"),
    "KD + ICKD": ("kl", "ickd", "g3=9"),
    "KD + ReviewKD": ("kl", "reviewkd", "s1=2,s2=5,s3=9,emb=11"),
}


def quiet(*_):
    pass


def teacher_store(work: Path) -> Path:
    """Train the digits pipeline's teacher (once) and dump its logits and features (once)."""
    teacher = work / "teacher"
    if not (teacher / "summary.json").exists():
        train(TrainConfig(out=str(teacher), student="cnn:width=32", dataset="digits@train", val_dataset="digits@val",
                          loss="ce", epochs=20, lr=0.05, progress=False, overwrite=True), log=quiet)
    store = work / "digits_features.zarr"
    dump(DumpConfig(store=str(store), teacher=f"checkpoint:{teacher / 'best.pt'}", dataset="digits@train",
                    features=FEATURES, progress=False), log=quiet)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--student", default="cnn:width=8")
    parser.add_argument("--work", default="data/bench/feature_students")
    parser.add_argument("--methods", help="comma-separated rows to run (default: all)")
    args = parser.parse_args()
    methods = {name: METHODS[name] for name in (args.methods.split(",") if args.methods else METHODS)}
    work = Path(args.work)
    store = teacher_store(work)
    teacher = open_store(store).teacher()
    print(f"teacher: cnn:width=32, top-1 {teacher.attrs['metrics']['top1']:.2%} on digits@train; store {store}")
    for f in teacher.features:
        print(f"  feature {f['name']}: layer {f['layer']}, {f['reduce']} {'x'.join(map(str, f['shape']))}")
    print(f"\n| student {args.student}, {args.epochs} epochs | val top-1 (mean ± sd) | seeds | s/run |")
    print("|---|---:|---|---:|")
    for method, (loss, feature_loss, layers) in methods.items():
        accuracies, seconds = [], []
        for seed in range(args.seeds):
            out = work / "runs" / method.replace(" + ", "-").replace(" ", "").lower() / f"seed{seed}"
            done = out / "summary.json"
            if done.exists() and json.loads(done.read_text())["epochs"] == args.epochs:  # a run finished before
                record = json.loads(done.read_text())
                seconds.append(record["seconds"])
                accuracies.append(record["last"]["val_top1"])
                continue
            started = time.perf_counter()
            summary = train(TrainConfig(
                out=str(out), student=args.student, dataset="digits@train", val_dataset="digits@val",
                store=str(store), loss=loss, temperature=4.0 if loss == "kl" else None, feature_loss=feature_loss,
                student_features=layers, epochs=args.epochs, lr=0.05, batch_size=64, seed=seed, progress=False,
                overwrite=True), log=quiet)
            seconds.append(time.perf_counter() - started)
            accuracies.append(summary.last["val_top1"])
        mean, sd = statistics.mean(accuracies), statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        print(f"| {method} | {mean:.2%} ± {sd:.2%} | {', '.join(f'{a:.2%}' for a in accuracies)} | "
              f"{statistics.mean(seconds):.0f} |", flush=True)


if __name__ == "__main__":
    main()
