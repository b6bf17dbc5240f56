"""Issue 22, item 1: a token dump's memory and speed at large vocabularies, the head run a chunk of
positions at a time, against main before the change (a copy of its checkout), side by side.

    flock /tmp/bigmem.lock prlimit --as=$((14<<30)) python -m benchmarks.lm_dump cpu --baseline DIR
    flock /tmp/bigmem.lock prlimit --as=$((14<<30)) python -m benchmarks.lm_dump big
    python -m benchmarks.lm_dump identity --baseline DIR   # the same stores, byte for byte
    python -m benchmarks.lm_dump gpu [--smoke]         # benchmarks/gpu.sh runs it (a CUDA device)

``cpu``: a random-init ``gpt:n_layer=2,n_head=2,n_embd=64`` over 32 random sequences of 1,024 ids
of a synthetic 131,072-id tokenizer (this file's ``synthetic_tokenizer``, a ``module:factory``
spec; the ids are a jsonl token dataset). Each configuration is a fresh ``logitcache dump``
process (the baseline's code or this checkout's, by PYTHONPATH), its peak RSS from ``wait4``; its
rate is the dump's own (positions over the writing loop's seconds). The bare forward is the
teacher alone with its whole head over batches of 4 sequences (what fits), outputs discarded.
``big``: this checkout at its defaults, 262,144 ids and 8 sequences of 4,096 tokens.
``identity``: small token stores (topk:8, sample:12, fp16) dumped by both checkouts and compared
file by file with the tests' ``store_contents``: a teacher without a split head
(``tests.factories:tiny_lm``), ``gpt`` at 256 ids (one chunk a batch, also at the default batch
size) and at 50,000 ids (the head in chunks of 223 positions, batches of 2,048), fp32 and bf16.
``gpu``: a random-init Qwen2-shaped teacher of ~0.5 B parameters (hidden 896, 24 layers, 14 heads,
2 KV heads, intermediate 4,864, 151,936 ids) at 2,048 tokens, bf16: the dump's tokens/s against
its bare forward's, and the peak device memory of each; ``--smoke`` runs it tiny on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEACHER = "gpt:n_layer=2,n_head=2,n_embd=64,block_size={length}"
QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True)
QWEN2_SMOKE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=4096, tie_word_embeddings=True)


class SyntheticTokenizer:
    """``LM_DUMP_VOCAB`` ids (the data are ids already; text is read as UTF-8 bytes)."""

    eos_id = 0

    def __init__(self):
        self.vocab_size = int(os.environ["LM_DUMP_VOCAB"])

    def encode(self, text):
        return list(text.encode())


def synthetic_tokenizer():
    return SyntheticTokenizer()


def write_ids(path: Path, vocab: int, sequences: int, length: int) -> str:
    """A jsonl token dataset of random ids, one record (one row) per sequence; its spec."""
    generator = np.random.default_rng(0)
    with open(path, "w") as file:
        for _ in range(sequences):
            file.write(json.dumps({"input_ids": generator.integers(1, vocab, length).tolist()}) + "\n")
    return f"jsonl:{path}"


def run_measured(command: list, code: Path) -> dict:
    """``command`` in a fresh process with ``code``'s logitcache first on the path (and this folder,
    for the tokenizer): its exit, peak RSS (wait4), wall time and output."""
    env = {**os.environ, "PYTHONPATH": f"{code}:{HERE}"}
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"exit": process.returncode, "rss_gb": usage.ru_maxrss / 2**20, "wall": time.perf_counter() - began,
            "output": output}


def dump_run(code: Path, store: Path, dataset: str, length: int, codec: str, extra: list) -> dict:
    result = run_measured([sys.executable, "-m", "logitcache", "dump", str(store), "--teacher",
                           TEACHER.format(length=length), "--dataset", dataset, "--tokenizer",
                           "lm_dump:synthetic_tokenizer", "--seq-len", str(length), "--codec", codec,
                           "--no-progress", "--overwrite", *extra], code)
    rate = re.search(r"positions in [\d.]+ s = (\d+) tokens/s", result["output"])
    result["tokens_s"] = int(rate.group(1)) if rate else None
    result["last"] = result["output"].strip().splitlines()[-1] if result["output"].strip() else ""
    subprocess.run(["rm", "-rf", str(store)], check=True)
    return result


BARE = """
import sys, time, torch
from logitcache.sources import get_model
from logitcache.sources.tokenizers import get_tokenizer
from logitcache.sources.token_datasets import get_token_dataset
dataset, length, batch, teacher = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tokenizer = get_tokenizer("lm_dump:synthetic_tokenizer")
tokens = get_token_dataset(dataset, tokenizer, length).tokens
model = get_model(teacher, tokenizer.vocab_size).eval()
began = time.perf_counter()
with torch.inference_mode():
    for lo in range(0, len(tokens), batch):
        logits = model(torch.as_tensor(tokens[lo:lo + batch], dtype=torch.long))
        del logits
print(f"bare forward: {tokens.size / (time.perf_counter() - began):.0f} tokens/s")
"""


def bare_run(code: Path, dataset: str, length: int, batch: int) -> dict:
    result = run_measured([sys.executable, "-c", BARE, dataset, str(length), str(batch),
                           TEACHER.format(length=length)], code)
    rate = re.search(r"bare forward: (\d+) tokens/s", result["output"])
    result["tokens_s"] = int(rate.group(1)) if rate else None
    return result


def row(name: str, result: dict) -> str:
    rate = f"{result['tokens_s']:,}" if result.get("tokens_s") else "-"
    outcome = "ok" if result["exit"] == 0 else f"exit {result['exit']}: {result.get('last', '')[:90]}"
    return f"| {name} | {result['rss_gb']:.2f} | {rate} | {result['wall']:.0f} | {outcome} |"


def cpu(args) -> None:
    here = HERE.parent
    os.environ["LM_DUMP_VOCAB"] = str(args.vocab)
    with tempfile.TemporaryDirectory() as folder:
        dataset = write_ids(Path(folder) / "ids.jsonl", args.vocab, args.sequences, args.length)
        print(f"V = {args.vocab:,}, {args.sequences} sequences of {args.length} tokens, teacher "
              f"{TEACHER.format(length=args.length)} (random init); baseline {args.baseline}, this checkout {here}")
        print("| run | peak RSS (GB) | tokens/s | wall (s) | outcome |\n|---|---:|---:|---:|---|")
        print(row("bare forward, whole head, batch 4", bare_run(here, dataset, args.length, 4)), flush=True)
        for codec in args.codecs.split(","):
            for name, code, extra in (("main, defaults", args.baseline, []),
                                      ("main, --batch-size 4", args.baseline, ["--batch-size", "4"]),
                                      ("this, defaults", here, []),
                                      ("this, --batch-size 4", here, ["--batch-size", "4"])):
                result = dump_run(Path(code), Path(folder) / "s.zarr", dataset, args.length, codec, extra)
                print(row(f"{codec} {name}", result), flush=True)


def big(args) -> None:
    os.environ["LM_DUMP_VOCAB"] = str(args.vocab)
    with tempfile.TemporaryDirectory() as folder:
        dataset = write_ids(Path(folder) / "ids.jsonl", args.vocab, args.sequences, args.length)
        print(f"V = {args.vocab:,}, {args.sequences} sequences of {args.length} tokens, this checkout's defaults")
        print("| run | peak RSS (GB) | tokens/s | wall (s) | outcome |\n|---|---:|---:|---:|---|")
        for codec in args.codecs.split(","):
            result = dump_run(HERE.parent, Path(folder) / "s.zarr", dataset, args.length, codec, [])
            print(row(f"{codec} this, defaults", result), flush=True)


IDENTITY_CASES = {  # name: (vocabulary, options)
    "tiny_lm": (256, ["--teacher", "tests.factories:tiny_lm", "--batch-size", "8"]),
    "gpt": (256, ["--batch-size", "8"]),
    "gpt-default-batch": (256, []),
    "gpt-50000": (50000, ["--batch-size", "8"]),
    "gpt-50000-bf16": (50000, ["--batch-size", "8", "--bf16"]),
}


def identity(args) -> None:
    import shutil

    import torch

    from logitcache.sources import get_model
    from tests.conftest import store_contents

    text = HERE.parent / "data" / "text" / "shakespeare" / "hamlet.md"
    with tempfile.TemporaryDirectory() as folder:
        sample = Path(folder) / "hamlet-start.md"
        sample.write_text(text.read_text()[:8000])
        spec = TEACHER.format(length=256)
        for vocab in (256, 50000):
            torch.manual_seed(0)
            torch.save(get_model(spec, vocab).state_dict(), f"{folder}/gpt-{vocab}.pt")
        for name, (vocab, extra) in IDENTITY_CASES.items():
            os.environ["LM_DUMP_VOCAB"] = str(vocab)
            teacher = [] if "--teacher" in extra else ["--teacher", spec, "--weights", f"{folder}/gpt-{vocab}.pt"]
            for codec in args.codecs.split(","):
                stores = []
                for code in (Path(args.baseline), HERE.parent):
                    store = Path(folder) / f"{code.name}-{name}-{codec.replace(':', '_')}.zarr"
                    result = run_measured([sys.executable, "-m", "logitcache", "dump", str(store), *teacher, *extra,
                                           "--dataset", f"text:{sample}", "--tokenizer",
                                           "bytes" if vocab == 256 else "lm_dump:synthetic_tokenizer",
                                           "--seq-len", "256", "--codec", codec, "--rows-per-shard", "4096",
                                           "--no-progress"], code)
                    assert result["exit"] == 0, result["output"]
                    stores.append(store_contents(store))
                    shutil.rmtree(store)
                before, after = stores
                differ = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
                outcome = "identical" if not differ else f"DIFFER: {', '.join(differ[:5])}"
                print(f"{name:18} {codec:9} {len(before)} files: {outcome}", flush=True)


def gpu(args) -> None:
    """In this process: the dump (its own rate) and the bare forward (whole head, bf16), with the
    peak device memory of each."""
    import torch
    from transformers import Qwen2Config

    from logitcache.dump import DumpConfig, dump
    from logitcache.sources import get_model

    shape, device = (QWEN2_SMOKE, "cpu") if args.smoke else (QWEN2_05B, "cuda")
    length, sequences = (128, 8) if args.smoke else (2048, args.sequences)
    os.environ["LM_DUMP_VOCAB"] = str(shape["vocab_size"])
    with tempfile.TemporaryDirectory() as folder:
        Qwen2Config(**shape, max_position_embeddings=length).save_pretrained(folder)
        teacher = f"hf-config:{folder}/config.json"
        dataset = write_ids(Path(folder) / "ids.jsonl", shape["vocab_size"], sequences, length)
        model = get_model(teacher, shape["vocab_size"]).to(device).eval()
        print(f"{teacher}: Qwen2 {shape}, {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters, "
              f"{sequences} sequences of {length} tokens, bf16, device {device}")
        ids = torch.as_tensor(np.asarray([json.loads(line)["input_ids"] for line in open(Path(folder) / "ids.jsonl")]))
        print("| run | tokens/s | peak device memory (GB) |\n|---|---:|---:|")
        for _ in range(2):  # the first round warms kernels and the allocator
            rate, peak = bare_gpu(model, ids, args.bare_batch, device)
        print(f"| bare forward, whole head, batch {args.bare_batch} | {rate:,.0f} | {peak:.2f} |", flush=True)
        del model
        for codec in ("topk:8", "sample:12"):
            reset_peak(device)
            summary = dump(DumpConfig(store=f"{folder}/s.zarr", teacher=teacher, dataset=dataset,
                                      tokenizer="benchmarks.lm_dump:synthetic_tokenizer", seq_len=length, codec=codec,
                                      device=device, bf16=True, progress=False, overwrite=True),
                           log=lambda *_: None)
            print(f"| dump {codec}, defaults | {summary.positions_this_run / summary.seconds:,.0f} | "
                  f"{peak_gb(device):.2f} |", flush=True)


def bare_gpu(model, ids, batch: int, device: str) -> tuple[float, float]:
    import torch

    reset_peak(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    began = time.perf_counter()
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        for lo in range(0, len(ids), batch):
            logits = model(ids[lo:lo + batch].to(device))
            del logits
    sync()
    return ids.numel() / (time.perf_counter() - began), peak_gb(device)


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["cpu", "big", "identity", "gpu"])
    parser.add_argument("--baseline", help="cpu, identity: a checkout of main before the change")
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--length", type=int)
    parser.add_argument("--sequences", type=int)
    parser.add_argument("--codecs", help="default: topk:8,sample:12 (identity: and fp16)")
    parser.add_argument("--bare-batch", type=int, default=8, help="gpu: sequences a batch of the bare forward")
    parser.add_argument("--smoke", action="store_true", help="gpu: tiny, on the CPU (checks the path only)")
    args = parser.parse_args()
    defaults = {"cpu": (131072, 1024, 32), "big": (262144, 4096, 8), "gpu": (151936, 2048, 128)}.get(args.mode)
    if defaults:
        args.vocab, args.length, args.sequences = (given or default for given, default in
                                                   zip((args.vocab, args.length, args.sequences), defaults))
    args.codecs = args.codecs or ("topk:8,sample:12,fp16" if args.mode == "identity" else "topk:8,sample:12")
    if args.mode in ("cpu", "identity") and not args.baseline:
        parser.error(f"{args.mode} needs --baseline DIR: a checkout of main before the change")
    {"cpu": cpu, "big": big, "identity": identity, "gpu": gpu}[args.mode](args)


if __name__ == "__main__":
    main()
