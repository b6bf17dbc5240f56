"""Token stores (format v4): a causal LM's next-token targets, with the tokens inside the store.

Real text (Hamlet, shipped in data/text), the byte tokenizer, and a small seeded causal LM
(``tests.factories.TinyLM``) dumped through the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.dump.reduce import DeviceReducer
from logitcache.errors import CorruptStoreError, StoreVersionError
from logitcache.store import (
    FORMAT_VERSION,
    create_token_store,
    get_codec,
    open_store,
    pack_store,
    verify_store,
)
from tests import killpoints
from tests.conftest import invoke, one_error, store_contents

REPO = Path(__file__).resolve().parents[2]
HAMLET = REPO / "data" / "text" / "shakespeare" / "hamlet.md"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """The first 24,000 characters of Hamlet: 95 packed sequences of 256 bytes."""
    path = tmp_path_factory.mktemp("text") / "hamlet-start.md"
    path.write_text(HAMLET.read_text()[:24_000])
    return path


def dump_args(store, text, *extra, teacher="tests.factories:tiny_lm", codec="topk:8") -> list:
    return ["dump", store, "--teacher", teacher, "--dataset", f"text:{text}", "--tokenizer", "bytes",
            "--seq-len", "256", "--codec", codec, "--batch-size", "8", "--rows-per-shard", str(256 * 16),
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, text) -> dict[str, Path]:
    """One complete store per codec family, dumped through the CLI."""
    made = {}
    for codec in ("topk:8", "sample:12", "fp16"):
        path = tmp_path_factory.mktemp("lm") / f"{codec.replace(':', '_')}.zarr"
        result = invoke(*dump_args(path, text, codec=codec))
        assert result.exit_code == 0, result.output
        made[codec] = path
    return made


def test_a_token_store_holds_the_sequences_and_one_row_per_position(stores, text):
    text_bytes = text.read_bytes()
    store = open_store(stores["topk:8"])
    assert store.is_tokens and store.version == 4 < FORMAT_VERSION  # 256 ids, nothing packed: still v4
    tokens, mask, lengths = store.tokens, store.loss_mask, store.lengths
    assert tokens.dtype == np.uint8 and tokens.shape == (store.num_samples, 256)
    raw = np.frombuffer(text_bytes, dtype=np.uint8)
    # Packed rows overlap by one token, so every transition is a target in exactly one row.
    stream = np.concatenate([tokens[0, :lengths[0]], *(tokens[i, 1:lengths[i]] for i in range(1, len(tokens)))])
    assert np.array_equal(stream, raw)  # the text's bytes, in order
    assert not mask[:, -1].any() and mask[:-1, :-1].all() and int(mask.sum()) == len(raw) - 1
    teacher = store.teacher()
    assert teacher.num_samples == store.num_samples * 256 == len(teacher.read_targets(0, teacher.num_samples)["tail"])


def test_stored_targets_are_the_teachers_next_token_distribution(stores):
    """Row i*L+t holds the distribution the teacher gives after reading tokens[i, :t+1]."""
    from tests.factories import tiny_lm

    store = open_store(stores["topk:8"])
    model = tiny_lm(256).eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(store.tokens[5:7], dtype=torch.long)).reshape(-1, 256)
    targets = store.teacher().read_targets(5 * 256, 7 * 256)
    logp = torch.log_softmax(logits, 1)
    top = torch.topk(logits, 8, dim=1).indices.numpy()
    assert np.array_equal(targets["indices"], top)
    np.testing.assert_allclose(targets["logprobs"], np.take_along_axis(logp.numpy(), top, 1), rtol=6e-4, atol=1e-3)
    wide = logits.double()
    tail = torch.logsumexp(wide.scatter(1, torch.as_tensor(top), float("-inf")), 1) - torch.logsumexp(wide, 1)
    np.testing.assert_allclose(targets["tail"], tail.numpy(), rtol=1e-5)
    lse = store.teacher().group["logsumexp"][5 * 256:7 * 256]
    np.testing.assert_allclose(lse, torch.logsumexp(logits, 1).numpy(), rtol=1e-6)


def test_the_teachers_own_perplexity_is_recorded(stores, text):
    from tests.factories import tiny_lm

    store = open_store(stores["sample:12"])
    tokens, mask = torch.as_tensor(store.tokens, dtype=torch.long), torch.as_tensor(store.loss_mask)
    with torch.no_grad():
        logp = torch.log_softmax(tiny_lm(256)(tokens), -1)
    nll = -logp[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(2)[mask[:, :-1]]
    metrics = store.teacher().attrs["metrics"]
    assert metrics["targets"] == int(mask.sum())
    assert metrics["nll"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(float(torch.exp(nll.mean())), rel=1e-5)
    assert 0 < metrics["mass_stored"] < 1
    info = invoke("info", stores["sample:12"])
    assert f"perplexity {metrics['perplexity']:.3f}" in info.output and "bytes/token" in info.output


def test_sampled_targets_count_k_draws_per_position(stores):
    targets = open_store(stores["sample:12"]).teacher().read_targets(0, 256 * 4)
    np.testing.assert_allclose(targets["weights"].sum(axis=1), 1.0, rtol=1e-6)


def test_the_same_command_writes_the_same_bytes_and_verify_passes(stores, text, tmp_path):
    again = tmp_path / "again.zarr"
    assert invoke(*dump_args(again, text, codec="sample:12")).exit_code == 0
    assert store_contents(again) == store_contents(stores["sample:12"])
    for path in stores.values():
        assert verify_store(path).ok
    result = invoke("verify", stores["fp16"], "--dataset", f"text:{text}")
    assert result.exit_code == 0 and "gives exactly the stored sequences" in result.output


def test_a_dump_killed_after_a_shard_resumes_to_identical_bytes(stores, text, tmp_path):
    store = tmp_path / "killed.zarr"
    args = [str(a) for a in dump_args(store, text, codec="sample:12")]
    killed = killpoints.run(2, args, cwd=REPO, timeout=300, env={**ENV, "KILLPOINTS_KEY": "shard_done/c/"})
    assert killed.returncode == 137, killed.stderr
    assert open_store(store).teacher("default", check=False).shard_done().sum() == 2
    resumed = invoke(*dump_args(store, text, codec="sample:12"))
    assert resumed.exit_code == 0 and "resumed: 2 shards" in resumed.output
    assert store_contents(store) == store_contents(stores["sample:12"])


def test_a_two_process_token_dump_equals_one_process(stores, text, tmp_path):
    store = tmp_path / "two.zarr"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "logitcache", *[str(a) for a in dump_args(store, text, codec="sample:12")]],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert store_contents(store) == store_contents(stores["sample:12"])


def test_a_packed_token_store_opens_and_verifies_from_its_zip(stores, tmp_path):
    packed = tmp_path / "lm.zip"
    pack_store(stores["topk:8"], packed)
    store = open_store(packed)
    assert np.array_equal(store.tokens, open_store(stores["topk:8"]).tokens)
    assert verify_store(packed).ok


def test_a_token_store_on_s3_holds_the_same_bytes_and_verifies(s3, bucket, stores, text):
    url = f"{bucket}/lm.zarr"
    assert invoke(*dump_args(url, text, codec="sample:12")).exit_code == 0
    assert s3.contents(url) == store_contents(stores["sample:12"])
    checked = invoke("verify", url, "--dataset", f"text:{text}")
    assert checked.exit_code == 0 and "gives exactly the stored sequences" in checked.output


def test_edited_tokens_are_refused(stores, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "edited.zarr"
    shutil.copytree(stores["topk:8"], copy)
    group = zarr.open_group(str(copy), mode="r+")
    tokens = group["tokens"][:]
    tokens[3, 10] ^= 1
    group["tokens"][:] = tokens
    with pytest.raises(CorruptStoreError, match="token fingerprint"):
        open_store(copy).tokens
    assert not verify_store(copy).ok
    assert "token fingerprint" in one_error(invoke("train", "--out", tmp_path / "run", "--student",
                                                    "gpt:n_layer=1,n_head=1,n_embd=8,block_size=256",
                                                    "--store", copy, "--epochs", "1", "--no-progress"))


@pytest.mark.parametrize("edit, says", [
    (lambda d: d.pop("num_tokens"), "dataset.num_tokens is None"),
    (lambda d: d.update(num_targets=-1), "dataset.num_targets is -1"),
])
def test_an_edited_token_count_is_one_line_in_info(stores, tmp_path, edit, says):
    import shutil

    import zarr

    copy = tmp_path / "edited.zarr"
    shutil.copytree(stores["topk:8"], copy)
    group = zarr.open_group(str(copy), mode="r+")
    record = group.attrs["logitcache"]
    edit(record["dataset"])
    group.attrs["logitcache"] = record
    assert says in one_error(invoke("info", copy))


def test_a_token_count_that_disagrees_with_the_sequences_is_refused(stores, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "miscounted.zarr"
    shutil.copytree(stores["topk:8"], copy)
    group = zarr.open_group(str(copy), mode="r+")
    record = group.attrs["logitcache"]
    record["dataset"]["num_tokens"] -= 1  # still in range: only the sequences themselves can tell
    group.attrs["logitcache"] = record
    with pytest.raises(CorruptStoreError, match="num_tokens says"):
        open_store(copy).tokens
    assert not verify_store(copy).ok


def test_a_store_newer_than_this_reader_is_refused(stores, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "future.zarr"
    shutil.copytree(stores["fp16"], copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs["logitcache"] = {**group.attrs["logitcache"], "version": FORMAT_VERSION + 1}
    with pytest.raises(StoreVersionError, match="upgrade logitcache"):
        open_store(copy)


@pytest.mark.parametrize("extra, teacher, expected", [
    (["--augment", "flip"], "tests.factories:tiny_lm", "takes no --augment"),
    ([], "tests.factories:small_head_lm", "head has 100 outputs but tokenizer"),
    ([], "tests.factories:short_context_lm", "longer than the teacher's context of 16"),
    ([], "tests.factories:nan_lm", "NaN/inf logits at"),
    ([], "tests.factories:linear_teacher", "teacher fails on a sequence"),
])
def test_bad_token_dumps_fail_with_one_line_and_nothing_complete(text, tmp_path, extra, teacher, expected):
    store = tmp_path / "bad.zarr"
    assert expected in one_error(invoke(*dump_args(store, text, *extra, teacher=teacher)))
    if store.exists() and (store / "zarr.json").exists():
        assert open_store(store).teacher_names == []


@pytest.mark.parametrize("dataset, tokenizer, expected", [
    ("text:{tmp}/nothing-here/*.md", "bytes", "no file"),
    ("text:{empty}", "bytes", "empty"),
    ("text:{text}", "no-such-tokenizer", "no-such-tokenizer"),
    ("nosuchkind:{text}", "bytes", "nosuchkind"),
])
def test_bad_corpora_and_tokenizers_are_one_line(text, tmp_path, dataset, tokenizer, expected):
    empty = tmp_path / "empty.md"
    empty.write_text("")
    spec = dataset.format(tmp=tmp_path, empty=empty, text=text)
    error = one_error(invoke("dump", tmp_path / "s.zarr", "--teacher", "tests.factories:tiny_lm", "--dataset", spec,
                             "--tokenizer", tokenizer, "--seq-len", "64"))
    assert expected in error.lower()
    assert not (tmp_path / "s.zarr").exists()


def test_seq_len_without_a_tokenizer_is_refused(tmp_path):
    error = one_error(invoke("dump", tmp_path / "s.zarr", "--teacher", "cnn", "--dataset", "digits",
                             "--seq-len", "8"))
    assert "--seq-len is for token dumps" in error


def test_other_tokens_into_an_existing_store_are_refused(stores, text, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(stores["fp16"], copy)
    other = tmp_path / "other.md"
    other.write_text(text.read_text().replace("Hamlet", "Hamlot"))
    error = one_error(invoke(*dump_args(copy, other, codec="fp16", teacher="tests.factories:tiny_lm"),
                             "--teacher-name", "second"))
    assert "token sequences differ" in error


def test_device_reduction_matches_the_host_codecs():
    """topk and sample reduced in torch equal the numpy codecs' encodings of the same logits."""
    logits = torch.randn(300, 1000, generator=torch.Generator().manual_seed(0)) * 3
    ones = torch.ones(300, dtype=torch.bool)
    topk = get_codec("topk:16").for_classes(1000)
    arrays, _, bad = DeviceReducer(topk, budget_bytes=1 << 20)(logits, torch.zeros(300, dtype=torch.long), ones,
                                                               ones, None)
    host = topk.encode(logits.numpy())
    assert bad.size == 0 and np.array_equal(arrays["indices"], host["indices"])
    np.testing.assert_allclose(arrays["logprobs"].astype(np.float32), host["logprobs"].astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(arrays["tail"], host["tail"], atol=1e-5)
    sample = get_codec("sample:12").for_classes(1000)
    arrays, _, _ = DeviceReducer(sample, budget_bytes=1 << 20)(logits, torch.zeros(300, dtype=torch.long), ones,
                                                               ones, sample.uniforms(3, 300))
    host = sample.encode_shard(logits.numpy(), 3)
    same = (arrays["indices"] == host["indices"]).all(axis=1) & (arrays["counts"] == host["counts"]).all(axis=1)
    assert same.mean() > 0.99  # the same uniforms; only a draw on a float rounding boundary may differ


def test_device_reduction_flags_exactly_the_non_finite_rows_and_leaves_the_logits_as_they_were():
    """Rows with NaN, +inf or -inf are named (a finite row whose sum overflows is not); the logits
    are given back unchanged; a non-contiguous input reduces to the same targets (up to rounding)."""
    logits = torch.randn(120, 500, generator=torch.Generator().manual_seed(1)) * 4
    logits[3, 7], logits[7, 0], logits[11, 499] = float("nan"), float("inf"), float("-inf")
    logits[13] = 3e38
    before = logits.clone()
    next_tokens = torch.randint(0, 500, (120,), generator=torch.Generator().manual_seed(2))
    ones = torch.ones(120, dtype=torch.bool)
    topk = get_codec("topk:8").for_classes(500)
    _, _, bad = DeviceReducer(topk, budget_bytes=1 << 16)(logits, next_tokens, ones, ones, None)
    assert bad.tolist() == [3, 7, 11] and torch.equal(logits.view(torch.int32), before.view(torch.int32))

    good = torch.cat([logits[:3], logits[4:7], logits[8:11], logits[12:]])[:, :300] * 1e-38 * 4e37
    coin = torch.rand(len(good), generator=torch.Generator().manual_seed(3))
    tokens = torch.where(coin < 0.5, good.argmax(1), next_tokens[: len(good)] % 300)  # some top-1 hits
    mask = torch.rand(len(good), generator=torch.Generator().manual_seed(4)) < 0.7
    real = torch.ones(len(good), dtype=torch.bool)
    real[-5:] = False
    for name in ("topk:8", "sample:12"):
        codec = get_codec(name).for_classes(300)
        uniforms = codec.uniforms(0, len(good)) if name.startswith("sample") else None
        arrays, stats, _ = DeviceReducer(codec, budget_bytes=1 << 16)(good, tokens, mask & real, real, uniforms)
        strided, again, _ = DeviceReducer(codec, budget_bytes=1 << 16)(good.t().contiguous().t(), tokens, mask & real,
                                                                          real, uniforms)
        np.testing.assert_allclose(stats, again, rtol=1e-6)
        for key in arrays:
            if arrays[key].dtype.kind == "f":
                np.testing.assert_allclose(arrays[key].astype(np.float64), strided[key].astype(np.float64), rtol=1e-3)
            else:
                assert np.array_equal(arrays[key], strided[key])
        wide, rows = good.double()[mask & real], tokens[mask & real]
        nll = (torch.logsumexp(wide, 1) - wide.gather(1, rows[:, None]).squeeze(1)).sum()
        hits = (wide.argmax(1) == rows).sum()
        assert stats[0] == int((mask & real).sum()) and stats[2] == int(hits) > 0
        assert abs(stats[1] - float(nll)) < 1e-3 * abs(float(nll))


@pytest.mark.parametrize("damage", ["deleted", "a directory"])
def test_a_teacher_whose_metadata_is_gone_is_damage_never_absence(stores, tmp_path, damage):
    """Without its zarr.json a teacher's folder once vanished from the listing: train then fell back
    to label-only with exit 0 while verify refused the store."""
    store = Path(shutil.copytree(stores["topk:8"], tmp_path / "s.zarr"))
    metadata = store / "teachers" / "default" / "zarr.json"
    metadata.unlink()
    if damage == "a directory":
        metadata.mkdir()
    assert "default" in open_store(store).all_teacher_names
    result = invoke("train", "--store", store, "--student", "tests.factories:tiny_lm", "--epochs", "1",
                    "--out", tmp_path / "run", "--no-progress")
    assert "damaged or edited" in one_error(result)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    info = invoke("info", store)
    assert "damaged" in info.output and "is damaged" in one_error(info)
    assert one_error(invoke("verify", store))
