"""Distil with the Hugging Face ``Trainer`` from a token store (needs ``pip install 'logitcache[lm]'``).

    >>> from transformers import TrainingArguments
    >>> from logitcache.hf import DistillationTrainer
    >>> from logitcache.lm import TokenStoreDataset
    >>> trainer = DistillationTrainer(model=student, args=TrainingArguments("runs/hf", report_to=[]),
    ...                               train_dataset=TokenStoreDataset("lm.zarr"), temperature=1.0,
    ...                               kd_weight=1.0, ce_weight=1.0)
    >>> trainer.train()

``DistillationTrainer`` is transformers 5's ``Trainer`` with three changes (the model is a Hugging Face
causal LM: ``forward(input_ids, attention_mask)`` returning logits):

- the ``teacher_*`` columns count as the model's, so the Trainer's column removal
  (``remove_unused_columns``, on by default) keeps them instead of silently dropping them;
- ``compute_loss`` takes them out of the batch, runs the model on the rest (``input_ids``,
  ``attention_mask``; not ``labels``, so the model computes no loss of its own) and returns
  ``logitcache.lm.distillation_loss``: ``ce_weight * CE + kd_weight * KL`` per target token,
  averaged over the Trainer's ``num_items_in_batch`` (every accumulated micro-batch and device)
  when it counts them, else over the batch;
- the data collator defaults to ``logitcache.lm.collate_tokens``.

transformers is imported when ``DistillationTrainer`` is first used, so this module imports
without it (and says what to install when it is missing).
"""

from __future__ import annotations

from .errors import SpecError
from .lm import TEACHER_COLUMNS, collate_tokens, distillation_loss

LM_EXTRA = "pip install 'logitcache[lm]'"

__all__ = ["DistillationTrainer"]


def _distillation_trainer():
    try:
        from transformers import Trainer
    except ImportError:
        raise SpecError(f"logitcache.hf needs transformers (and accelerate for its Trainer): {LM_EXTRA}") from None

    class DistillationTrainer(Trainer):
        """``transformers.Trainer`` that distils from ``TokenStoreDataset`` batches (module docstring).

        Args (besides the Trainer's own):
            temperature: the KL's temperature (a ``sample`` store's: the one it was drawn at).
            kd_weight, ce_weight: the weights of the KL and the next-token cross-entropy.
        """

        loss_is_scaled_for_ga = True  # compute_loss divides by the whole accumulated step's target tokens

        def __init__(self, *args, temperature: float = 1.0, kd_weight: float = 1.0, ce_weight: float = 1.0,
                     **kwargs):
            self.temperature, self.kd_weight, self.ce_weight = temperature, kd_weight, ce_weight
            if kwargs.get("data_collator") is None and len(args) < 2:
                kwargs["data_collator"] = collate_tokens
            super().__init__(*args, **kwargs)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns += [c for c in TEACHER_COLUMNS if c not in self._signature_columns]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            batch = {name: inputs.pop(name) for name in [*TEACHER_COLUMNS, "labels"] if name in inputs}
            outputs = model(**inputs)
            logits = outputs["logits"] if isinstance(outputs, dict) else getattr(outputs, "logits", outputs)
            count = num_items_in_batch
            if count is None:  # the Trainer did not count: this batch's targets, once per accumulated micro-batch
                steps = getattr(self, "current_gradient_accumulation_steps", 1) if model.training else 1
                count = int((batch["labels"][:, 1:] != -100).sum()) * steps
            elif self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                count = count / self.accelerator.num_processes  # every device's targets; DDP averages the gradients
            loss = distillation_loss(logits, batch, self.temperature, self.kd_weight, self.ce_weight,
                                     num_items_in_batch=count)
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer


def __getattr__(name: str):
    if name == "DistillationTrainer":
        trainer = _distillation_trainer()
        globals()["DistillationTrainer"] = trainer
        return trainer
    raise AttributeError(f"module 'logitcache.hf' has no attribute {name!r}")
