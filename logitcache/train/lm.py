"""Stage 2 for language models: train a causal LM student on token data, read top to bottom.

    $ logitcache train --store lm.zarr --val-store val.zarr --student gpt:n_layer=2 --loss kl --out runs/kd
    $ logitcache train --dataset 'text:plays/*.md@train' --val-dataset 'text:plays/*.md@val' \\
          --tokenizer bytes --seq-len 256 --student gpt:n_layer=4 --loss ce --out runs/teacher

A token store is the training set itself: its sequences, loss mask and teacher targets (``lm.py``,
``TokenStoreDataset``); without a store, ``--dataset`` and ``--tokenizer`` make the sequences
(label-only, ``--loss ce``: how a newcomer trains a teacher to dump). The loop: check the options,
build the student and check it predicts the store's vocabulary over a whole sequence, then per
epoch: the order (a function of seed and epoch), batches of sequences, forward,
``ce_weight * CE + kd_weight * KL`` per target token (``losses/token_sums.py``), backward, step;
validation cross-entropy, perplexity and top-1 agreement with the teacher (``--val-store``);
metrics, checkpoints. Under torchrun each step's loss is divided by the whole step's target count
(every rank's batch), so two processes at batch B train what one process at 2B does.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..devices import resolve_device
from ..distributed import Distributed, distributed
from ..errors import ModelError, StoreMismatchError
from ..lm import TokenStoreDataset, teacher_of
from ..progress import progress_bar
from ..sources import get_model, get_token_dataset, get_tokenizer, lm_context_length
from ..store import open_store
from ..losses import target_positions, token_loss, token_loss_sums
from .board import open_board
from .config import TrainConfig, get_lr, validate
from .data import EpochSampler
from .lm_checks import check_expected_teacher, token_config
from .loop import TrainSummary, summary_record
from .resume import best, check_step_loss, hold_run, open_resume, prepare_run, save_epoch, weights_error
from .run_files import RunFiles
from .student import build_optimizer, wrap_ddp


@dataclass
class LMTrainSummary(TrainSummary):
    def lines(self) -> list[str]:
        last, best_epoch = self.last, self.best
        lines = [f"trained {self.epochs} epochs in {self.seconds:.1f} s -> {self.out}",
                 f"  last epoch: {_val_text(last)}, train loss {last['train_loss']:.4f}, "
                 f"{last['tokens_per_second']:,.0f} tokens/s"]
        if last.get("val_loss") is not None:
            lines.append(f"  best epoch {best_epoch['epoch']}: val loss {best_epoch['val_loss']:.4f} nats/token, "
                         f"perplexity {best_epoch['val_ppl']:.3f}")
        return lines


def train_lm(config: TrainConfig, log=print) -> LMTrainSummary:
    """Train one LM student on token data; resumable at epoch boundaries (see ``loop.train``)."""
    store = open_store(config.store, storage_options=config.storage_options) if config.store else None
    config = token_config(config, store)
    validate(config)
    run = RunFiles(Path(config.out))
    with distributed(config.device) as dist, hold_run(run, dist):
        return _train(config, store, run, dist, log if dist.is_main else _quiet)


def _train(config: TrainConfig, store, run: RunFiles, dist: Distributed, log) -> LMTrainSummary:
    device = resolve_device(dist.device(config.device))
    resumed = open_resume(run, config, dist, log)  # before any data is read: refuses a changed run at once

    # Data: the training sequences (and their teacher targets), the held-out ones.
    train_data, tokenizer = _training_data(config, store, log)
    val_data = _validation_data(config, train_data, tokenizer, log)

    # The student, checked against the data before any step.
    student = _checked_student(config, train_data.vocab_size, [train_data, val_data], device)
    model = wrap_ddp(student, dist, device)
    optimizer = build_optimizer(config, student)
    start_epoch, history = prepare_run(run, config, resumed, student, optimizer, dist, log)

    sampler = _sampler(config, train_data, dist)
    steps_per_epoch = -(-len(sampler) // config.batch_size)
    board = open_board(config, (start_epoch - 1) * steps_per_epoch, log, enabled=dist.is_main)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        sampler.set_epoch(epoch)
        torch.manual_seed(config.seed * 100_003 + epoch + 1_000_003 * dist.rank)  # a function of (seed, epoch, rank)
        epoch_start = time.perf_counter()
        losses, tokens = train_one_epoch(model, train_data, sampler, optimizer, config, epoch, device, dist, board)
        train_seconds = time.perf_counter() - epoch_start
        dist.agree(weights_error(student, config, epoch))
        record = None
        if dist.is_main:
            run.append_steps(epoch, losses)
            record = {**_epoch_record(epoch, losses), **evaluate(student, val_data, config, device),
                      "train_tokens": tokens, "tokens_per_second": round(tokens / max(train_seconds, 1e-9), 1),
                      "epoch_seconds": round(time.perf_counter() - epoch_start, 3)}
            history.append(record)
            board.epoch(record, epoch * steps_per_epoch - 1)  # flushed before the checkpoint: a resume purges the rest
            save_epoch(run, config, student, optimizer, train_data.vocab_size, history)
            log(_epoch_line(record, config.epochs))
        else:
            history.append(None)
        history[-1] = dist.broadcast(record)
        dist.agree()
    summary = LMTrainSummary(config.out, config.epochs, time.perf_counter() - started, history[-1],
                             best(history), history)
    if dist.is_main:
        run.finish(summary_record(summary))
    board.close()
    dist.agree()
    return summary


def _training_data(config: TrainConfig, store, log) -> tuple[TokenStoreDataset, dict]:
    """The training sequences with their teacher's targets (when the loss reads them), and the
    tokenizer record they were made with."""
    if store is None:
        tokenizer = get_tokenizer(config.tokenizer)
        source = get_token_dataset(config.dataset, tokenizer, config.seq_len)
        data = TokenStoreDataset.from_arrays(source.tokens, source.loss_mask, source.lengths, tokenizer.vocab_size)
        log(f"training on {config.dataset}: {len(data)} sequences x {data.seq_len} tokens, "
            f"{int(data.targets_per_sequence.sum())} targets, vocabulary {tokenizer.vocab_size}")
        return data, tokenizer.describe()
    reads_teacher = token_loss(config.loss).needs_teacher
    data = TokenStoreDataset(store, config.teacher, targets=reads_teacher, cache_budget=config.cache_budget,
                             allow_partial=config.allow_partial)
    what = "no teacher read (--loss ce)"
    if data.targets is not None:
        check_expected_teacher(data.teacher, config.expect_teacher)
        mode = "in memory" if data.targets.in_memory else f"read by chunk, {data.targets.window_chunks} cached"
        what = f"teacher {data.teacher.name!r} ({data.targets.codec.name}, {mode})"
    log(f"training on {config.store}: {len(data)} sequences x {data.seq_len} tokens, "
        f"{int(data.targets_per_sequence.sum())} targets, vocabulary {data.vocab_size}; {what}")
    return data, store.dataset["tokenizer"]


def _validation_data(config: TrainConfig, train_data: TokenStoreDataset, tokenizer: dict, log):
    """The held-out sequences (with the teacher's targets, from --val-store), or None."""
    if config.val_store:
        val_store = open_store(config.val_store, storage_options=config.storage_options)
        if not val_store.is_tokens:
            raise StoreMismatchError(f"--val-store {config.val_store} holds labelled samples, not token sequences")
        _same_vocabulary(f"--val-store {config.val_store}", val_store.dataset["tokenizer"], val_store.vocab_size,
                         tokenizer, train_data.vocab_size)
        name = config.teacher if config.teacher in val_store.all_teacher_names else None
        data = TokenStoreDataset(val_store, name, targets=bool(val_store.all_teacher_names),
                                 cache_budget=config.cache_budget)
        teacher = f", agreement with teacher {data.teacher.name!r}" if data.teacher is not None else ""
        where = config.val_store
    elif config.val_dataset:
        val_tokenizer = get_tokenizer(config.tokenizer or tokenizer["spec"])  # the training data's (lm_checks.py)
        source = get_token_dataset(config.val_dataset, val_tokenizer, config.seq_len or train_data.seq_len)
        data = TokenStoreDataset.from_arrays(source.tokens, source.loss_mask, source.lengths, train_data.vocab_size)
        teacher, where = "", config.val_dataset
    else:
        return None
    log(f"validating on {where}: {len(data)} sequences, {int(data.targets_per_sequence.sum())} targets{teacher}")
    return data


def _same_vocabulary(what: str, record: dict, vocab_size: int, training: dict, training_vocab: int) -> None:
    if vocab_size != training_vocab or record.get("identity") != training.get("identity"):
        raise StoreMismatchError(f"{what} has tokenizer {record.get('spec')!r} ({record.get('vocab_size')} ids, vocabulary "
                                 f"{vocab_size}), but the training data was made with {training.get('spec')!r} "
                                 f"({training.get('vocab_size')} ids, vocabulary {training_vocab}): they must match")


def _checked_student(config: TrainConfig, vocab_size: int, datasets: list, device):
    """The student, built under the run's seed; one forward pass over a whole sequence checks
    that it is a causal LM whose head predicts exactly the store's vocabulary."""
    torch.manual_seed(config.seed)
    student = get_model(config.student, vocab_size).to(device)
    length = max(d.seq_len for d in datasets if d is not None)
    context = lm_context_length(student)
    if context is not None and length > context:
        raise ModelError(f"the student's context is {context} tokens, shorter than the sequences ({length} tokens); "
                         "give it a longer context (gpt: block_size)")
    student.eval()
    with torch.no_grad():
        try:
            logits = _logits(student(torch.zeros((1, length), dtype=torch.long, device=device)))
        except Exception as err:
            raise ModelError(f"the student fails on a sequence of {length} token ids: "
                             f"{str(err).strip().splitlines()[0]}") from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or tuple(logits.shape[:2]) != (1, length):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(f"the student outputs {shape} for one sequence of {length} tokens; token data needs a causal "
                         "LM's (batch, positions, vocabulary) logits")
    if logits.shape[2] != vocab_size:
        raise ModelError(f"the student predicts {logits.shape[2]} tokens per position, but the training data's "
                         f"vocabulary is {vocab_size} (the teacher head's width): build the student with that "
                         "vocabulary")
    return student


def _sampler(config: TrainConfig, data: TokenStoreDataset, dist: Distributed) -> EpochSampler:
    """A seeded order of the sequences; block-shuffled by chunk when the targets are read by chunk."""
    streamed = data.targets is not None and not data.targets.in_memory
    per_chunk = data.targets.rows_per_chunk // data.seq_len if streamed else None
    return EpochSampler(np.arange(len(data)), config.seed, block_rows=per_chunk,
                        window_blocks=data.targets.window_chunks if streamed else 1,
                        rank=dist.rank, world_size=dist.world_size)


def _step_targets(sampler: EpochSampler, data: TokenStoreDataset, batch_size: int) -> list[int]:
    """Target tokens per step over every rank's batch: what each step's loss is divided by."""
    counts = data.targets_per_sequence
    total = None
    for rank in range(sampler.world_size):
        other = copy.copy(sampler)
        other.rank = rank
        order = other.rank_order()
        steps = np.add.reduceat(counts[order], np.arange(0, len(order), batch_size)) if len(order) else []
        total = np.asarray(steps) if total is None else total + steps
    return [int(t) for t in total]


def train_one_epoch(model, data: TokenStoreDataset, sampler: EpochSampler, optimizer, config: TrainConfig, epoch: int,
                    device, dist: Distributed, board=None) -> tuple[list[tuple], int]:
    """One pass over this rank's sequences; returns (step, lr, loss, ce, kd) per step (means over
    every rank's target tokens; also written to ``board``, the run's TensorBoard, if any) and the
    tokens read by all ranks. Stops at a non-finite loss."""
    model.train()
    order = sampler.rank_order()
    batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    step_targets = _step_targets(sampler, data, config.batch_size)
    reads_teacher = token_loss(config.loss).needs_teacher
    losses, tokens = [], 0
    bar = progress_bar(batches, desc=f"epoch {epoch}/{config.epochs}", unit="step", leave=False,
                       enabled=config.progress and dist.is_main)
    for step_in_epoch, indices in enumerate(bar):
        step = (epoch - 1) * len(batches) + step_in_epoch
        lr = get_lr(config, step, len(batches))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = {name: value.to(device, non_blocking=True) for name, value in data.batch(indices).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = _logits(model(batch["input_ids"]))
        sums = token_loss_sums(logits, batch["labels"], teacher_of(batch) if reads_teacher else None,
                               config.temperature)
        # Each rank's sum over the whole step's targets, times world_size: DDP's mean of the ranks'
        # gradients is then the gradient of the mean over every target token of the step.
        loss = sums.total(config.ce_weight, config.kd_weight) * (dist.world_size / max(step_targets[step_in_epoch], 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ce, kd = (v / max(step_targets[step_in_epoch], 1) for v in dist.sum([sums.ce.item(), sums.kd.item()]))
        losses.append((step, lr, config.ce_weight * ce + config.kd_weight * kd, ce, kd))
        check_step_loss(losses[-1], config, epoch, step_in_epoch, len(batches))
        tokens += int(batch["attention_mask"].sum())
        bar.set_postfix(loss=f"{losses[-1][2]:.4f}", refresh=False)  # shown at the bar's next redraw
        if board is not None:
            board.step(*losses[-1])
    return losses, int(dist.sum([tokens])[0])


@torch.no_grad()
def evaluate(model, data: TokenStoreDataset | None, config: TrainConfig, device) -> dict:
    """Validation cross-entropy (nats per target token), perplexity, and the share of target
    positions where the student's top token is the teacher's (with a --val-store)."""
    if data is None:
        return {"val_loss": None, "val_ppl": None, "val_agreement": None}
    model.eval()
    total, count, agree = 0.0, 0, 0
    for start in range(0, len(data), config.batch_size):
        indices = np.arange(start, min(start + config.batch_size, len(data)))
        batch = {name: value.to(device) for name, value in data.batch(indices, teacher=False).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = _logits(model(batch["input_ids"]))
        sums = token_loss_sums(logits, batch["labels"], None)
        total, count = total + sums.ce.item(), count + sums.count
        if data.targets is not None:
            teacher_top = data.targets.top1(data.sequences[indices]).to(device)
            agree += int(((logits.argmax(-1) == teacher_top) & target_positions(batch["labels"])).sum())
    if count == 0:
        return {"val_loss": None, "val_ppl": None, "val_agreement": None}
    loss = total / count
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)),
            "val_agreement": agree / count if data.targets is not None else None}


def _logits(output):
    """A causal LM's logits: the tensor itself, or the ``logits`` of a Hugging Face output."""
    return getattr(output, "logits", output)


def _epoch_record(epoch: int, losses: list[tuple]) -> dict:
    means = {f"train_{name}": sum(x[i] for x in losses) / max(len(losses), 1)
             for i, name in ((2, "loss"), (3, "ce"), (4, "kd"))}
    return {"epoch": epoch, "lr": losses[-1][1] if losses else None, **means}


def _val_text(record: dict) -> str:
    if record.get("val_loss") is None:
        return "no validation data"
    agreement = record.get("val_agreement")
    teacher = f", agreement with the teacher {agreement:.2%}" if agreement is not None else ""
    return f"val loss {record['val_loss']:.4f} nats/token (perplexity {record['val_ppl']:.3f}){teacher}"


def _epoch_line(record: dict, epochs: int) -> str:
    return (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} (ce {record['train_ce']:.4f}, "
            f"kd {record['train_kd']:.4f}), {_val_text(record)}, {record['tokens_per_second']:,.0f} tokens/s, "
            f"{record['epoch_seconds']:.1f} s")


def _quiet(*_):
    pass


__all__ = ["LMTrainSummary", "evaluate", "train_lm", "train_one_epoch"]
