"""A teacher writing responses token by token, for ``dump --generate``: the next-token choice and
the step-by-step decoders.

    >>> sampling = Sampling(temperature=0.8, top_p=0.95, max_new_tokens=64, seed=0)
    >>> decoder = make_decoder(teacher, pad_id)            # KV cache where the model has one
    >>> logits = decoder.start(prompts)                    # (B, V): the next token after each prompt
    >>> logits = decoder.advance(rows, chosen)             # (b, V) for the rows that go on

Only (batch, vocabulary) logits exist per step. The choice is a pure function of those logits and
one uniform number per row and step, drawn from ``(seed, row index)`` alone (``row_uniforms``), so
a row's response depends neither on which rows share its batch's random stream nor on the device's
random generator: the draw is an inverse-CDF lookup over the tempered, nucleus-cut distribution
(sorted stably, accumulated in float64). Temperature 0 is greedy (the first largest logit).

Decoders: a Hugging Face teacher (``hf_models.CausalLM``, ``supports_kv_cache``) keeps its KV
cache, prompts left-padded with their positions counted from each row's first real token; any
other causal LM (the shipped ``gpt``) is run again over every row's tokens so far each step,
right-padded (its causal attention never reads the padding), its head on each row's last position
only; a teacher whose head cannot be split makes whole logits for the rows so far (slow, correct).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .loop import autocast
from .token_teacher import TokenTeacher, logits_of

GENERATE_SEED = 0x67656E  # "gen": the response draws' stream, apart from every other seeded stream


@dataclass(frozen=True)
class Sampling:
    """How the teacher chooses each token (recorded in the store's settings)."""

    temperature: float  # 0: greedy
    top_p: float
    max_new_tokens: int
    seed: int

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"--temperature must be 0 (greedy) or more, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return {"strategy": "greedy" if self.greedy else "sample", "temperature": self.temperature,
                "top_p": self.top_p, "max_new_tokens": self.max_new_tokens, "seed": self.seed}


def row_uniforms(sampling: Sampling, row: int) -> np.ndarray:
    """(max_new_tokens,) uniforms in [0, 1) for the steps of prompt ``row``: a function of the seed
    and the row alone, so batching, resuming or regenerating a row draws the same numbers."""
    rng = np.random.default_rng([GENERATE_SEED, sampling.seed & (2**64 - 1), row])
    return rng.random(sampling.max_new_tokens)


def choose_tokens(logits: torch.Tensor, uniforms: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """``logits`` (b, V) float32 and one uniform per row (b,) float64 -> the chosen ids (b,) int64."""
    if sampling.greedy:
        return logits.argmax(dim=1)
    probs = torch.softmax(logits.double() / sampling.temperature, dim=1)  # (b, V)
    ordered, order = probs.sort(dim=1, descending=True, stable=True)
    if sampling.top_p < 1:  # the smallest head of the order holding top_p of the mass (the first always)
        ordered = ordered * ((ordered.cumsum(dim=1) - ordered) < sampling.top_p)
    cumulative = ordered.cumsum(dim=1)  # (b, V)
    targets = uniforms.to(cumulative)[:, None] * cumulative[:, -1:]
    picked = torch.searchsorted(cumulative, targets, right=True).clamp_(max=logits.shape[1] - 1)
    return order.gather(1, picked).squeeze(1)


def make_decoder(teacher: TokenTeacher, pad_id: int):
    """The KV-cache decoder where the model offers one, else the recomputing one."""
    inner = teacher.model
    for attribute in ("module", "_orig_mod"):
        inner = getattr(inner, attribute, inner)
    if getattr(inner, "supports_kv_cache", False):
        return CachedDecoder(inner, teacher, pad_id)
    return RecomputeDecoder(teacher, pad_id)


class RecomputeDecoder:
    """Every step, the body over each going row's tokens so far (right-padded), the head on each
    row's last position: O(n²) in the response length, for models without a KV cache."""

    uses_cache = False

    def __init__(self, teacher: TokenTeacher, pad_id: int):
        self.teacher, self.pad_id = teacher, pad_id
        self.ids = self.lengths = None

    def start(self, prompts: list[np.ndarray], seq_len: int) -> torch.Tensor:
        device = self.teacher.device
        self.ids = torch.full((len(prompts), seq_len), self.pad_id, dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            self.ids[row, :len(prompt)] = torch.as_tensor(prompt, device=device)
        self.lengths = torch.as_tensor([len(p) for p in prompts], dtype=torch.long, device=device)
        return self._logits(torch.arange(len(prompts), device=device))

    def advance(self, rows: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        self.ids[rows, self.lengths[rows]] = chosen
        self.lengths[rows] += 1
        return self._logits(rows)

    def _logits(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), V) float32: the next-token logits after each row's last token."""
        lengths = self.lengths[rows]
        ids = self.ids[rows, :int(lengths.max())]  # (b, T)
        last = lengths - 1
        teacher = self.teacher
        with autocast(teacher.device, teacher.bf16):
            if teacher.split is None:
                logits = logits_of(teacher.model(ids))[torch.arange(len(rows)), last]
            else:
                hidden = teacher.split.hidden_states(ids)  # (b, T, H)
                logits = teacher.split.head_logits(hidden[torch.arange(len(rows)), last])
        return logits.float()


class CachedDecoder:
    """A Hugging Face teacher with its KV cache: prompts left-padded, one new token per row a step;
    rows that ended leave the cache (where it can drop rows; else they are fed padding, their
    outputs dropped)."""

    uses_cache = True

    def __init__(self, model, teacher: TokenTeacher, pad_id: int):
        self.model, self.teacher, self.pad_id = model, teacher, pad_id
        self.mask = self.positions = self.cache = self.rows = None

    def start(self, prompts: list[np.ndarray], seq_len: int) -> torch.Tensor:
        device, width = self.teacher.device, max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=device)
        self.mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.as_tensor(prompt, device=device)
            self.mask[row, width - len(prompt):] = 1
        positions = (self.mask.cumsum(dim=1) - 1).clamp_(min=0)
        self.positions, self.rows = positions[:, -1:], torch.arange(len(prompts), device=device)  # (B, 1), (B,)
        with autocast(self.teacher.device, self.teacher.bf16):
            logits, self.cache = self.model.start_cache(ids, self.mask, positions)
        return logits.float()

    def advance(self, rows: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        if len(rows) < len(self.rows) and callable(getattr(self.cache, "batch_select_indices", None)):
            kept = torch.searchsorted(self.rows, rows)  # rows only ever leave, so both stay ascending
            self.cache.batch_select_indices(kept)
            self.mask, self.positions, self.rows = self.mask[kept], self.positions[kept], rows
        tokens = torch.full((len(self.rows), 1), self.pad_id, dtype=torch.long, device=self.mask.device)
        where = torch.searchsorted(self.rows, rows)
        tokens[where, 0] = chosen
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.positions = self.positions + 1
        with autocast(self.teacher.device, self.teacher.bf16):
            logits, self.cache = self.model.cached_step(tokens, self.mask, self.positions, self.cache)
        return logits[where].float()
