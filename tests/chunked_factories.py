"""Students for tests/losses/test_chunked_loss.py, named by ``module:factory`` specs."""

from __future__ import annotations

import torch

from logitcache.sources.gpt import GPT


class GreedyLM(GPT):
    """logitcache's GPT, except that a training forward asks for 4 TiB: a real allocation failure."""

    def hidden_states(self, idx):
        if self.training:
            torch.empty(1 << 42, dtype=torch.uint8)
        return super().hidden_states(idx)


def greedy_lm(num_classes: int = 256) -> GreedyLM:
    return GreedyLM(num_classes, n_layer=1, n_head=2, n_embd=32, block_size=64)
