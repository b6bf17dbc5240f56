"""Issue 24, "Measure": TRL's ``SFTTrainer`` (``logitcache.trl.DistillationSFTTrainer``) against
``logitcache train`` and the plain Hugging Face ``Trainer`` (``logitcache.hf.DistillationTrainer``)
on the same token store, student and steps, on the CPU: tokens/s and peak memory, side by side.

    flock /tmp/bigmem.lock prlimit --as=12000000000 python -m benchmarks.trl_vs_train \\
        [--vocab 32000] [--length 512] [--sequences 64] [--batch 8] [--rounds 2] [--threads 1]

The store: ``--sequences`` random sequences of ``--length`` ids of a synthetic ``--vocab``-id
tokenizer (``benchmarks.lm_dump``'s), dumped as ``topk:8`` by a random-init ``gpt`` teacher (the
ids' content changes no cost). The student: a 2-layer GPT-2 (n_embd 128, 2 heads, no dropout) made
from a config and saved once, so every run starts from the same weights (``logitcache train
--student hf:DIR``). Each run is one epoch (``--sequences / --batch`` steps) of AdamW at a constant
lr, no weight decay or clipping, fp32, loss ``ce + kl`` at T = 1, the loss by chunks of positions
through the head (each trainer's default at this size: a batch's logits exceed 128 MiB); TRL also
once at its own defaults (bf16 autocast, gradient checkpointing).

Each run is a fresh process at ``--threads`` torch threads, rounds interleaved, the best round
kept (a shared machine slows rounds, never speeds them). tokens/s: the tokens of the epoch (B x L
per step, padding included) over the seconds from building the student to the end of training
(store opened, trainer made, the epoch), measured in the process: over its CPU seconds (the ratio's
basis: other jobs on a shared machine stretch the wall clock far more) and over the wall clock. Memory is resident set size from /proc/self/status: "peak" is VmHWM at the end,
"imports" the RSS after importing torch, transformers (and trl), so peak - imports is what training
adds.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHER = "gpt:n_layer=2,n_head=2,n_embd=64,block_size={length}"
RUNS = ("logitcache train", "HF DistillationTrainer", "TRL DistillationSFTTrainer",
        "TRL, its defaults (bf16, checkpointing)")


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def make_store(work: Path, args) -> tuple[Path, Path]:
    """The topk:8 store and the saved student (made once, reused when present)."""
    store, student = work / "store.zarr", work / "student"
    if not store.exists():
        from benchmarks.lm_dump import write_ids

        dataset = write_ids(work / "ids.jsonl", args.vocab, args.sequences, args.length)
        subprocess.run([sys.executable, "-m", "logitcache", "dump", str(store), "--teacher",
                        TEACHER.format(length=args.length), "--dataset", dataset, "--tokenizer",
                        "benchmarks.lm_dump:synthetic_tokenizer", "--seq-len", str(args.length), "--codec", "topk:8",
                        "--no-progress"], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(REPO), "LM_DUMP_VOCAB": str(args.vocab)})
    if not student.exists():
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, n_positions=args.length, n_embd=128, n_layer=2, n_head=2,
                                   bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0)).save_pretrained(student)
    return store, student


def hf_arguments(config_class, out: Path, args, **overrides):
    settings = dict(max_steps=args.sequences // args.batch, per_device_train_batch_size=args.batch, learning_rate=1e-3,
                    weight_decay=0.0, lr_scheduler_type="constant", max_grad_norm=0.0, save_strategy="no",
                    report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=args.sequences // args.batch,
                    dataloader_num_workers=0, seed=0)
    return config_class(str(out), **{**settings, **overrides})


def child(run: str, store: Path, student: Path, out: Path, args) -> dict:
    """One run in this process: its rate, memory and last logged loss."""
    import torch

    torch.set_num_threads(args.threads)
    for package in ("transformers", "trl") if run.startswith("TRL") else ("transformers",):
        importlib.import_module(package)  # counted in "imports"
    imports_kib = status_kib("VmRSS")
    began, cpu_began = time.perf_counter(), time.process_time()
    if run == "logitcache train":
        from logitcache.train import TrainConfig, train

        train(TrainConfig(out=str(out), student=f"hf:{student}", store=str(store), loss="kl", temperature=1.0,
                          optimizer="adamw", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=args.batch,
                          epochs=1, progress=False, overwrite=True), log=lambda *_: None)
        loss = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]
    else:
        from transformers import AutoModelForCausalLM

        from logitcache.lm import TokenStoreDataset

        model, data = AutoModelForCausalLM.from_pretrained(student), TokenStoreDataset(store)
        if run == "HF DistillationTrainer":
            from transformers import TrainingArguments

            from logitcache.hf import DistillationTrainer

            trainer = DistillationTrainer(model=model, args=hf_arguments(TrainingArguments, out, args),
                                          train_dataset=data)
        else:
            from trl import SFTConfig

            from logitcache.trl import DistillationSFTTrainer

            own = {} if "defaults" in run else dict(bf16=False, gradient_checkpointing=False)
            trainer = DistillationSFTTrainer(model=model, args=hf_arguments(SFTConfig, out, args, **own),
                                             train_dataset=data)
        loss = trainer.train().training_loss
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    tokens = args.sequences // args.batch * args.batch * args.length
    return {"tokens_s": tokens / seconds, "cpu_tokens_s": tokens / cpu_seconds, "imports_mb": imports_kib / 1024,
            "peak_mb": status_kib("VmHWM") / 1024, "loss": loss}


def measure(run: str, store: Path, student: Path, work: Path, args, round_: int) -> dict:
    out = work / f"run-{RUNS.index(run)}-{round_}"
    command = [sys.executable, "-m", "benchmarks.trl_vs_train", "--child", run, "--store", str(store), "--student",
               str(student), "--out", str(out), *sys.argv[1:]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode:
        raise SystemExit(f"{run} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=None, help="where the store, student and runs go (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.store), Path(args.student), Path(args.out), args)))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="trl_vs_train_"))
    work.mkdir(parents=True, exist_ok=True)
    store, student = make_store(work, args)
    results = {run: [] for run in RUNS}
    for round_ in range(args.rounds):
        for run in RUNS:
            results[run].append(measure(run, store, student, work, args, round_))
    steps = args.sequences // args.batch
    print(f"V = {args.vocab:,}, L = {args.length}, topk:8 store of {args.sequences} sequences; GPT-2 student "
          f"(2 layers, n_embd 128); {steps} steps of batch {args.batch}; {args.threads} torch thread(s); best of "
          f"{args.rounds} interleaved rounds")
    ours = max(r["cpu_tokens_s"] for r in results["logitcache train"])
    print("| run | tokens/s (CPU) | / logitcache train | tokens/s (wall) | RSS after imports (MB) | peak RSS (MB) "
          "| peak - imports (MB) | mean train loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run, rounds in results.items():
        cpu_rate = max(r["cpu_tokens_s"] for r in rounds)
        print(f"| {run} | {cpu_rate:,.0f} | {cpu_rate / ours:.2f} | {max(r['tokens_s'] for r in rounds):,.0f} | "
              f"{min(r['imports_mb'] for r in rounds):,.0f} | {min(r['peak_mb'] for r in rounds):,.0f} | "
              f"{min(r['peak_mb'] - r['imports_mb'] for r in rounds):,.0f} | {rounds[-1]['loss']:.4f} |")

if __name__ == "__main__":
    main()
