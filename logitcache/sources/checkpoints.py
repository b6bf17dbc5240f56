"""The checkpoints ``logitcache train`` writes, and how a later stage rebuilds their model.

    >>> save_checkpoint("runs/t/last.pt", model=model, model_spec="cnn", num_classes=10, state={...})
    >>> model = model_from_checkpoint("runs/t/best.pt")          # also: --teacher checkpoint:PATH

A checkpoint is a dict of tensors and plain values (no pickled objects), so it loads with
``torch.load(weights_only=True)``. Writes go to a temp file and are renamed into place, so a
crash never leaves a torn checkpoint, and a model whose weights are not finite is never written.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from ..errors import CheckpointError

CHECKPOINT_FORMAT = "logitcache-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path, *, model, model_spec: str, num_classes: int, state: dict) -> None:
    """Atomically write model weights, how to rebuild the model, and any training ``state``.

    Raises:
        CheckpointError: a parameter holds NaN or inf, or a buffer NaN (nothing is written).
    """
    import torch

    path = Path(path)
    bad = non_finite_weights(model)
    if bad:
        raise CheckpointError(f"not writing {path}: {describe_non_finite(bad)}")
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


def non_finite_weights(model) -> list[str]:
    """Names of the parameters holding NaN or inf, and of the buffers holding NaN, in order.

    Buffers may hold inf on purpose (attention masks of -inf), never NaN.
    """
    import torch

    bad = [name for name, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    return bad + [name for name, b in model.named_buffers() if b.is_floating_point() and torch.isnan(b).any()]


def describe_non_finite(names: list[str]) -> str:
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"the weights are not finite ({', '.join(names[:3])}{more})"


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
