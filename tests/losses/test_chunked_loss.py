"""The chunked token loss equals the materialised one: values and gradients, every target form, two
temperatures, logitcache's GPT and Hugging Face students (Gemma 2's soft-capping included), through
``losses/chunked.py``, ``logitcache.lm``, the Hugging Face Trainer and ``logitcache train``; a step
that runs out of memory says what to lower in one line."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from logitcache.codecs import DenseTargets, SampledTargets, TopKTargets
from logitcache.errors import ConfigError
from logitcache.lm import chunked_distillation_loss, distillation_loss
from logitcache.losses import chunked, token_loss_sums
from logitcache.losses.chunked import chunked_head, chunked_token_loss_sums
from logitcache.sources import get_model
from logitcache.sources.lm_heads import split_lm
from tests.conftest import invoke
from tests.train.test_token_training import FAST, STUDENT, records, stores, text  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
V, B, L = 97, 2, 24
LOSS_RTOL, GRAD_TOL = 1e-6, 1e-5


def _gpt():
    torch.manual_seed(0)
    return get_model("gpt:n_layer=1,n_head=2,n_embd=16,block_size=64", V)


def _hf(name):
    transformers = pytest.importorskip("transformers")
    from tests.sources.test_lm_heads import CONFIGS, hf_lm

    model = hf_lm(CONFIGS[name]())
    with torch.no_grad():  # back to ordinary logits (hf_lm scales them up to test the cap)
        model.model.get_output_embeddings().weight.div_(10)
    assert isinstance(model.model, transformers.PreTrainedModel)
    return model


STUDENTS = {"gpt": _gpt, "llama": lambda: _hf("llama"), "qwen2": lambda: _hf("qwen2"),
            "gemma2 soft-capped": lambda: _hf("gemma2 soft-capped")}


def _teacher(form: str, temperature: float):
    gen = torch.Generator().manual_seed(5)
    if form == "dense":
        return DenseTargets(torch.randn(B, L, V, generator=gen) * 3)
    indices = torch.rand(B, L, V, generator=gen).argsort(-1)[..., :6]  # distinct tokens per position
    if form == "topk":
        probs = torch.rand(B, L, 7, generator=gen).softmax(-1)
        return TopKTargets(indices, probs[..., :6].log(), probs[..., 6].log())
    weights = torch.full((B, L, 6), 1 / 6)
    return SampledTargets(indices, weights, -torch.rand(B, L, 6, generator=gen) * 4,
                          torch.full((B,), temperature))


def _labels():
    ids = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt that is no target
    labels[1, -3:] = -100  # padding
    return ids, labels


def _same_loss(found, expected) -> bool:
    found, expected = float(found.detach()), float(expected.detach())
    return abs(found - expected) <= LOSS_RTOL * abs(expected)


def _close(found, expected, tol):
    scale = expected.abs().max().clamp_min(1e-12)
    assert float((found - expected).abs().max() / scale) <= tol


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("form", ["dense", "topk", "sample"])
@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_the_chunked_loss_and_its_gradients_equal_the_materialised_ones(student, form, temperature):
    model = STUDENTS[student]()
    ids, labels = _labels()
    teacher = _teacher(form, temperature)
    split = split_lm(model, ids[:1])
    assert split is not None
    with torch.no_grad():
        hidden = split.hidden_states(ids)  # (B, L, H)
    head = chunked_head(model, split.head_logits, hidden)
    assert head.vocab_size == V and len(head.parameters) >= 1

    def gradients(total, wrt):
        return torch.autograd.grad(total, [wrt, *head.parameters])

    whole_hidden = hidden.clone().requires_grad_()
    whole = token_loss_sums(split.head_logits(whole_hidden), labels, teacher, temperature)
    expected = gradients(whole.total(1.0, 0.7), whole_hidden)
    chunk_hidden = hidden.clone().requires_grad_()
    sums = chunked_token_loss_sums(chunk_hidden, head, labels, teacher, temperature, 1.0, 0.7, chunk_size=10)
    found = gradients(sums.total(1.0, 0.7), chunk_hidden)  # 5 positions x 2 sequences per chunk: 5 chunks

    assert sums.count == whole.count
    assert _same_loss(sums.ce, whole.ce) and _same_loss(sums.kd, whole.kd)
    for got, want in zip(found, expected):
        _close(got, want, GRAD_TOL)


def test_the_chunked_sums_keep_the_weights_they_were_differentiated_for_and_need_no_graph():
    model = _gpt()
    ids, labels = _labels()
    split = split_lm(model, ids[:1])
    with torch.no_grad():
        hidden = split.hidden_states(ids)
        sums = chunked_token_loss_sums(hidden, chunked_head(model, split.head_logits, hidden), labels, None,
                                       chunk_size=7)
        whole = token_loss_sums(model(ids), labels, None)
    assert not sums.total(1.0, 1.0).requires_grad
    assert _same_loss(sums.total(1.0, 1.0), whole.ce)
    with pytest.raises(ValueError, match="weighted"):
        sums.total(1.0, 0.5)


@pytest.mark.parametrize("student", ["gpt", "gemma2 soft-capped"])
def test_the_api_gives_every_parameter_the_materialised_gradient(student):
    """``chunked_distillation_loss(model, batch)`` against ``distillation_loss(model(ids), batch)``,
    for logitcache's GPT and a raw Hugging Face model (its attention mask passed on)."""
    model = STUDENTS[student]()
    model = getattr(model, "model", model)  # the Hugging Face model itself, not logitcache's wrapper
    ids, labels = _labels()
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
             **_teacher("topk", 1.0).columns("teacher_")}
    params = [p for p in model.parameters() if p.requires_grad]

    def run(loss_of):
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    def forward():
        output = model(ids) if student == "gpt" else model(input_ids=ids, attention_mask=batch["attention_mask"])
        return getattr(output, "logits", output)

    expected = run(lambda: distillation_loss(forward(), batch, kd_weight=0.5, num_items_in_batch=40))
    found = run(lambda: chunked_distillation_loss(model, batch, kd_weight=0.5, num_items_in_batch=40, chunk_size=8))
    assert _same_loss(found[0], expected[0])
    for got, want in zip(found[1], expected[1]):
        _close(got, want, GRAD_TOL)
    with pytest.raises(ConfigError, match="does not split at its head"):
        chunked_distillation_loss(torch.nn.Embedding(V, V), batch)


def test_the_hugging_face_trainer_chunks_where_it_saves_memory_and_equals_the_whole_logits(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from logitcache.hf import DistillationTrainer

    model = STUDENTS["qwen2"]().model.train()
    ids, labels = _labels()
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
             **_teacher("sample", 1.0).columns("teacher_")}
    args = transformers.TrainingArguments(str(tmp_path / "hf"), report_to=[], use_cpu=True, save_strategy="no")
    trainers = {mode: DistillationTrainer(model=model, args=args, chunked_loss=mode) for mode in (None, True, False)}
    used = []
    real = chunked.chunked_token_loss_sums
    monkeypatch.setattr(chunked, "chunked_token_loss_sums", lambda *a, **k: used.append(1) or real(*a, **k))
    losses = {mode: trainer.compute_loss(model, dict(batch)) for mode, trainer in trainers.items()}
    assert len(used) == 1  # True only: the default leaves a batch whose logits fit one chunk whole
    assert torch.equal(losses[None], losses[False])
    assert _same_loss(losses[True], losses[False])
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * V * 10)  # now a batch's logits take five chunks
    trainers[None].compute_loss(model, dict(batch))
    assert len(used) == 2


def test_train_chunks_by_default_only_when_a_steps_logits_exceed_a_chunk(tmp_path, stores, monkeypatch):  # noqa: F811
    """One epoch is 6 optimizer steps (86 sequences, batches of 16): every step after the first
    trains from weights the chunked gradients made, so the records compare the whole path."""
    runs = {}
    for name, flags in (("default", []), ("whole", ["--no-chunked-loss"]), ("chunked", ["--chunked-loss"])):
        result = invoke("train", "--out", tmp_path / name, "--student", STUDENT, "--store", stores["topk:8"],
                        "--val-store", stores["val"], *FAST, "--epochs", "1", *flags)
        assert result.exit_code == 0, result.output
        assert ("the loss goes by chunks" in result.output) == (name == "chunked")
        runs[name] = records(tmp_path / name)
    strip = ("epoch_seconds", "tokens_per_second")
    assert [{k: v for k, v in r.items() if k not in strip} for r in runs["default"]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in runs["whole"]]  # bit-identical: the old path
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * 256 * 40)  # 40 positions a chunk: 2 per sequence of 16
    result = invoke("train", "--out", tmp_path / "small-chunks", "--student", STUDENT, "--store", stores["topk:8"],
                    "--val-store", stores["val"], *FAST, "--epochs", "1")
    assert result.exit_code == 0 and "the loss goes by chunks of 40 positions" in result.output, result.output
    assert len(runs["whole"]) == 1
    for chunked_run in (runs["chunked"], records(tmp_path / "small-chunks")):
        for got, want in zip(chunked_run, runs["whole"]):
            for key in ("train_loss", "train_ce", "train_kd", "val_loss", "val_agreement", "val_kl"):
                assert got[key] == pytest.approx(want[key], rel=1e-4), key  # float32 rounding, 6 steps


def test_chunked_loss_is_refused_for_a_student_that_does_not_split(tmp_path, stores):  # noqa: F811
    result = invoke("train", "--out", tmp_path / "run", "--student", "tests.factories:tiny_lm",
                    "--store", stores["topk:8"], *FAST, "--epochs", "1", "--chunked-loss")
    assert result.exit_code != 0
    assert "--chunked-loss is not available for a student without hidden_states" in result.output


@pytest.mark.parametrize("flags, says", [
    ([], "the whole logits at once): lower --batch-size, or give --chunked-loss"),
    (["--chunked-loss"], "the loss by chunks of"),
])
def test_a_step_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, stores, flags, says):  # noqa: F811
    """A real allocation failure: the student asks for 4 TiB in training, under an address-space
    limit of 32 GiB so that no machine's overcommit lets it through."""
    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (32 << 30, 32 << 30))

    command = [sys.executable, "-m", "logitcache", "train", "--out", str(tmp_path / "run"), "--student",
               "tests.chunked_factories:greedy_lm", "--store", str(stores["topk:8"]), *FAST, "--epochs", "1", *flags]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=limited,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "the student's step ran out of memory at --batch-size 16 (16 x 64 positions" in lines[0]
    assert says in lines[0]
