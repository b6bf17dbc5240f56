"""The checkpoints ``logitcache train`` writes, and how a later stage rebuilds their model.

    >>> save_checkpoint("runs/t/last.pt", model=model, model_spec="cnn", num_classes=10, state={...})
    >>> model = model_from_checkpoint("runs/t/best.pt")          # also: --teacher checkpoint:PATH

A checkpoint is a dict of tensors and plain values (no pickled objects), so it loads with
``torch.load(weights_only=True)``. Writes go to a temp file and are renamed into place, so a
crash never leaves a torn checkpoint.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from ..errors import CheckpointError

CHECKPOINT_FORMAT = "logitcache-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path, *, model, model_spec: str, num_classes: int, state: dict) -> None:
    """Atomically write model weights, how to rebuild the model, and any training ``state``."""
    import torch

    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_spec": model_spec,
        "num_classes": num_classes,
        "model": model.state_dict(),
        **state,
    }
    partial = path.with_name(f".{path.name}.partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def load_checkpoint(path) -> dict:
    """Read a logitcache checkpoint safely (weights_only=True) and check what it is.

    Raises:
        CheckpointError: missing, unreadable, or not a logitcache checkpoint.
    """
    import torch

    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a logitcache checkpoint")
    if data.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is checkpoint v{data['version']}, newer than this logitcache reads")
    return data


def model_from_checkpoint(path):
    """Rebuild the model a checkpoint was trained as, with its weights loaded."""
    from .models import get_model

    data = load_checkpoint(path)
    model = get_model(data["model_spec"], data["num_classes"])
    try:
        model.load_state_dict(data["model"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit {data['model_spec']}: {str(err).splitlines()[0]}") from None
    return model
