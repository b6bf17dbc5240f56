"""The chunked top-k loss when a student is sure of the teacher's top classes: every chunk holds one
row whose student tail mass is under TINY_TAIL (summed exactly there), against the same batch
without such rows. Before the written gradient handled those rows, such a chunk went back to
autograd and ran its head twice (a reviewer's probe, kept here).

    python -m benchmarks.chunked_small_tails        # V = 32,768, K = 8, 2 x 512 positions, chunks of 256, 1 thread
"""

from __future__ import annotations

import time

import torch

from logitcache.codecs import TopKTargets
from logitcache.losses.chunked import chunked_head, chunked_token_loss_sums
from logitcache.sources import get_model
from logitcache.sources.lm_heads import split_lm

V, K, B, L, CHUNK = 32_768, 8, 2, 512, 256


def step_seconds(head, hidden, ids, teacher) -> float:
    """The best of three timed steps (forward and backward) after one warm-up."""
    times = []
    for _ in range(4):
        chunk_hidden = hidden.clone().requires_grad_()
        started = time.perf_counter()
        chunked_token_loss_sums(chunk_hidden, head, ids, teacher, chunk_size=CHUNK).total(1.0, 1.0).backward()
        times.append(time.perf_counter() - started)
    return min(times[1:])


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = get_model(f"gpt:n_layer=1,n_head=2,n_embd=64,block_size={L}", V)
    ids = torch.randint(0, V, (B, L))
    split = split_lm(model, ids[:1])
    with torch.no_grad():
        plain = split.hidden_states(ids)
    for sure in (False, True):
        hidden, indices = plain.clone(), torch.randint(0, V, (B, L, K))
        if sure:  # one row a chunk: its logits 200x as far apart, the teacher's top 8 its own
            with torch.no_grad():
                for start in range(0, L, CHUNK // B):
                    hidden[0, start] *= 200
                    indices[0, start] = split.head_logits(hidden[0, start]).topk(K).indices
        probs = torch.rand(B, L, K + 1).softmax(-1)
        teacher = TopKTargets(indices, probs[..., :K].log(), probs[..., K].log())
        head = chunked_head(model, split.head_logits, hidden)
        print(f"a row under TINY_TAIL in every chunk: {sure}: step {step_seconds(head, hidden, ids, teacher):.3f} s")


if __name__ == "__main__":
    main()
