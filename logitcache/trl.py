"""Distil with TRL's ``SFTTrainer`` from a token store (needs ``pip install 'logitcache[trl]'``).

    >>> from peft import LoraConfig
    >>> from trl import SFTConfig
    >>> from logitcache.lm import TokenStoreDataset
    >>> from logitcache.trl import DistillationSFTTrainer
    >>> trainer = DistillationSFTTrainer(model=student, args=SFTConfig("runs/trl", bf16=False),
    ...                                  train_dataset=TokenStoreDataset("lm.zarr"), temperature=1.0,
    ...                                  peft_config=LoraConfig(r=8, target_modules="all-linear"))
    >>> trainer.train()

``DistillationSFTTrainer`` is trl 1's ``SFTTrainer`` training a Hugging Face causal LM on a token
store's own sequences, with ``logitcache.hf.TokenDistillation``'s loss (the one
``DistillationTrainer`` has): ``ce_weight * CE + kd_weight * KL`` per target token, from dense,
``topk:K`` and ``sample:K`` stores, by chunks of positions through the head where that saves memory,
averaged over the trainer's ``num_items_in_batch`` (gradient accumulation, devices). What TRL adds
and still applies: PEFT students (``peft_config``), its defaults (gradient checkpointing, bf16
autocast), and its logging, to which ``ce`` and ``kd`` (each per target token) and ``num_tokens``
are added.

The store's sequences are already tokens, loss mask and teacher targets, so TRL's dataset
preparation is always skipped (``dataset_kwargs={"skip_prepare_dataset": True}``; ``max_length`` is
unused: the sequences keep the store's length), and what would re-tokenise, re-pack or re-mask them
(``packing``, ``padding_free``, ``dataset_text_field``, ``completion_only_loss``,
``assistant_only_loss``, a ``formatting_func``, another ``loss_type``, a ``data_collator``) is
refused in one line, as is a student whose head is not the store's width. The trainer sees
each ``TokenStoreDataset`` as a ``datasets.Dataset`` of sequence numbers (what ``SFTTrainer``
accepts) and its collator reads a batch's sequences and targets at once (``TokenStoreDataset.batch``).
No tokenizer is needed: without ``processing_class`` a stand-in satisfies ``SFTTrainer`` and none is
saved with checkpoints.

trl is imported when ``DistillationSFTTrainer`` is first used, so this module imports without it
(and says what to install when it is missing).
"""

from __future__ import annotations

import json

from .errors import ConfigError, ModelError, SpecError
from .hf import lazy_class
from .lm import TokenStoreDataset, collate_tokens
from .losses.token_sums import vocabulary_mismatch

TRL_EXTRA = "pip install 'logitcache[trl]'"
SEQUENCE, SOURCE = "logitcache_sequence", "logitcache_source"  # the columns the trainer's datasets hold

__all__ = ["DistillationSFTTrainer", "StoreBatches"]

# (SFTConfig field, the value that leaves the store's sequences alone, why another cannot work)
_REFUSED_OPTIONS = (
    ("packing", False, "it re-packs text into new rows, and a token store's rows are its stored sequences, each "
                       "with the teacher's targets at its positions"),
    ("padding_free", False, "it flattens the batch into one row, and the teacher's targets are per stored sequence"),
    ("dataset_text_field", "text", "a token store holds token ids, not a text column to tokenise"),
    ("completion_only_loss", (None, False), "the store's loss mask (set at dump time) says which tokens train"),
    ("assistant_only_loss", False, "the store's loss mask (set at dump time) says which tokens train"),
    ("loss_type", "nll", "the loss is logitcache's CE + KD (ce_weight, kd_weight)"),
)
_REFUSED_ARGUMENTS = {"data_collator": "the collator reads the store's batches (StoreBatches)",
                      "formatting_func": "a token store's sequences are already tokens",
                      "compute_loss_func": "the loss is logitcache's CE + KD (ce_weight, kd_weight)"}


class StoreBatches:
    """The trainer's collator: rows ``{SOURCE: k, SEQUENCE: i}`` become ``sources[k].batch(...)``,
    one read and decode for the whole batch; ``TokenStoreDataset`` items are stacked as they are."""

    def __init__(self):
        self.sources: list[TokenStoreDataset] = []

    def rows(self, data):
        """``data`` (a ``TokenStoreDataset``, a dict of them, or None) as ``datasets.Dataset``s of its
        sequence numbers, which ``SFTTrainer`` accepts and its column removal keeps."""
        if data is None:
            return None
        if isinstance(data, dict):
            return {name: self.rows(part) for name, part in data.items()}
        if not isinstance(data, TokenStoreDataset):
            raise SpecError(f"DistillationSFTTrainer trains from a logitcache.lm.TokenStoreDataset, not "
                            f"{type(data).__name__}: make a token store from the text with `logitcache dump "
                            "--tokenizer ...` and pass TokenStoreDataset(STORE)")
        from datasets import Dataset

        self.sources.append(data)
        return Dataset.from_dict({SOURCE: [len(self.sources) - 1] * len(data), SEQUENCE: list(range(len(data)))})

    def __call__(self, items: list[dict]) -> dict:
        if SEQUENCE not in items[0]:
            return collate_tokens(items)
        sources = {item[SOURCE] for item in items}
        assert len(sources) == 1, "a batch comes from one dataset"
        return self.sources[sources.pop()].batch([item[SEQUENCE] for item in items])


def _trainer_class():
    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        raise SpecError(f"logitcache.trl needs trl (and peft for LoRA students): {TRL_EXTRA}") from None
    from .hf import TokenDistillation

    class DistillationSFTTrainer(TokenDistillation, SFTTrainer):
        """``trl.SFTTrainer`` that distils from ``TokenStoreDataset``s (module docstring).

        Args (besides the SFTTrainer's own; ``args`` an ``SFTConfig`` or ``TrainingArguments``):
            train_dataset, eval_dataset: ``TokenStoreDataset``s (eval: or a dict of them).
            temperature: the KL's temperature (a ``sample`` store's: the one it was drawn at).
            kd_weight, ce_weight: the weights of the KL and the next-token cross-entropy.
            chunked_loss: True, False, or None: chunked where it saves memory (``logitcache.hf``).

        Raises:
            ConfigError: an option that would re-tokenise, re-pack or re-mask the store's sequences.
            ModelError: a student whose head is not the store's width.
            SpecError: a dataset that is not a ``TokenStoreDataset``.
        """

        forward_kwargs = {"use_cache": False}

        def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, *, temperature: float = 1.0,
                     kd_weight: float = 1.0, ce_weight: float = 1.0, chunked_loss: bool | None = None,
                     processing_class=None, **kwargs):
            args = _token_store_config(args, SFTConfig)
            _refuse(args, kwargs)
            if train_dataset is None:
                raise SpecError("DistillationSFTTrainer needs train_dataset=TokenStoreDataset(STORE)")
            collator = StoreBatches()
            rows = collator.rows(train_dataset), collator.rows(eval_dataset)
            _check_vocabulary(model, train_dataset)
            self._init_distillation(temperature, kd_weight, ce_weight, chunked_loss)
            self._loss_terms: dict = {}  # mode -> the CE and KL sums and their targets since the last log
            stand_in = _stand_in_tokenizer() if processing_class is None else processing_class
            super().__init__(model, args=args, data_collator=collator, train_dataset=rows[0], eval_dataset=rows[1],
                             processing_class=stand_in, **kwargs)
            if processing_class is None:
                self.processing_class = None  # the stand-in is not the store's tokenizer: never saved
            _check_vocabulary(self.model, train_dataset)  # a model SFTTrainer loaded from a name

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns += [c for c in ("attention_mask", SOURCE, SEQUENCE)
                                        if c not in self._signature_columns]

        _record_loss_terms = _record_loss_terms

        def log(self, logs: dict, start_time=None) -> None:
            super().log(_with_loss_terms(self, logs), start_time)  # docstring inherited

    return DistillationSFTTrainer


def _record_loss_terms(trainer, sums, inputs) -> None:
    """Add a batch's CE and KL sums and its targets (every rank's) to those since the last log."""
    import torch

    mode = "train" if trainer.model.training else "eval"
    device = inputs["input_ids"].device
    local = torch.stack([torch.as_tensor(value, dtype=torch.float32, device=device).detach()
                         for value in (sums.ce, sums.kd, sums.count, inputs["attention_mask"].sum())])
    every_rank = trainer.accelerator.gather_for_metrics(local[None]).sum(0).double().cpu().numpy()
    trainer._loss_terms[mode] = trainer._loss_terms.get(mode, 0) + every_rank[:3]  # CE, KL sums, targets
    if mode == "train":
        trainer._total_train_tokens += int(every_rank[3])
        trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]


def _with_loss_terms(trainer, logs: dict) -> dict:
    """``logs`` with ce and kd per target token of every batch since the last log."""
    mode = "train" if trainer.model.training else "eval"
    ce, kd, count = trainer._loss_terms.pop(mode, (0.0, 0.0, 0.0))
    if count:
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}ce": float(ce / count), f"{prefix}kd": float(kd / count)})
    return logs


def _token_store_config(args, sft_config):
    """``args`` as an ``SFTConfig`` (converted as ``SFTTrainer`` converts ``TrainingArguments``)
    whose dataset preparation is skipped: the store's sequences are its own."""
    if args is None:
        args = sft_config()
    elif not isinstance(args, sft_config):
        args = sft_config(**{**args.to_dict(), "hub_token": args.hub_token})
    given = args.dataset_kwargs
    given = json.loads(given) if isinstance(given, str) else dict(given or {})
    args.dataset_kwargs = {**given, "skip_prepare_dataset": True}
    return args


def _refuse(args, kwargs: dict) -> None:
    for field, fine, why in _REFUSED_OPTIONS:
        value = getattr(args, field)
        if value not in (fine if isinstance(fine, tuple) else (fine,)):
            raise ConfigError(f"DistillationSFTTrainer cannot train with {field}={value!r}: {why}; leave it unset")
    for name, why in _REFUSED_ARGUMENTS.items():
        if kwargs.get(name) is not None:
            raise ConfigError(f"DistillationSFTTrainer takes no {name}: {why}")


def _check_vocabulary(model, data: TokenStoreDataset) -> None:
    """The student's head must be the store's width, as ``train`` and the losses require: the
    store's ids and the teacher's rows are that wide, and a student that differs was built wrong."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or data.vocab_size is None:
        return
    student, store = int(head.weight.shape[0]), int(data.vocab_size)
    if student != store:
        raise ModelError(vocabulary_mismatch(student, store))


def _stand_in_tokenizer():
    """The smallest tokenizer ``SFTTrainer`` accepts: it tokenises nothing here."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unused>": 0}, unk_token="<unused>")),
                                   unk_token="<unused>", pad_token="<unused>", eos_token="<unused>")


__getattr__ = lazy_class(__name__, "DistillationSFTTrainer", _trainer_class)
