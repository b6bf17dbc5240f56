"""Compact ids (issue 22, item 3): bytes per token of ``topk:8``, ``sample:12`` and
``sample:12:counts`` token stores at V = 4,096 and 131,072, against main before the change; what
other layouts of the same ids would take; what more compact sampled log-probabilities would take and
cost; how fast ids are stored and read; and that the stores of every other codec keep their bytes.

    git archive 61efba6 | tar -x -C /tmp/lc-main       # main before sample ids as gaps
    flock /tmp/bigmem.lock prlimit --as=$((14<<30)) python -m benchmarks.packed_ids --baseline /tmp/lc-main
    python -m benchmarks.packed_ids --baseline /tmp/lc-main --identity   # image stores, file by file
    python -m benchmarks.packed_ids --baseline /tmp/lc-main --codecs sample:12,sample:12:fp16 --skip-speed

Every store is a real ``logitcache dump`` (byte tokenizer, ``--seq-len 256``, 32 sequences of
Hamlet's first 8,192 bytes) of the same teacher, run by this checkout and, for "before", by the
``--baseline`` checkout (``PYTHONPATH``); bytes per token are what ``info --json`` reports
(``bytes_on_disk``: the teacher's arrays as compressed on disk, with their shard indexes, divided by
the tokens), and "same files" compares the two stores file by file (the tests' ``store_contents``;
"arrays": every file but the ``zarr.json`` metadata is the same). ``--codecs`` picks the codecs.
The second table takes the ids of each store made now and compresses them as the store does (blosc
zstd level 5, byte shuffle, its inner chunks; no chunk checksums or shard indexes) in several
layouts: uint32 (before v5), uint16 (V <= 65,536), every id bit-packed at b bits (DistillKit's),
split, 16 low bits as uint16 and b - 16 high bits packed (v5; Megatron's, its bool byte packed), and
a sample row's ids as gaps, split the same way (v6, now).

The third table takes a ``sample:12:fp32`` store (the same draws as sample:12, float32
log-probabilities) and keeps the log-probabilities in other forms: float16 (now), bfloat16's bits,
8 bits in steps of 1/16 nat (-log p rounded, 255 for -log p >= 15.97), or only each row's
``sum_k w_k log p_k`` (the one number the sampled KL's value reads: its gradient reads the weights
alone) as float16 or float32. Bytes per token compressed as the store would (fill values in unused
slots), the store's total if the counts-only store kept them, and the error of the loss's teacher
term ``sum_k w_k log p_k`` per token against float32 (mean and largest absolute, in nats).

The teacher is a 1-layer GPT (``gpt:n_layer=1,n_head=2,n_embd=64``, saved as a checkpoint both
checkouts load) whose tied head gives every id a Zipf prior, ``-ALPHA * log(1 + id)`` (low ids are
frequent, as in BPE vocabularies), plus a context-dependent part with standard deviation ``BETA``:
one hidden dimension is constant (LayerNorm weight 0, bias 1) and the head's column there holds
the prior. The table prints what that gives (entropy, top-8 mass, distinct ids in 12 draws) so the
bytes can be judged against a real LM's.

Speed: rows per second of the host side of a dump (the stored arrays from the device's top K or
draws: ``from_top``, ``from_draws``), of a training batch's decode (``training_targets``) and of a
token dump's whole reduction of (rows, 131,072) float32 logits on the CPU (``reduce_logits``), as
stored now, as v5 stored them (ids, 17 bits) and as before v5 (uint32), best of ``--repeats``.

``--identity``: image stores of the digits (``tests.factories:linear_teacher``) in every codec but
sample's, dumped by both checkouts and compared file by file.
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
    # run from the checkout: ``-m`` puts the working directory before PYTHONPATH, so another one's code would run
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, cwd=pythonpath)
    if result.returncode:
        raise RuntimeError(f"{' '.join(args[:2])}: {result.stderr[-2000:]}")
    return result.stdout


def store_bytes(work: Path, teacher: Path, text: Path, codec: str, pythonpath: str, keep: bool = False) -> dict:
    """Dump one store; its bytes per token, index bits, format version and files (``info --json``,
    ``store_contents``); with ``keep``, the store stays (``path``) for the tables that read it."""
    from tests.conftest import store_contents

    store = work / f"{teacher.stem}-{Path(pythonpath).name}-{codec.replace(':', '_')}.zarr"
    run_cli(["dump", str(store), "--teacher", f"checkpoint:{teacher}", "--dataset", f"text:{text}", "--tokenizer",
             "bytes", "--seq-len", str(SEQ_LEN), "--codec", codec, "--batch-size", "2", "--no-progress"], pythonpath)
    info = json.loads(run_cli(["info", "--json", str(store)], pythonpath))
    record = info["teachers"]["default"]
    tokens = info["dataset"]["num_tokens"]
    found = {"bytes": record["bytes_on_disk"] / tokens, "bits": record.get("index_bits"), "tokens": tokens,
             "gaps": record.get("index_gaps", False), "version": info["version"], "files": store_contents(store),
             "path": store}
    if not keep:
        subprocess.run(["rm", "-rf", str(store)], check=True)
    return found


def blosc_size(arrays, rows: int, tokens: int) -> float:
    """Bytes per token of arrays compressed as a store's chunks are (blosc zstd 5, byte shuffle, ``rows``
    rows a chunk), without chunk checksums or shard indexes."""
    from numcodecs import Blosc

    blosc = Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)
    return sum(len(blosc.encode(np.ascontiguousarray(array[start:start + rows])))
               for array in arrays for start in range(0, len(array), rows)) / tokens


def id_layouts(location: Path, tokens: int) -> dict:
    """Bytes per token of a store's ids alone, compressed as the store compresses them, laid out
    as uint32, uint16 (where they fit), bit-packed at b bits, split (16 low bits + b - 16), and for
    samples, as gaps split the same way."""
    from logitcache.codecs.packed_ids import least_index_bits, pack_bits, to_gaps
    from logitcache.store import open_store

    teacher = open_store(location).teacher()
    stored = teacher.read_stored(0, teacher.num_samples)
    ids = teacher.codec.read_indices(stored)
    bits, rows = least_index_bits(teacher.num_classes), teacher.layout.rows_per_chunk

    def split(values):
        if bits <= 16:
            return [values.astype(np.uint16)]
        return [(values & 0xFFFF).astype(np.uint16), pack_bits(values >> 16, bits - 16)]

    layouts = {"uint32": blosc_size([ids.astype(np.uint32)], rows, tokens), "packed": blosc_size(
        [pack_bits(ids, bits)], rows, tokens), "split": blosc_size(split(ids), rows, tokens), "bits": bits}
    if "counts" in stored:
        layouts["gaps"] = blosc_size(split(to_gaps(ids, stored["counts"] > 0)), rows, tokens)
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


def same_files(before: dict, now: dict) -> str:
    """yes: every file the same; arrays: all but the ``zarr.json`` metadata; no."""
    if before == now:
        return "yes"
    data = [{name: value for name, value in files.items() if not name.endswith("zarr.json")} for files in (before, now)]
    return "arrays" if data[0] == data[1] else "no"


def bytes_table(work: Path, baseline: str | None, codecs: list[str]) -> dict:
    """The first two tables; returns the bytes per token now by (V, codec) and the teachers by V."""
    text = work / "hamlet-start.md"
    text.write_bytes(HAMLET.read_bytes()[:TEXT_BYTES])
    print(f"\nBytes per token on disk (`info`), {TEXT_BYTES // SEQ_LEN} sequences x {SEQ_LEN} tokens of Hamlet, "
          f"byte tokenizer; teacher {SPEC} with a Zipf prior (alpha {ALPHA}) and a context part (beta {BETA})")
    print("| V | teacher: entropy, top-8 mass, distinct ids in 12 draws | codec | before (main) | now | ids now | "
          "same files |")
    print("|---:|---|---|---:|---:|---|---|")
    layouts, now_bytes, teachers = [], {}, {}
    for vocab in VOCABS:
        teacher = teachers[vocab] = make_teacher(work / f"teacher-{vocab}.pt", vocab)
        shape = teacher_shape(teacher, text)
        described = f"{shape['entropy']:.2f} nats, {shape['top8']:.2f}, {shape['distinct12']:.1f}"
        for codec in codecs:
            now = store_bytes(work, teacher, text, codec, str(REPO), keep=True)
            layouts.append((vocab, codec, id_layouts(now["path"], now["tokens"])))
            subprocess.run(["rm", "-rf", str(now["path"])], check=True)
            before = store_bytes(work, teacher, text, codec, baseline) if baseline else None
            now_bytes[vocab, codec] = now["bytes"]
            ids = (f"{now['bits']} bits" if now["bits"] else "uint16") + (", gaps" if now["gaps"] else "")
            same = "-" if before is None else same_files(before["files"], now["files"])
            print(f"| {vocab:,} | {described} | {codec} | " + (f"{before['bytes']:.1f} (v{before['version']})"
                  if before else "-") + f" | {now['bytes']:.1f} | {ids} (v{now['version']}) | {same} |", flush=True)
    print("\nThe ids alone, bytes per token compressed as the store compresses them (the stores made now)")
    print("| V | codec | uint32 (before v5) | every id bit-packed | uint16 / split: uint16 + packed high bits (v5) | "
          "gaps, the same (v6, now) |")
    print("|---:|---|---:|---:|---:|---:|")
    for vocab, codec, found in layouts:
        gaps = f"{found['gaps']:.2f}" if "gaps" in found else "-"
        print(f"| {vocab:,} | {codec} | {found['uint32']:.2f} | {found['packed']:.2f} ({found['bits']} bits) | "
              f"{found['split']:.2f} | {gaps} |")
    return {"bytes": now_bytes, "teachers": teachers, "text": text}


def logprob_forms(logprobs: np.ndarray, weights: np.ndarray, used: np.ndarray) -> dict:
    """The sampled log-probabilities (float32, (n, K)) in compact forms: name -> (the stored arrays,
    the log-probabilities they give back, or for a row term, that term (n,))."""
    wide = torch.from_numpy(np.where(used, logprobs, np.nan).astype(np.float32))
    half = wide.half().numpy()
    brain = wide.bfloat16()
    steps = np.where(used, np.clip(np.round(-logprobs * 16), 0, 255), 255).astype(np.uint8)
    term = (weights * np.where(used, logprobs, 0)).sum(axis=1)
    return {"float16 (now)": ([half], half.astype(np.float32)),
            "bfloat16 bits (uint16)": ([brain.view(torch.int16).numpy().view(np.uint16)], brain.float().numpy()),
            "8 bits, 1/16-nat steps": ([steps], -steps.astype(np.float32) / 16),
            "row term sum w log p, float16": ([term.astype(np.float16)], term.astype(np.float16).astype(np.float32)),
            "row term sum w log p, float32": ([term.astype(np.float32)], term.astype(np.float32))}


def logprob_table(work: Path, made: dict) -> None:
    """What sample:12 would take with its log-probabilities kept more compactly, and what it would cost."""
    from logitcache.store import open_store

    print("\nsample:12's log-probabilities in other forms (from a sample:12:fp32 store: the same draws), bytes per "
          "token compressed as the store would, the counts-only store's total with them, and the error of the "
          "loss's teacher term sum_k w_k log p_k per token against float32 (nats)")
    print("| V | form | B/token | counts store + form | mean abs error | largest abs error |")
    print("|---:|---|---:|---:|---:|---:|")
    for vocab, teacher in made["teachers"].items():
        now = store_bytes(work, teacher, made["text"], "sample:12:fp32", str(REPO), keep=True)
        stored = open_store(now["path"]).teacher().read_stored(0, now["tokens"])
        rows = open_store(now["path"]).teacher().layout.rows_per_chunk
        subprocess.run(["rm", "-rf", str(now["path"])], check=True)
        used, weights = stored["counts"] > 0, stored["counts"] / 12.0
        exact = (weights * np.where(used, stored["logprobs"], 0)).sum(axis=1, dtype=np.float64)
        print(f"| {vocab:,} | float32 (sample:12:fp32) | {blosc_size([stored['logprobs']], rows, now['tokens']):.2f} "
              f"| - | 0 | 0 |")
        for form, (arrays, back) in logprob_forms(stored["logprobs"], weights, used).items():
            term = back if back.ndim == 1 else (weights * np.where(used, back, 0)).sum(axis=1, dtype=np.float64)
            size = blosc_size(arrays, rows, now["tokens"])
            error = np.abs(term - exact)
            print(f"| {vocab:,} | {form} | {size:.2f} | {made['bytes'][vocab, 'sample:12:counts'] + size:.1f} | "
                  f"{error.mean():.2g} | {error.max():.2g} |", flush=True)


def best_rate(function, rows: int, repeats: int) -> float:
    """Rows per second of ``function()``, its best of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return rows / min(times)


def speed_table(rows: int, repeats: int, reduce_rows: int) -> None:
    from logitcache.codecs import get_codec
    from logitcache.codecs.packed_ids import from_gaps, join_ids, split_ids, to_gaps

    print(f"\nSpeed, rows per second (best of {repeats}, 1 thread, V = 131,072): the host side of a dump (stored "
          f"arrays from the device's top K or draws, {rows:,} rows), a training batch's decode (typed targets, "
          f"{rows:,} rows) and a token dump's reduction of float32 logits on the CPU ({reduce_rows} rows), as "
          "stored now, as v5 stored them (ids in 17 bits) and before v5 (uint32 ids)")
    print("| codec | dump: now | dump: v5 | dump: uint32 | train decode: now | train decode: v5 | "
          "train decode: uint32 | reduce_logits: now | reduce_logits: v5 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    logits = torch.randn(reduce_rows, 131_072, generator=torch.Generator().manual_seed(0)) * 3
    for name in ("topk:8", "sample:12", "sample:12:counts", "topk:128"):
        codec = get_codec(name).for_classes(131_072)
        forms = (codec, codec.with_index_gaps(False), codec.with_index_bits(None).with_index_gaps(False))
        k = codec.k
        ids = rng.integers(0, 131_072, (rows, k))
        logp = np.log(rng.dirichlet(np.ones(k), rows)).astype(np.float32)
        if name.startswith("topk"):
            norm, tail = np.zeros(rows, np.float32), np.full(rows, -1.0, np.float32)
            args = (np.sort(ids, axis=1), logp, norm, tail)
            encoders = [lambda c=c: c.from_top(*args) for c in forms]
        else:
            encoders = [lambda c=c: c.from_draws(ids, logp) for c in forms]
        dump = [best_rate(encode, rows, repeats) for encode in encoders]
        train = [best_rate(lambda c=c, s=encode(): c.training_targets(s), rows, repeats)
                 for c, encode in zip(forms, encoders)]
        uniforms = codec.uniforms(0, reduce_rows)
        reduce = [best_rate(lambda c=c: c.reduce_logits(logits, uniforms), reduce_rows, max(1, repeats // 2))
                  for c in forms[:2]]
        print(f"| {name} | " + " | ".join(f"{rate:,.0f}" for rate in (*dump, *train, *reduce)) + " |", flush=True)
    ids = np.sort(rng.integers(0, 131_072, (rows, 12)), axis=1)
    used = np.ones(ids.shape, dtype=bool)
    low, high = split_ids(ids, 17)
    gaps = to_gaps(ids, used)
    rates = [best_rate(function, rows, repeats) for function in (
        lambda: split_ids(ids, 17), lambda: join_ids(low, high, 17), lambda: to_gaps(ids, used),
        lambda: from_gaps(gaps, used, 131_071))]
    print("\nThe helpers alone, K = 12, rows per second: " + ", ".join(
        f"{name} {rate:,.0f}" for name, rate in zip(("split_ids", "join_ids", "to_gaps", "from_gaps"), rates)))


IDENTITY_CODECS = ["fp32", "fp16", "bf16", "u8", "topk:3", "topk:3:fp32", "sample:4"]


def identity(work: Path, baseline: str) -> None:
    """Image stores of the digits dumped by both checkouts, compared file by file."""
    from tests.conftest import store_contents

    print("\nImage stores (digits@train, tests.factories:linear_teacher, 256 rows a shard), this checkout against "
          f"{baseline}, file by file")
    print("| codec | files | same files |")
    print("|---|---:|---|")
    for codec in IDENTITY_CODECS:
        contents = []
        for code in (baseline, str(REPO)):
            store = work / f"identity-{Path(code).name}-{codec.replace(':', '_')}.zarr"
            run_cli(["dump", str(store), "--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train",
                     "--codec", codec, "--rows-per-shard", "256", "--batch-size", "64", "--no-progress"], code)
            contents.append(store_contents(store))
            subprocess.run(["rm", "-rf", str(store)], check=True)
        print(f"| {codec} | {len(contents[1])} | {'yes' if contents[0] == contents[1] else 'no'} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a checkout of main before the change, for the 'before' column")
    parser.add_argument("--work", help="keep teachers here (default: a temporary directory)")
    parser.add_argument("--rows", type=int, default=65_536, help="rows per speed measurement")
    parser.add_argument("--reduce-rows", type=int, default=256, help="rows of logits per reduce_logits measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--codecs", default=",".join(CODECS), help="the bytes tables' codecs, comma-separated")
    parser.add_argument("--skip-bytes", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--identity", action="store_true", help="only the image stores' identity with --baseline's")
    args = parser.parse_args()
    if args.identity and not args.baseline:
        parser.error("--identity compares with a --baseline checkout: give one")
    torch.set_num_threads(1)
    print("command: python -m benchmarks.packed_ids " + " ".join(sys.argv[1:]))
    print(f"numpy {np.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if args.identity:
            identity(work, args.baseline)
            return
        if not args.skip_bytes:
            logprob_table(work, bytes_table(work, args.baseline, args.codecs.split(",")))
        if not args.skip_speed:
            speed_table(args.rows, args.repeats, args.reduce_rows)


if __name__ == "__main__":
    main()
