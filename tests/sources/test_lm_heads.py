"""A causal LM split at its head gives the model's own logits: logitcache's GPT and Hugging Face
architectures made locally from configs, soft-capping and logit scales included."""

from __future__ import annotations

import pytest
import torch

from logitcache.sources import get_model
from logitcache.sources.lm_heads import split_lm

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=97, max_position_embeddings=64)
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=97, n_positions=64),
    "llama": lambda: transformers.LlamaConfig(**SMALL),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL),
    "gemma2 soft-capped": lambda: transformers.Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=0.05),
    "cohere scaled": lambda: transformers.CohereConfig(**SMALL, logit_scale=7.5),
}


def hf_lm(config):
    from logitcache.sources.hf_models import CausalLM

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # logits large enough that a missing cap or scale shows
        model.get_output_embeddings().weight.mul_(50)
    return CausalLM(model)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_hugging_face_split_gives_the_models_own_logits(name):
    model = hf_lm(CONFIGS[name]())
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    split = split_lm(model, idx[:1])
    assert split is not None
    with torch.no_grad():
        whole = model(idx)
        hidden = split.hidden_states(idx)
        chunks = torch.cat([split.head_logits(hidden[:, i:i + 5]) for i in range(0, 24, 5)], 1)
    torch.testing.assert_close(chunks, whole, rtol=1e-5, atol=1e-5)


def test_a_split_that_forgets_the_architectures_cap_is_not_trusted():
    model = hf_lm(CONFIGS["gemma2 soft-capped"]())
    model.model.config.final_logit_softcapping = None  # the split now skips the cap the forward applies
    forward = model.forward
    model.forward = lambda idx: torch.tanh(forward(idx) / 0.05) * 0.05
    assert split_lm(model, torch.randint(1, 97, (1, 8), generator=torch.Generator().manual_seed(3))) is None


def test_logitcaches_gpt_splits_exactly_and_a_model_without_the_methods_does_not():
    model = get_model("gpt:n_layer=2,n_head=2,n_embd=32,block_size=64", 131).eval()
    idx = torch.randint(0, 131, (3, 40), generator=torch.Generator().manual_seed(2))
    split = split_lm(model, idx[:1])
    with torch.no_grad():
        assert torch.equal(split.head_logits(split.hidden_states(idx)), model(idx))
    assert split_lm(torch.nn.Linear(4, 4)) is None
