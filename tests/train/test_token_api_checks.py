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


def _refusals(batch: dict) -> list[tuple[str, dict, str]]:
    """(what, distillation_loss's arguments, the line it must say) for a (2, 64) batch at V = 256."""
    logits = torch.randn(2, 64, 256)
    return [
        ("a row more than the batch", dict(student_logits=torch.randn(3, 64, 256)), r"shape \(2, 64, vocabulary\)"),
        ("a position short", dict(student_logits=logits[:, :-1]), r"got a torch.float32 tensor of shape \(2, 63, 256\)"),
        ("flattened", dict(student_logits=logits.reshape(128, 256)), "shape"),
        ("an empty batch", dict(student_logits=torch.randn(0, 64, 256)), "shape"),
        ("integer logits", dict(student_logits=torch.zeros(2, 64, 256, dtype=torch.long)), "float logits"),
        ("a list", dict(student_logits=logits.tolist()), "got list"),
        ("labels a position short", dict(batch={**batch, "labels": batch["labels"][:, :-1]}), "shape"),
        ("a batch as a list", dict(batch=[batch]), "batch must be a dict"),
        ("no items counted", dict(num_items_in_batch=0), "num_items_in_batch must be a positive count"),
        ("a negative count", dict(num_items_in_batch=-5), "num_items_in_batch must be a positive count"),
        ("a huge temperature", dict(temperature=1e30), "temperature must be a number from 0.001 to 1000"),
        ("a vanishing temperature", dict(temperature=1e-30), "temperature must be a number from 0.001 to 1000"),
        ("nan kd weight", dict(kd_weight=float("nan")), "kd_weight must be a finite number >= 0"),
        ("inf ce weight", dict(ce_weight=float("inf")), "ce_weight must be a finite number >= 0"),
        ("negative ce weight", dict(ce_weight=-1.0), "ce_weight must be a finite number >= 0"),
        ("both weights 0", dict(kd_weight=0.0, ce_weight=0.0), "cannot both be 0"),
    ]


def test_the_loss_refuses_what_it_is_not_defined_for_in_one_line(stores):  # noqa: F811
    """Each of these returned a loss (a wrong one, nan, inf or -inf) or raised a raw torch error."""
    from logitcache.errors import ConfigError

    data = TokenStoreDataset(stores["topk:8"])
    batch = collate_tokens([data[0], data[1]])
    assert torch.isfinite(distillation_loss(torch.randn(2, 64, 256), batch))  # the same call, well formed
    for what, change, line in _refusals(batch):
        arguments = {"student_logits": torch.randn(2, 64, 256), "batch": batch, **change}
        with pytest.raises(ConfigError, match=line):
            distillation_loss(**arguments)
        if "student_logits" not in change:  # the chunked loss takes the model: the rest applies to it too
            model = get_model(GPT, 256)
            with pytest.raises(ConfigError, match=line):
                chunked_distillation_loss(model, **{k: v for k, v in arguments.items() if k != "student_logits"})


def test_collate_refuses_no_items_and_items_of_two_teachers(stores):  # noqa: F811
    from logitcache.errors import ConfigError

    with pytest.raises(ConfigError, match="collate_tokens got no items"):
        collate_tokens([])
    topk, sample = TokenStoreDataset(stores["topk:8"]), TokenStoreDataset(stores["sample:12:2"])
    with pytest.raises(ConfigError, match="items of two stores or teachers cannot share a batch"):
        collate_tokens([topk[0], sample[0]])
