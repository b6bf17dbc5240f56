"""Language-model students from a token store (issue 13, "Measure"): several seeds at matched
bytes per token, the time training from the store costs over label-only, the teacher in the loop
against the store, and the Hugging Face Trainer against logitcache's own loop.

    python -m benchmarks.lm_students [--seeds 3] [--rounds 5] [--work DIR] [--skip students,time,online,hf]

Everything runs from ``pipelines/shakespeare.toml`` (its teacher and stores are made first, or
reused when complete): a 2-layer GPT teacher on the plays' bytes, dumped as fp16 (dense), topk:8
and sample:12 (the last two at matched bytes/token), and a 1-layer GPT student.

1. Students: the recipe's four students (label-only, KD from each codec) for each seed, and KD
   students from more targets per position (``--budgets``, dumped into the work dir); the last
   epoch's validation loss, perplexity and top-1 agreement with the teacher on the held-out text.
2. Time: each student trained without validation for 1 and for 3 epochs, ``--rounds`` times,
   interleaved (label-only, dense, topk, sample, then again): the difference is an epoch's cost,
   the rest the run's setup (store opened, targets loaded); then again with a wider student
   (``--wider-student``, the teacher's shape), whose step costs more while the targets' do not.
   Every time is this process's CPU seconds at one torch thread, the fewest over the rounds: other
   jobs on a shared machine stretch the wall clock far more than that, and the least disturbed
   round is the closest to the cost itself.
3. Teacher in the loop: the same student, loop and loss through ``logitcache.lm`` (a plain PyTorch
   loop over ``TokenStoreDataset`` batches), the targets read from the topk:8 store against the
   teacher's dense logits computed each step; interleaved rounds.
4. Hugging Face Trainer: a GPT-2 student built from a local config, one epoch of the topk:8 store
   through ``logitcache.hf.DistillationTrainer`` and through ``logitcache train --student
   hf-config:DIR``, same batch, optimizer, learning rate and steps; interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from logitcache.dump import dump
from logitcache.lm import TokenStoreDataset
from logitcache.pipeline_plan import plan
from logitcache.pipeline_run import run_pipeline
from logitcache.train import train

RECIPE = Path(__file__).resolve().parents[1] / "pipelines" / "shakespeare.toml"


def quiet(*_):
    pass


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def student_table(steps, work: Path, seeds: int, budgets: list[str]) -> None:
    """Each student of the recipe, once per seed (runs already complete are read back), then KD
    students from more targets per position (``budgets``: codecs dumped into a store of the work dir)."""
    students = dict(steps.students)
    for codec in budgets:
        name = codec.replace(":", "")
        dump(replace(steps.dumps["dump topk"], store=str(work / "budgets.zarr"), teacher_name=name, codec=codec,
                     progress=False), log=quiet)  # resumes to nothing when already complete
        students[f"kd-{codec}"] = replace(steps.students["kd-topk"], store=str(work / "budgets.zarr"), teacher=name)
    print(f"\n| student ({steps.students['label-only'].student}, {steps.students['label-only'].epochs} epochs) "
          "| bytes/token | val loss (nats/token) | perplexity | top-1 agreement | seeds: val loss |")
    print("|---|---:|---:|---:|---:|---|")
    for name, config in students.items():
        losses, ppls, agreements = [], [], []
        for seed in range(seeds):
            out = work / "seeds" / name / f"seed{seed}"
            if not (out / "summary.json").exists():
                train(replace(config, out=str(out), seed=seed, progress=False, overwrite=True), log=quiet)
            last = records(out)[-1]
            losses.append(last["val_loss"])
            ppls.append(last["val_ppl"])
            agreements.append(last["val_agreement"])
        print(f"| {name} | {bytes_per_token(config)} | {mean_sd(losses, '.4f')} | {mean_sd(ppls, '.3f')} | "
              f"{mean_sd([100 * a for a in agreements], '.2f')}% | {', '.join(f'{x:.4f}' for x in losses)} |")


def bytes_per_token(config) -> str:
    if config.loss == "ce":
        return "-"
    from logitcache.store import open_store

    store = open_store(config.store)
    teacher = store.teacher(config.teacher)
    return f"{teacher.nbytes_stored() / store.dataset['num_tokens']:.1f}"


def mean_sd(values: list[float], fmt: str) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{fmt}} ± {sd:{fmt}}"


def cpu_seconds(run) -> float:
    """The CPU seconds this process spends in ``run()``: on a shared machine, other jobs stretch the
    wall clock, much less a single-threaded process's own CPU time (``--threads 1``)."""
    started = time.process_time()
    run()
    return time.process_time() - started


def time_from_store(students: dict, work: Path, rounds: int) -> None:
    """CPU seconds of a run from the store against label-only: runs of 1 and of 3 epochs, their
    difference the cost of an epoch, the rest the run's setup; interleaved rounds."""
    warm = replace(students["label-only"], out=str(work / "timing" / "warm-up"), epochs=1, val_store=None,
                   progress=False, overwrite=True)
    train(warm, log=quiet)  # imports and first-call costs, untimed
    runs = {name: {1: [], 3: []} for name in students}
    student = students["label-only"].student
    for r in range(rounds):
        for name, config in students.items():
            for epochs in (1, 3):
                once = replace(config, out=str(work / "timing" / student / name / f"round{r}-{epochs}"), epochs=epochs,
                               val_store=None, progress=False, overwrite=True)
                runs[name][epochs].append(cpu_seconds(lambda: train(once, log=quiet)))
    fewest = {name: {e: min(v) for e, v in by.items()} for name, by in runs.items()}  # the least disturbed
    epoch = {name: (m[3] - m[1]) / 2 for name, m in fewest.items()}
    base = fewest["label-only"]
    steps = -(-len(TokenStoreDataset(students["label-only"].store, targets=False)) // students["label-only"].batch_size)
    print(f"\n| {student}: `logitcache train`, no validation, {rounds} interleaved rounds (fewest CPU s) | an epoch "
          "| / label-only | more per step | setup (store opened, targets loaded) | 3-epoch run | / label-only |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, m in fewest.items():
        extra = (epoch[name] - epoch["label-only"]) / steps * 1e3
        print(f"| {name} | {epoch[name]:.2f} | {epoch[name] / epoch['label-only']:.3f} | {extra:+.2f} ms | "
              f"{m[1] - epoch[name]:.2f} | {m[3]:.2f} | {m[3] / base[3]:.3f} |")


def plain_loop_epoch(student, data, teacher=None, seed: int = 0) -> float:
    """One epoch of the README's plain PyTorch loop; the teacher, if given, runs on every batch."""
    from torch.utils.data import DataLoader

    from logitcache.lm import collate_tokens, distillation_loss

    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=0.1)
    loader = DataLoader(data, batch_size=32, shuffle=True, collate_fn=collate_tokens,
                        generator=torch.Generator().manual_seed(seed))
    started = time.process_time()
    for batch in loader:
        if teacher is not None:
            with torch.no_grad():
                batch["teacher_logits"] = teacher(batch["input_ids"])
        kd_weight = 1.0 if any(name.startswith("teacher_") for name in batch) else 0.0  # label-only: CE alone
        loss = distillation_loss(student(batch["input_ids"]), batch, temperature=1.0, kd_weight=kd_weight,
                                 ce_weight=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.process_time() - started


def time_online(steps, rounds: int) -> None:
    """The teacher in the loop against its stored top-k targets, through logitcache.lm."""
    from logitcache.sources import get_model

    config = steps.students["kd-topk"]
    teacher = get_model(steps.dumps["dump topk"].teacher, 256).eval()
    stored, tokens_only = TokenStoreDataset(config.store, "topk"), TokenStoreDataset(config.store, targets=False)
    seconds = {"label-only": [], "from the store (topk:8)": [], "teacher in the loop (dense)": []}
    for r in range(rounds):
        for what, data, in_loop in (("label-only", tokens_only, None), ("from the store (topk:8)", stored, None),
                                    ("teacher in the loop (dense)", tokens_only, teacher)):
            torch.manual_seed(r)
            student = get_model(config.student, 256)
            seconds[what].append(plain_loop_epoch(student, data, in_loop, seed=r))
    store_s = min(seconds["from the store (topk:8)"])
    print(f"\n| plain PyTorch loop (logitcache.lm), one epoch, {rounds} rounds | CPU s (fewest) | / store |")
    print("|---|---:|---:|")
    for what, values in seconds.items():
        print(f"| {what} | {min(values):.2f} | {min(values) / store_s:.3f} |")


def time_hf_trainer(steps, work: Path, rounds: int) -> None:
    """The same GPT-2 student, store and steps through the Hugging Face Trainer and logitcache train."""
    from transformers import AutoModelForCausalLM, GPT2Config, TrainingArguments

    from logitcache.hf import DistillationTrainer

    config_dir = work / "gpt2-student"
    gpt2 = GPT2Config(vocab_size=256, n_positions=128, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    gpt2.save_pretrained(config_dir)
    base = replace(steps.students["kd-topk"], student=f"hf-config:{config_dir}", epochs=1, val_store=None,
                   progress=False, overwrite=True)
    seconds, losses = {"logitcache train": [], "Hugging Face Trainer": []}, {}
    for r in range(rounds):
        out = work / "hf" / f"logitcache{r}"
        seconds["logitcache train"].append(cpu_seconds(lambda: train(replace(base, out=str(out), seed=r), log=quiet)))
        losses["logitcache train"] = records(out)[-1]["train_loss"]
        torch.manual_seed(r)
        model = AutoModelForCausalLM.from_config(gpt2)  # what hf-config:DIR builds, as the Trainer takes it
        args = TrainingArguments(str(work / "hf" / f"trainer{r}"), per_device_train_batch_size=base.batch_size,
                                 num_train_epochs=1, learning_rate=base.lr, weight_decay=base.weight_decay,
                                 lr_scheduler_type="cosine", warmup_steps=0, save_strategy="no", report_to=[],
                                 logging_strategy="no", disable_tqdm=True, use_cpu=True, seed=r,
                                 dataloader_num_workers=0)
        trainer = DistillationTrainer(model=model, args=args, train_dataset=TokenStoreDataset(base.store, "topk"))
        result = []
        seconds["Hugging Face Trainer"].append(cpu_seconds(lambda: result.append(trainer.train())))
        losses["Hugging Face Trainer"] = result[0].training_loss
    ours = min(seconds["logitcache train"])
    print(f"\n| GPT-2 student (hf-config), topk:8, one epoch, {rounds} rounds | CPU s (fewest) | / logitcache "
          "| mean train loss (last round) |")
    print("|---|---:|---:|---:|")
    for what, values in seconds.items():
        print(f"| {what} | {min(values):.2f} | {min(values) / ours:.3f} | "
              f"{losses[what]:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", default="topk:32,sample:32",
                        help="more KD students, from these codecs (dumped into the work dir)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--wider-student", default="gpt:n_layer=2,n_head=2,n_embd=64,block_size=128",
                        help="the timing again with this student (the teacher's shape)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the timings are CPU seconds)")
    parser.add_argument("--work", default=None, help="where the seeds' and timing runs go (default: a temporary dir)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: students,time,online,hf")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    run_pipeline(RECIPE, log=quiet, progress=False)  # the teacher and its stores (reused when complete)
    steps = plan(RECIPE, progress=False)
    work = Path(args.work or tempfile.mkdtemp(prefix="lm_students_"))
    print(f"recipe {RECIPE.name}; runs in {work}; torch threads {torch.get_num_threads()}")
    if "students" not in skip:
        student_table(steps, work, args.seeds, [c for c in args.budgets.split(",") if c])
    if "time" not in skip:
        time_from_store(steps.students, work, args.rounds)
        wider = {name: replace(steps.students[name], student=args.wider_student)
                 for name in ("label-only", "kd-topk", "kd-sample")}
        time_from_store(wider, work, args.rounds)
    if "online" not in skip:
        time_online(steps, args.rounds)
    if "hf" not in skip:
        time_hf_trainer(steps, work, args.rounds)


if __name__ == "__main__":
    main()
