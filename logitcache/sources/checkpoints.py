"""The checkpoints ``logitcache train`` writes, how a later stage reads them back, and the
``checkpoint:FILE`` model scheme.

    >>> save_checkpoint("runs/t/last.pt", model=model, model_spec="cnn", num_classes=10, state={...})
    >>> data = load_checkpoint("runs/t/best.pt")
    >>> model = model_from_checkpoint("runs/t/best.pt")     # or get_model("checkpoint:runs/t/best.pt", 10)

A checkpoint is a dict of tensors and plain values (no pickled objects), so it loads with
``torch.load(weights_only=True)``. Writes go to a temp file and are renamed into place, so a
crash never leaves a torn checkpoint, and a model whose weights are not finite is never written.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, LogitCacheError
from ..whole_files import write_whole
from ._loading import load_failure, misfit, quiet_torch
from ._registry import register_model_scheme, rest_is_the_file
from .models import get_model

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
    write_whole(path, lambda partial: torch.save(payload, partial))  # whole, or one FileWriteError line


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
        there = Path(path).exists() or Path(path).is_symlink()  # a directory, a FIFO, a broken link
        raise CheckpointError(f"checkpoint {path} is not a file" if there else f"checkpoint {path} does not exist")
    try:
        with quiet_torch():
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's unpickler raises anything (KeyError, IndexError...) on junk
        raise CheckpointError(f"cannot read checkpoint {path}: {load_failure(err)}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a logitcache checkpoint")
    version = data.get("version")
    if not _is_int(version) or version < 1:
        raise CheckpointError(f"{path} is a logitcache checkpoint with an unreadable version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is checkpoint v{data['version']}, newer than this logitcache reads")
    _check_fields(path, data)
    return data


def _check_fields(path, data: dict) -> None:
    """The fields a later stage rebuilds the model from have the types save_checkpoint writes."""
    import torch

    model = data.get("model")
    problems = [
        (isinstance(data.get("model_spec"), str) and data["model_spec"], "model_spec is not a model spec"),
        (_is_int(data.get("num_classes")) and data["num_classes"] >= 1, "num_classes is not a positive integer"),
        (isinstance(model, dict) and all(isinstance(v, torch.Tensor) for v in model.values()),
         "model is not a state dict of tensors"),
    ]
    for ok, problem in problems:
        if not ok:
            raise CheckpointError(f"checkpoint {path} is damaged: {problem}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_OPENING: set[str] = set()  # checkpoints being rebuilt now: one whose model_spec leads back to itself is refused


@register_model_scheme("checkpoint", grammar="checkpoint:FILE", description="a model train saved, weights included",
                       weights_file=rest_is_the_file)
def checkpoint_model(path: str, num_classes: int):
    """The checkpoint's own model (its num_classes, not the one asked for)."""
    return model_from_checkpoint(path)


def model_from_checkpoint(path):
    """Rebuild the model a checkpoint was trained as, with its weights loaded."""
    data = load_checkpoint(path)
    key = str(Path(path).resolve())
    if key in _OPENING:
        raise CheckpointError(f"checkpoint {path}: its model_spec {data['model_spec']!r} leads back to itself")
    _OPENING.add(key)
    try:
        model = get_model(data["model_spec"], data["num_classes"])
    except CheckpointError:
        raise
    except LogitCacheError as err:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild its model: {err}") from None
    finally:
        _OPENING.discard(key)
    try:
        model.load_state_dict(data["model"], strict=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} does not fit {data['model_spec']}: {misfit(err)}") from None
    return model
