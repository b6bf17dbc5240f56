"""A language-model student's training step at a large vocabulary (issue 22): the whole (B, T, V)
logits against the chunked loss (``logitcache/losses/chunked.py``), peak memory and tokens/s.

    flock /tmp/bigmem.lock python -m benchmarks.lm_students_memory [--vocab 131072] [--batch 4]
        [--seq-len 1024] [--codecs topk:8,sample:12,dense] [--paths materialised,chunked,recompute] [--temperature 1]
    python -m benchmarks.lm_students_memory gpu [--smoke]   # benchmarks/gpu.sh runs it (a CUDA device)

A ``gpt`` student (n_layer=2, n_embd=128, block_size=--seq-len) and synthetic teacher targets of
each codec's typed form (top-k ids with log-probabilities and a tail, sampled ids with weights,
dense fp16 logits) for one batch; each (codec, path) in a fresh subprocess (under ``prlimit
--as`` so that it fails rather than take the machine down): one warm-up step, then ``--steps``
timed steps, each forward + backward (loss ``ce + kl`` at T = 1). Paths:

- ``materialised``: ``model(ids)`` -> (B, T, V) logits -> ``token_loss_sums`` (train's path before);
- ``chunked``: ``hidden_states`` -> ``chunked_token_loss_sums`` (each chunk's gradient in the forward);
- ``recompute``: the same chunks, each recomputed in the backward instead (the design not taken,
  defined here only to measure it).

Peak RSS is the subprocess's ``ru_maxrss``; "step's own" is the peak RSS over the steps (VmHWM,
reset before the first) less the RSS before them (torch, the model, the targets). Tokens/s: B x T
over the median timed step, by the wall clock and by this process's CPU seconds (less disturbed
by other jobs on a shared machine).

``gpu``: on one CUDA device, a random-init Qwen2-shaped student of ~0.5 B parameters (lm_dump.py's
teacher shape: hidden 896, 24 layers, 151,936 ids) at batch 4 x 2,048 tokens, bf16 autocast, AdamW,
trained against the same synthetic targets (on the device) through ``logitcache.lm``: the
materialised ``distillation_loss(model(ids).logits, batch)`` and ``chunked_distillation_loss(model,
batch)`` side by side, each from the same initial weights with a fresh optimizer: one warm-up step
and ``--steps`` timed ones; tokens/s (B x T over the median step) and the peak device memory
(``torch.cuda.max_memory_allocated``, reset before each path's warm-up: weights, optimizer and the
step); an out-of-memory error is that path's result. ``--smoke``: tiny, on the CPU (the path only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

PATHS = ("materialised", "chunked", "recompute")
ADDRESS_LIMIT = 16 << 30  # prlimit --as for each subprocess


def synthetic_targets(codec: str, batch: int, length: int, vocab: int):
    """One batch of teacher targets in ``codec``'s typed form, drawn from a fixed generator."""
    from logitcache.codecs import DenseTargets, SampledTargets, TopKTargets

    gen = torch.Generator().manual_seed(0)
    if codec == "dense":  # fp16 as a dense store decodes, drawn a sequence at a time (no float32 copy)
        logits = torch.empty(batch, length, vocab, dtype=torch.float16)
        for row in logits:
            row.copy_(torch.randn(length, vocab, generator=gen) * 2)
        return DenseTargets(logits)
    k = int(codec.split(":")[1])
    indices = torch.randint(0, vocab, (batch, length, k), generator=gen)
    if codec.startswith("topk"):
        probs = torch.rand(batch, length, k + 1, generator=gen).softmax(-1)
        return TopKTargets(indices, probs[..., :k].log(), probs[..., k].log())
    weights = torch.full((batch, length, k), 1.0 / k)
    return SampledTargets(indices, weights, -torch.rand(batch, length, k, generator=gen) * 5)


class RecomputedChunks(torch.autograd.Function):
    """The alternative design, measured only: each chunk's values in the forward without a graph,
    then each chunk recomputed with one in the backward."""

    @staticmethod
    def forward(ctx, chunks, hidden, *parameters):
        ctx.chunk_loss, ctx.pieces = chunks.loss, chunks.pieces
        ctx.save_for_backward(hidden, *parameters)
        sums = [sum(values) for values in zip(*(chunks.loss(piece, hidden[:, piece]) for piece in chunks.pieces))]
        ctx.mark_non_differentiable(sums[1], sums[2])
        return tuple(sums)

    @staticmethod
    def backward(ctx, grad_total, _ce, _kd):
        hidden, *parameters = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden)
        grad_parameters = [torch.zeros_like(p) for p in parameters]
        for piece in ctx.pieces:
            with torch.enable_grad():
                chunk_hidden = hidden[:, piece].detach().requires_grad_()
                total = ctx.chunk_loss(piece, chunk_hidden)[0]
                grads = torch.autograd.grad(total, [chunk_hidden, *parameters], grad_total)
            grad_hidden[:, piece] = grads[0]
            for running, gradient in zip(grad_parameters, grads[1:]):
                running += gradient
        return None, grad_hidden, *grad_parameters


def one_config(path: str, codec: str, vocab: int, batch: int, length: int, steps: int,
               temperature: float = 1.0) -> dict:
    from logitcache.losses import chunked, token_loss_sums
    from logitcache.sources import get_model
    from logitcache.sources.lm_heads import split_lm

    torch.manual_seed(0)
    model = get_model(f"gpt:n_layer=2,n_head=2,n_embd=128,block_size={length}", vocab)
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    teacher = synthetic_targets(codec, batch, length, vocab)
    split = split_lm(model, ids[:1, :16])
    if path == "recompute":
        chunked._ChunkedLoss = RecomputedChunks

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if path == "materialised":
            loss = token_loss_sums(model(ids), labels, teacher, temperature).total(1.0, 1.0)
        else:
            hidden = split.hidden_states(ids)
            head = chunked.chunked_head(model, split.head_logits, hidden)
            loss = chunked.chunked_token_loss_sums(hidden, head, labels, teacher, temperature).total(1.0, 1.0)
        loss.backward()
        return float(loss)

    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM from here: the steps' own peak
        f.write("5")
    loss = step()  # warm-up
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"path": path, "codec": codec, "loss": loss, "before_mib": before / 1024, "peak_mib": peak / 1024,
            "step_peak_mib": _status_kib("VmHWM") / 1024,
            "tokens_per_s": batch * length / statistics.median(times),
            "tokens_per_cpu_s": batch * length / statistics.median(cpu_times),
            "chunk_positions": chunked.chunk_positions(vocab)}


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: now; VmHWM: the peak since the last reset)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def run_config(path: str, codec: str, args) -> dict:
    """``one_config`` in a fresh process under ``prlimit --as``; its error's last line if it fails."""
    command = ["prlimit", f"--as={ADDRESS_LIMIT}", sys.executable, "-m", "benchmarks.lm_students_memory", "--one",
               path, codec, "--vocab", str(args.vocab), "--batch", str(args.batch), "--seq-len", str(args.seq_len),
               "--steps", str(args.steps), "--temperature", str(args.temperature)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    if done.returncode:
        return {"path": path, "codec": codec, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:100]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def gpu(args) -> None:
    """Both losses on one Qwen2-shaped student, in this process: tokens/s, peak device memory, ratios."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from benchmarks.lm_dump import QWEN2_05B, QWEN2_SMOKE

    shape, device = (QWEN2_SMOKE, "cpu") if args.smoke else (QWEN2_05B, "cuda")
    length = args.seq_len or (128 if args.smoke else 2048)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape, max_position_embeddings=length)).to(device).train()
    initial = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
    ids = torch.randint(0, shape["vocab_size"], (args.batch, length), generator=torch.Generator().manual_seed(1))
    print(f"Qwen2 student {shape}, {sum(p.numel() for p in model.parameters()) / 1e6:,.1f} M parameters, "
          f"batch {args.batch} x {length}, bf16 autocast, AdamW, {args.steps} timed steps, device {device}")
    print("| codec | path | tokens/s | peak device memory (GB) | tokens/s / materialised "
          "| memory / materialised | warm-up loss |\n|---|---|---:|---:|---:|---:|---:|")
    for codec in args.codecs.split(","):
        teacher = synthetic_targets(codec, args.batch, length, shape["vocab_size"])
        batch = {"input_ids": ids, "labels": ids, **teacher.columns("teacher_")}
        batch = {name: value.to(device) for name, value in batch.items()}
        del teacher
        results = {}
        for path in ("materialised", "chunked"):
            model.load_state_dict(initial)
            r = results[path] = gpu_steps(model, batch, path, args.steps, device)
            if "error" in r:
                print(f"| {codec} | {path} | {r['error']} | | | | |", flush=True)
                continue
            base = results.get("materialised", {})
            ratios = (f"{r['tokens_per_s'] / base['tokens_per_s']:.2f} | {r['peak_gb'] / base['peak_gb']:.2f}"
                      if path != "materialised" and "error" not in base else " | ")
            print(f"| {codec} | {path} | {r['tokens_per_s']:,.0f} | {r['peak_gb']:.2f} | {ratios} | "
                  f"{r['loss']:.6g} |", flush=True)
        del batch


def gpu_steps(model, batch: dict, path: str, steps: int, device: str) -> dict:
    """A warm-up and ``steps`` timed training steps of ``path``'s loss, with a fresh AdamW; an
    out-of-memory error as the result (its first line), the memory it held given back."""
    from benchmarks.lm_dump import peak_gb, reset_peak
    from logitcache.lm import chunked_distillation_loss, distillation_loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = (chunked_distillation_loss(model, batch) if path == "chunked"
                    else distillation_loss(model(batch["input_ids"]).logits, batch))
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    reset_peak(device)
    try:
        loss, times = step(), []
        for _ in range(steps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
    except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if not _out_of_memory(error):
            raise
        result = {"error": f"out of memory: {(str(error).splitlines() or ['?'])[0][:90]}"}
    else:
        result = {"loss": loss, "peak_gb": peak_gb(device),
                  "tokens_per_s": batch["input_ids"].numel() / statistics.median(times)}
    optimizer.state.clear()  # the moments, before the cache is emptied
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def _out_of_memory(error: BaseException) -> bool:
    """The device's out-of-memory error, or the CPU allocator's (a smoke run under ``prlimit --as``)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--smoke", action="store_true", help="gpu: tiny, on the CPU (checks the path only)")
    parser.add_argument("--vocab", type=int, default=131_072, help="cpu only (gpu: the Qwen2 shape's)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, help="default: cpu 1,024, gpu 2,048 (--smoke 128)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--codecs", default="topk:8,sample:12,dense")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--temperature", type=float, default=1.0, help="cpu only: the KL's (the CE is at 1)")
    parser.add_argument("--one", nargs=2, metavar=("PATH", "CODEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "gpu":
        if not (args.smoke or torch.cuda.is_available()):
            parser.error("gpu needs a CUDA device here; --smoke runs it tiny on the CPU")
        gpu(args)
        return
    args.seq_len = args.seq_len or 1024
    if args.one:
        print(json.dumps(one_config(*args.one, args.vocab, args.batch, args.seq_len, args.steps, args.temperature)))
        return
    print(f"V = {args.vocab:,}, batch {args.batch} x {args.seq_len}, gpt n_layer=2 n_embd=128, "
          f"torch threads {torch.get_num_threads()}, {args.steps} timed steps, KL at T = {args.temperature:g}")
    print("| codec | path | peak RSS (MiB) | step's own (MiB) | tokens/s | tokens/CPU-s | loss |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for codec in args.codecs.split(","):
        for path in args.paths.split(","):
            r = run_config(path, codec, args)
            if "error" in r:
                print(f"| {codec} | {path} | failed: {r['error']} | | | | |", flush=True)
                continue
            print(f"| {codec} | {path} | {r['peak_mib']:,.0f} | {r['step_peak_mib'] - r['before_mib']:,.0f} | "
                  f"{r['tokens_per_s']:,.0f} | {r['tokens_per_cpu_s']:,.0f} | {r['loss']:.6g} |", flush=True)


if __name__ == "__main__":
    main()
