"""Stage 2, ``logitcache train``: train a student from a store (or from labels alone).

    >>> from logitcache.train import TrainConfig, train
    >>> summary = train(TrainConfig(out="data/runs/dist", student="mlp:hidden=32", dataset="digits@train",
    ...                             val_dataset="digits@val", store="data/stores/digits.zarr", loss="dist"))

The package, file by file:

- ``config.py``: ``TrainConfig``, the options and the one source of their defaults, their checks,
  the learning-rate schedule, and what ``--resume`` may change (no torch).
- ``run.py``: ``train()``: token data to ``lm.py``, images to ``loop.py``.
- ``loop.py``: the image run, read top to bottom: data, student, loss, then epoch after epoch.
- ``lm.py``: the language-model run on token data; ``lm_checks.py``: its defaults and the options
  it refuses.
- ``student.py``: the optimizer and the DDP wrapper every run uses.
- ``data.py``: every sample paired with its teacher's targets, in memory or streamed by chunk,
  and the epoch sampler.
- ``resume.py``: resuming a run exactly, checkpoints, and stopping at a non-finite loss.
- ``run_files.py``: a run directory's files, written so a crash never tears them, and its lock.

``TrainConfig`` imports nothing heavy; the rest loads on first use.
"""

from .config import TrainConfig

__all__ = ["TrainConfig", "TrainSummary", "evaluate", "get_lr", "train", "train_one_epoch"]


def __getattr__(name: str):
    if name == "train":
        from .run import train

        return train
    if name in ("TrainSummary", "evaluate", "train_one_epoch", "get_lr"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'logitcache.train' has no attribute {name!r}")
