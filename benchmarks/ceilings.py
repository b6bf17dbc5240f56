"""logitcache's own ceilings: with a near-free teacher and student (a 16 -> C linear layer over N
random vectors), whatever logitcache spends per row is the limit. Each figure is printed as a ratio
against its bare baseline, measured in the same run (issue 15).

    python -m benchmarks.ceilings                                  # C = 100, 1000, 32000; fp16, u8, topk:50
    python -m benchmarks.ceilings --classes 1000 --codecs fp16 --rounds 5
    python -m benchmarks.ceilings --baseline /path/to/other/checkout   # the same figures for two checkouts, interleaved

What is measured, per (C, codec), every round in a fresh process (median over rounds):

- dump: the dump loop (``dump()``'s own timing: teacher, encoding, writes, checks, ledger) against
  the bare teacher loop (the same DataLoader, batches and ``inference_mode`` forward, outputs
  discarded), and against the codec's own single-thread encode rate on the same logits (the codec's
  ``encode_shard`` plus blosc zstd-5 byte-shuffle and CRC-32C of every inner chunk, one thread).
  Goal: dump >= 0.75 x codec.
- train: one epoch of ``train()`` with ``--loss kl`` from the store held in memory, and streamed
  under a 64 MiB cache (or a quarter of the stored logits, if smaller), against label-only (``--loss ce``, the same student and data). The KL loss's
  own cost (forward + backward on the batch's logits, timed alone, times the steps) is subtracted:
  what KD adds beyond the loss itself, over the label-only time. Goals: <= 0.10 in memory, <= 0.25
  streamed.
- loader: the logits path alone (zero-size inputs, the DataLoader ``train`` builds), rows/s of its
  second epoch (workers started, as every epoch after the first of a run), in memory and streamed,
  0 and 2 workers. Goals: >= 1M rows/s in memory, >= 200k streamed.
- loss: ``kd_loss`` forward + backward against the reference formulation (log_softmax, softmax,
  ``kl_div``, autograd) and the log-space one-pass formulation (``kl_div(..., log_target=True)``),
  each the fastest of 20 steps (5 at C = 32000). The KD figures above subtract this cost, so a
  busy machine overstates what KD adds beyond its loss, never understates it.

N defaults to min(200,000, 2e8 / C) rows, so C = 32,000 fits in memory. With ``--baseline`` each
round runs both checkouts (this file's code drives both; only ``logitcache`` differs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
DIM = 16  # input features of the near-free models
BATCH = 1024
STREAM_BUDGET = 64 << 20  # the streamed runs' cache, or a quarter of the stored logits if that is less
SPEC = "benchmarks.ceilings"


# -- the near-free dataset and models (named by spec: benchmarks.ceilings:vectors / :linear) --------

class Vectors(Dataset):
    """N seeded random 16-vectors with labels in [0, C): a dataset whose loading costs next to nothing."""

    def __init__(self, n: int, num_classes: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(n, DIM, generator=generator)
        self.targets = torch.randint(0, num_classes, (n,), generator=generator).tolist()
        self.keys = [f"v/{i}" for i in range(n)]
        self.classes = [str(c) for c in range(num_classes)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.inputs[index], self.targets[index]


def vectors(split=None):
    """CEILINGS_N vectors with CEILINGS_C classes (set by this benchmark)."""
    return Vectors(int(os.environ["CEILINGS_N"]), int(os.environ["CEILINGS_C"]))


def linear(num_classes: int) -> nn.Module:
    """The near-free teacher and student: one 16 -> C linear layer, seeded."""
    torch.manual_seed(0)
    return nn.Linear(DIM, num_classes)


class NoInputs(Dataset):
    """Zero-size inputs, so the loader figure measures the logits path alone."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return torch.empty(0), 0

    def __getitems__(self, indices):  # a loader that batches inputs asks for a batch at once
        return [(torch.empty(0), 0)] * len(indices)


# -- one round of one (C, codec), in a process of its own ------------------------------------------

def _shard_batches(layout, n: int) -> list[list[int]]:
    """The dump's batches: never across a shard (dump/loop.py)."""
    batches = []
    for shard in range(layout.num_shards(n)):
        start, stop = layout.shard_rows(shard, n)
        batches += [list(range(lo, min(lo + BATCH, stop))) for lo in range(start, stop, BATCH)]
    return batches


def bare_teacher_loop(dataset, layout, device) -> float:
    """Seconds for the dump's DataLoader and forward alone, the outputs thrown away."""
    model = linear(int(os.environ["CEILINGS_C"])).to(device).eval()
    loader = DataLoader(dataset, batch_sampler=_shard_batches(layout, len(dataset)), num_workers=0)
    started = time.perf_counter()
    with torch.inference_mode():
        for inputs, _ in loader:
            model(inputs.to(device)).float().cpu().numpy()
    return time.perf_counter() - started


def codec_encode(dataset, teacher, device) -> float:
    """Seconds for one thread to encode the teacher's logits: the codec, then blosc and CRC-32C per
    inner chunk, as the store's arrays are configured (zstd 5, byte shuffle)."""
    import numcodecs
    from numcodecs.checksum32 import CRC32C

    numcodecs.blosc.use_threads = False  # one thread (zarr sets this too)
    blosc, crc = numcodecs.Blosc("zstd", 5, numcodecs.Blosc.SHUFFLE), CRC32C()
    model = linear(teacher.num_classes).to(device).eval()
    layout, n, seconds = teacher.layout, len(dataset), 0.0
    for shard in range(layout.num_shards(n)):
        start, stop = layout.shard_rows(shard, n)
        with torch.inference_mode():
            logits = model(dataset.inputs[start:stop].to(device)).float().cpu().numpy()
        began = time.perf_counter()
        for values in teacher.codec.encode_shard(logits, shard).values():
            for lo in range(0, len(values), layout.rows_per_chunk):
                crc.encode(blosc.encode(np.ascontiguousarray(values[lo:lo + layout.rows_per_chunk])))
        seconds += time.perf_counter() - began
    return seconds


def measure_dump(folder: str, codec: str, device: str) -> dict:
    from logitcache.dump import DumpConfig, dump
    from logitcache.store import open_store

    store = f"{folder}/store.zarr"
    config = DumpConfig(store=store, teacher=f"{SPEC}:linear", dataset=f"{SPEC}:vectors", codec=codec,
                        batch_size=BATCH, device=device, progress=False, overwrite=True)
    began = time.perf_counter()
    summary = dump(config, log=lambda *_: None)
    whole = time.perf_counter() - began
    teacher = open_store(store).teacher()
    dataset = vectors()
    return {"dump_s": summary.seconds, "dump_call_s": whole, "bare_s": bare_teacher_loop(dataset, teacher.layout, device),
            "codec_s": codec_encode(dataset, teacher, device), "bytes_per_row": summary.bytes_per_sample}


def _train_seconds(folder: str, name: str, device: str, **options) -> float:
    from logitcache.train import TrainConfig, train

    config = TrainConfig(out=f"{folder}/{name}", student=f"{SPEC}:linear", dataset=f"{SPEC}:vectors", epochs=1,
                         batch_size=BATCH, device=device, progress=False, overwrite=True, **options)
    return train(config, log=lambda *_: None).history[0]["epoch_seconds"]


def _loss_inputs(store: str, sparse: bool, device):
    from logitcache.store import open_store

    teacher = open_store(store).teacher()
    rows = min(BATCH, teacher.num_samples)
    if sparse:
        targets = {k: torch.from_numpy(v).to(device) for k, v in teacher.read_targets(0, rows).items()}
    else:
        targets = torch.from_numpy(teacher.read(0, rows)).to(device)
    student = torch.randn(rows, teacher.num_classes, generator=torch.Generator().manual_seed(1)).to(device)
    return student, targets


def _step_seconds(function, student, targets, device) -> float:
    """Seconds of one forward + backward of ``function(student_logits, targets)``: the fastest of
    several, its own cost (on a shared machine a step's median can be a scheduler's time slice)."""
    times, repeats = [], 20 if student.numel() <= 2_000_000 else 5
    for _ in range(repeats + 2):
        logits = student.clone().requires_grad_()
        _sync(device)
        began = time.perf_counter()
        function(logits, targets).backward()
        _sync(device)
        times.append(time.perf_counter() - began)
    return min(times[2:])


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure_losses(store: str, codec: str, device: str) -> dict:
    """Per-step seconds of the KL loss as train builds it, and (dense) of two other formulations."""
    import torch.nn.functional as F

    from logitcache.losses import logit_loss
    from logitcache.train import TrainConfig

    sparse = codec.startswith(("topk", "sample"))
    config = TrainConfig(out="-", student="-", dataset="-", store=store, loss="kl").resolved()
    module, temperature = logit_loss("kl").build(config.temperature), config.temperature
    student, targets = _loss_inputs(store, sparse, device)
    result = {"loss_step_s": _step_seconds(lambda s, t: module(s, t), student, targets, device),
              "ce_step_s": _step_seconds(lambda s, t: F.cross_entropy(s, t.argmax(1) if not sparse else
                                                                      t["indices"][:, 0]), student, targets, device)}
    if not sparse:
        def reference(s, t):  # the project's reference losses (shared/reference/seed_losses.py)
            log_q = F.log_softmax(s / temperature, dim=1)
            return F.kl_div(log_q, F.softmax(t / temperature, dim=1), reduction="none").sum(1).mean() * temperature ** 2

        def log_space(s, t):  # log-space targets, one pass
            log_q, log_p = F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1)
            return F.kl_div(log_q, log_p, reduction="sum", log_target=True) / len(s) * temperature ** 2

        result["reference_step_s"] = _step_seconds(reference, student, targets, device)
        result["log_space_step_s"] = _step_seconds(log_space, student, targets, device)
    return result


def stream_budget(store: str) -> int:
    """64 MiB, or a quarter of the stored logits when they are smaller: the streamed runs must stream."""
    from logitcache.store import open_store

    teacher = open_store(store).teacher()
    return min(STREAM_BUDGET, teacher.num_samples * teacher.codec.bytes_per_sample(teacher.num_classes) // 4)


def measure_train(folder: str, store: str, device: str) -> dict:
    rows = os.environ["CEILINGS_N"]
    os.environ["CEILINGS_N"] = str(min(int(rows), 8192))  # a short warm-up: first-call costs out of the figures
    _train_seconds(folder, "warm-up", device, loss="ce")
    os.environ["CEILINGS_N"] = rows
    label = _train_seconds(folder, "ce", device, loss="ce")
    memory = _train_seconds(folder, "kl-memory", device, loss="kl", store=store)
    streamed = _train_seconds(folder, "kl-streamed", device, loss="kl", store=store, cache_budget=stream_budget(store))
    return {"label_s": label, "kd_memory_s": memory, "kd_streamed_s": streamed}


def measure_loader(store: str, codec: str, device: str) -> dict:
    """Rows/s of the logits path alone, through the DataLoader ``train`` builds (``image_task.epoch_loader``)."""
    from logitcache.distributed import Distributed
    from logitcache.train import TrainConfig
    from logitcache.train.paired_data import PairedDataset, TeacherLogits
    from logitcache.train.image_task import epoch_loader

    sparse = codec.startswith(("topk", "sample"))
    result = {}
    for label, budget in (("memory", 64 << 30), ("streamed", stream_budget(store))):
        for workers in (0, 2):
            config = TrainConfig(out="-", student="-", dataset="-", store=store, loss="kl", batch_size=BATCH,
                                 workers=workers, cache_budget=budget).resolved()
            logits = TeacherLogits.open(store, budget_bytes=budget, workers=workers, sparse=sparse)
            assert logits.in_memory == (label == "memory"), (label, logits.in_memory)
            paired = PairedDataset(NoInputs(logits.store.num_samples), logits)
            sampler, loader = epoch_loader(config, paired, logits.rows, logits, None, Distributed(),
                                            torch.device(device))
            for epoch in (1, 2):  # the second epoch is timed: workers started, caches and allocator warm
                sampler.set_epoch(epoch)
                began = time.perf_counter()
                delivered = sum(len(batch[1]) for batch in loader)
            result[f"loader_{label}_{workers}w"] = delivered / (time.perf_counter() - began)
            del loader
    return result


def measure(args) -> dict:
    os.environ["CEILINGS_N"], os.environ["CEILINGS_C"] = str(args.n), str(args.classes)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        result = measure_dump(folder, args.codec, args.device)
        store = f"{folder}/store.zarr"
        if "train" in args.parts:
            result.update(measure_losses(store, args.codec, args.device))
            result.update(measure_train(folder, store, args.device))
        if "loader" in args.parts:
            result.update(measure_loader(store, args.codec, args.device))
    return result


# -- the driver: rounds x configurations x checkouts, each in a fresh process ------------------------

def rows_for(classes: int, n: int | None) -> int:
    """N for C classes: at most 2e8 logits (1.6 GB of float32 teacher outputs), so C = 32000 fits."""
    return int(min(n or 200_000, 2e8 // classes))


# This file, loaded as ``benchmarks.ceilings`` whichever checkout's logitcache is on the path.
LAUNCH = ("import importlib.util, os, sys; spec = importlib.util.spec_from_file_location('benchmarks.ceilings', "
          "os.environ['CEILINGS_FILE']); module = importlib.util.module_from_spec(spec); "
          "sys.modules['benchmarks.ceilings'] = module; spec.loader.exec_module(module); module.main()")


def run_one(checkout: Path, classes: int, codec: str, n: int, args) -> dict:
    command = [sys.executable, "-c", LAUNCH, "--measure", "--classes", str(classes), "--codec", codec, "--n", str(n),
               "--device", args.device, "--parts", ",".join(args.parts)]
    if args.tmp:
        command += ["--tmp", args.tmp]
    env = {**os.environ, "PYTHONPATH": str(checkout), "CEILINGS_FILE": str(HERE)}
    done = subprocess.run(command, env=env, cwd=checkout, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{checkout}: C={classes} {codec} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratios(m: dict, n: int) -> dict:
    """The figures the issue's goals are stated in."""
    steps = -(-n // BATCH)
    out = {
        "dump rows/s": n / m["dump_s"],
        "bare teacher loop rows/s": n / m["bare_s"],
        "codec encode rows/s (1 thread)": n / m["codec_s"],
        "dump / bare loop (speed)": m["bare_s"] / m["dump_s"],
        "dump / codec encode (goal >= 0.75)": m["codec_s"] / m["dump_s"],
    }
    if "label_s" in m:
        loss = m["loss_step_s"] * steps
        out.update({
            "train label-only s": m["label_s"],
            "train kl in memory s": m["kd_memory_s"],
            "train kl streamed s": m["kd_streamed_s"],
            "kl loss alone s (fwd+bwd x steps)": loss,
            "kl in memory / label-only (time)": m["kd_memory_s"] / m["label_s"],
            "KD beyond its loss, memory (goal <= 0.10)": (m["kd_memory_s"] - m["label_s"] - loss) / m["label_s"],
            "KD beyond its loss, streamed (goal <= 0.25)": (m["kd_streamed_s"] - m["label_s"] - loss) / m["label_s"],
            "kl loss step / ce step": m["loss_step_s"] / m["ce_step_s"],
        })
        if "log_space_step_s" in m:
            out["kl loss / log-space one-pass (goal <= 1)"] = m["loss_step_s"] / m["log_space_step_s"]
            out["kl loss / reference autograd"] = m["loss_step_s"] / m["reference_step_s"]
    for key in ("loader_memory_0w", "loader_memory_2w", "loader_streamed_0w", "loader_streamed_2w"):
        if key in m:
            where, workers = key.split("_")[1:]
            goal = " (goal >= 1M)" if where == "memory" else " (goal >= 200k)"
            out[f"loader {where}, {workers[0]} workers rows/s{goal if workers == '0w' else ''}"] = m[key]
    return out


def show(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def drive(args) -> None:
    checkouts = {"this": ROOT}
    if args.baseline:
        checkouts = {"baseline": Path(args.baseline).resolve(), "this": ROOT}
    print(f"ceilings: torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"batch {BATCH}, {args.rounds} rounds, checkouts: " + ", ".join(f"{k}={v}" for k, v in checkouts.items()))
    for classes in args.classes_list:
        n = rows_for(classes, args.n)
        for codec in args.codecs:
            runs: dict[str, list[dict]] = {name: [] for name in checkouts}
            for round_ in range(args.rounds):
                for name, checkout in checkouts.items():  # interleaved: baseline, this, baseline, this, ...
                    runs[name].append(ratios(run_one(checkout, classes, codec, n, args), n))
                    print(f"  C={classes} {codec} round {round_ + 1} {name}: dump/codec "
                          f"{runs[name][-1]['dump / codec encode (goal >= 0.75)']:.3f}", file=sys.stderr, flush=True)
            print(f"\nC={classes}, {codec}, N={n:,} (median of {args.rounds})")
            print(f"  {'figure':<46}" + "".join(f"{name:>12}" for name in checkouts))
            for key in runs["this"][0]:
                values = [statistics.median(r[key] for r in runs[name]) for name in checkouts]
                print(f"  {key:<46}" + "".join(f"{show(v):>12}" for v in values))
            sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="100,1000,32000")
    parser.add_argument("--codecs", default="fp16,u8,topk:50")
    parser.add_argument("--codec", default="fp16", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help="rows (default 200000; at most 2e8 / C)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parts", default="dump,train,loader", help="dump is always run; add train, loader")
    parser.add_argument("--baseline", default=None, help="another checkout to measure in the same run")
    parser.add_argument("--tmp", default=None, help="where stores are written (default: the system's temp)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.parts = args.parts.split(",")
    if args.measure:
        args.classes = int(args.classes)
        print(json.dumps(measure(args)))
        return
    args.classes_list = [int(c) for c in args.classes.split(",")]
    args.codecs = args.codecs.split(",")
    drive(args)


if __name__ == "__main__":
    main()
