"""``dump --generate``: the teacher writes responses; the store holds them, their loss mask and the
targets from the logits that chose each token; deterministic, resumable, verifiable, trainable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.dump import DumpConfig, dump
from logitcache.sources import get_model
from logitcache.store import open_store
from logitcache.verify import verify_with_dataset
from tests.conftest import invoke, one_error, store_contents

REPO = Path(__file__).resolve().parents[2]
HAMLET = REPO / "data" / "text" / "shakespeare" / "hamlet.md"
GPT = "gpt:n_layer=1,n_head=2,n_embd=32,block_size=64"
BIAS = {"token": None}  # drifting_gpt's extra logit: a teacher that changed behind a store's back


def play_lines(count: int, width: int = 24) -> list[str]:
    lines = [line.strip() for line in HAMLET.read_text(encoding="utf-8").splitlines() if len(line.strip()) > 12]
    return [line[:width] for line in lines[:count]]


def write_prompts(path: Path, values, field: str = "prompt") -> Path:
    path.write_text("".join(json.dumps({field: value}) + "\n" for value in values), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", play_lines(7))


def generate(store: Path, prompts: Path, **overrides) -> Path:
    options = dict(store=str(store), teacher=GPT, dataset=f"jsonl:{prompts}:prompt", tokenizer="bytes", seq_len=64,
                   generate=True, max_new_tokens=12, codec="fp32", batch_size=3, progress=False)
    dump(DumpConfig(**{**options, **overrides}), log=lambda *_: None)
    return store


def teacher_logits(spec: str, vocab: int, tokens: np.ndarray, seed: int = 0) -> torch.Tensor:
    """The teacher's own forward over one whole stored sequence: (T, V)."""
    torch.manual_seed(seed)
    model = get_model(spec, vocab).eval()
    with torch.no_grad():
        output = model(torch.as_tensor(tokens[None], dtype=torch.long))
    return getattr(output, "logits", output)[0].float()


def check_rows(store_path: Path, prompt_ids: list, spec: str, greedy: bool, seed: int = 0):
    """Every sequence is its prompt then a response; the mask marks the response; the stored rows
    are the teacher's logits there (its own forward over the sequence) and 0 elsewhere."""
    store = open_store(store_path)
    stored = store.teacher().read(0, store.num_samples * store.seq_len).reshape(len(prompt_ids), store.seq_len, -1)
    for row, prompt in enumerate(prompt_ids):
        length, p = int(store.lengths[row]), len(prompt)
        tokens = store.tokens[row].astype(np.int64)
        assert np.array_equal(tokens[:p], prompt) and length > p
        expected_mask = np.zeros(store.seq_len, dtype=bool)
        expected_mask[p - 1:length - 1] = True
        assert np.array_equal(store.loss_mask[row], expected_mask)
        logits = teacher_logits(spec, stored.shape[2], tokens[:length], seed)
        targets = slice(p - 1, length - 1)
        assert torch.allclose(torch.from_numpy(stored[row, targets]), logits[targets], atol=1e-4, rtol=1e-4)
        if greedy:
            assert np.array_equal(stored[row, targets].argmax(1), tokens[p:length])
        assert not stored[row, :p - 1].any() and not stored[row, length - 1:].any()


def test_greedy_responses_are_the_teachers_argmax_and_the_targets_its_logits(tmp_path, prompts):
    store = generate(tmp_path / "greedy.zarr", prompts, greedy=True)
    check_rows(store, [np.frombuffer(p.encode(), np.uint8) for p in play_lines(7)], GPT, greedy=True)
    opened = open_store(store)
    assert opened.loss_mask.sum() == 7 * 12 or (opened.tokens == 0).any()  # byte 0 is the end of text
    settings = opened.teacher().attrs["settings"]["generate"]
    assert settings["strategy"] == "greedy" and settings["decoder"] == "recompute"
    assert not (tmp_path / "greedy.zarr.generating").exists()
    assert "responses written by the teacher: greedy, up to 12 new tokens" in invoke("info", store).output


def test_under_bf16_the_stored_targets_still_chose_the_tokens(tmp_path, prompts):
    store = open_store(generate(tmp_path / "bf16.zarr", prompts, greedy=True, bf16=True))
    rows = np.flatnonzero(store.loss_mask.reshape(-1))
    stored = store.teacher().read(0, store.num_samples * store.seq_len)[rows]
    assert np.array_equal(stored.argmax(1), store.tokens.reshape(-1)[rows + 1])


def test_sampled_tokens_lie_in_the_nucleus_of_the_logits_stored_beside_them(tmp_path, prompts):
    store = generate(tmp_path / "nucleus.zarr", prompts, temperature=1.3, top_p=0.3, seed=5)
    check_rows(store, [np.frombuffer(p.encode(), np.uint8) for p in play_lines(7)], GPT, greedy=False, seed=5)
    opened = open_store(store)
    logits = torch.from_numpy(opened.teacher().read(0, opened.num_samples * opened.seq_len))
    rows = np.flatnonzero(opened.loss_mask.reshape(-1))
    chosen = torch.as_tensor(opened.tokens.reshape(-1)[rows + 1].astype(np.int64))
    probs = torch.softmax(logits[rows].double() / 1.3, dim=1)
    above = (probs * (probs > probs.gather(1, chosen[:, None]))).sum(1)  # mass ranked before the chosen token
    assert (above < 0.3).all() and len(set(chosen.tolist())) > 2


def test_same_seed_same_bytes_any_batch_other_seed_other_responses(tmp_path, prompts):
    first = generate(tmp_path / "a.zarr", prompts, codec="topk:4", temperature=0.9)
    again = generate(tmp_path / "b.zarr", prompts, codec="topk:4", temperature=0.9)
    assert store_contents(first) == store_contents(again)
    one_by_one = generate(tmp_path / "c.zarr", prompts, codec="topk:4", temperature=0.9, batch_size=1)
    assert np.array_equal(open_store(one_by_one).tokens, open_store(first).tokens)  # draws are the rows' own
    other = generate(tmp_path / "d.zarr", prompts, codec="topk:4", temperature=0.9, seed=1, weights=None)
    assert not np.array_equal(open_store(other).tokens, open_store(first).tokens)


def test_the_same_command_again_does_nothing_and_other_settings_are_refused(tmp_path, prompts):
    store = generate(tmp_path / "s.zarr", prompts, codec="sample:4")
    before = store_contents(store)
    generate(store, prompts, codec="sample:4")
    assert store_contents(store) == before
    result = invoke("dump", store, "--teacher", GPT, "--dataset", f"jsonl:{prompts}:prompt", "--tokenizer", "bytes",
                    "--seq-len", 64, "--generate", "--max-new-tokens", 12, "--codec", "sample:4", "--batch-size", 3,
                    "--temperature", "0.5", "--no-progress")
    assert "the teacher's answers differ from the token sequences of store" in one_error(result)
    fewer = write_prompts(tmp_path / "fewer.jsonl", play_lines(3))
    other = invoke("dump", store, "--teacher", GPT, "--dataset", f"jsonl:{fewer}:prompt", "--tokenizer", "bytes",
                   "--seq-len", 64, "--generate", "--max-new-tokens", 12, "--teacher-name", "second", "--no-progress")
    assert "holds 7 sequences of 64 tokens, not the answers to 3 prompts" in one_error(other)
    assert not (tmp_path / "s.zarr.generating").exists()  # refused before generating anything


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A byte-level BPE tokenizer with a chat template, and a tiny GPT-2 for it (KV cache)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.sources.test_token_sources import write_tokenizer

    folder = tmp_path_factory.mktemp("chat")
    tokenizer = write_tokenizer(folder / "tok", HAMLET.read_text(encoding="utf-8")[:20000],
                                extra_tokens=["<|user|>", "<|assistant|>"])
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=302)).save_pretrained(
        str(folder / "lm"))
    return tokenizer, folder / "lm"


def test_chat_prompts_through_the_template_with_a_kv_cache_teacher(tmp_path, chat_model):
    from logitcache.sources.tokenizers import get_tokenizer

    tokenizer_dir, model_dir = chat_model
    chats = [[{"role": "user", "content": line}] for line in play_lines(5, width=18)]
    prompts = write_prompts(tmp_path / "chats.jsonl", chats, field="messages")
    store = generate(tmp_path / "chat.zarr", prompts, teacher=f"hf:{model_dir}", tokenizer=f"hf:{tokenizer_dir}",
                     dataset=f"jsonl:{prompts}:messages", greedy=True, batch_size=2)
    tokenizer = get_tokenizer(f"hf:{tokenizer_dir}")
    rendered = [tokenizer.encode(tokenizer.render_chat(chat, add_generation_prompt=True)) for chat in chats]
    assert all(tokenizer.decode(ids).endswith("<|assistant|>") for ids in rendered)
    check_rows(store, rendered, f"hf:{model_dir}", greedy=True)  # left-padded, cached: the plain forward's logits
    assert open_store(store).teacher().attrs["settings"]["generate"]["decoder"] == "kv-cache"
    bytes_chat = invoke("dump", tmp_path / "b.zarr", "--teacher", GPT, "--dataset", f"jsonl:{prompts}:messages",
                        "--tokenizer", "bytes", "--seq-len", 64, "--generate", "--no-progress")
    assert "is a chat, but tokenizer 'bytes' has no chat template" in one_error(bytes_chat)


@pytest.mark.parametrize("extra, says", [
    (["--dataset", "jsonl:{dir}/none.jsonl:prompt"], "no file"),
    (["--dataset", "jsonl:{dir}/p.jsonl:question"], "has no field 'question'; its fields: prompt"),
    (["--dataset", "jsonl:{dir}/empty.jsonl:prompt"], "is an empty prompt"),
    (["--dataset", "jsonl:{dir}/long.jsonl:prompt"], "with --max-new-tokens 12 it needs --seq-len 72 or more"),
    (["--dataset", "jsonl:{dir}/ids.jsonl:prompt"], "holds a list, not a text prompt or chat messages"),
    (["--dataset", "digits@train"], "--generate reads prompts from token data such as jsonl:FILE:FIELD"),
    (["--dataset", "jsonl:{dir}/none.jsonl:prompt@val"], "no file"),
    (["--dataset", "jsonl:{dir}/blank.jsonl:prompt"], "holds no prompt"),
    (["--dataset", "jsonl:{dir}/bad_chat.jsonl:prompt"], "message 0 is not {'role': str, 'content': str}"),
    (["--dataset", "text:{dir}/p.jsonl@val"], "a split of text data cuts documents, not prompts"),
    (["--seq-len", "100"], "--seq-len 100 is longer than the teacher's context of 64 tokens"),
    (["--temperature", "-1"], "--temperature must be 0 (greedy) or more, got -1.0"),
    (["--temperature", "nan"], "--temperature must be 0 (greedy) or more, got nan"),
    (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    (["--greedy", "--temperature", "0.5"], "--greedy takes no --temperature"),
    (["--tokenizer", ""], "--generate needs --tokenizer and --seq-len"),
    (["--store", "s3://bucket/x.zarr"], "is remote: generate locally"),
])
def test_bad_generate_inputs_are_one_line(tmp_path, extra, says):
    write_prompts(tmp_path / "p.jsonl", ["To be"])
    write_prompts(tmp_path / "empty.jsonl", ["To be", ""])
    write_prompts(tmp_path / "long.jsonl", ["x" * 60])
    write_prompts(tmp_path / "ids.jsonl", [[1, 2, 3]])
    (tmp_path / "blank.jsonl").write_text("\n\n")
    write_prompts(tmp_path / "bad_chat.jsonl", [[{"role": "user"}]])
    options = {"--teacher": GPT, "--dataset": f"jsonl:{tmp_path}/p.jsonl:prompt", "--tokenizer": "bytes",
               "--seq-len": "64", "--max-new-tokens": "12", "--store": str(tmp_path / "s.zarr")}
    flags, given = [], iter(extra)
    for name in given:
        if name == "--greedy":
            flags.append(name)
        else:
            options[name] = next(given).format(dir=tmp_path)
    store = options.pop("--store")
    args = [a for name, value in options.items() if value != "" for a in (name, value)]
    assert says in one_error(invoke("dump", store, *args, "--generate", *flags, "--no-progress"))


def test_sampling_options_without_generate_are_refused(tmp_path, prompts):
    result = invoke("dump", tmp_path / "s.zarr", "--teacher", GPT, "--dataset", f"jsonl:{prompts}:prompt",
                    "--tokenizer", "bytes", "--seq-len", 64, "--top-p", "0.9", "--no-progress")
    assert "--temperature, --top-p, --max-new-tokens and --greedy are for --generate" in one_error(result)


def drifting_gpt(num_classes: int):
    """The test GPT, plus 100 on one token's logit while ``BIAS['token']`` is set."""
    model = get_model(GPT, num_classes)
    head = model.head_logits

    def biased(hidden):
        logits = head(hidden)
        if BIAS["token"] is not None:
            logits = logits.clone()
            logits[..., BIAS["token"]] += 100
        return logits

    model.head_logits = biased
    return model


def test_verify_writes_a_sample_again_and_names_a_teacher_that_changed(tmp_path, prompts):
    spec = "tests.dump.test_generate:drifting_gpt"
    store = generate(tmp_path / "v.zarr", prompts, teacher=spec, temperature=0.8, codec="topk:4")
    report = verify_with_dataset(store, f"jsonl:{prompts}:prompt")
    assert report.ok and any("written again: the same tokens and targets" in line for line in report.checked)
    BIAS["token"] = 65
    try:
        changed = verify_with_dataset(store, f"jsonl:{prompts}:prompt")
    finally:
        BIAS["token"] = None
    assert not changed.ok and "the teacher writes other responses" in changed.problems[0]
    other = write_prompts(tmp_path / "other.jsonl", play_lines(6))
    differs = verify_with_dataset(store, f"jsonl:{other}:prompt")
    assert not differs.ok and "differ from the dump's (generate, layout)" in differs.problems[0]


def test_a_student_trains_from_teacher_written_responses(tmp_path, prompts):
    from logitcache.lm import TokenStoreDataset

    store = generate(tmp_path / "t.zarr", prompts, codec="topk:4", temperature=0.8)
    item = TokenStoreDataset(str(store))[0]
    assert (item["labels"] != -100).sum() == open_store(store).loss_mask[0].sum()
    result = invoke("train", "--out", tmp_path / "run", "--student", "gpt:n_layer=1,n_head=1,n_embd=16,block_size=64",
                    "--store", store, "--loss", "kl", "--epochs", 2, "--batch-size", 4, "--optimizer", "adamw",
                    "--lr", "0.01", "--no-progress")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[1]["train_kd"] < rows[0]["train_kd"]


def test_killed_while_generating_and_while_writing_resumes_to_identical_bytes(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", play_lines(36))
    reference = generate(tmp_path / "reference.zarr", prompts, codec="topk:4", temperature=0.8, rows_per_shard=256,
                         batch_size=2)
    store = tmp_path / "killed.zarr"
    args = ["dump", str(store), "--teacher", GPT, "--dataset", f"jsonl:{prompts}:prompt", "--tokenizer", "bytes",
            "--seq-len", "64", "--generate", "--max-new-tokens", "12", "--codec", "topk:4", "--temperature", "0.8",
            "--rows-per-shard", "256", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    journal = tmp_path / "killed.zarr.generating"
    process = subprocess.Popen([sys.executable, "-m", "logitcache", *args], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(list(journal.glob("shard-*.npz"))) < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    kept = len(list(journal.glob("shard-*.npz")))
    assert 2 <= kept < 9 and not (store / "zarr.json").exists()  # killed while generating: 9 shards, no store yet
    # now killed right after the teacher's second shard is recorded, the store made from the journal
    killed = subprocess.run([sys.executable, "-m", "tests.killpoints", "2", *args], cwd=REPO, capture_output=True,
                            env={**env, "KILLPOINTS_KEY": "shard_done/c/"}, timeout=300)
    assert killed.returncode == 137, killed.stderr
    assert not open_store(store).teacher("default", check=False).is_complete and journal.exists()
    finished = subprocess.run([sys.executable, "-m", "logitcache", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert store_contents(store) == store_contents(reference) and not journal.exists()


def test_the_kv_cache_gives_the_recomputed_logits_as_rows_end(chat_model):
    from logitcache.dump.generate_steps import CachedDecoder, RecomputeDecoder
    from logitcache.dump.token_teacher import TokenTeacher

    model = get_model(f"hf:{chat_model[1]}", 302).eval()
    teacher = TokenTeacher(model, torch.device("cpu"), bf16=False)
    prompts = [np.arange(5, 5 + n) for n in (7, 3, 11)]
    first = np.zeros((1, 32), dtype=np.int64)
    first[0, :7] = prompts[0]
    teacher.probe(first, np.asarray([7]), type("Tok", (), {"vocab_size": 302, "spec": "t"})())
    cached, recomputed = CachedDecoder(model, teacher, 0), RecomputeDecoder(teacher, 0)
    with torch.no_grad():
        assert torch.allclose(cached.start(prompts, 32), recomputed.start(prompts, 32), atol=1e-5)
        for rows in ([0, 1, 2], [0, 2], [2], [2]):  # rows 1, then 0, end: they leave the cache
            rows, chosen = torch.as_tensor(rows), torch.as_tensor([40 + r for r in rows])
            assert torch.allclose(cached.advance(rows, chosen), recomputed.advance(rows, chosen), atol=1e-5)
    assert len(cached.rows) == 1 and cached.mask.shape == (1, 11 + 4)


def nan_gpt(num_classes: int):
    """The test GPT, whose logits are NaN for any sequence that starts with a 'Z'."""
    model = get_model(GPT, num_classes)
    body = model.hidden_states

    def poisoned(idx):
        hidden = body(idx)
        return torch.where((idx[:, 0] == ord("Z"))[:, None, None], float("nan"), hidden)

    model.hidden_states = poisoned
    return model


def test_non_finite_logits_name_the_prompts_and_keep_the_shards_before(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [*play_lines(8), "Zounds!"])
    store = tmp_path / "nan.zarr"
    result = invoke("dump", store, "--teacher", "tests.dump.test_generate:nan_gpt", "--dataset",
                    f"jsonl:{prompts}:prompt", "--tokenizer", "bytes", "--seq-len", 64, "--generate",
                    "--max-new-tokens", 4, "--rows-per-shard", 256, "--no-progress")
    assert "NaN/inf logits while answering 1 prompts (keys: 'p.jsonl:9')" in one_error(result)
    assert len(list((tmp_path / "nan.zarr.generating").glob("shard-*.npz"))) == 2  # 4 prompts a shard


def test_a_journal_of_other_settings_is_cleared_and_a_damaged_one_is_one_line(tmp_path, prompts, monkeypatch):
    from logitcache.dump.generate_rows import Journal

    monkeypatch.setattr(Journal, "remove", lambda self: None)  # the journal outlives the store
    store = generate(tmp_path / "j.zarr", prompts, codec="topk:4", temperature=0.5, rows_per_shard=192)
    journal = tmp_path / "j.zarr.generating"
    assert len(list(journal.glob("shard-*.npz"))) == 3
    fresh = generate(tmp_path / "fresh.zarr", prompts, codec="topk:4", temperature=0.9, rows_per_shard=192)
    shutil.rmtree(store)  # the store is lost; a rerun with other settings rebuilds it from scratch
    generate(store, prompts, codec="topk:4", temperature=0.9, rows_per_shard=192)
    assert store_contents(store) == store_contents(fresh)
    shutil.rmtree(store)
    (journal / "shard-000001.npz").write_bytes(b"not a shard")
    result = invoke("dump", store, "--teacher", GPT, "--dataset", f"jsonl:{prompts}:prompt", "--tokenizer", "bytes",
                    "--seq-len", 64, "--generate", "--max-new-tokens", 12, "--codec", "topk:4", "--temperature",
                    "0.9", "--rows-per-shard", 192, "--batch-size", 3, "--no-progress")
    assert "shard-000001.npz cannot be read" in one_error(result) and "delete" in one_error(result)


def test_dump_and_info_say_the_same_compression_of_a_padded_store(tmp_path, prompts):
    """A generated store's sequences are padded: dump and info both weigh the fp32 logits of its
    tokens, not of its positions (info said 116x where dump said 106x)."""
    import re

    store = tmp_path / "padded.zarr"
    dumped = invoke("dump", store, "--generate", "--teacher", GPT, "--dataset", f"jsonl:{prompts}:prompt",
                    "--tokenizer", "bytes", "--seq-len", "64", "--max-new-tokens", "12", "--codec", "topk:4",
                    "--no-progress")
    assert dumped.exit_code == 0, dumped.output
    info = invoke("info", store)
    sequences, length, tokens = (int(n.replace(",", "")) for n in re.search(
        r"(\d+) sequences x (\d+) positions = ([\d,]+) tokens", info.output).groups())
    assert tokens < sequences * length  # padded
    ratio = r"\((\d+)x smaller than"
    assert re.search(ratio, dumped.output)[1] == re.search(ratio, info.output)[1], (dumped.output, info.output)
