"""What ``logitcache.lm``'s losses refuse: a batch, logits and numbers the loss is not defined for,
each in one line before any torch error deep in the loss or a nan, inf or -inf loss (the CLI checks
its options the same way, in ``train/train_config.py``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

from .codecs.sample import MAX_TEMPERATURE, MIN_TEMPERATURE
from .errors import ConfigError


def checked_labels(batch, temperature, kd_weight, ce_weight=1.0) -> Tensor:
    """The batch's (B, L) labels, once the batch and the loss's numbers are ones it is defined for:
    otherwise one line here, never a torch error deep in the loss or a nan, inf or -inf loss."""
    if not (isinstance(batch, Mapping) and isinstance(batch.get("labels"), Tensor) and batch["labels"].dim() == 2
            and not batch["labels"].is_floating_point()):
        raise ConfigError("batch must be a dict with (batch, positions) integer 'labels' and the teacher_* targets: "
                          "a TokenStoreDataset batch (collate_tokens)")
    if not (isinstance(temperature, (int, float)) and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise ConfigError(f"temperature must be a number from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g} "
                          f"(outside it logits / T or T² leave float32), got {temperature!r}")
    weights = {"kd_weight": kd_weight, "ce_weight": ce_weight}
    for name, weight in weights.items():
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {weight!r}")
    if kd_weight + ce_weight == 0:
        raise ConfigError("kd_weight and ce_weight cannot both be 0: the loss would be 0")
    return batch["labels"]


def target_count(num_items_in_batch) -> float | None:
    """``num_items_in_batch`` as the loss's divisor: a positive count of target tokens, or None."""
    if num_items_in_batch is None:
        return None
    count = float(num_items_in_batch)
    if not (math.isfinite(count) and count > 0):
        raise ConfigError(f"num_items_in_batch must be a positive count of target tokens, got {num_items_in_batch!r}")
    return count
