"""``gpt``: a small GPT (after nanoGPT) that logitcache can train as a teacher or a student.

    >>> model = get_model("gpt:n_layer=2,n_head=2,n_embd=64,block_size=256", num_classes=256)
    >>> logits = model(idx)                     # idx (B, T) int64, T <= 256 -> logits (B, T, 256)
    >>> lm_context_length(model)                # 256: the dump refuses longer rows

Token and position embeddings, ``n_layer`` pre-LayerNorm blocks (causal self-attention through
``scaled_dot_product_attention(is_causal=True)``, then a 4x MLP), a final LayerNorm and a
linear head over the vocabulary (``num_classes``), tied to the token embedding by default.
Weights are drawn from torch's global generator, so ``torch.manual_seed`` fixes them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ._registry import register_model


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)

    def forward(self, x):  # x: (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd, bias=bias), nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=bias), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=bias), nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A decoder-only transformer; ``forward(idx)`` gives next-token logits at every position."""

    def __init__(self, vocab_size: int, n_layer: int, n_head: int, n_embd: int, block_size: int,
                 dropout: float = 0.0, bias: bool = True, tie_weights: bool = True):
        super().__init__()
        self.context_length = block_size
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx):  # idx: (B, T) int64
        return self.head_logits(self.hidden_states(idx))  # (B, T, V)

    def hidden_states(self, idx):  # idx: (B, T) int64 -> (B, T, C): everything before the head
        T = idx.shape[1]
        if T > self.context_length:
            raise ModelError(f"gpt: a sequence of {T} tokens is longer than its block_size {self.context_length}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def head_logits(self, hidden):  # (..., C) -> (..., V): the head alone, for any slice of positions
        return self.head(hidden)


@register_model()
def gpt(num_classes: int, n_layer: int = 2, n_head: int = 2, n_embd: int = 64, block_size: int = 256,
        dropout: float = 0.0, bias: bool = True, tie_weights: bool = True):
    """A GPT over a vocabulary of ``num_classes`` tokens."""
    if n_layer < 1 or n_head < 1 or block_size < 1 or n_embd % n_head:
        raise ModelError(f"gpt: n_layer, n_head and block_size must be positive and n_embd ({n_embd}) a multiple "
                         f"of n_head ({n_head})")
    return GPT(num_classes, n_layer, n_head, n_embd, block_size, dropout, bias, tie_weights)


def lm_context_length(model) -> int | None:
    """The longest sequence a language model takes: its ``context_length`` (the GPT's block_size,
    a Hugging Face model's positions), looking through DDP and compile wrappers; None if unknown."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        length = getattr(candidate, "context_length", None)
        if isinstance(length, int) and not isinstance(length, bool):
            return length
    return None
