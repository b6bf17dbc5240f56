"""Stage 2, ``logitcache train``: one epoch loop for every student, read top to bottom.

    >>> from logitcache.train import TrainConfig, train
    >>> summary = train(TrainConfig(out="data/runs/dist", student="mlp:hidden=32", dataset="digits@train",
    ...                             val_dataset="digits@val", store="data/stores/digits.zarr", loss="dist"))
    >>> train(TrainConfig(out="runs/kd", student="gpt:n_layer=2", store="lm.zarr"))      # a token store

The run: resolve the options (``resolve.py``: which task, its defaults, its refusals), hold the run
directory, then the task's data and student (``image_task.py``: a classifier on images;
``token_task.py``: a causal LM on token sequences), the optimizer, a fresh start or an exact
resume, and per epoch: the order and the seed (a function of seed, epoch and rank), the steps
(lr from ``get_lr``, the task's loss, backward, step), the weights checked, the task's
evaluation, metrics, TensorBoard, the checkpoint, and ``Distributed.agree`` so that one rank's
error is every rank's. The task answers the few questions that differ (``Task`` below).
"""

from __future__ import annotations

import time
from collections.abc import Sized
from pathlib import Path
from typing import Protocol

import torch

from ..devices import resolve_device
from ..distributed import Distributed, distributed, is_main_process
from ..progress import progress_bar
from .board import open_board
from .train_config import TARGETS, TrainConfig, get_lr, options_record
from .image_task import ImageTask
from .resolve import resolve
from .checkpointing import best, check_step_loss, hold_run, open_resume, prepare_run, save_epoch, weights_error
from .run_files import RunFiles
from .run_targets import agreed_targets_record
from .student import build_optimizer, wrap_ddp
from .run_summary import TrainSummary
from .token_task import TokenTask


class Task(Protocol):
    """What the loop asks of the kind of data it trains on (``ImageTask``, ``TokenTask``)."""

    num_classes: int  # the head's width the checkpoint records: classes, or a language model's vocabulary
    connectors: torch.nn.Module | None  # trained beside the student and saved with it (feature losses)
    steps_per_epoch: int  # known once ``prepare`` ran

    def build(self, device) -> torch.nn.Module:
        """Read the data, then build the student under the run's seed and check it against the data."""

    def prepare(self, student, dist: Distributed) -> torch.nn.Module:
        """What else the run needs (teachers in the loop, connectors, the batches); returns the
        module whose parameters the optimizer trains."""

    def epoch_batches(self, epoch: int) -> Sized:
        """The epoch's batches on this rank, in order."""

    def step_loss(self, model, batch, epoch: int, step_in_epoch: int) -> tuple[torch.Tensor, tuple]:
        """The step's loss to backward, and the parts ``step_losses`` reports."""

    def before_optimizer_step(self) -> None:
        """After backward, before the step (connectors' gradients averaged over ranks)."""

    def step_losses(self, parts: tuple) -> tuple[float, float, float]:
        """The step's (loss, ce, kd), averaged over every rank's batch."""

    def epoch_totals(self, seconds: float) -> dict:
        """The epoch's counts every rank adds to (tokens read), for its record."""

    def evaluate(self, student) -> dict:
        """The validation metrics of the epoch's record."""

    def epoch_line(self, record: dict) -> str: ...

    def stop_error(self, record: dict) -> Exception | None:
        """An error to stop on after the epoch (a collapsed student), or None."""

    def summary(self, **fields) -> TrainSummary: ...


def train(config: TrainConfig, log=print) -> TrainSummary:
    """Train one student; resumable at epoch boundaries. Returns the closing summary.

    Under torchrun the student is wrapped in DistributedDataParallel, each rank takes every
    world_size-th sample (or sequence) of the epoch's order, and rank 0 alone evaluates, logs and
    checkpoints. Rank 0 holds the run directory's lock throughout; see ``checkpointing.py`` for that, for
    what a ``--resume`` may change, and for stopping at a non-finite loss (TrainingDivergedError).

    Raises:
        ConfigError: an option the run's task refuses, or a missing one (``resolve``).
    """
    resolved = resolve(config, log if is_main_process() else _quiet)  # every option checked before a file is written
    config = resolved.config
    run = RunFiles(Path(config.out))
    with distributed(config.device) as dist, hold_run(run, dist):
        log = log if dist.is_main else _quiet
        task_class = TokenTask if resolved.tokens else ImageTask
        targets = agreed_targets_record(config, resolved.store, resolved.tokens, dist)  # the stores' digests
        return _train(config, task_class(config, resolved.store, log), run, dist, log, targets)


def _train(config: TrainConfig, task: Task, run: RunFiles, dist: Distributed, log, targets: dict) -> TrainSummary:
    device = resolve_device(dist.device(config.device))
    options = {**options_record(config), TARGETS: targets}  # what config.json and every checkpoint record
    resumed = open_resume(run, options, dist, log)  # before any data is read: refuses a changed run at once
    student = task.build(device)
    model = wrap_ddp(student, dist, device)
    trained = task.prepare(student, dist)
    optimizer = build_optimizer(trained, config.optimizer, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    start_epoch, history = prepare_run(run, options, resumed, student, optimizer, dist, log, task.connectors)

    board = open_board(config.out, (start_epoch - 1) * task.steps_per_epoch, log,
                       enabled=config.tensorboard and dist.is_main)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        batches = task.epoch_batches(epoch)
        torch.manual_seed(config.seed * 100_003 + epoch + 1_000_003 * dist.rank)  # a function of (seed, epoch, rank)
        epoch_start = time.perf_counter()
        losses = train_one_epoch(task, model, optimizer, batches, config, epoch, dist, board)
        totals = task.epoch_totals(time.perf_counter() - epoch_start)
        dist.agree(weights_error(student, config.out, epoch))
        record = None
        if dist.is_main:
            run.append_steps(epoch, losses)
            record = {**epoch_record(epoch, losses), **task.evaluate(student), **totals,
                      "epoch_seconds": round(time.perf_counter() - epoch_start, 3)}
            history.append(record)
            board.epoch(record, epoch * task.steps_per_epoch - 1)  # flushed before the checkpoint: a resume purges the rest
            save_epoch(run, options, student, optimizer, task.num_classes, history, task.connectors)
            log(task.epoch_line(record))
        else:
            history.append(None)
        history[-1] = dist.broadcast(record)
        dist.agree(task.stop_error(history[-1]))
    summary = task.summary(out=config.out, epochs=config.epochs, seconds=time.perf_counter() - started,
                           last=history[-1], best=best(history), history=history)
    if dist.is_main:
        run.finish(summary.record())
    board.close()
    dist.agree()
    return summary


def train_one_epoch(task: Task, model, optimizer, batches: Sized, config: TrainConfig, epoch: int,
                    dist: Distributed, board=None) -> list[tuple]:
    """One pass over ``batches``; returns (step, lr, loss, ce, kd) per step, averaged over ranks
    (and writes each to ``board``, the run's TensorBoard, if any). Stops (TrainingDivergedError)
    at the first step whose loss is not finite, on every rank."""
    model.train()
    steps_per_epoch = len(batches)
    losses = []
    bar = progress_bar(batches, desc=f"epoch {epoch}/{config.epochs}", unit="step", leave=False,
                       enabled=config.progress and dist.is_main)
    for step_in_epoch, batch in enumerate(bar):
        step = (epoch - 1) * steps_per_epoch + step_in_epoch
        lr = get_lr(config, step, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, parts = task.step_loss(model, batch, epoch, step_in_epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        task.before_optimizer_step()
        optimizer.step()
        losses.append((step, lr, *task.step_losses(parts)))
        check_step_loss(losses[-1], config.out, epoch, step_in_epoch, steps_per_epoch)
        bar.set_postfix(loss=f"{losses[-1][2]:.4f}", refresh=False)  # shown at the bar's next redraw
        if board is not None:  # the run's TensorBoard (train_one_epoch is also called without one)
            board.step(*losses[-1])
    return losses


def epoch_record(epoch: int, losses: list[tuple]) -> dict:
    """The epoch's last lr and mean training losses."""
    means = {f"train_{name}": sum(x[i] for x in losses) / max(len(losses), 1)
             for i, name in ((2, "loss"), (3, "ce"), (4, "kd"))}
    return {"epoch": epoch, "lr": losses[-1][1] if losses else None, **means}


def _quiet(*_):
    pass
