"""Packed class ids and count-only samples (issue 22, item 3): bytes per token of ``topk:8``,
``sample:12`` and ``sample:12:counts`` token stores at V = 4,096 and 131,072, against logitcache
before the change; what other layouts of the same ids would take; and how fast ids are split and
joined.

    git archive f8b1fc8 | tar -x -C /tmp/lc-main        # logitcache before packed ids (its parent commit)
    flock /tmp/bigmem.lock prlimit --as=$((14<<30)) python -m benchmarks.packed_ids --baseline /tmp/lc-main

Every store is a real ``logitcache dump`` (byte tokenizer, ``--seq-len 256``, 32 sequences of
Hamlet's first 8,192 bytes) of the same teacher, run by this checkout and, for "before", by the
``--baseline`` checkout (``PYTHONPATH``); bytes per token are what ``info --json`` reports
(``bytes_on_disk``: the teacher's arrays as compressed on disk, with their shard indexes, divided by
the tokens). The second table takes the ids of each store made now and compresses them as the
store does (blosc zstd level 5, byte shuffle, its inner chunks; no chunk checksums or shard
indexes) in several layouts: uint32 (before), uint16 (V <= 65,536), every id bit-packed at b bits
(DistillKit's), and split, 16 low bits as uint16 and b - 16 high bits packed (now; Megatron's, its
bool byte packed). It decides how to pack, and whether to pack below 65,536 classes.

The teacher is a 1-layer GPT (``gpt:n_layer=1,n_head=2,n_embd=64``, saved as a checkpoint both
checkouts load) whose tied head gives every id a Zipf prior, ``-ALPHA * log(1 + id)`` (low ids are
frequent, as in BPE vocabularies), plus a context-dependent part with standard deviation ``BETA``:
one hidden dimension is constant (LayerNorm weight 0, bias 1) and the head's column there holds
the prior. The table prints what that gives (entropy, top-8 mass, distinct ids in 12 draws) so the
bytes can be judged against a real LM's.

Speed: rows per second of the host side of a dump (the stored arrays from the device's top K or
draws: ``from_top``, ``from_draws``) and of a training batch's decode (``training_targets``), with
ids packed and whole, and of ``split_ids``/``join_ids`` alone, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
HAMLET = REPO / "data" / "text" / "shakespeare" / "hamlet.md"
SPEC = "gpt:n_layer=1,n_head=2,n_embd=64,block_size=256"
ALPHA, BETA = 1.1, 1.8
VOCABS = [4096, 131_072]
CODECS = ["topk:8", "sample:12", "sample:12:counts"]
TEXT_BYTES, SEQ_LEN = 8192, 256


def make_teacher(path: Path, vocab: int) -> Path:
    """The GPT teacher described in the module docstring, saved as a logitcache checkpoint."""
    from logitcache.sources import get_model
    from logitcache.sources.checkpoints import save_checkpoint

    torch.manual_seed(vocab)
    model = get_model(SPEC, vocab)
    with torch.no_grad():
        head = model.head.weight  # (V, 64), tied to the token embedding
        head.normal_(0.0, BETA / np.sqrt(head.shape[1] - 1))  # LayerNorm'd hidden: unit variance per dimension
        head[:, 0] = -ALPHA * torch.log1p(torch.arange(vocab, dtype=torch.float32))
        model.ln_f.weight[0], model.ln_f.bias[0] = 0.0, 1.0
    save_checkpoint(path, model=model, model_spec=SPEC, num_classes=vocab, state={})
    return path


def run_cli(args: list[str], pythonpath: str) -> str:
    command = [sys.executable, "-m", "logitcache", *args]
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(args[:2])}: {result.stderr[-2000:]}")
    return result.stdout


def store_bytes(work: Path, teacher: Path, text: Path, codec: str, pythonpath: str, ids: bool = False) -> dict:
    """Dump one store; its bytes per token, index bits and format version (``info --json``), and
    with ``ids`` (a store of this checkout) the ids alone in other layouts (``id_layouts``)."""
    store = work / f"{teacher.stem}-{codec.replace(':', '_')}.zarr"
    run_cli(["dump", str(store), "--teacher", f"checkpoint:{teacher}", "--dataset", f"text:{text}", "--tokenizer",
             "bytes", "--seq-len", str(SEQ_LEN), "--codec", codec, "--batch-size", "2", "--no-progress"], pythonpath)
    info = json.loads(run_cli(["info", "--json", str(store)], pythonpath))
    record = info["teachers"]["default"]
    tokens = info["dataset"]["num_tokens"]
    layouts = id_layouts(store, tokens) if ids else None
    subprocess.run(["rm", "-rf", str(store)], check=True)
    return {"bytes": record["bytes_on_disk"] / tokens, "bits": record.get("index_bits"), "version": info["version"],
            "layouts": layouts}


def id_layouts(location: Path, tokens: int) -> dict:
    """Bytes per token of a store's ids alone, compressed as the store compresses them, laid out
    as uint32, uint16 (where they fit), bit-packed at b bits, and split (16 low bits + b - 16)."""
    from numcodecs import Blosc

    from logitcache.codecs.packed_ids import least_index_bits, pack_bits
    from logitcache.store import open_store

    teacher = open_store(location).teacher()
    ids = teacher.codec.read_indices(teacher.read_stored(0, teacher.num_samples))
    bits, rows = least_index_bits(teacher.num_classes), teacher.layout.rows_per_chunk
    blosc = Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)

    def size(*arrays) -> float:
        return sum(len(blosc.encode(np.ascontiguousarray(array[start:start + rows])))
                   for array in arrays for start in range(0, len(array), rows)) / tokens

    layouts = {"uint32": size(ids.astype(np.uint32)), f"{bits}-bit packed": size(pack_bits(ids, bits))}
    if bits <= 16:
        layouts["uint16"] = size(ids.astype(np.uint16))
    else:
        layouts["split"] = size((ids & 0xFFFF).astype(np.uint16), pack_bits(ids >> 16, bits - 16))
    return layouts


def teacher_shape(teacher: Path, text: Path) -> dict:
    """Mean entropy, top-8 mass and distinct ids among 12 draws of the teacher over the text."""
    from logitcache.sources.checkpoints import model_from_checkpoint

    model = model_from_checkpoint(teacher).eval()
    ids = torch.tensor(list(text.read_bytes()[:TEXT_BYTES]), dtype=torch.int64).reshape(-1, SEQ_LEN)[:4]
    with torch.inference_mode():
        logp = model(ids).flatten(0, 1).double().log_softmax(-1)
    draws = torch.multinomial(logp.exp(), 12, replacement=True, generator=torch.Generator().manual_seed(0))
    distinct = torch.tensor([len(set(row.tolist())) for row in draws], dtype=torch.float64)
    return {"entropy": float(-(logp.exp() * logp).sum(-1).mean()),
            "top8": float(logp.exp().topk(8, dim=-1).values.sum(-1).mean()), "distinct12": float(distinct.mean())}


def bytes_table(work: Path, baseline: str | None) -> None:
    text = work / "hamlet-start.md"
    text.write_bytes(HAMLET.read_bytes()[:TEXT_BYTES])
    print(f"\nBytes per token on disk (`info`), {TEXT_BYTES // SEQ_LEN} sequences x {SEQ_LEN} tokens of Hamlet, "
          f"byte tokenizer; teacher {SPEC} with a Zipf prior (alpha {ALPHA}) and a context part (beta {BETA})")
    print("| V | teacher: entropy, top-8 mass, distinct ids in 12 draws | codec | before (main) | now | ids now |")
    print("|---:|---|---|---:|---:|---|")
    layouts = []
    for vocab in VOCABS:
        teacher = make_teacher(work / f"teacher-{vocab}.pt", vocab)
        shape = teacher_shape(teacher, text)
        described = f"{shape['entropy']:.2f} nats, {shape['top8']:.2f}, {shape['distinct12']:.1f}"
        for codec in CODECS:
            now = store_bytes(work, teacher, text, codec, str(REPO), ids=True)
            before = store_bytes(work, teacher, text, codec, baseline) if baseline and "counts" not in codec else None
            ids = f"{now['bits']} bits: uint16 + packed (v{now['version']})" if now["bits"] else \
                f"uint16 (v{now['version']})"
            print(f"| {vocab:,} | {described} | {codec} | {before['bytes']:.1f} | {now['bytes']:.1f} | {ids} |"
                  if before else f"| {vocab:,} | {described} | {codec} | - | {now['bytes']:.1f} | {ids} |", flush=True)
            layouts.append((vocab, codec, now["layouts"]))
    print("\nThe ids alone, bytes per token compressed as the store compresses them (the stores made now)")
    print("| V | codec | uint32 (before) | uint16 | every id bit-packed | split: uint16 + packed high bits (now) |")
    print("|---:|---|---:|---:|---:|---:|")
    for vocab, codec, found in layouts:
        packed = next(value for name, value in found.items() if name.endswith("packed"))
        bits = next(name for name in found if name.endswith("packed")).split("-")[0]
        print(f"| {vocab:,} | {codec} | {found['uint32']:.2f} | " + (f"{found['uint16']:.2f}" if "uint16" in found
              else "-") + f" | {packed:.2f} ({bits} bits) | " + (f"{found['split']:.2f}" if "split" in found
                                                                 else "-") + " |")


def best_rate(function, rows: int, repeats: int) -> float:
    """Rows per second of ``function()``, its best of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return rows / min(times)


def speed_table(rows: int, repeats: int) -> None:
    from logitcache.codecs import get_codec
    from logitcache.codecs.packed_ids import join_ids, split_ids

    print(f"\nSpeed, rows per second (best of {repeats}, {rows:,} rows, 1 thread): the host side of a dump (stored "
          "arrays from the device's top K or draws) and a training batch's decode (typed targets), ids packed "
          "at 17 bits (V = 131,072) and whole (uint32, as before)")
    print("| codec | dump: packed | dump: whole | train decode: packed | train decode: whole | split_ids | join_ids |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for name in ("topk:8", "sample:12", "sample:12:counts", "topk:128"):
        codec = get_codec(name).for_classes(131_072)
        wide = codec.with_index_bits(None)
        k = codec.k
        ids = rng.integers(0, 131_072, (rows, k))
        logp = np.log(rng.dirichlet(np.ones(k), rows)).astype(np.float32)
        if name.startswith("topk"):
            norm, tail = np.zeros(rows, np.float32), np.full(rows, -1.0, np.float32)
            args = (np.sort(ids, axis=1), logp, norm, tail)
            encoders = [lambda c=c: c.from_top(*args) for c in (codec, wide)]
        else:
            encoders = [lambda c=c: c.from_draws(ids, logp) for c in (codec, wide)]
        stored = [encode() for encode in encoders]
        dump = [best_rate(encode, rows, repeats) for encode in encoders]
        train = [best_rate(lambda c=c, s=s: c.training_targets(s), rows, repeats)
                 for c, s in ((codec, stored[0]), (wide, stored[1]))]
        low, high = split_ids(ids, 17)
        raw = [best_rate(lambda: split_ids(ids, 17), rows, repeats),
               best_rate(lambda: join_ids(low, high, 17), rows, repeats)]
        print(f"| {name} | " + " | ".join(f"{rate:,.0f}" for rate in (*dump, *train, *raw)) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a checkout of logitcache before packed ids, for the 'before' column")
    parser.add_argument("--work", help="keep teachers here (default: a temporary directory)")
    parser.add_argument("--rows", type=int, default=65_536, help="rows per speed measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-bytes", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("command: python -m benchmarks.packed_ids " + " ".join(sys.argv[1:]))
    print(f"numpy {np.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_bytes:
            bytes_table(work, args.baseline)
        if not args.skip_speed:
            speed_table(args.rows, args.repeats)


if __name__ == "__main__":
    main()
