"""``logitcache export --format axolotl``: a ``topk:K`` token store as the Hugging Face dataset axolotl's
knowledge-distillation plugin trains from (the schema: ``logitcache/export_axolotl.py``'s docstring).

A small causal LM (``tests.factories.TinyLM``) dumped over Hamlet's bytes through the CLI, exported,
and read back with ``datasets.load_from_disk``; where axolotl is importable, also with axolotl's own
loader, KD collators and KD loss (axolotl pins an older torch, so it is not a test dependency: these
tests are skipped without it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.store import open_store
from tests.conftest import invoke, one_error

datasets = pytest.importorskip("datasets")

HAMLET = Path(__file__).resolve().parents[2] / "data" / "text" / "shakespeare" / "hamlet.md"
SEQ_LEN, K = 64, 8


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """Hamlet's first 6,000 characters: 96 packed sequences of 64 bytes, the last one short."""
    path = tmp_path_factory.mktemp("text") / "hamlet-start.md"
    path.write_text(HAMLET.read_text()[:6_000])
    return path


def dump(store, text, *extra, codec=f"topk:{K}", teacher="tests.factories:tiny_lm", rows_per_shard=SEQ_LEN * 16):
    return invoke("dump", store, "--teacher", teacher, "--dataset", f"text:{text}", "--tokenizer", "bytes",
                  "--seq-len", SEQ_LEN, "--codec", codec, "--batch-size", 8, "--rows-per-shard", rows_per_shard,
                  "--no-progress", *extra)


@pytest.fixture(scope="module")
def store(tmp_path_factory, text) -> Path:
    path = tmp_path_factory.mktemp("lm") / "topk.zarr"
    result = dump(path, text)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("axolotl") / "kd"
    result = invoke("export", store, "--format", "axolotl", out)
    assert result.exit_code == 0, result.output
    note, summary = result.output.splitlines()
    assert note.startswith("note: axolotl's format has no column for the tail bucket") and "is dropped" in note
    assert summary.startswith("wrote 96 sequences (") and f"top {K}) of teacher 'default'" in summary
    return out


def rows(out: Path) -> list[dict]:
    return list(datasets.load_from_disk(str(out)))


def test_the_export_has_axolotls_columns_dtypes_and_shapes(exported, store):
    dataset = datasets.load_from_disk(str(exported))
    assert list(dataset.features) == ["input_ids", "attention_mask", "labels", "target_token_ids", "target_logprobs",
                                      "target_mask"]
    assert {name: _leaf_dtype(feature) for name, feature in dataset.features.items()} == {
        "input_ids": ("int32", 1), "attention_mask": ("int8", 1), "labels": ("int64", 1),
        "target_token_ids": ("int32", 2), "target_logprobs": ("float32", 2), "target_mask": ("int8", 2)}
    opened = open_store(store)
    tokens, mask, lengths = opened.tokens, opened.loss_mask, opened.lengths
    assert len(dataset) == opened.num_samples == 96 and lengths[-1] < SEQ_LEN  # the last sequence is short
    for i, row in enumerate(dataset):
        n = int(lengths[i])
        assert row["input_ids"] == tokens[i, :n].tolist() and row["attention_mask"] == [1] * n
        expected = [-100] + [int(tokens[i, t]) if mask[i, t - 1] else -100 for t in range(1, n)]
        assert row["labels"] == expected
        for column in ("target_token_ids", "target_logprobs", "target_mask"):
            assert np.asarray(row[column]).shape == (n, K), column
        # row t is masked by whether the token after t is a target: labels[t + 1] != -100
        assert np.array_equal(np.asarray(row["target_mask"]), np.repeat(mask[i, :n, None], K, axis=1))
        assert [row["labels"][t + 1] != -100 for t in range(n - 1)] + [False] == mask[i, :n].tolist()
    assert json.loads(dataset.info.description)["logitcache"]["teacher_digest"] == opened.teacher().digest


def _leaf_dtype(feature) -> tuple[str, int]:
    depth = 0
    while not hasattr(feature, "dtype"):
        feature, depth = feature.feature, depth + 1
    return feature.dtype, depth


def test_row_t_holds_the_teachers_distribution_over_the_token_after_t(exported):
    """The teacher run again on the exported ids: its top K at position t are row t's ids, its
    log-softmax over them, renormalised, row t's log-probabilities."""
    from tests.factories import tiny_lm

    first = rows(exported)[:8]
    ids = torch.tensor([row["input_ids"] for row in first], dtype=torch.long)
    with torch.no_grad():
        logits = tiny_lm(256).eval()(ids)
    top = torch.topk(logits, K, dim=-1)
    expected = torch.log_softmax(top.values, dim=-1)  # the top K renormalised: softmax over them alone
    assert torch.equal(torch.tensor([row["target_token_ids"] for row in first]), top.indices)
    got = torch.tensor([row["target_logprobs"] for row in first])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)  # float16 as stored
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(got.shape[:2]), rtol=0, atol=1e-5)


def test_the_exported_targets_equal_the_stores_targets(exported, store):
    """The round trip: every exported id and log-probability against ``Teacher`` reads of the store
    (the ids as stored, the log-probabilities renormalised over the K), position for position."""
    opened = open_store(store)
    stored = opened.teacher().read_targets(0, opened.num_rows)
    ids = stored["indices"].reshape(-1, SEQ_LEN, K)
    logprobs = torch.log_softmax(torch.from_numpy(stored["logprobs"]).double(), -1).float().reshape(-1, SEQ_LEN, K)
    for i, row in enumerate(rows(exported)):
        n = int(opened.lengths[i])
        assert np.array_equal(np.asarray(row["target_token_ids"]), ids[i, :n])
        torch.testing.assert_close(torch.tensor(row["target_logprobs"]), logprobs[i, :n], rtol=0, atol=1e-6)


def test_rows_read_a_chunk_at_a_time_are_the_same_rows(exported, store, tmp_path, monkeypatch):
    """A store larger than memory is read a block of whole chunks at a time: blocks of one chunk give
    the same dataset."""
    from logitcache import export_axolotl

    source = open_store(store).teacher()
    assert source.layout.rows_per_chunk < source.num_samples  # several blocks
    monkeypatch.setattr(export_axolotl, "BLOCK_BYTES", 1)
    export_axolotl.export_axolotl(store, tmp_path / "small-blocks", log=lambda _: None)
    assert rows(tmp_path / "small-blocks") == rows(exported)


def test_axolotls_loader_and_kd_collators_read_the_export(exported):
    collators = pytest.importorskip("axolotl.integrations.kd.collator")
    from axolotl.utils.data.shared import _load_from_local_path
    from axolotl.utils.data.wrappers import _is_dataset_already_tokenized
    from axolotl.utils.dict import DictDefault

    dataset = _load_from_local_path(DictDefault({"path": str(exported)}), {})
    assert _is_dataset_already_tokenized(dataset)  # used as it is: no prompt strategy, no re-tokenising
    tokenizer = _byte_tokenizer()
    items = [dataset[i] for i in (0, 1, len(dataset) - 1)]  # the last one is short: padded by the collator
    batch = collators.DataCollatorForKD(tokenizer=tokenizer)([dict(item) for item in items])
    assert batch["input_ids"].shape == batch["labels"].shape == (3, SEQ_LEN)
    for name, dtype in (("target_token_ids", torch.long), ("target_logprobs", torch.float32),
                        ("target_mask", torch.int32)):
        assert batch[name].shape == (3, SEQ_LEN, K) and batch[name].dtype == dtype
    n = len(items[2]["input_ids"])
    assert not batch["target_mask"][2, n:].any() and (batch["labels"][2, n:] == -100).all()
    packed = collators.KDBatchSamplerDataCollatorForSeq2Seq(tokenizer=tokenizer)([[dict(items[0]), dict(items[1])]])
    assert packed["target_logprobs"].shape == (1, 2 * SEQ_LEN, K)


def test_axolotls_kd_loss_sees_the_teacher_as_its_own_perfect_student(exported):
    """axolotl's KD loss with the teacher itself as the student: about zero on the export, and far
    from zero were the targets one position off, so rows meet the positions axolotl expects."""
    liger = pytest.importorskip("axolotl.integrations.kd.kernels.liger")
    from tests.factories import tiny_lm

    first = rows(exported)[:4]
    ids, labels = (torch.tensor([row[name] for row in first]) for name in ("input_ids", "labels"))
    targets = [torch.tensor([row[name] for row in first]) for name in ("target_token_ids", "target_logprobs")]
    mask = torch.tensor([row["target_mask"] for row in first])
    model = tiny_lm(256).eval()
    with torch.no_grad():  # TinyLM's head is head(hidden) * 2: the lm head axolotl multiplies by
        hidden = torch.tanh(model.mix(torch.nn.functional.pad(model.embed(ids.long()).transpose(1, 2), (3, 0))))
        hidden = hidden.transpose(1, 2).contiguous()
    weight, bias = (2 * model.head.weight).detach(), (2 * model.head.bias).detach()
    loss = liger.LigerFusedLinearKLTopKLogprobLoss(0.0, 1.0, temperature=1.0, beta=0.0, compiled=False,
                                                   compute_ce_loss=False, normalize_topk=True)
    per_target = float(mask[..., 0].sum())
    aligned = float(loss(weight, hidden, targets[0].long(), targets[1], mask, labels, bias))
    shifted = float(loss(weight, hidden, targets[0].long().roll(1, 1), targets[1].roll(1, 1), mask, labels, bias))
    assert aligned / per_target < 1e-5 and shifted / per_target > 1.0


def _byte_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(256)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<0>")),
                                   pad_token="<0>")


@pytest.fixture(scope="module")
def other_codecs(tmp_path_factory, text) -> Path:
    """One token store with a sample:12 teacher ('sample') and a dense one ('dense')."""
    path = tmp_path_factory.mktemp("lm") / "others.zarr"
    for codec, name in (("sample:12", "sample"), ("fp16", "dense")):
        result = dump(path, text, "--teacher-name", name, codec=codec)
        assert result.exit_code == 0, result.output
    return path


def test_what_the_format_cannot_carry_is_refused_in_one_line(other_codecs, digits_store, tmp_path):
    def export(source, *extra):
        return one_error(invoke("export", source, "--format", "axolotl", tmp_path / "never", *extra))

    sampled = export(other_codecs, "--teacher", "sample")
    assert "stores sample:12 (sampled weights, not the log-probabilities of a top K)" in sampled
    assert "dump the teacher with --codec topk:K" in sampled
    dense = export(other_codecs, "--teacher", "dense")
    assert "stores fp16 (the whole distribution)" in dense and "--codec topk:K (e.g. topk:64)" in dense
    assert "holds 2 complete teachers (dense, sample); name one with --teacher" in export(other_codecs)
    image = export(digits_store)
    assert "holds labelled samples, not token sequences" in image and "dump --tokenizer" in image
    assert not (tmp_path / "never").exists()


def test_an_unfinished_teacher_is_refused(tmp_path, text):
    partial = tmp_path / "partial.zarr"  # nan_lm fails the dump in a later shard: the teacher stays 'writing'
    failed = dump(partial, text, teacher="tests.factories:nan_lm", rows_per_shard=SEQ_LEN * 4)
    assert "NaN/inf logits" in one_error(failed)
    error = one_error(invoke("export", partial, "--format", "axolotl", tmp_path / "out"))
    assert "teacher 'default' in" in error and "is writing (" in error and "finish its dump" in error
    assert not (tmp_path / "out").exists()


def test_an_existing_out_needs_overwrite_and_only_a_dataset_is_replaced(store, exported, tmp_path):
    out = tmp_path / "kd"
    out.mkdir()
    (out / "mine.txt").write_text("not a dataset")
    error = one_error(invoke("export", store, "--format", "axolotl", out))
    assert error == f"Error: {out} already exists; pass --overwrite to replace it"
    kept = one_error(invoke("export", store, "--format", "axolotl", out, "--overwrite"))
    assert "is a directory but not a saved dataset, so --overwrite does not replace it" in kept
    assert (out / "mine.txt").read_text() == "not a dataset"
    again = tmp_path / "again"
    assert invoke("export", store, "--format", "axolotl", again).exit_code == 0
    assert one_error(invoke("export", store, "--format", "axolotl", again)).endswith("pass --overwrite to replace it")
    replaced = invoke("export", store, "--format", "axolotl", again, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert rows(again) == rows(exported)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "kd"]  # no partial or cache left behind


def test_edited_tokens_are_refused_by_the_streamed_check(store, tmp_path):
    """The export reads the sequences a range of chunks at a time after one streamed pass over them
    against the token fingerprint: an edited token is one line, and nothing is written."""
    import shutil

    import zarr

    copy = tmp_path / "edited.zarr"
    shutil.copytree(store, copy)
    group = zarr.open_group(str(copy), mode="r+")
    tokens = group["tokens"][:]
    tokens[40, 3] ^= 1
    group["tokens"][:] = tokens
    result = invoke("export", copy, "--format", "axolotl", tmp_path / "kd")
    assert "do not match the store's token fingerprint" in one_error(result)
    assert not (tmp_path / "kd").exists()
