"""Distil with the Hugging Face ``Trainer`` from a token store (needs ``pip install 'logitcache[lm]'``).

    >>> from transformers import TrainingArguments
    >>> from logitcache.hf import DistillationTrainer
    >>> from logitcache.lm import TokenStoreDataset
    >>> trainer = DistillationTrainer(model=student, args=TrainingArguments("runs/hf", report_to=[]),
    ...                               train_dataset=TokenStoreDataset("lm.zarr"), temperature=1.0,
    ...                               kd_weight=1.0, ce_weight=1.0)
    >>> trainer.train()

``DistillationTrainer`` is transformers 5's ``Trainer`` with four changes (the model is a Hugging Face
causal LM: ``forward(input_ids, attention_mask)`` returning logits):

- the ``teacher_*`` columns count as the model's, so the Trainer's column removal
  (``remove_unused_columns``, on by default) keeps them instead of silently dropping them;
- ``compute_loss`` takes them out of the batch, runs the model on the rest (``input_ids``,
  ``attention_mask``; not ``labels``, so the model computes no loss of its own) and returns
  ``logitcache.lm.distillation_loss``: ``ce_weight * CE + kd_weight * KL`` per target token,
  averaged over the Trainer's ``num_items_in_batch`` (every accumulated micro-batch and device)
  when it counts them, else over the batch;
- in training the loss goes through the model's head a chunk of positions at a time, never the
  whole (batch, positions, vocabulary) logits (``logitcache.lm.chunked_distillation_loss``), when
  ``chunked_loss`` is True, or by default when a batch's float32 logits would take over one chunk
  (128 MiB) and the model is not wrapped in DistributedDataParallel (which syncs gradients only
  through its forward); ``chunked_loss=False`` keeps the whole logits;
- the data collator defaults to ``logitcache.lm.collate_tokens``.

The first three are ``TokenDistillation``, a mixin: ``logitcache.trl.DistillationSFTTrainer`` (TRL's
``SFTTrainer``) has the same, so the two trainers' losses are one code.

transformers is imported when ``DistillationTrainer`` is first used, so this module imports
without it (and says what to install when it is missing).
"""

from __future__ import annotations

import sys

from .errors import SpecError
from .lm import TEACHER_COLUMNS, chunked_distillation_sums, collate_tokens, distillation_sums

LM_EXTRA = "pip install 'logitcache[lm]'"

__all__ = ["DistillationTrainer", "TokenDistillation"]


class TokenDistillation:
    """The distillation a Hugging Face trainer gains by listing this class before it among its bases:
    ``DistillationTrainer`` here (``Trainer``) and ``logitcache.trl.DistillationSFTTrainer`` (TRL's
    ``SFTTrainer``) share it. The teacher columns kept, the loss (by chunks where that saves memory)
    averaged over the trainer's ``num_items_in_batch`` (module docstring). Call
    ``_init_distillation`` before the trainer's own ``__init__``.
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the whole accumulated step's target tokens
    forward_kwargs: dict = {}  # what the model's forward is given besides input_ids and attention_mask

    def _init_distillation(self, temperature: float, kd_weight: float, ce_weight: float,
                           chunked_loss: bool | None) -> None:
        self.temperature, self.kd_weight, self.ce_weight = temperature, kd_weight, ce_weight
        self.chunked_loss = chunked_loss

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in TEACHER_COLUMNS if c not in self._signature_columns]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = {name: inputs.pop(name) for name in [*TEACHER_COLUMNS, "labels"] if name in inputs}
        count = self._target_count(model, batch, num_items_in_batch)
        outputs = None
        if not return_outputs and self._chunks(model, inputs["input_ids"]):
            with self.accelerator.autocast():  # the model's forward has it; its base model and head do not
                sums = chunked_distillation_sums(_unwrapped(model), {**inputs, **batch}, self.temperature,
                                                 self.kd_weight, self.ce_weight)
        else:
            outputs = model(**inputs, **self.forward_kwargs)
            logits = outputs["logits"] if isinstance(outputs, dict) else getattr(outputs, "logits", outputs)
            sums = distillation_sums(logits, batch, self.temperature, self.kd_weight)
        self._record_loss_terms(sums, inputs)
        loss = sums.mean(self.ce_weight, self.kd_weight, None if count is None else float(count))
        return (loss, outputs) if return_outputs else loss

    def _record_loss_terms(self, sums, inputs) -> None:
        """A trainer that logs the CE and KL terms apart takes them here (``TokenLossSums``)."""

    def _target_count(self, model, batch: dict, num_items_in_batch):
        """What the loss divides by: the Trainer's count of the step's targets, per device."""
        count = num_items_in_batch
        if count is None:  # the Trainer did not count: this batch's targets, once per accumulated micro-batch
            steps = getattr(self, "current_gradient_accumulation_steps", 1) if model.training else 1
            count = int((batch["labels"][:, 1:] != -100).sum()) * steps
        elif self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            count = count / self.accelerator.num_processes  # every device's targets; DDP averages the gradients
        return count

    def _chunks(self, model, input_ids) -> bool:
        """Whether this training batch's loss goes by chunks (module docstring); evaluation's never."""
        if not model.training or self.chunked_loss is not None:
            return model.training and bool(self.chunked_loss)
        from .losses.chunked import worth_chunking

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return (getattr(model, "module", None) is None and head is not None
                and worth_chunking(input_ids.numel(), head.weight.shape[0]))


def _unwrapped(model):
    """The model whose base model and head the chunked loss runs: a PEFT model's own (its adapters
    live inside it), else the model."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) and type(model).__module__.startswith("peft") else model


def _distillation_trainer():
    try:
        from transformers import Trainer
    except ImportError:
        raise SpecError(f"logitcache.hf needs transformers (and accelerate for its Trainer): {LM_EXTRA}") from None

    class DistillationTrainer(TokenDistillation, Trainer):
        """``transformers.Trainer`` that distils from ``TokenStoreDataset`` batches (module docstring).

        Args (besides the Trainer's own):
            temperature: the KL's temperature (a ``sample`` store's: the one it was drawn at).
            kd_weight, ce_weight: the weights of the KL and the next-token cross-entropy.
            chunked_loss: True, False, or None: chunked where it saves memory (module docstring).
        """

        def __init__(self, *args, temperature: float = 1.0, kd_weight: float = 1.0, ce_weight: float = 1.0,
                     chunked_loss: bool | None = None, **kwargs):
            self._init_distillation(temperature, kd_weight, ce_weight, chunked_loss)
            if kwargs.get("data_collator") is None and len(args) < 2:
                kwargs["data_collator"] = collate_tokens
            super().__init__(*args, **kwargs)

    return DistillationTrainer


def lazy_class(module: str, name: str, build):
    """A module's ``__getattr__`` that builds class ``name`` on first use (``build()``: it imports an
    optional package) and keeps it in the module, so importing the module needs no such package."""
    def __getattr__(attribute: str):
        if attribute != name:
            raise AttributeError(f"module {module!r} has no attribute {attribute!r}")
        built = build()
        setattr(sys.modules[module], name, built)
        return built

    return __getattr__


__getattr__ = lazy_class(__name__, "DistillationTrainer", _distillation_trainer)
