"""Language-model students from token stores: ``logitcache train`` end to end, the Python API in a
plain loop and in the Hugging Face Trainer, resume, torchrun, and every refusal.

Real text (the start of Hamlet), the byte tokenizer, a seeded causal LM teacher
(``tests.factories.tiny_lm``) dumped through the CLI, and a one-layer GPT student."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.errors import SpecError, StoreMismatchError
from logitcache.lm import TokenStoreDataset, collate_tokens, distillation_loss
from logitcache.sources import get_model
from logitcache.sources.checkpoints import load_checkpoint
from logitcache.store import open_store
from logitcache.train import TrainConfig, train
from tests.conftest import invoke, one_error

REPO = Path(__file__).resolve().parents[2]
HAMLET = REPO / "data" / "text" / "shakespeare" / "hamlet.md"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
STUDENT = "gpt:n_layer=1,n_head=2,n_embd=32,block_size=64"
TENSORBOARD = importlib.util.find_spec("tensorboard") is not None  # the tensorboard extra
FAST = ["--optimizer", "adamw", "--lr", "0.01", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """The first 6,000 characters of Hamlet: 86 training sequences of 64 bytes, 10 held out."""
    path = tmp_path_factory.mktemp("text") / "hamlet-start.md"
    path.write_text(HAMLET.read_text()[:6_000])
    return path


def dump(store, text, codec, split="train"):
    result = invoke("dump", store, "--teacher", "tests.factories:tiny_lm", "--dataset", f"text:{text}@{split}",
                    "--tokenizer", "bytes", "--seq-len", "64", "--codec", codec, "--batch-size", "32",
                    "--rows-per-shard", str(64 * 64), "--no-progress")
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory, text) -> dict[str, Path]:
    """Training stores per codec family, and a topk store of the held-out text."""
    root = tmp_path_factory.mktemp("lm")
    made = {codec: dump(root / f"{codec.replace(':', '_')}.zarr", text, codec)
            for codec in ("topk:8", "sample:12:2", "fp16")}
    made["val"] = dump(root / "val.zarr", text, "topk:8", split="val")
    return made


def lm_train(out, store, *extra, student=STUDENT):
    return invoke("train", "--out", out, "--student", student, "--store", store, *FAST, *extra)


def records(run) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "tokens_per_second")} for r in rows]


# -- the CLI ---------------------------------------------------------------------------------------


def test_kd_from_a_topk_store_reports_validation_loss_perplexity_and_agreement(tmp_path, stores):
    result = lm_train(tmp_path / "kd", stores["topk:8"], "--val-store", stores["val"], "--epochs", "2",
                      *(["--tensorboard"] if TENSORBOARD else []))
    assert result.exit_code == 0, result.output
    if TENSORBOARD:
        assert list((tmp_path / "kd" / "tensorboard").glob("events.out.tfevents.*"))
    rows = records(tmp_path / "kd")
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["train_kd"] > 0 and row["train_ce"] > 0 and row["tokens_per_second"] > 0
        assert row["val_ppl"] == pytest.approx(np.exp(row["val_loss"]))
        assert 0 <= row["val_agreement"] <= 1
    assert rows[1]["val_loss"] < rows[0]["val_loss"]
    assert rows[0]["train_tokens"] == int(open_store(stores["topk:8"]).lengths.sum())
    best = min(rows, key=lambda r: r["val_loss"])
    assert f"best epoch {best['epoch']}: val loss {best['val_loss']:.4f} nats/token, " \
           f"perplexity {best['val_ppl']:.3f}" in result.output
    assert "teacher 'default' (topk:8, in memory)" in result.output
    header = (tmp_path / "kd" / "metrics.csv").read_text().splitlines()[0]
    assert "val_ppl" in header and "val_agreement" in header and "tokens_per_second" in header
    checkpoint = load_checkpoint(tmp_path / "kd" / "best.pt")
    assert checkpoint["num_classes"] == 256 and json.loads(checkpoint["config"])["temperature"] == 1.0


def test_sampled_and_dense_stores_train_and_label_only_reads_no_teacher(tmp_path, stores):
    sampled = lm_train(tmp_path / "sample", stores["sample:12:2"], "--epochs", "1", "--bf16")
    assert sampled.exit_code == 0, sampled.output
    assert json.loads((tmp_path / "sample" / "config.json").read_text())["temperature"] == 2.0  # the store's T
    dense = lm_train(tmp_path / "dense", stores["fp16"], "--epochs", "1", "--temperature", "2")
    assert dense.exit_code == 0 and records(tmp_path / "dense")[0]["train_kd"] > 0
    label_only = lm_train(tmp_path / "ce", stores["fp16"], "--loss", "ce", "--epochs", "1")
    assert label_only.exit_code == 0 and "no teacher read (--loss ce)" in label_only.output
    assert records(tmp_path / "ce")[0]["train_kd"] == 0 and records(tmp_path / "ce")[0]["val_loss"] is None


def test_a_newcomer_trains_a_teacher_from_text_then_dumps_it_and_distils(tmp_path, text):
    teacher = invoke("train", "--out", tmp_path / "teacher", "--student", STUDENT, "--dataset", f"text:{text}@train",
                     "--val-dataset", f"text:{text}@val", "--tokenizer", "bytes", "--seq-len", "64", "--loss", "ce",
                     "--epochs", "1", *FAST)
    assert teacher.exit_code == 0, teacher.output
    assert records(tmp_path / "teacher")[0]["val_agreement"] is None  # no teacher to agree with
    store = tmp_path / "lm.zarr"
    result = invoke("dump", store, "--teacher", f"checkpoint:{tmp_path / 'teacher' / 'best.pt'}", "--dataset",
                    f"text:{text}@train", "--tokenizer", "bytes", "--seq-len", "64", "--codec", "topk:4",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    student = lm_train(tmp_path / "student", store, "--val-dataset", f"text:{text}@val", "--epochs", "1")
    assert student.exit_code == 0, student.output
    assert records(tmp_path / "student")[0]["val_loss"] > 0


def test_resume_continues_exactly(tmp_path, stores):
    options = dict(student=STUDENT, store=str(stores["topk:8"]), val_store=str(stores["val"]), epochs=2,
                   batch_size=16, optimizer="adamw", lr=0.01, progress=False)
    train(TrainConfig(out=str(tmp_path / "straight"), **options), log=lambda *_: None)

    def stop_after_epoch_one(line):
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "resumed"), **options), log=stop_after_epoch_one)
    train(TrainConfig(out=str(tmp_path / "resumed"), resume=True, **options), log=lambda *_: None)
    assert without_timing(records(tmp_path / "resumed")) == without_timing(records(tmp_path / "straight"))
    straight, resumed = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("straight", "resumed"))
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    changed = invoke("train", "--out", tmp_path / "resumed", "--student", STUDENT, "--store", stores["topk:8"],
                     "--val-store", stores["val"], "--epochs", "2", "--temperature", "2", "--resume", *FAST)
    assert "--resume would change the run: temperature (1 -> 2)" in one_error(changed)


def test_two_processes_at_half_the_batch_train_what_one_process_does(tmp_path, stores):
    """Each step's loss is the mean over every rank's target tokens, so torchrun with --batch-size 8
    on 2 processes takes the very steps one process takes with --batch-size 16."""
    args = ["train", "--student", STUDENT, "--store", stores["topk:8"], "--epochs", "1", "--optimizer", "adamw",
            "--lr", "0.01", "--no-progress"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "logitcache", *map(str, args), "--out", str(tmp_path / "two"), "--batch-size", "8"]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 1 epochs") == 1
    one = invoke(*args, "--out", tmp_path / "one", "--batch-size", "16")
    assert one.exit_code == 0, one.output
    two_steps, one_steps = ((tmp_path / name / "steps.csv").read_text().splitlines() for name in ("two", "one"))
    assert len(two_steps) == len(one_steps) == 1 + -(-len(open_store(stores["topk:8"]).tokens) // 16)
    for a, b in zip(two_steps[1:], one_steps[1:]):
        assert float(a.split(",")[3]) == pytest.approx(float(b.split(",")[3]), rel=1e-4)
    two, one = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("two", "one"))
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5)


# -- refusals, each one line before step 0 -----------------------------------------------------------


@pytest.mark.parametrize("extra, says", [
    (["--loss", "dist"], "--loss dist is not defined on token positions; token data trains with --loss ce or kl"),
    (["--student", "tests.factories:small_head_lm"],
     "the student predicts 100 tokens per position, but the training data's vocabulary is 256"),
    (["--student", "gpt:n_layer=1,n_head=2,n_embd=32,block_size=32"],
     "the student's context is 32 tokens, shorter than the sequences (64 tokens)"),
    (["--student", "mlp:hidden=8"], "the student fails on a sequence of 64 token ids"),
    (["--dataset", "digits@train"], "holds its training sequences: leave out --dataset digits@train"),
    (["--seq-len", "32"], "--seq-len 32 differs from the store's sequences of 64 tokens"),
    (["--mixup", "0.2", "--transform", "tensor"], "--transform, --mixup apply to image data, not to token sequences"),
    (["--feature-loss", "at"], "--feature-loss applies to image data, not to token sequences"),
    (["--val-store", "VAL", "--val-dataset", "text:x"], "give --val-store or --val-dataset, not both"),
    (["--teacher", "a,b"], "--teacher a,b: a token run distils from one teacher"),
    (["--expect-teacher", "0123456789abcdef"], "is not the expected teacher 0123456789abcdef"),
])
def test_token_runs_refuse_with_one_line(tmp_path, stores, extra, says):
    extra = [stores["val"] if e == "VAL" else e for e in extra]
    student = [] if "--student" in extra else ["--student", STUDENT]
    result = invoke("train", "--out", tmp_path / "run", *student, "--store", stores["topk:8"], *FAST, *extra)
    assert says in one_error(result)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_sample_store_serves_only_its_own_temperature(tmp_path, stores):
    result = lm_train(tmp_path / "run", stores["sample:12:2"], "--temperature", "1")
    assert "--temperature 1 differs from the temperature 2 the store's tokens were sampled at (sample:12:2)" in \
        one_error(result)


def test_token_options_with_an_image_store_or_without_a_store_are_refused(tmp_path, digits_store, text):
    image = invoke("train", "--out", tmp_path / "a", "--student", STUDENT, "--store", digits_store, "--val-store",
                   digits_store)
    assert "holds labelled samples, not token sequences; --tokenizer, --seq-len and --val-store are for token data" \
        in one_error(image)
    no_tokenizer = invoke("train", "--out", tmp_path / "b", "--student", STUDENT, "--dataset", f"text:{text}",
                          "--seq-len", "64")
    assert "token data without a --store needs --dataset (text:GLOB, jsonl:FILE, ...), --tokenizer and --seq-len; " \
           "missing: --tokenizer" in one_error(no_tokenizer)
    kl_without_store = invoke("train", "--out", tmp_path / "c", "--student", STUDENT, "--dataset", f"text:{text}",
                              "--tokenizer", "bytes", "--seq-len", "64", "--loss", "kl")
    assert "--loss kl distils from a token store's teacher: give --store" in one_error(kl_without_store)
    no_dataset = invoke("train", "--out", tmp_path / "d", "--student", "mlp")
    assert "--dataset is required" in one_error(no_dataset)


def flat_lm(num_classes: int = 256):
    """Not a causal LM: one row of logits per sequence."""
    return torch.nn.Sequential(torch.nn.Embedding(num_classes, 8), torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))


def xor_bytes():
    """A tokenizer with the byte tokenizer's vocabulary size but other ids."""
    class XorBytes:
        vocab_size = 256

        def encode(self, text):
            return [b ^ 1 for b in text.encode("utf-8")]

    return XorBytes()


def test_students_that_are_not_causal_lms_and_mismatched_tokenizers_are_refused(tmp_path, stores, text):
    flat = lm_train(tmp_path / "a", stores["topk:8"], student="tests.train.test_token_training:flat_lm")
    assert "the student outputs (1, 256) for one sequence of 64 tokens; token data needs a causal LM's" \
        in one_error(flat)
    tokenizer = lm_train(tmp_path / "b", stores["topk:8"], "--tokenizer", "tests.train.test_token_training:xor_bytes")
    assert "--tokenizer tests.train.test_token_training:xor_bytes is not the tokenizer" in one_error(tokenizer)
    other = tmp_path / "other.zarr"
    result = invoke("dump", other, "--teacher", "tests.factories:tiny_lm", "--dataset", f"text:{text}@val",
                    "--tokenizer", "tests.train.test_token_training:xor_bytes", "--seq-len", "64", "--codec", "topk:8",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    val = lm_train(tmp_path / "c", stores["topk:8"], "--val-store", other)
    assert "has tokenizer 'tests.train.test_token_training:xor_bytes'" in one_error(val)


def test_an_unfinished_teacher_needs_allow_partial_and_trains_on_its_written_sequences(tmp_path, text):
    store = tmp_path / "partial.zarr"  # nan_lm fails the dump in the second shard: only the first is written
    failed = invoke("dump", store, "--teacher", "tests.factories:nan_lm", "--dataset", f"text:{text}@train",
                    "--tokenizer", "bytes", "--seq-len", "64", "--codec", "topk:8", "--rows-per-shard", "256",
                    "--no-progress")
    assert "NaN/inf logits" in one_error(failed)
    assert "finish the dump, or pass --allow-partial" in one_error(lm_train(tmp_path / "a", store))
    partial = lm_train(tmp_path / "b", store, "--allow-partial", "--epochs", "1")
    assert partial.exit_code == 0 and "training on" in partial.output and ": 4 sequences x 64 tokens" in partial.output
    assert records(tmp_path / "b")[0]["train_tokens"] == 4 * 64
    empty = tmp_path / "empty.zarr"  # now the first shard holds the failing sequence: nothing is written
    invoke("dump", empty, "--teacher", "tests.factories:nan_lm", "--dataset", f"text:{text}@train", "--tokenizer",
           "bytes", "--seq-len", "64", "--codec", "topk:8", "--rows-per-shard", "512", "--no-progress")
    assert "no shard is written yet" in one_error(lm_train(tmp_path / "c", empty, "--allow-partial"))


def test_a_labelled_store_is_not_a_token_dataset(stores, digits_store, tmp_path):
    with pytest.raises(StoreMismatchError, match="holds labelled samples, not token sequences"):
        TokenStoreDataset(digits_store)
    result = lm_train(tmp_path / "run", stores["topk:8"], "--val-store", digits_store)
    assert f"--val-store {digits_store} holds labelled samples, not token sequences" in one_error(result)


def test_the_trainer_says_what_to_install_without_transformers(monkeypatch):
    import logitcache.hf as hf

    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(hf.__dict__, "DistillationTrainer", raising=False)
    with pytest.raises(SpecError, match=r"logitcache.hf needs transformers .*pip install 'logitcache\[lm\]'"):
        hf.DistillationTrainer  # noqa: B018


def test_empty_validation_text_is_refused(tmp_path, stores):
    tiny = tmp_path / "tiny.md"
    tiny.write_text("To be")  # its last tenth, the val split, holds no token
    result = lm_train(tmp_path / "run", stores["topk:8"], "--val-dataset", f"text:{tiny}@val")
    assert "holds no tokens" in one_error(result)


# -- the Python API ----------------------------------------------------------------------------------


def test_items_follow_hugging_face_conventions_and_streaming_reads_the_same(stores):
    store = open_store(stores["topk:8"])
    data = TokenStoreDataset(store)
    item = data[3]
    tokens, mask = store.tokens[3].astype(np.int64), store.loss_mask[3]
    assert torch.equal(item["input_ids"], torch.from_numpy(tokens))
    assert int(item["labels"][0]) == -100
    expected = np.where(mask[:-1], tokens[1:], -100)
    assert torch.equal(item["labels"][1:], torch.from_numpy(expected))
    assert int(item["attention_mask"].sum()) == store.lengths[3]
    targets = store.teacher().read_targets(3 * 64, 4 * 64)
    assert torch.equal(item["teacher_indices"], torch.from_numpy(targets["indices"]))
    streamed = TokenStoreDataset(store, cache_budget=1)
    assert data.targets.in_memory and not streamed.targets.in_memory
    picked = [5, 80, 0, 64]
    for name, value in data.batch(picked).items():
        assert torch.equal(value, streamed.batch(picked)[name]), name
    assert set(TokenStoreDataset(stores["sample:12:2"])[0]) >= {"teacher_weights", "teacher_temperature"}
    assert set(TokenStoreDataset(stores["fp16"])[0]) >= {"teacher_logits"}


def test_token_sequences_read_by_window_train_to_the_bits_of_the_held_ones(tmp_path, text, monkeypatch):
    """At a tiny budget the token ids and loss mask go through the targets' windowed reader, a chunk
    of 8 sequences at a time, never read whole; a few steps in the streamed order give the losses of
    the same batches read from memory, to the bit."""
    import logitcache.store._token_writes as root_module

    monkeypatch.setattr(root_module, "INDEX_CHUNK_BYTES", 8 * 64)  # token chunks of 8 sequences of 64 bytes
    path = dump(tmp_path / "chunked.zarr", text, "topk:8")
    store = open_store(path)
    held, streamed = TokenStoreDataset(open_store(path)), TokenStoreDataset(store, cache_budget=1)
    assert held.rows.in_memory and held.block_sequences is None
    assert not streamed.rows.in_memory and streamed.rows.block_rows == 8 and streamed.rows.window_blocks == 1
    assert (streamed.block_sequences, streamed.window_blocks) == (8, 1)
    from logitcache.train.sampler import EpochSampler

    order = EpochSampler(np.arange(len(streamed)), 0, block_rows=8, window_blocks=1).order()
    losses, windows = {}, set()
    for name, data in (("held", held), ("streamed", streamed)):
        torch.manual_seed(0)
        student = get_model(STUDENT, 256)
        optimizer = torch.optim.AdamW(student.parameters(), lr=0.01)
        losses[name] = []
        for step in range(4):
            batch = data.batch(order[step * 16:(step + 1) * 16])
            loss = distillation_loss(student(batch["input_ids"]), batch, temperature=2.0, kd_weight=1.0, ce_weight=0.5)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
            if name == "streamed":
                assert len(data.rows.cache) == 1  # one chunk of sequences held at a time
                windows.add(next(iter(data.rows.cache)))
    assert losses["held"] == losses["streamed"]
    assert len(windows) > 1 and "token_arrays" not in store._cache  # chunks came and went; no whole read
    run = lm_train(tmp_path / "run", path, "--epochs", "1", "--cache-budget", "1", "--loss", "kl")
    assert run.exit_code == 0 and "(tokens read by chunk, 1 cached)" in run.output, run.output


def test_a_plain_pytorch_loop_distils_with_the_api(stores):
    torch.manual_seed(0)
    student = get_model(STUDENT, 256)
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.01)
    data = TokenStoreDataset(stores["topk:8"])
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, collate_fn=collate_tokens)
    losses = []
    for batch in loader:
        loss = distillation_loss(student(batch["input_ids"]), batch, temperature=1.0, kd_weight=1.0, ce_weight=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    label_only = TokenStoreDataset(stores["topk:8"], targets=False)[0]
    assert not any(name.startswith("teacher_") for name in label_only)
    with pytest.raises(Exception, match="the batch holds no teacher targets"):
        distillation_loss(torch.zeros(1, 64, 256), collate_tokens([label_only]))


def test_the_hugging_face_trainer_keeps_the_teacher_columns_and_distils(tmp_path, stores):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from logitcache.hf import DistillationTrainer

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    seen = []

    class Recording(DistillationTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.append((sorted(inputs), num_items_in_batch))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    args = transformers.TrainingArguments(str(tmp_path / "hf"), max_steps=3, per_device_train_batch_size=4,
                                          gradient_accumulation_steps=2, learning_rate=1e-3, report_to=[],
                                          use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True)
    assert args.remove_unused_columns  # the default that drops columns the model's forward does not name
    data = TokenStoreDataset(stores["topk:8"])
    trainer = Recording(model=model, args=args, train_dataset=data, temperature=1.0, kd_weight=1.0, ce_weight=1.0)
    trainer.train()
    assert len(seen) == 6
    for columns, count in seen:
        assert {"teacher_indices", "teacher_logprobs", "teacher_tail", "labels"} <= set(columns)
        assert int(count) == 8 * 63  # two micro-batches of 4 sequences, 63 targets each
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_a_label_only_token_epoch_line_has_no_kd_term(tmp_path):
    text = tmp_path / "a.md"
    text.write_text(HAMLET.read_text()[:6000])
    lines = []
    train(TrainConfig(out=str(tmp_path / "r"), student="gpt:n_layer=1,n_head=1,n_embd=16,block_size=64",
                      dataset=f"text:{text}", tokenizer="bytes", seq_len=64, loss="ce", epochs=1, progress=False),
          log=lines.append)
    epoch = next(line for line in lines if line.startswith("epoch 1/1"))
    assert "(ce " in epoch and "kd" not in epoch


def test_distillation_loss_takes_a_model_output_and_refuses_a_temperature_that_is_not_positive():
    from types import SimpleNamespace

    from logitcache.errors import ConfigError
    from logitcache.lm import distillation_loss

    logits = torch.randn(2, 5, 7)
    batch = {"labels": torch.tensor([[-100, 1, 2, 3, 4], [-100, 4, 3, 2, 1]])}
    plain = distillation_loss(logits, batch, kd_weight=0.0)
    assert torch.equal(distillation_loss(SimpleNamespace(logits=logits), batch, kd_weight=0.0), plain)
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ConfigError, match="temperature must be a number from 0.001 to 1000"):
            distillation_loss(logits, batch, temperature=bad, kd_weight=0.0)
