"""A token dump never holds a batch's whole logits: a split teacher's head runs a chunk of positions
at a time (writing what its whole head writes), batches are counted in tokens, a head that cannot
be split runs whole in batches its budget holds, and running out of memory is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from logitcache.dump.token_teacher import HeadLogits, TokenTeacher
from logitcache.sources import get_model
from logitcache.store import open_store, verify_store
from tests.conftest import invoke, one_error, store_contents

REPO = Path(__file__).resolve().parents[2]
VOCAB = 32768  # the reducer's 256 MB budget is 341 positions here; a batch of 8 sequences of 64 is 512
SEQ_LEN = 64
GPT = "gpt:n_layer=1,n_head=2,n_embd=32,block_size=64"


class WideTokenizer:
    """UTF-8 bytes in a vocabulary of VOCAB ids (a head that wide)."""

    vocab_size, eos_id = VOCAB, 0

    def encode(self, text):
        return list(text.encode())


def wide_tokenizer():
    return WideTokenizer()


def random_ids():
    """12 records of 64 ids spread over the whole vocabulary."""
    generator = np.random.default_rng(5)
    return [{"input_ids": generator.integers(1, VOCAB, SEQ_LEN).tolist()} for _ in range(12)]


def split_gpt(num_classes: int):
    torch.manual_seed(0)
    return get_model(GPT, num_classes)


class WholeLM(nn.Module):
    """A model's forward alone: no hidden_states or head_logits, so its head runs whole."""

    def __init__(self, inner, scale: float = 1.0):
        super().__init__()
        self.inner, self.scale, self.context_length = inner, scale, inner.context_length

    def forward(self, idx):
        return self.inner(idx) * self.scale


class ForgetfulLM(WholeLM):
    """Offers a split that forgets the scale its forward applies: the probe must catch it."""

    def hidden_states(self, idx):
        return self.inner.hidden_states(idx)

    def head_logits(self, hidden):
        return self.inner.head_logits(hidden)


def whole_gpt(num_classes: int):
    return WholeLM(split_gpt(num_classes))


class HungryLM(nn.Module):
    """A split causal LM whose backbone takes 16 MB of working memory per token (reserved, never
    touched, so it costs address space and no time): a batch of 16 sequences of 32 tokens needs
    8 GB, one sequence 512 MB."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed, self.head, self.context_length = nn.Embedding(vocab, 8), nn.Linear(8, vocab), 512

    def forward(self, idx):
        return self.head_logits(self.hidden_states(idx))

    def hidden_states(self, idx):
        scratch = torch.empty((*idx.shape, 4 << 20))  # (B, T, 4M) float32
        return self.embed(idx) + scratch[..., :0].sum(-1, keepdim=True)

    def head_logits(self, hidden):
        return self.head(hidden)


def hungry_lm(num_classes: int):
    torch.manual_seed(0)
    return HungryLM(num_classes)


def dump_args(store, *extra, teacher=f"{__name__}:split_gpt", codec="topk:8") -> list:
    return ["dump", store, "--teacher", teacher, "--dataset", f"{__name__}:random_ids",
            "--tokenizer", f"{__name__}:wide_tokenizer", "--seq-len", SEQ_LEN, "--codec", codec,
            "--rows-per-shard", SEQ_LEN * 6, "--no-progress", *extra]


def dumped_rows(path) -> tuple[dict, dict, dict]:
    teacher = open_store(path).teacher()
    rows = teacher.read_targets(0, teacher.num_samples)
    return rows, teacher.attrs["metrics"], teacher.attrs["settings"]


@pytest.mark.parametrize("codec", ["topk:8", "sample:12"])
def test_a_split_teacher_writes_what_its_whole_head_writes(tmp_path, monkeypatch, codec):
    slices = []
    take = HeadLogits.__getitem__
    monkeypatch.setattr(HeadLogits, "__getitem__", lambda self, rows: slices.append(rows) or take(self, rows))
    split = invoke(*dump_args(tmp_path / "split.zarr", "--batch-size", 8, teacher=f"{__name__}:split_gpt",
                              codec=codec))
    assert split.exit_code == 0 and "note:" not in split.output, split.output
    assert max(s.stop - s.start for s in slices) == 341 < 8 * SEQ_LEN  # the head ran in chunks
    whole = invoke(*dump_args(tmp_path / "whole.zarr", "--batch-size", 8, teacher=f"{__name__}:whole_gpt",
                              codec=codec))
    assert whole.exit_code == 0, whole.output
    assert "note: the teacher's head runs whole (it has no hidden_states and head_logits methods)" in whole.output
    (split_rows, split_metrics, split_settings), (whole_rows, whole_metrics, whole_settings) = (
        dumped_rows(tmp_path / "split.zarr"), dumped_rows(tmp_path / "whole.zarr"))
    for name in split_rows:
        assert np.array_equal(split_rows[name].view(np.uint8), whole_rows[name].view(np.uint8)), name
    assert split_metrics == whole_metrics
    named = {"teacher": None, "parameters_sha256": None}  # the wrapper's spec and parameter names
    assert {**split_settings, **named} == {**whole_settings, **named}


def test_a_head_that_runs_whole_gets_batches_its_logits_fit_and_a_split_the_probe_refutes_runs_whole():
    tokens, lengths, tokenizer = np.ones((2, SEQ_LEN), dtype=np.int64), np.full(2, SEQ_LEN), WideTokenizer()
    split = TokenTeacher(split_gpt(VOCAB).eval(), torch.device("cpu"), bf16=False)
    assert split.probe(tokens, lengths, tokenizer) == VOCAB and split.split is not None
    assert split.sequences_per_batch(SEQ_LEN, batch_size=256, batch_tokens=65536) == 256
    assert split.sequences_per_batch(SEQ_LEN, batch_size=256, batch_tokens=200) == 3
    assert split.sequences_per_batch(SEQ_LEN, batch_size=256, batch_tokens=10) == 1
    whole = TokenTeacher(whole_gpt(VOCAB).eval(), torch.device("cpu"), bf16=False)
    whole.probe(tokens, lengths, tokenizer)
    assert whole.split is None
    assert whole.sequences_per_batch(SEQ_LEN, batch_size=256, batch_tokens=65536) == 32  # 8 MiB a sequence
    assert whole.sequences_per_batch(SEQ_LEN * 1024, batch_size=256, batch_tokens=65536) == 1
    forgetful = TokenTeacher(ForgetfulLM(split_gpt(VOCAB), scale=2.0).eval(), torch.device("cpu"), bf16=False)
    forgetful.probe(tokens, lengths, tokenizer)
    assert forgetful.split is None and "do not give its own logits" in forgetful.unsplit_reason
    assert "32 sequences of 64 tokens, 256 MiB" in forgetful.unsplit_note(SEQ_LEN, 32)


def test_batches_are_counted_in_tokens_capped_by_batch_size_and_a_resume_cuts_the_same(tmp_path):
    results = {}
    for name, extra in {"tokens": ["--batch-tokens", 200], "size": ["--batch-size", 3],
                        "default": [], "one": ["--batch-tokens", 10]}.items():
        result = invoke(*dump_args(tmp_path / f"{name}.zarr", *extra))
        assert result.exit_code == 0, result.output
        results[name] = open_store(tmp_path / f"{name}.zarr").teacher().attrs["settings"]["batch_size"]
    assert results == {"tokens": 3, "size": 3, "default": 256, "one": 1}  # the default: --batch-size's, as before
    assert store_contents(tmp_path / "tokens.zarr") == store_contents(tmp_path / "size.zarr")
    again = invoke(*dump_args(tmp_path / "tokens.zarr", "--batch-tokens", 250))  # 3 sequences still: the same dump
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    assert "made with other settings" in one_error(invoke(*dump_args(tmp_path / "tokens.zarr", "--batch-tokens", 300)))
    assert "--batch-tokens must be at least 1" in invoke(*dump_args(tmp_path / "zero.zarr", "--batch-tokens", 0)).output


LIMITED = """
import resource, sys
import logitcache.cli, logitcache.dump.run  # what a dump imports, before the limit
size = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
limit = size + (2 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # what prlimit --as sets
sys.argv[0] = "logitcache"
logitcache.cli.cli()
"""


def run_dump(args: list, limited: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    command = [sys.executable, "-c", LIMITED] if limited else [sys.executable, "-m", "logitcache"]
    return subprocess.run([*command, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_running_out_of_memory_is_one_line_naming_batch_tokens_and_the_store_stays_resumable(tmp_path):
    """Under a 2 GiB address-space limit a batch of 16 sequences needs 8 GB: one Error line, no
    traceback, the teacher left unfinished; the same command with memory to spare finishes it, and a
    smaller --batch-tokens (a new batch cut, so --overwrite) fits the limit."""
    text = tmp_path / "text.md"
    text.write_text((REPO / "data" / "text" / "shakespeare" / "hamlet.md").read_text()[:1500])
    store = tmp_path / "s.zarr"
    args = ["dump", store, "--teacher", f"{__name__}:hungry_lm", "--dataset", f"text:{text}", "--tokenizer",
            "bytes", "--seq-len", 32, "--codec", "topk:8", "--rows-per-shard", 32 * 16, "--no-progress"]
    failed = run_dump(args, limited=True)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert failed.stderr.strip().splitlines() == [failed.stderr.strip().splitlines()[-1]]
    assert failed.stderr.startswith("Error: the teacher ran out of memory on cpu with a batch of 16 sequences")
    assert "lower --batch-tokens (now 65536)" in failed.stderr and "--overwrite" in failed.stderr
    teacher = open_store(store).teacher("default", check=False)
    assert teacher.status == "writing" and not teacher.shard_done().any()
    resumed = run_dump(args, limited=False)
    assert resumed.returncode == 0, resumed.stderr
    assert verify_store(store).ok
    smaller = run_dump([*args, "--batch-tokens", 32, "--overwrite"], limited=True)
    assert smaller.returncode == 0, smaller.stderr
    assert open_store(store).teacher().attrs["settings"]["batch_size"] == 1
