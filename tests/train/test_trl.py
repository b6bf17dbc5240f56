"""``logitcache.trl.DistillationSFTTrainer``: TRL's SFTTrainer distilling a GPT-2 student (made from a
config) from token stores dumped here (the start of Hamlet, byte tokenizer, ``tests.factories.tiny_lm``
teacher): every codec family, a LoRA student, gradient accumulation against one batch, the same
losses as ``logitcache train``, and every refusal."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.errors import ConfigError, SpecError
from logitcache.lm import TokenStoreDataset, distillation_loss
from tests.conftest import invoke

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")

REPO = Path(__file__).resolve().parents[2]
HAMLET = REPO / "data" / "text" / "shakespeare" / "hamlet.md"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """topk:8, sample:12:2 and fp16 stores of 3,000 characters' bytes: 43 training sequences of 64."""
    root = tmp_path_factory.mktemp("trl")
    text = root / "hamlet-start.md"
    text.write_text(HAMLET.read_text()[:3_000])
    made = {}
    for codec in ("topk:8", "sample:12:2", "fp16"):
        made[codec] = root / f"{codec.replace(':', '_')}.zarr"
        result = invoke("dump", made[codec], "--teacher", "tests.factories:tiny_lm", "--dataset", f"text:{text}@train",
                        "--tokenizer", "bytes", "--seq-len", "64", "--codec", codec, "--batch-size", "32",
                        "--no-progress")
        assert result.exit_code == 0, result.output
    return made


def gpt2(vocab_size: int = 256, seed: int = 0):
    """A one-layer GPT-2 without dropout (so two runs of it are the same computation)."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def config(out: Path, **overrides):
    settings = dict(max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, report_to=[], use_cpu=True,
                    save_strategy="no", logging_steps=1, disable_tqdm=True, bf16=False, gradient_checkpointing=False,
                    dataloader_num_workers=0)
    return trl.SFTConfig(str(out), **{**settings, **overrides})


def trainer(out, data, model=None, **kwargs):
    from logitcache.trl import DistillationSFTTrainer

    args = kwargs.pop("args", None) or config(out)
    return DistillationSFTTrainer(model=model if model is not None else gpt2(), args=args, train_dataset=data,
                                  **kwargs)


def logged(run, key="loss") -> list[float]:
    return [entry[key] for entry in run.state.log_history if key in entry and "train_runtime" not in entry]


@pytest.mark.parametrize("codec", ["topk:8", "sample:12:2", "fp16"])
def test_a_student_distils_from_each_codec_and_logs_both_terms(tmp_path, stores, codec):
    data = TokenStoreDataset(stores[codec])
    run = trainer(tmp_path, data, eval_dataset=data, temperature=2.0 if codec == "sample:12:2" else 1.0)
    run.train()
    losses, ce, kd = logged(run), logged(run, "ce"), logged(run, "kd")
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    assert np.allclose(losses, np.add(ce, kd), rtol=1e-5)  # ce_weight = kd_weight = 1
    assert logged(run, "num_tokens")[-1] == 2 * 4 * 64  # two steps of four full sequences
    scores = run.evaluate()  # ce and kd per target token of the whole held-out set, whatever its batches
    with torch.no_grad():
        whole = data.batch(range(len(data)))
        ce = distillation_loss(run.model(input_ids=whole["input_ids"]).logits, whole, run.temperature, 0.0, 1.0)
    assert np.isclose(scores["eval_ce"], float(ce), rtol=1e-5)
    assert np.isclose(scores["eval_ce"] + scores["eval_kd"], scores["eval_loss"], rtol=0.01)  # its mean of batches
    assert np.isclose(run.evaluate(data)["eval_kd"], scores["eval_kd"], rtol=1e-6)  # a dataset given to evaluate
    assert run.processing_class is None  # the stand-in tokenizer is never saved


def test_a_lora_student_trains_its_adapter_alone_and_the_chunked_loss_reaches_it(tmp_path, stores, monkeypatch):
    from peft import LoraConfig

    import logitcache.hf as hf

    chunked_calls = []
    by_chunks = hf.chunked_distillation_sums
    monkeypatch.setattr(hf, "chunked_distillation_sums",
                        lambda model, *args: chunked_calls.append(type(model).__name__) or by_chunks(model, *args))
    data = TokenStoreDataset(stores["topk:8"])
    losses = {}
    for chunked in (False, True):
        model = gpt2()
        frozen = model.transformer.h[0].attn.c_attn.weight.detach().clone()
        run = trainer(tmp_path / str(chunked), data, model, chunked_loss=chunked,
                      peft_config=LoraConfig(r=4, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True))
        adapter = {name: p.detach().clone() for name, p in run.model.named_parameters() if p.requires_grad}
        assert adapter and all("lora_" in name for name in adapter)
        run.train()
        trained = dict(run.model.named_parameters())
        assert any(not torch.equal(trained[name], before) for name, before in adapter.items() if "lora_B" in name)
        assert torch.equal(run.model.get_base_model().transformer.h[0].attn.c_attn.base_layer.weight, frozen)
        losses[chunked] = logged(run)
    assert chunked_calls == ["GPT2LMHeadModel"] * 2  # the model inside the PeftModel, its adapters in place
    assert np.allclose(losses[True], losses[False], rtol=1e-5)  # by chunks through the adapted model: the same


def test_gradient_accumulation_trains_what_one_batch_does(tmp_path, stores):
    from logitcache.trl import DistillationSFTTrainer

    class Counting(DistillationSFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.counts.append(int(num_items_in_batch))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    data = TokenStoreDataset(stores["topk:8"])
    runs = {}
    for size, steps in ((8, 1), (4, 2), (2, 4)):
        args = config(tmp_path / str(steps), per_device_train_batch_size=size, gradient_accumulation_steps=steps,
                      optim="sgd", learning_rate=0.5)
        runs[steps] = Counting(model=gpt2(), args=args, train_dataset=data)
        runs[steps].counts = []
        runs[steps].train()
    whole = runs[1]
    for steps in (2, 4):
        assert runs[steps].counts == list(np.repeat(whole.counts, steps))  # each micro-batch: the step's targets
        assert np.allclose(logged(runs[steps]), logged(whole), rtol=1e-5)
        assert np.allclose(logged(runs[steps], "grad_norm"), logged(whole, "grad_norm"), rtol=1e-4)
        accumulated = dict(runs[steps].model.named_parameters())
        for name, value in whole.model.named_parameters():
            assert torch.allclose(accumulated[name], value, atol=1e-6), name


def test_the_same_student_store_and_steps_give_the_losses_of_logitcache_train(tmp_path, stores):
    student = tmp_path / "student"
    gpt2().save_pretrained(student)
    run = tmp_path / "train"
    result = invoke("train", "--out", run, "--student", f"hf:{student}", "--store", stores["topk:8"], "--loss", "kl",
                    "--temperature", "1", "--optimizer", "adamw", "--lr", "0.01", "--weight-decay", "0",
                    "--schedule", "constant", "--batch-size", "64", "--epochs", "3", "--no-progress")
    assert result.exit_code == 0, result.output
    rows = np.loadtxt(run / "steps.csv", delimiter=",", skiprows=1)  # epoch, step, lr, loss, ce, kd
    data = TokenStoreDataset(stores["topk:8"])
    assert len(data) <= 64  # one batch: both see every sequence at each step, whatever their order
    ours = trainer(tmp_path / "trl", data, transformers.AutoModelForCausalLM.from_pretrained(student),
                   args=config(tmp_path / "trl", max_steps=3, per_device_train_batch_size=64, learning_rate=0.01,
                               weight_decay=0.0, lr_scheduler_type="constant", max_grad_norm=0.0))
    ours.train()
    assert rows.shape == (3, 6)
    for column, key in ((3, "loss"), (4, "ce"), (5, "kd")):
        assert np.allclose(logged(ours, key), rows[:, column], rtol=2e-5, atol=2e-6), key


def test_plain_training_arguments_become_an_sft_config_that_skips_preparation(tmp_path, stores):
    args = transformers.TrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[],
                                          use_cpu=True, save_strategy="steps", save_steps=1, disable_tqdm=True,
                                          gradient_accumulation_steps=2)
    run = trainer(tmp_path, TokenStoreDataset(stores["topk:8"]), args=args)
    assert isinstance(run.args, trl.SFTConfig) and run.args.dataset_kwargs == {"skip_prepare_dataset": True}
    assert run.args.gradient_accumulation_steps == 2 and not run.args.bf16  # the arguments given, not TRL's defaults
    assert np.isfinite(run.train().training_loss)
    saved = {path.name for path in (tmp_path / "checkpoint-1").iterdir()}
    assert "model.safetensors" in saved and not any("tokenizer" in name for name in saved)  # no stand-in saved


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, says", [
    (dict(packing=True), "packing=True: it re-packs text into new rows"),
    (dict(padding_free=True), "padding_free=True: it flattens the batch"),
    (dict(dataset_text_field="content"), "dataset_text_field='content': a token store holds token ids"),
    (dict(assistant_only_loss=True), "assistant_only_loss=True: the store's loss mask"),
    (dict(completion_only_loss=True), "completion_only_loss=True: the store's loss mask"),
    (dict(loss_type="dft"), "loss_type='dft': the loss is logitcache's CE + KD"),
])
def test_options_that_would_retokenise_or_remask_the_store_are_refused(tmp_path, stores, option, says):
    with pytest.raises(ConfigError, match=re.escape(f"DistillationSFTTrainer cannot train with {says}")):
        trainer(tmp_path, TokenStoreDataset(stores["topk:8"]), args=config(tmp_path, **option))


def test_arguments_and_datasets_it_cannot_use_are_refused(tmp_path, stores):
    import datasets

    data = TokenStoreDataset(stores["topk:8"])
    with pytest.raises(ConfigError, match="takes no data_collator: the collator reads the store's batches"):
        trainer(tmp_path, data, data_collator=lambda items: items)
    with pytest.raises(ConfigError, match="takes no formatting_func"):
        trainer(tmp_path, data, formatting_func=str)
    with pytest.raises(SpecError, match=r"needs train_dataset=TokenStoreDataset\(STORE\)"):
        trainer(tmp_path, None)
    text = datasets.Dataset.from_dict({"text": ["To be, or not to be"]})
    with pytest.raises(SpecError, match="trains from a logitcache.lm.TokenStoreDataset, not Dataset: make a token"):
        trainer(tmp_path, text)
    with pytest.raises(SpecError, match="not list"):
        trainer(tmp_path, data, eval_dataset={"held-out": [1, 2]})


def test_a_student_that_cannot_predict_the_stores_vocabulary_is_refused(tmp_path, stores):
    with pytest.raises(ConfigError, match="predicts 200 tokens but the store's vocabulary has 256: its head must "
                                          "have at least 256 outputs"):
        trainer(tmp_path, TokenStoreDataset(stores["topk:8"]), gpt2(200))
    with pytest.raises(ConfigError, match="predicts 320 tokens .* must have exactly 256 outputs"):
        trainer(tmp_path, TokenStoreDataset(stores["fp16"]), gpt2(320))
    padded = trainer(tmp_path, TokenStoreDataset(stores["topk:8"]), gpt2(320))  # a padded head: sparse targets fit
    padded.train()
    assert np.all(np.isfinite(logged(padded)))


def test_without_trl_it_says_what_to_install(monkeypatch):
    import logitcache.trl as lc_trl

    monkeypatch.setitem(sys.modules, "trl", None)
    monkeypatch.delitem(lc_trl.__dict__, "DistillationSFTTrainer", raising=False)
    with pytest.raises(SpecError, match=r"logitcache.trl needs trl .*pip install 'logitcache\[trl\]'"):
        lc_trl.DistillationSFTTrainer  # noqa: B018
