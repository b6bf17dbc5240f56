"""Pick the torch device a stage runs on: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or ``auto``.

    >>> resolve_device("auto")   # cuda when a GPU is visible, else cpu
"""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """The device ``name`` means here; asking for a GPU that is not there is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a torch device (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    return device
