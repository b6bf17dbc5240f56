"""Large label spaces: what dense, u8, topk:K and sample:K stores cost and how far their KL loss
strays from the exact one; and, on real digits, students trained from each at similar bytes.

    python -m benchmarks.sparse [--skip-students]

Bytes are what the real store writer puts on disk. "bias" is the mean over samples of
(loss from the store - exact KL(teacher || student)) at T=1 for a reference student (the teacher's
logits plus N(0, 1) noise); "rms" is the root-mean-square of that per-sample difference. A sampled
store is unbiased but noisy; a truncated one is quiet but biased.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from benchmarks.synthetic import realistic_logits
from logitcache.losses import kd_from_targets
from logitcache.store import choose_layout, create_store, get_codec

CODECS = ["fp16", "u8", "topk:10", "topk:50", "topk:128", "sample:12", "sample:50"]


def per_sample_kl(teacher_log_p: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    log_q = student.double().log_softmax(1)
    return (teacher_log_p.exp() * (teacher_log_p - log_q)).sum(1)


def store_round_trip(logits: np.ndarray, name: str):
    """Write through the real writer; return (bytes/sample, the codec, what was stored)."""
    n, c = logits.shape
    codec = get_codec(name).for_classes(c)
    with tempfile.TemporaryDirectory() as folder:
        store = create_store(f"{folder}/s.zarr", keys=[str(i) for i in range(n)], labels=np.zeros(n, int),
                             dataset={"spec": "benchmark"})
        layout = choose_layout(n, c, 0, row_bytes=codec.bytes_per_sample(c))
        teacher = store.create_teacher("t", num_classes=c, codec=codec, layout=layout, settings={}, provenance={})
        for shard in range(teacher.num_shards):
            teacher.write_shard(shard, logits[slice(*layout.shard_rows(shard, n))])
        return teacher.nbytes_stored() / n, teacher.codec, teacher.read_stored(0, n)


def loss_error(codec, stored, exact_log_p, student) -> tuple[float, float]:
    exact = per_sample_kl(exact_log_p, student)
    if codec.has_sparse_form:  # topk_kd_loss or sampled_kd_loss, by the targets' type, one row at a time
        targets = codec.training_targets(stored)
        est = torch.stack([kd_from_targets(student[[i]], targets[[i]], 1.0) for i in range(len(student))])
    else:
        decoded = torch.from_numpy(codec.decode(stored)).double().log_softmax(1)
        est = per_sample_kl(decoded, student)
    diff = (est.double() - exact).numpy()
    return float(diff.mean()), float(np.sqrt((diff**2).mean()))


def label_space_table() -> None:
    for c, n in ((1000, 512), (21841, 128), (151936, 32)):
        logits = realistic_logits(n, c, seed=c)
        exact_log_p = torch.from_numpy(logits).double().log_softmax(1)
        student = torch.from_numpy(logits) + torch.randn(n, c, generator=torch.Generator().manual_seed(0))
        top1 = exact_log_p.exp().max(1).values.mean().item()
        print(f"\nC={c}, N={n} (mean teacher top-1 probability {top1:.2f}; raw fp32 {4 * c} bytes/sample)")
        print("| codec | bytes/sample | mass stored | KL(teacher‖decoded) | loss bias | loss rms error |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in CODECS:
            per_sample, codec, stored = store_round_trip(logits, name)
            mass = codec.stored_mass(stored).mean()
            if not codec.has_dense_form:
                kl = "n/a (samples)"
            else:
                decoded = torch.from_numpy(codec.decode(stored)).double().log_softmax(1)
                kl = f"{(exact_log_p.exp() * (exact_log_p - decoded)).sum(1).mean().item():.2e}"
            bias, rms = loss_error(codec, stored, exact_log_p, student)
            print(f"| {name} | {per_sample:,.1f} | {mass:.3f} | {kl} | {bias:+.2e} | {rms:.2e} |")


def student_table(seeds=(0, 1, 2)) -> None:
    from logitcache.dump import DumpConfig, dump
    from logitcache.train import TrainConfig, train

    print("\ndigits (C=10): CNN teacher, mlp:hidden=32 students, KL at T=1, 30 epochs, val top-1 over seeds")
    print("| store | bytes/sample | val top-1 (mean of 3 seeds) | per seed |")
    print("|---|---:|---:|---|")
    with tempfile.TemporaryDirectory() as folder:
        train(TrainConfig(out=f"{folder}/teacher", student="cnn:width=32", dataset="digits@train",
                          val_dataset="digits@val", loss="ce", epochs=20, progress=False), log=lambda *_: None)
        for codec in ("fp16", "topk:2", "sample:3", "ce"):
            store = f"{folder}/{codec.replace(':', '_')}.zarr"
            size = "-"
            if codec != "ce":
                summary = dump(DumpConfig(store=store, teacher=f"checkpoint:{folder}/teacher/best.pt",
                                          dataset="digits@train", codec=codec, progress=False), log=lambda *_: None)
                size = f"{summary.bytes_per_sample:.1f}"
            accuracy = []
            for seed in seeds:
                result = train(TrainConfig(out=f"{folder}/{codec}-{seed}", student="mlp:hidden=32",
                                           dataset="digits@train", val_dataset="digits@val",
                                           store=None if codec == "ce" else store, loss="ce" if codec == "ce" else "kl",
                                           temperature=1.0, epochs=30, seed=seed, progress=False), log=lambda *_: None)
                accuracy.append(result.last["val_top1"])
            label = "labels only" if codec == "ce" else codec
            print(f"| {label} | {size} | {np.mean(accuracy):.2%} | {', '.join(f'{a:.2%}' for a in accuracy)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-students", action="store_true")
    args = parser.parse_args()
    label_space_table()
    if not args.skip_students:
        student_table()


if __name__ == "__main__":
    main()
