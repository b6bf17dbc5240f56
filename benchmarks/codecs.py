"""What each codec costs and loses: bytes/sample on disk and mean KL(teacher || decoded) at T=1, 4.

    python -m benchmarks.codecs [--n 4096] [--large]

Two sets of logits: a real trained teacher (a CNN trained here on scikit-learn's digits, C=10,
all 1797 samples) and realistic synthetic ImageNet-sized logits (C=1000, see
benchmarks/synthetic.py). Each is written through the real store writer, so bytes are what
lands on disk (compression, checksums and shard indexes included).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from benchmarks.synthetic import realistic_logits
from logitcache.store import choose_layout, create_store, get_codec, list_codecs


def trained_digits_logits() -> np.ndarray:
    from logitcache.sources import get_dataset
    from logitcache.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as folder:
        train(TrainConfig(out=folder, student="cnn:width=32", dataset="digits@train", loss="ce", epochs=15,
                          progress=False), log=lambda *_: None)
        from logitcache.sources.models import model_from_checkpoint

        model = model_from_checkpoint(f"{folder}/last.pt").eval()
    images = get_dataset("digits@all").dataset.images
    with torch.no_grad():
        return model(images).numpy()


def mean_kl(exact: np.ndarray, decoded: np.ndarray, temperature: float) -> float:
    p = torch.log_softmax(torch.from_numpy(exact).double() / temperature, 1)
    q = torch.log_softmax(torch.from_numpy(decoded).double() / temperature, 1)
    return float((p.exp() * (p - q)).sum(1).mean())


def measure(logits: np.ndarray, codec_name: str) -> tuple[float, float, float]:
    n, c = logits.shape
    codec = get_codec(codec_name)
    with tempfile.TemporaryDirectory() as folder:
        store = create_store(f"{folder}/s.zarr", keys=[str(i) for i in range(n)], labels=np.zeros(n, int),
                             dataset={"spec": "benchmark"})
        codec = codec.for_classes(c)
        layout = choose_layout(n, c, 0, row_bytes=codec.bytes_per_sample(c))
        teacher = store.create_teacher("t", num_classes=c, codec=codec, layout=layout, settings={}, provenance={})
        for shard in range(teacher.num_shards):
            teacher.write_shard(shard, logits[slice(*layout.shard_rows(shard, n))])
        decoded = teacher.read(0, n)
        size = teacher.nbytes_stored()
    return size / n, mean_kl(logits, decoded, 1.0), mean_kl(logits, decoded, 4.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="rows of synthetic C=1000 logits")
    parser.add_argument("--large", action="store_true", help="also C = 1000, 21841, 151936 with topk:K")
    args = parser.parse_args()
    sets = {"digits CNN teacher (C=10, N=1797)": trained_digits_logits(),
            f"synthetic (C=1000, N={args.n})": realistic_logits(args.n, 1000)}
    for title, logits in sets.items():
        table(title, logits, list_codecs())
    if args.large:
        for c, n in ((1000, 1024), (21841, 256), (151936, 64)):
            table(f"large label space (C={c}, N={n})", realistic_logits(n, c, seed=c),
                  ["fp16", "u8", "topk:10", "topk:50", "topk:128"])


def table(title: str, logits: np.ndarray, codecs: list[str]) -> None:
    raw = logits.shape[1] * 4
    print(f"\n{title}: raw fp32 = {raw} bytes/sample")
    print("| codec | bytes/sample | vs raw fp32 | KL T=1 | KL T=4 |")
    print("|---|---:|---:|---:|---:|")
    for name in codecs:
        per_sample, kl1, kl4 = measure(logits, name)
        print(f"| {name} | {per_sample:.1f} | {raw / per_sample:.2f}x | {kl1:.2e} | {kl4:.2e} |")


if __name__ == "__main__":
    main()
