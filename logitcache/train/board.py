"""``train --tensorboard``: the run's scalars as TensorBoard event files, in ``RUN/tensorboard``.

    >>> board = open_board(config.out, 0, print, enabled=config.tensorboard)   # says how to open it; else a no-op
    >>> board.step(step, lr, loss, ce, kd)                     # every step: train/loss, train/ce, train/kd, train/lr
    >>> board.epoch(record, step)                              # every epoch: val/top1, epoch/train_loss, ...
    >>> board.close()

Written through ``torch.utils.tensorboard`` (the ``tensorboard`` package: ``pip install
'logitcache[tensorboard]'``). Every scalar's x-axis is the global step (an epoch's at its last
step), so a ``--resume`` can continue the same event files: events from the step it
resumes at on (written before a crash, then redone) are purged. A fresh run starts them afresh.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError

BOARD_DIR = "tensorboard"


class Board:
    """A SummaryWriter with the scalars a run writes, under fixed names; without one (no
    --tensorboard, or not rank 0) every method does nothing."""

    def __init__(self, writer=None):
        self.writer = writer

    def step(self, step: int, lr: float, loss: float, ce: float, kd: float) -> None:
        if self.writer is None:
            return
        for name, value in (("loss", loss), ("ce", ce), ("kd", kd), ("lr", lr)):
            self.writer.add_scalar(f"train/{name}", value, step)

    def epoch(self, record: dict, step: int) -> None:
        """Every number of an epoch's record at global ``step``: val_top1 -> val/top1, train_loss ->
        epoch/train_loss, epoch -> epoch/epoch."""
        if self.writer is None:
            return
        for key, value in record.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # a metric without a value (no validation set): None
            name = f"val/{key.removeprefix('val_')}" if key.startswith("val_") else f"epoch/{key}"
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_board(out: str, start_step: int, log, enabled: bool) -> Board:
    """The board of the run in ``out``, writing when ``enabled`` (--tensorboard, on rank 0), after
    one line on how to open it.

    Raises:
        ConfigError: the tensorboard package is not installed.
    """
    if not enabled:
        return Board()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'logitcache[tensorboard]' "
                          "(or pip install tensorboard)") from None
    directory = Path(out) / BOARD_DIR
    if start_step == 0:  # a fresh (or overwritten) run: earlier event files belong to the run it replaces
        shutil.rmtree(directory, ignore_errors=True)
    writer = SummaryWriter(log_dir=str(directory), purge_step=start_step if start_step > 0 else None)
    log(f"tensorboard: tensorboard --logdir {directory}")
    return Board(writer)
