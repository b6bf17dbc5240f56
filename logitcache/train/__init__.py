"""Stage 2, ``logitcache train``: train a student from a store (or from labels alone).

    >>> from logitcache.train import TrainConfig, train
    >>> summary = train(TrainConfig(out="data/runs/dist", student="mlp:hidden=32", dataset="digits@train",
    ...                             val_dataset="digits@val", store="data/stores/digits.zarr", loss="dist"))

The package, file by file:

- ``train_config.py``: ``TrainConfig``, the options and the one source of their defaults, their checks,
  the learning-rate schedule, and what ``--resume`` may change (no torch).
- ``resolve.py``: which task a config trains (images or token sequences), its defaults and the
  options it refuses.
- ``trainer.py``: ``train()``, the one epoch loop, read top to bottom.
- ``image_task.py``: a classifier on images; ``token_task.py``: a causal LM on token sequences.
  Each answers the loop's few questions (``trainer.Task``).
- ``student.py``: the optimizer and the DDP wrapper every run uses.
- ``paired_data.py``: every sample paired with its teacher's targets, in memory or streamed by chunk,
  and the epoch sampler.
- ``checkpointing.py``: resuming a run exactly, checkpoints, and stopping at a non-finite loss.
- ``run_files.py``: a run directory's files, written so a crash never tears them, and its lock;
  ``run_summary.py``: what a run says when it ends.

``TrainConfig`` imports nothing heavy; the rest loads on first use.
"""

from .train_config import TrainConfig

__all__ = ["LMTrainSummary", "TrainConfig", "TrainSummary", "evaluate", "get_lr", "train", "train_one_epoch"]

def __getattr__(name: str):
    if name in ("train", "train_one_epoch"):
        from . import trainer

        return getattr(trainer, name)
    if name == "TrainSummary":
        from .run_summary import TrainSummary

        return TrainSummary
    if name == "get_lr":
        from .train_config import get_lr

        return get_lr
    if name == "evaluate":  # a classifier's validation loss, top-1 and top-5
        from .image_task import evaluate

        return evaluate
    if name == "LMTrainSummary":
        from .token_task import LMTrainSummary

        return LMTrainSummary
    raise AttributeError(f"module 'logitcache.train' has no attribute {name!r}")
