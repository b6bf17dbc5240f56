"""A causal LM split at its output head, so the (positions x vocabulary) logits can be made a
chunk of positions at a time, by the dump and by a student's loss.

    >>> split = split_lm(model, probe)            # None: no split (the caller makes whole logits)
    >>> hidden = split.hidden_states(idx)         # (B, T, H): everything before the head
    >>> split.head_logits(hidden[:, :128])        # (B, 128, V): the model's own logits at those positions

A model offers the split with two methods, ``hidden_states(idx)`` and ``head_logits(hidden)``
(logitcache's ``gpt`` and the Hugging Face wrapper ``hf_models.CausalLM`` have them: the latter
applies what the architecture does after the head, Cohere's logit scale, Granite's scaling and
Gemma's final soft-capping). The split is proven on a probe before it is trusted: the model's own
forward and the split must give the same logits, else the caller falls back to whole logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

PROBE_TOLERANCE = 1e-5  # relative to the logits' scale: the same operations, so only kernel noise


@dataclass(frozen=True)
class SplitLM:
    """The two halves of a causal LM's forward."""

    hidden_states: Callable[[torch.Tensor], torch.Tensor]  # (B, T) int64 -> (B, T, H)
    head_logits: Callable[[torch.Tensor], torch.Tensor]  # (..., H) -> (..., V)


def split_lm(model, probe: torch.Tensor | None = None) -> SplitLM | None:
    """``model``'s split (looking through DDP and compile wrappers), or None when it has none or the
    split's logits differ from its forward's on ``probe`` ((1, T) token ids; no check without one)."""
    inner = model
    for attribute in ("module", "_orig_mod"):
        inner = getattr(inner, attribute, inner)
    if not (callable(getattr(inner, "hidden_states", None)) and callable(getattr(inner, "head_logits", None))):
        return None
    split = SplitLM(inner.hidden_states, inner.head_logits)
    if probe is not None and not _agrees(inner, split, probe):
        return None
    return split


@torch.no_grad()
def _agrees(model, split: SplitLM, probe: torch.Tensor) -> bool:
    whole = model(probe)
    whole = getattr(whole, "logits", whole).float()  # a Hugging Face output, or the logits themselves
    parts = split.head_logits(split.hidden_states(probe)).float()
    if whole.shape != parts.shape:
        return False
    scale = whole.abs().max().clamp_min(1.0)
    return bool(((whole - parts).abs().max() <= PROBE_TOLERANCE * scale).item())
