"""The Python API refuses what ``logitcache train`` refuses, in the same words: a student whose head
is not the store's vocabulary (every target form, whole logits or by chunks, and in the Hugging Face
Trainer)."""

from __future__ import annotations

import pytest
import torch

from logitcache.errors import ModelError
from logitcache.lm import TokenStoreDataset, chunked_distillation_loss, collate_tokens, distillation_loss
from logitcache.sources import get_model
from tests.conftest import one_error
from tests.train.test_token_training import lm_train, stores, text  # noqa: F401  (fixtures)

GPT = "gpt:n_layer=1,n_head=2,n_embd=16,block_size=64"


def wide_head_lm(num_classes: int = 256):
    """A causal LM with a 300-token head, whatever vocabulary it is asked for."""
    from tests.factories import TinyLM

    return TinyLM(300)


def _says(student_vocab: int) -> str:
    return (f"the student predicts {student_vocab} tokens per position, but the training data's vocabulary is 256 "
            "(the teacher head's width): build the student with that vocabulary")


@pytest.mark.parametrize("codec", ["topk:8", "sample:12:2", "fp16"])
@pytest.mark.parametrize("student_vocab", [300, 200])
def test_a_student_of_another_vocabulary_is_refused_by_the_loss(stores, codec, student_vocab):  # noqa: F811
    data = TokenStoreDataset(stores[codec])
    batch = collate_tokens([data[0], data[1]])
    temperature = data.targets.sample_temperature or 1.0
    with pytest.raises(ModelError) as whole:
        distillation_loss(torch.randn(2, 64, student_vocab), batch, temperature=temperature)
    with pytest.raises(ModelError) as chunked:
        chunked_distillation_loss(get_model(GPT, student_vocab), batch, temperature=temperature)
    assert str(whole.value) == str(chunked.value) == _says(student_vocab)
    assert distillation_loss(torch.randn(2, 64, 256), batch, temperature=temperature) > 0  # the right head trains


def test_the_cli_refuses_the_same_student_in_the_same_words(tmp_path, stores):  # noqa: F811
    wide = lm_train(tmp_path / "run", stores["topk:8"], student="tests.train.test_token_api_checks:wide_head_lm")
    assert one_error(wide) == f"Error: {_says(300)}"


def test_the_hugging_face_trainer_refuses_a_wider_head(tmp_path, stores):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from logitcache.hf import DistillationTrainer

    config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                     eos_token_id=0)
    args = transformers.TrainingArguments(str(tmp_path / "hf"), max_steps=1, per_device_train_batch_size=2,
                                          report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = DistillationTrainer(model=transformers.GPT2LMHeadModel(config), args=args,
                                  train_dataset=TokenStoreDataset(stores["topk:8"]))
    with pytest.raises(ModelError, match="the student predicts 300 tokens per position, but the training data's"):
        trainer.train()
