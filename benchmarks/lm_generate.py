"""Issue 24, item 3: ``dump --generate`` against the teacher's bare generate loop, and students from
teacher-written answers against students from the plays' own answers.

    python -m benchmarks.lm_generate speed            # tokens/s and bytes/token, side by side
    logitcache run pipelines/shakespeare_generate.toml && python -m benchmarks.lm_generate students

``speed``: the 212 prompts of data/prompts/shakespeare.jsonl (bytes), 64 new tokens each, sampled at
T = 0.8, top-p 0.95, batches of 64, one thread. Two teachers, each timed in this one process, the
loops alternated, best of ``--repeats``: the shipped ``gpt`` (2 layers, 64 wide, 128 positions,
random init: the speed does not depend on the weights) recomputed every step, against a bare loop
over the same batches (the whole model each step, ``torch.multinomial`` over the top-p cut, rows
ending at byte 0 as the dump's do, no store); and a Hugging Face Llama from a config (4 layers, hidden 256, 256 ids, random init) with its
KV cache, against ``model.generate`` with the same settings (end of text: byte 0). The dump's time
is the whole ``dump()`` call (prompts, teacher, probe, generation, reduction to ``topk:8``,
journal, store, teacher shards, read-back), and apart from it the dump's own count (generation and
the store's writes); tokens are the response tokens, up to and with an end of text. Bytes/token is the teacher's bytes on disk over the
stored tokens (prompt and response) and over the response tokens.

``students``: the recipe's teacher (data/runs/shakespeare_generate/teacher/best.pt) and stores. One
more store holds the same prompts with the plays' real next speech as the answer (the ``reference``
field), the teacher's ``topk:8`` over it, the loss on the answer only (a plain token dump of
``input_ids`` + ``loss_mask`` records); a third the teacher's answers cut to as many new tokens a
prompt as the plays' answers hold on average (``--max-new-tokens``), so the two hold about as many
target tokens. The recipe's student (1 layer, 32 wide) trains four ways
(10 epochs, AdamW 3e-3, batch 16, seed 0): ``kl`` and ``ce`` from each store. Each is scored on the
held-out text's store (the plays' last 10 %, the teacher's ``topk:8``): its cross-entropy on the
real text, and its KL(teacher || student) there (the top 8 and a tail bucket, T = 1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "data" / "prompts" / "shakespeare.jsonl"
SETTINGS = dict(max_new_tokens=64, temperature=0.8, top_p=0.95, seed=0)
GPT = "gpt:n_layer=2,n_head=2,n_embd=64,block_size=128"
LLAMA = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, bos_token_id=None,
             eos_token_id=0, pad_token_id=0)


def prompt_ids() -> list[np.ndarray]:
    from logitcache.sources.prompts import read_prompts
    from logitcache.sources.tokenizers import get_tokenizer

    return read_prompts(f"jsonl:{PROMPTS}:prompt", get_tokenizer("bytes")).ids


def time_dump(folder: Path, teacher: str, name: str) -> tuple[float, int, dict]:
    """Seconds of one whole ``dump --generate``, its response tokens, and its bytes on disk."""
    from logitcache.dump import DumpConfig, dump
    from logitcache.store import open_store

    store = folder / f"{name}-{time.perf_counter_ns()}.zarr"
    torch.manual_seed(0)
    started = time.perf_counter()
    summary = dump(DumpConfig(store=str(store), teacher=teacher, dataset=f"jsonl:{PROMPTS}:prompt", tokenizer="bytes",
                              seq_len=128, generate=True, codec="topk:8", batch_size=64, progress=False, **SETTINGS),
                   log=lambda *_: None)
    seconds = time.perf_counter() - started
    opened = open_store(store)
    responses = int(opened.loss_mask.sum())
    size = opened.teacher().nbytes_stored()
    return seconds, responses, {"bytes": size, "tokens": int(opened.lengths.sum()), "responses": responses,
                                "writing": summary.seconds}


def bare_gpt(model, prompts: list[np.ndarray], batch: int = 64) -> tuple[float, int]:
    """The plain loop: whole logits each step, top-p, multinomial; right-padded batches, no store."""
    generator, produced = torch.Generator().manual_seed(0), 0
    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(prompts), batch):
            rows = prompts[first:first + batch]
            ids = torch.zeros((len(rows), 128), dtype=torch.long)
            for row, prompt in enumerate(rows):
                ids[row, :len(prompt)] = torch.as_tensor(prompt)
            lengths = torch.as_tensor([len(p) for p in rows])
            going = torch.arange(len(rows))  # rows end at byte 0, the end of text, as the dump's do
            for _ in range(SETTINGS["max_new_tokens"]):
                last = lengths[going]
                logits = model(ids[going, :int(last.max())])[torch.arange(len(going)), last - 1]  # (b, V)
                chosen = sample(logits, generator)
                ids[going, last] = chosen
                lengths[going] += 1
                produced += len(going)
                going = going[chosen != 0]
                if not len(going):
                    break
    return time.perf_counter() - started, produced


def sample(logits: torch.Tensor, generator) -> torch.Tensor:
    probs = torch.softmax(logits / SETTINGS["temperature"], dim=1)
    ordered, order = probs.sort(dim=1, descending=True)
    ordered = ordered * ((ordered.cumsum(dim=1) - ordered) < SETTINGS["top_p"])
    return order.gather(1, torch.multinomial(ordered, 1, generator=generator)).squeeze(1)


def bare_hf(model, prompts: list[np.ndarray], batch: int = 64) -> tuple[float, int]:
    """Hugging Face's own ``generate`` (KV cache), left-padded batches, the same settings."""
    produced = 0
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(prompts), batch):
            rows = prompts[first:first + batch]
            width = max(len(p) for p in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, prompt in enumerate(rows):
                ids[row, width - len(prompt):] = torch.as_tensor(prompt)
                mask[row, width - len(prompt):] = 1
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                                 temperature=SETTINGS["temperature"], top_p=SETTINGS["top_p"],
                                 max_new_tokens=SETTINGS["max_new_tokens"], eos_token_id=0, pad_token_id=0)
            new = out[:, width:]  # a row's tokens up to its first end of text (kept), then padding
            ended = (new == 0).int().cumsum(dim=1)
            produced += int(((ended == 0) | ((ended == 1) & (new == 0))).sum())
    return time.perf_counter() - started, produced


def speed(repeats: int) -> None:
    import transformers

    from logitcache.sources import get_model

    torch.set_num_threads(1)
    prompts = prompt_ids()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        config = transformers.LlamaConfig(**LLAMA)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(str(folder / "llama"))
        for label, spec, bare in (("gpt (recomputed each step)", GPT, bare_gpt),
                                  ("HF Llama (KV cache)", f"hf:{folder / 'llama'}", bare_hf)):
            torch.manual_seed(0)
            model = get_model(spec, 256).eval()
            inner = getattr(model, "model", model)  # the transformers model, for its generate
            dumps, inside, bares, sizes = [], [], [], None
            for _ in range(repeats):
                seconds, tokens, sizes = time_dump(folder, spec, label.split()[0])
                dumps.append(tokens / seconds)
                inside.append(tokens / sizes["writing"])
                seconds, tokens = bare(inner if bare is bare_hf else model, prompts)
                bares.append(tokens / seconds)
            rows.append((label, max(dumps), max(inside), max(bares), sizes))
    print("| teacher | dump --generate, whole call (tokens/s) | its generate + store writes | bare loop | ratios | "
          "bytes/token (stored) | bytes/response token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, dumped, inside, bare, sizes in rows:
        print(f"| {label} | {dumped:,.0f} | {inside:,.0f} | {bare:,.0f} | {dumped / bare:.2f}, {inside / bare:.2f} | "
              f"{sizes['bytes'] / sizes['tokens']:.1f} | {sizes['bytes'] / sizes['responses']:.1f} |")


def logitcache(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "logitcache", *map(str, args), "--no-progress"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


def reference_records(path: Path) -> Path:
    """The prompts with the plays' own answer: bytes as input_ids, the loss on the answer only."""
    with open(PROMPTS, encoding="utf-8") as source, open(path, "w", encoding="utf-8") as out:
        for line in source:
            row = json.loads(line)
            prompt, answer = row["prompt"].encode("utf-8"), row["reference"].encode("utf-8")
            ids = list(prompt + answer)
            mask = [len(prompt) - 1 <= t < len(ids) - 1 for t in range(len(ids))]  # mask[t]: token t+1 a target
            out.write(json.dumps({"input_ids": ids, "loss_mask": mask}) + "\n")
    return path


def held_out_scores(run: Path, val_store: Path) -> tuple[float, float]:
    """(cross-entropy on the held-out text, KL(teacher || student) there), nats per target token."""
    from torch.utils.data import DataLoader

    from logitcache.lm import TokenStoreDataset, collate_tokens, distillation_loss
    from logitcache.sources import get_model

    model = get_model(f"checkpoint:{run / 'last.pt'}", 256).eval()
    totals, count = np.zeros(2), 0
    with torch.no_grad():
        for batch in DataLoader(TokenStoreDataset(str(val_store)), batch_size=32, collate_fn=collate_tokens):
            logits = model(batch["input_ids"])
            targets = int((batch["labels"] != -100).sum())
            totals += [float(distillation_loss(logits, batch, kd_weight=0.0, ce_weight=1.0)) * targets,
                       float(distillation_loss(logits, batch, kd_weight=1.0, ce_weight=0.0)) * targets]
            count += targets
    return tuple(totals / count)


def students(out: Path) -> None:
    teacher = REPO / "data" / "runs" / "shakespeare_generate" / "teacher" / "best.pt"
    answers = REPO / "data" / "stores" / "shakespeare-answers.zarr"
    val = REPO / "data" / "stores" / "shakespeare_generate-val.zarr"
    out.mkdir(parents=True, exist_ok=True)
    reference = out / "reference.zarr"
    if not reference.exists():
        records = reference_records(out / "reference.jsonl")
        logitcache("dump", reference, "--teacher", f"checkpoint:{teacher}", "--dataset",
                   f"jsonl:{records}:input_ids", "--tokenizer", "bytes", "--seq-len", 128, "--codec", "topk:8")
    from logitcache.store import open_store

    per_prompt = round(int(open_store(reference).loss_mask.sum()) / open_store(reference).num_samples)
    shorter = out / f"answers-{per_prompt}.zarr"  # as many answer tokens as the plays' answers hold
    if not shorter.exists():
        logitcache("dump", shorter, "--generate", "--teacher", f"checkpoint:{teacher}", "--dataset",
                   f"jsonl:{PROMPTS}:prompt", "--tokenizer", "bytes", "--seq-len", 128, "--codec", "topk:8",
                   "--batch-size", 64, "--max-new-tokens", per_prompt, "--temperature", SETTINGS["temperature"],
                   "--top-p", SETTINGS["top_p"], "--seed", SETTINGS["seed"])
    common = ["--student", "gpt:n_layer=1,n_head=2,n_embd=32,block_size=128", "--val-store", val, "--optimizer",
              "adamw", "--lr", "3e-3", "--weight-decay", "0.1", "--batch-size", 16, "--epochs", 10, "--seed", 0]
    print("| student | trained on | target tokens | held-out CE (nats/token) | held-out KL to the teacher |")
    print("|---|---|---:|---:|---:|")
    for store, label in ((answers, "teacher's answers (T=0.8, top-p 0.95)"),
                         (shorter, f"teacher's answers, {per_prompt} tokens each"), (reference, "the plays' answers")):
        targets = int(open_store(store).loss_mask.sum())
        for loss in ("kl", "ce"):
            run = out / f"{store.stem}-{loss}"
            if not (run / "last.pt").exists():
                logitcache("train", "--out", run, "--store", store, "--loss", loss, *common)
            ce, kl = held_out_scores(run, val)
            print(f"| {loss} | {label} | {targets:,} | {ce:.4f} | {kl:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("speed", "students"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "runs" / "generate-benchmark")
    args = parser.parse_args()
    speed(args.repeats) if args.part == "speed" else students(args.out)


if __name__ == "__main__":
    main()
