"""The Python API refuses what ``logitcache train`` refuses, in the same words: a student whose head
is not the store's vocabulary (every target form, whole logits or by chunks, and in the Hugging Face
Trainer), and a store with two teachers when none is named (by the argument, ``teacher=``)."""

from __future__ import annotations

import pytest
import torch

from logitcache.errors import ModelError, StoreMismatchError
from logitcache.lm import TokenStoreDataset, chunked_distillation_loss, collate_tokens, distillation_loss
from logitcache.sources import get_model
from tests.conftest import invoke, one_error
from tests.train.test_token_training import dump, lm_train, stores, text  # noqa: F401  (fixtures)

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


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory, text):  # noqa: F811
    """A token store with two complete teachers, 'default' (topk:8) and 'sampled' (sample:4)."""
    store = dump(tmp_path_factory.mktemp("two") / "two.zarr", text, "topk:8", split="val")
    result = invoke("dump", store, "--teacher", "tests.factories:tiny_lm", "--teacher-name", "sampled", "--dataset",
                    f"text:{text}@val", "--tokenizer", "bytes", "--seq-len", "64", "--codec", "sample:4",
                    "--batch-size", "32", "--rows-per-shard", str(64 * 64), "--no-progress")
    assert result.exit_code == 0, result.output
    return store


def test_two_teachers_unnamed_are_refused_naming_the_api_argument_or_the_cli_option(tmp_path, stores,  # noqa: F811
                                                                                       two_teachers):
    with pytest.raises(StoreMismatchError, match=r"holds 2 complete teachers \(default, sampled\); name one with "
                                                 r"teacher=$"):
        TokenStoreDataset(two_teachers)
    assert TokenStoreDataset(two_teachers, teacher="sampled").teacher.name == "sampled"
    says = "holds 2 complete teachers (default, sampled); name one with --teacher"
    assert says in one_error(lm_train(tmp_path / "a", two_teachers))
    assert says in one_error(lm_train(tmp_path / "b", stores["topk:8"], "--val-store", two_teachers))
