"""Sparse class ids bit-packed at ceil(log2 V) bits above 65,536 classes, and ``sample:K:counts``
(format v5): round trips, stores that read and train exactly as wide ones, older readers refusing
them, ``verify``, ``info`` and resume after a kill.

Token stores of real text (the start of Hamlet) with the byte tokenizer and a seeded causal LM whose
head has 70,000 ids (``tests.factories.wide_lm``), dumped through the CLI; the "wide" stores are
what logitcache wrote before v5 (uint32 ids), made by raising the packing threshold and keeping a
sample's ids as ids (not gaps, v6: tests/codecs/test_id_gaps.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from logitcache.codecs import get_codec, get_stored_codec, packed_ids
from logitcache.codecs.sample import SampleCodec
from logitcache.codecs.packed_ids import high_width, join_ids, least_index_bits, pack_bits, split_ids, unpack_bits
from logitcache.errors import CorruptStoreError, SpecError, StoreVersionError
from logitcache.lm import TokenStoreDataset, collate_tokens, distillation_loss
from logitcache.sources.checkpoints import load_checkpoint
from logitcache.store import FORMAT_VERSION, _store, open_store, verify_store
from logitcache.store_info import describe_store, format_description
from tests import killpoints
from tests.conftest import invoke, make_store, one_error, store_contents
from tests.factories import WIDE_VOCAB
from tests.codecs.test_codec_registry import check_codec_contract
from tests.codecs.test_codecs import realistic_logits

REPO = Path(__file__).resolve().parents[2]
HAMLET = REPO / "data" / "text" / "shakespeare" / "hamlet.md"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
STUDENT = "gpt:n_layer=1,n_head=2,n_embd=16,block_size=64"
TRAIN = ["--optimizer", "adamw", "--lr", "0.01", "--batch-size", "4", "--epochs", "2", "--no-progress"]


def reference_join(low: np.ndarray, high: np.ndarray, bits: int) -> np.ndarray:
    """docs/FORMAT.md's reading of split ids, bit by bit."""
    k, width = low.shape[1], bits - 16
    every = np.unpackbits(high, axis=1, bitorder="little")[:, :k * width].reshape(len(high), k, width)
    return low.astype(np.int64) + ((every.astype(np.int64) << np.arange(width)).sum(axis=2) << 16)


# -- the codecs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", [70_000, 131_072, 262_144, 2**32])
@pytest.mark.parametrize("k", [1, 8, 12, 128])
def test_ids_round_trip_in_ceil_log2_v_bits(vocab, k):
    ids = np.random.default_rng(k).integers(0, vocab, (33, k))
    ids[0], ids[1], ids[2, ::2] = vocab - 1, 0, vocab - 1  # the extremes, alone and mixed
    bits = least_index_bits(vocab)
    low, high = split_ids(ids, bits)
    assert bits == {70_000: 17, 131_072: 17, 262_144: 18, 2**32: 32}[vocab]
    assert low.dtype == np.uint16 and high.dtype == np.uint8 and high.shape == (33, high_width(k, bits))
    assert low[0].nbytes + high[0].nbytes == -(-k * bits // 8)  # a row of b-bit ids, exactly
    assert np.array_equal(join_ids(low, high, bits), ids)
    assert np.array_equal(reference_join(low, high, bits), ids)
    assert np.array_equal(join_ids(low[5:20:3], high[5:20:3], bits), ids[5:20:3])  # strided rows read as well


@pytest.mark.parametrize("width", [1, 2, 5, 12, 16])
def test_small_values_pack_into_little_endian_bit_strings(width):
    values = np.random.default_rng(width).integers(0, 2**width, (9, 11))
    values[0] = 2**width - 1
    packed = pack_bits(values, width)
    bits = ((values[:, :, None] >> np.arange(width)) & 1).reshape(9, -1)
    assert np.array_equal(packed, np.packbits(bits.astype(np.uint8), axis=1, bitorder="little"))
    assert np.array_equal(unpack_bits(packed, width, 11), values)


@pytest.mark.parametrize("vocab, bits", [(4096, None), (65_536, None), (70_000, 17), (131_072, 17), (262_144, 18)])
@pytest.mark.parametrize("name", ["topk:8", "sample:12", "sample:12:fp16", "sample:12:counts"])
def test_sparse_codecs_pack_only_above_65536_classes_and_keep_every_value(vocab, bits, name):
    logits = realistic_logits(6, vocab, seed=5)
    logits[0, vocab - 1] = logits[1, 0] = 60.0  # the last and the first id, drawn and kept
    codec = get_codec(name).for_classes(vocab)
    wide = codec.with_index_bits(None).with_index_gaps(False)  # whole ids: what every store before v5 holds
    stored, whole = codec.encode_shard(logits, 3), wide.encode_shard(logits, 3)
    packed = codec.with_index_gaps(False)  # ids packed, not kept as gaps (v6, tests/codecs/test_id_gaps.py)
    assert codec.index_bits == bits and packed.format_version == (7 if codec.logprob_sum else 5 if bits or
                                                                  "counts" in name else 1)
    assert codec.format_version == (7 if codec.logprob_sum else 6 if name.startswith("sample") else
                                    packed.format_version)
    assert stored["indices"].dtype == np.uint16 and ("indices_high" in stored) == bool(bits)
    assert codec.bytes_per_sample(vocab) == sum(values[0].nbytes for values in stored.values())
    assert np.array_equal(codec.read_indices(stored), np.where(whole["indices"] == wide.padding_id,
                                                               codec.padding_id, whole["indices"]))
    assert {vocab - 1, 0} <= set(codec.top_classes(stored, 1)[:2, 0].tolist())
    assert all(np.array_equal(stored[key], whole[key], equal_nan=True) for key in whole if key != "indices")
    targets, expected = codec.training_targets(stored), wide.training_targets(whole)
    assert all(torch.equal(value, expected.rows()[key]) for key, value in targets.rows().items())
    assert targets.indices.dtype == torch.int64


@pytest.mark.parametrize("name", ["topk:5", "sample:6:2", "sample:5:counts"])
def test_packed_codecs_keep_the_codec_contract(name):
    check_codec_contract(name, classes=WIDE_VOCAB)


@pytest.mark.parametrize("name", ["topk:4", "sample:4", "sample:4:counts"])
def test_an_unwritten_packed_row_is_unwritten_even_where_its_fill_is_a_class(name):
    codec = get_codec(name).for_classes(131_072)  # every id of an unwritten row unpacks to 131,071: a class
    unwritten = {key: np.full((3, spec.width) if spec.per_class else (3,), spec.fill_value, spec.dtype)
                 for key, spec in codec.arrays.items()}
    assert (codec.read_indices(unwritten) == 131_071).all() and not codec.rows_ok(unwritten).any()
    if codec.has_dense_form:
        assert np.isnan(codec.decode(unwritten)).all()
    else:
        assert (codec.training_targets(unwritten).weights == 0).all()
        assert (codec.top_classes(unwritten, 2) == -1).all()  # padding is no class


def test_a_records_index_bits_are_checked():
    assert get_stored_codec("topk:8", 131_072, 17).arrays["indices_high"].width == 1
    assert get_stored_codec("topk:8", 131_072, 20).arrays["indices_high"].width == 4  # any width its ids fit
    assert set(get_stored_codec("topk:8", 131_072).arrays) == {"indices", "logprobs", "tail"}  # before v5
    assert get_stored_codec("topk:8", 131_072).arrays["indices"].dtype == "uint32"
    for name, classes, bits in [("topk:8", 131_072, 16), ("topk:8", 131_072, 33), ("sample:4", 300, 12),
                                ("topk:8", 131_072, 17.0), ("fp16", 10, 17)]:
        with pytest.raises(SpecError, match="index_bits"):
            get_stored_codec(name, classes, bits)


def test_counts_is_an_option_of_the_sample_family():
    codec = get_codec("sample:12:2:counts")
    assert (codec.name, codec.sampled_at, set(codec.arrays)) == ("sample:12:2:counts", 2.0, {"indices", "counts"})
    assert get_codec("sample:12:counts:fp16").name == "sample:12:counts"
    with pytest.raises(SpecError, match="keeps no log-probabilities"):
        get_codec("sample:12:counts:fp32")
    with pytest.raises(SpecError, match="with T > 0"):
        get_codec("sample:12:count")


# -- token stores ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """The first 1,000 characters of Hamlet: 16 packed sequences of 64 bytes."""
    path = tmp_path_factory.mktemp("text") / "hamlet-start.md"
    path.write_text(HAMLET.read_text()[:1_000])
    return path


def dump_args(store, text, codec, teacher="tests.factories:wide_lm") -> list[str]:
    return [str(a) for a in ("dump", store, "--teacher", teacher, "--dataset", f"text:{text}", "--tokenizer",
                             "bytes", "--seq-len", "64", "--codec", codec, "--batch-size", "4",
                             "--rows-per-shard", 64 * 4, "--no-progress")]


def dump(store, text, codec, teacher="tests.factories:wide_lm") -> Path:
    result = invoke(*dump_args(store, text, codec, teacher))
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory, text) -> dict[str, Path]:
    """Packed stores of the 70,000-id teacher (samples with float16 log-probabilities per class, and
    with one sum per row); the same with whole uint32 ids ("wide ..."), as logitcache wrote them
    before v5; and byte-vocabulary sample stores, with and without log-probs."""
    root = tmp_path_factory.mktemp("packed")
    made = {codec: dump(root / f"{codec.replace(':', '_')}.zarr", text, codec)
            for codec in ("topk:8", "sample:12:fp16", "sample:12")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(packed_ids, "PACKED_ABOVE", 2**32)
        whole = SampleCodec.for_classes
        patch.setattr(SampleCodec, "for_classes", lambda self, classes: whole(self, classes).with_index_gaps(False))
        made.update({f"wide {codec}": dump(root / f"wide_{codec.replace(':', '_')}.zarr", text, codec)
                     for codec in ("topk:8", "sample:12:fp16")})
    for codec in ("sample:12", "sample:12:counts"):
        made[f"bytes {codec}"] = dump(root / f"bytes_{codec.replace(':', '_')}.zarr", text, codec,
                                      teacher="tests.factories:tiny_lm")
    return made


@pytest.mark.parametrize("codec", ["topk:8", "sample:12:fp16"])
def test_a_packed_store_reads_exactly_what_a_wide_one_reads(stores, codec):
    packed, wide = open_store(stores[codec]), open_store(stores[f"wide {codec}"])
    assert (packed.version, wide.version) == ({"topk:8": 5, "sample:12:fp16": 6}[codec], 4)  # sample: gaps too
    teacher, before = packed.teacher(), wide.teacher()
    assert teacher.attrs["index_bits"] == 17 and "index_bits" not in before.attrs
    assert teacher.arrays["indices"].dtype == np.uint16 and before.arrays["indices"].dtype == np.uint32
    assert teacher.arrays["indices_high"].shape == (teacher.num_samples, high_width(teacher.codec.k, 17))
    rows = teacher.num_samples
    ours, theirs = teacher.read_targets(0, rows), before.read_targets(0, rows)
    assert all(np.array_equal(ours[key], theirs[key]) for key in theirs)
    raw = [one.codec.bytes_per_sample(WIDE_VOCAB) for one in (teacher, before)]  # on disk: benchmarks/packed_ids.py
    assert raw == {"topk:8": [17 + 16 + 4, 32 + 16 + 4], "sample:12:fp16": [26 + 24 + 24, 48 + 24 + 24]}[codec]
    assert verify_store(stores[codec]).ok


def test_a_packed_store_trains_the_student_a_wide_one_trains(stores, tmp_path):
    runs = {}
    for name in ("topk:8", "wide topk:8"):
        result = invoke("train", "--out", tmp_path / name.replace(" ", "_").replace(":", "_"), "--student",
                        STUDENT, "--store", stores[name], *TRAIN)
        assert result.exit_code == 0, result.output
        runs[name] = tmp_path / name.replace(" ", "_").replace(":", "_")
    losses = [[{k: v for k, v in json.loads(line).items() if k not in ("epoch_seconds", "tokens_per_second")}
               for line in (run / "metrics.jsonl").read_text().splitlines()] for run in runs.values()]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    weights = [load_checkpoint(run / "last.pt")["model"] for run in runs.values()]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_info_says_how_the_ids_are_stored(stores):
    text = format_description(describe_store(stores["sample:12:fp16"]))
    assert "format v6" in text and "codec sample:12:fp16 (ids as gaps, packed at 17 bits)" in text
    assert "(ids" not in format_description(describe_store(stores["wide sample:12:fp16"]))
    assert "codec topk:8 (ids packed at 17 bits)" in format_description(describe_store(stores["topk:8"]))
    result = invoke("info", stores["topk:8"], "--json")
    assert result.exit_code == 0 and json.loads(result.output)["teachers"]["default"]["index_bits"] == 17


def test_an_older_reader_refuses_a_packed_store(stores, monkeypatch):
    assert FORMAT_VERSION > 5 == packed_ids.PACKED_VERSION
    monkeypatch.setattr(_store, "FORMAT_VERSION", 4)  # what logitcache read before v5
    with pytest.raises(StoreVersionError, match="format v5, newer than the v4 this logitcache reads"):
        open_store(stores["topk:8"])
    assert "upgrade logitcache" in one_error(invoke("info", stores["sample:12:fp16"]))
    assert open_store(stores["wide topk:8"]).teacher().codec.index_bits is None  # v4 stores: as before


def test_a_packed_teacher_in_a_store_that_says_v4_is_damage(stores, tmp_path):
    copy = tmp_path / "edited.zarr"
    shutil.copytree(stores["topk:8"], copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs["logitcache"] = {**group.attrs["logitcache"], "version": 4}
    with pytest.raises(CorruptStoreError, match="format v5's, but the store says v4"):
        open_store(copy).teacher()


def test_a_killed_packed_dump_resumes_to_identical_bytes(stores, text, tmp_path):
    """sample:12 keeps one log-probability sum per row (format v7): a resumed dump's sums too."""
    store = tmp_path / "killed.zarr"
    args = dump_args(store, text, "sample:12")
    killed = killpoints.run(2, args, cwd=REPO, timeout=300, env={**ENV, "KILLPOINTS_KEY": "shard_done/c/"})
    assert killed.returncode == 137, killed.stderr
    assert open_store(store).teacher("default", check=False).shard_done().sum() == 2
    resumed = invoke(*args)
    assert resumed.exit_code == 0 and "resumed: 2 shards" in resumed.output
    assert store_contents(store) == store_contents(stores["sample:12"])


# -- samples without log-probabilities -------------------------------------------------------------

def test_counts_only_samples_train_the_student_full_samples_train(stores, tmp_path):
    """The same draws, with a log-probability sum per row and without: the same gradients, so the same student;
    the reported loss is the sampled cross-entropy, higher by the sampled teacher entropy."""
    full, counts = open_store(stores["bytes sample:12"]), open_store(stores["bytes sample:12:counts"])
    assert (full.version, counts.version) == (7, 6) and "index_bits" not in counts.teacher().attrs  # gaps: v6
    assert set(counts.teacher().arrays) == {"indices", "counts"}
    records = {}
    for name in ("bytes sample:12", "bytes sample:12:counts"):
        out = tmp_path / name.split()[1].replace(":", "_")
        result = invoke("train", "--out", out, "--student", STUDENT, "--store", stores[name], *TRAIN)
        assert result.exit_code == 0, result.output
        records[name] = ([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()],
                         load_checkpoint(out / "last.pt")["model"])
    (with_lp, weights), (without, same) = records.values()
    assert all(torch.equal(weights[key], same[key]) for key in weights)
    assert all(b["train_loss"] > a["train_loss"] for a, b in zip(with_lp, without))


def test_distillation_loss_from_counts_is_the_sampled_cross_entropy(stores):
    batch = {}
    for name in ("bytes sample:12", "bytes sample:12:counts"):
        data = TokenStoreDataset(str(stores[name]))
        batch[name] = collate_tokens([data[i] for i in range(3)])
    full, counts = batch.values()
    assert torch.equal(counts["teacher_indices"], full["teacher_indices"])
    assert torch.equal(counts["teacher_logprobs"], torch.zeros_like(full["teacher_logprobs"]))
    logits = torch.randn(*full["input_ids"].shape, 256, generator=torch.Generator().manual_seed(0))
    kl = distillation_loss(logits, full, kd_weight=1.0, ce_weight=0.0)
    ce = distillation_loss(logits, counts, kd_weight=1.0, ce_weight=0.0)
    targets = full["labels"][:, 1:] != -100  # the positions the loss counts
    weights, logprobs = full["teacher_weights"][:, :-1][targets], full["teacher_logprobs"][:, :-1][targets]
    entropy = -(weights * logprobs.float()).sum(-1).mean()  # the sampled teacher entropy the counts lack
    torch.testing.assert_close(ce - kl, entropy, rtol=1e-4, atol=1e-5)


def test_counts_only_samples_from_images_verify_and_say_they_hold_no_probability(tmp_path):
    store = make_store(tmp_path / "digits.zarr", codec="sample:4:counts")
    assert verify_store(store).ok and open_store(store).version == 6  # its ids as gaps
    text = format_description(describe_store(store))
    assert "no log-probabilities" in text
    assert "mass      not known: only counts of sampled classes: no probabilities" in text
