"""Hugging Face causal language models from local files: ``hf:DIR`` and ``hf-config:CONFIG``.

    >>> teacher = get_model("hf:models/qwen-0.5b", num_classes=151936)       # its saved weights
    >>> student = get_model("hf-config:models/small/config.json", num_classes=151936)  # random init
    >>> logits = teacher(idx)               # idx (B, T) int64 -> logits (B, T, V)
    >>> teacher.context_length, teacher.vocab_size

``hf:DIR`` loads ``AutoModelForCausalLM.from_pretrained(DIR, local_files_only=True)`` in float32
(bf16 is the dump's and train's ``--bf16`` autocast, as for every model); ``hf-config:`` takes a
directory holding ``config.json`` or the file itself and builds the same architecture with weights
drawn from torch's generator (``torch.manual_seed`` fixes them). Nothing is downloaded. Either is
wrapped so that ``forward(idx)`` returns the logits tensor. The model's head (the rows of its output
layer) must cover ``num_classes`` ids; a wider head is fine (models often pad it beyond the
tokenizer, as Qwen's 151,936 rows for ~151,665 ids), and the store records the head's width.
Needs ``pip install 'logitcache[lm]'``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, SpecError
from ._loading import call_user, quiet_torch
from ._registry import register_model_scheme

LM_EXTRA = "pip install 'logitcache[lm]'"


class CausalLM(nn.Module):
    """A transformers causal LM whose forward returns logits (B, T, V), not a model output."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        config = model.config
        head = model.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0] if head is not None else config.vocab_size)
        length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.context_length = int(length) if isinstance(length, int) else None

    def forward(self, idx):  # idx: (B, T) int64; rows are right-padded, so causal attention needs no mask
        return self.model(input_ids=idx, use_cache=False).logits

    supports_kv_cache = True  # dump --generate keeps the model's cache instead of running every step again

    def start_cache(self, idx, attention_mask, position_ids):  # left-padded prompts -> (B, V) logits, cache
        return self._cached(idx, attention_mask, position_ids, None)

    def cached_step(self, idx, attention_mask, position_ids, cache):  # (B, 1) new ids -> (B, V) logits, cache
        return self._cached(idx, attention_mask, position_ids, cache)

    def _cached(self, idx, attention_mask, position_ids, cache):
        # transformers 5.x names the cache ``cache``, before it ``past_key_values`` (in and out); the last
        # position's logits alone are ``logits_to_keep=1`` (``num_logits_to_keep`` before 4.50, else all)
        accepted = inspect.signature(self.model.forward).parameters
        name = "cache" if "cache" in accepted else "past_key_values"
        keep = next(({k: 1} for k in ("logits_to_keep", "num_logits_to_keep") if k in accepted), {})
        output = self.model(input_ids=idx, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                            **keep, **({name: cache} if cache is not None else {}))
        return output.logits[:, -1], getattr(output, name)

    def hidden_states(self, idx):  # (B, T) -> (B, T, H): the decoder's output, before the head
        return self.model.base_model(input_ids=idx, use_cache=False).last_hidden_state

    def head_logits(self, hidden):  # (..., H) -> (..., V): the head and what the architecture applies after it
        logits = self.model.get_output_embeddings()(hidden)
        config = self.model.config
        scale = getattr(config, "logit_scale", None)  # Cohere multiplies by it
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            logits = logits * scale
        scaling = getattr(config, "logits_scaling", None)  # Granite divides by it
        if isinstance(scaling, (int, float)) and not isinstance(scaling, bool):
            logits = logits / scaling
        cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2 and 3
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


@register_model_scheme("hf", grammar="hf:DIR", description="a local Hugging Face causal LM (the lm extra)")
def pretrained_lm(location: str, num_classes: int) -> CausalLM:
    return hf_model("hf", location, num_classes)


@register_model_scheme("hf-config", grammar="hf-config:CONFIG",
                       description="a Hugging Face causal LM's architecture from its config.json, random init")
def configured_lm(location: str, num_classes: int) -> CausalLM:
    return hf_model("hf-config", location, num_classes)


def hf_model(scheme: str, location: str, num_classes: int) -> CausalLM:
    """``hf:DIR`` (pretrained weights) or ``hf-config:DIR_OR_JSON`` (random init), wrapped.

    Raises:
        SpecError: transformers is not installed.
        ModelError: nothing loadable at the location; ``num_classes`` is not the model's vocabulary.
    """
    spec = f"{scheme}:{location}"
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise SpecError(f"model {spec!r} needs transformers: {LM_EXTRA}") from None
    path = Path(location)
    if not location or not path.exists():
        raise ModelError(f"model {spec!r}: {location or 'no location'} does not exist")
    with quiet_torch(), _no_progress_bars(transformers):
        if scheme == "hf":
            if not (path / "config.json").is_file():
                raise ModelError(f"model {spec!r}: {location} holds no config.json (save the model there with "
                                 "save_pretrained)")
            model = call_user(AutoModelForCausalLM.from_pretrained, f"model {spec!r}: cannot load {location}",
                              ModelError, str(path), local_files_only=True, **_float32(transformers, torch))
        else:
            config = call_user(AutoConfig.from_pretrained, f"model {spec!r}: cannot read its config", ModelError,
                               str(path), local_files_only=True)
            model = call_user(AutoModelForCausalLM.from_config, f"model {spec!r}: cannot build it", ModelError,
                              config)
    wrapped = CausalLM(model.float())
    if wrapped.vocab_size < num_classes:
        raise ModelError(f"model {spec!r} predicts {wrapped.vocab_size} tokens, but {num_classes} were asked for "
                         "(the tokenizer's or store's vocabulary): use the tokenizer saved with the model")
    return wrapped


def _float32(transformers, torch) -> dict:
    """transformers 4.56 renamed ``torch_dtype`` to ``dtype``."""
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}


class _no_progress_bars:
    """transformers' loading bars off for the block (they are a global switch)."""

    def __init__(self, transformers):
        self.logging = transformers.utils.logging

    def __enter__(self):
        self.was_on = self.logging.is_progress_bar_enabled()
        self.logging.disable_progress_bar()

    def __exit__(self, *exc):
        if self.was_on:
            self.logging.enable_progress_bar()
