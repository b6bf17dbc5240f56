"""A sample row's ascending class ids kept as gaps (format v6): exact round trips at every width,
stores that read and train exactly as the ids they replace, older readers refusing them, and stores
written before v6 read, resumed and kept as they were.

Stores "as before v6" are made by this checkout with the codec's ``for_classes`` giving ids as ids
and float16 log-probabilities per class (``ids_as_before``): the layout every sample teacher had
before; main's own code is compared with this one in benchmarks/packed_ids.py (``--identity``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from logitcache.codecs import get_codec, get_stored_codec, packed_ids
from logitcache.codecs.packed_ids import GAPS_VERSION, LOGPROB_SUM_VERSION, from_gaps, join_ids, to_gaps
from logitcache.codecs.sample import SampleCodec
from logitcache.errors import CorruptStoreError, SpecError, StoreVersionError
from logitcache.store import FORMAT_VERSION, _store, open_store, verify_store
from logitcache.store_info import describe_store, format_description
from tests.conftest import edited_record_copy, invoke, make_store, one_error, store_contents, straight_and_cut_short


@pytest.fixture
def ids_as_before(monkeypatch):
    """New sample codecs keep ids as ids, as every dump before v6 wrote them (undone after the test)."""
    whole = SampleCodec.for_classes

    def before(self, num_classes):
        return whole(self, num_classes).with_index_gaps(False).with_logprob_sum(False)

    monkeypatch.setattr(SampleCodec, "for_classes", before)
    return monkeypatch


def reference_ids(gaps: np.ndarray, counts: np.ndarray) -> list[list[int]]:
    """docs/FORMAT.md's reading of gaps, slot by slot: each row's ids, up to its first zero count."""
    rows = []
    for row_gaps, row_counts in zip(gaps.tolist(), counts.tolist()):
        ids = []
        for gap, count in zip(row_gaps, row_counts):
            if count == 0:
                break
            ids.append(gap if not ids else ids[-1] + gap + 1)
        rows.append(ids)
    return rows


def edge_draws(vocab: int, k: int, rows: int = 40) -> np.ndarray:
    """(rows, k) draws: random, plus rows of only id 0, only V - 1, both, and (k > 1) every slot used."""
    draws = np.random.default_rng(vocab + k).integers(0, vocab, (rows, k))
    draws[0], draws[1], draws[2, ::2], draws[2, 1::2] = vocab - 1, 0, 0, vocab - 1
    if 1 < k <= vocab:  # k distinct ids from 0 to V - 1: a row without padding
        draws[3] = np.linspace(0, vocab - 1, k).round().astype(np.int64)
        draws[4] = np.arange(k) if k < vocab else draws[3]  # adjacent ids: every later gap is 0
    return draws


# -- the codec -------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", [2, 300, 4096, 65_536, 70_000, 131_072, 262_144])
@pytest.mark.parametrize("name", ["sample:1", "sample:12:fp16", "sample:128:counts"])
def test_gaps_read_back_the_ids_exactly(vocab, name):
    codec = get_codec(name).for_classes(vocab)
    before = codec.with_index_gaps(False)
    draws = edge_draws(vocab, codec.k)
    logprobs = -np.random.default_rng(1).random(draws.shape).astype(np.float32)
    stored, ids = codec.from_draws(draws, logprobs), before.from_draws(draws, logprobs)
    assert codec.index_gaps and not before.index_gaps and GAPS_VERSION == 6
    assert codec.format_version == (LOGPROB_SUM_VERSION if codec.logprob_sum else GAPS_VERSION)
    assert {key: (value.dtype, value.shape) for key, value in stored.items()} == \
        {key: (value.dtype, value.shape) for key, value in ids.items()}  # the arrays of ids, other values
    assert np.array_equal(codec.read_indices(stored), before.read_indices(ids))
    assert (codec.read_indices(stored)[stored["counts"] == 0] == codec.padding_id).all()
    gaps = join_ids(stored["indices"], stored["indices_high"], codec.index_bits) if codec.index_bits \
        else stored["indices"].astype(np.int64)  # the values stored, not yet summed
    assert reference_ids(gaps, stored["counts"]) == [sorted(set(row)) for row in draws.tolist()]
    assert (gaps[stored["counts"] == 0] == 0).all() and gaps.max() < vocab
    assert all(np.array_equal(stored[key], ids[key], equal_nan=True) for key in ids if not key.startswith("indices"))
    assert np.array_equal(codec.top_classes(stored, 3), before.top_classes(ids, 3))
    targets, expected = codec.training_targets(stored).rows(), before.training_targets(ids).rows()
    assert all(torch.equal(targets[key], expected[key]) for key in expected)


def test_gap_helpers_on_their_own():
    ids = np.array([[3, 4, 9, 65535], [0, 1, 2, 3], [7, 65535, 65535, 65535]])
    used = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=bool)
    gaps = to_gaps(ids, used)
    assert gaps.tolist() == [[3, 0, 4, 0], [0, 0, 0, 0], [7, 0, 0, 0]]
    assert from_gaps(gaps, used, -1).tolist() == [[3, 4, 9, -1], [0, 1, 2, 3], [7, -1, -1, -1]]
    assert from_gaps(gaps[:0], used[:0], -1).shape == (0, 4)


@pytest.mark.parametrize("vocab", [4096, 131_072])
def test_an_unwritten_row_of_gaps_is_unwritten(vocab):
    codec = get_codec("sample:4").for_classes(vocab)
    unwritten = {key: np.full((3, spec.width) if spec.per_class else (3,), spec.fill_value, spec.dtype)
                 for key, spec in codec.arrays.items()}
    assert not codec.rows_ok(unwritten).any() and (codec.read_indices(unwritten) == codec.padding_id).all()
    assert (codec.training_targets(unwritten).weights == 0).all() and (codec.top_classes(unwritten, 2) == -1).all()


def test_a_records_index_gaps_are_checked():
    assert get_stored_codec("sample:4", 300).index_gaps is False  # no field: a teacher before v6
    assert get_stored_codec("sample:4", 300, None, True).index_gaps is True
    assert get_stored_codec("sample:4", 131_072, 17, True).index_bits == 17
    for name, gaps, why in [("sample:4", "yes", "neither true nor false"), ("sample:4", 1, "neither true nor false"),
                            ("topk:4", True, "no ascending class ids"), ("fp16", True, "no ascending class ids")]:
        with pytest.raises(SpecError, match=why):
            get_stored_codec(name, 300, None, gaps)


# -- stores ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_stores(tmp_path_factory) -> dict:
    """sample:4 stores of the linear teacher on digits, float16 log-probabilities per class: with gaps
    (v6) and with ids (before v6)."""
    root = tmp_path_factory.mktemp("gaps")
    made = {"now": make_store(root / "now.zarr", codec="sample:4:fp16")}
    with pytest.MonkeyPatch.context() as patch:
        whole = SampleCodec.for_classes
        patch.setattr(SampleCodec, "for_classes",
                      lambda self, classes: whole(self, classes).with_index_gaps(False).with_logprob_sum(False))
        made["before"] = make_store(root / "before.zarr", codec="sample:4")
    return made


def test_a_store_of_gaps_reads_what_a_store_of_ids_reads(image_stores):
    now, before = open_store(image_stores["now"]), open_store(image_stores["before"])
    assert (now.version, before.version) == (6, 3)
    assert now.teacher().attrs["index_gaps"] is True and "index_gaps" not in before.teacher().attrs
    ours, theirs = now.teacher(), before.teacher()
    rows = ours.num_samples
    assert np.array_equal(ours.codec.read_indices(ours.read_stored(0, rows)),
                          theirs.codec.read_indices(theirs.read_stored(0, rows)))
    assert not np.array_equal(ours.read_stored(0, rows)["indices"], theirs.read_stored(0, rows)["indices"])
    assert ours.attrs["metrics"] == theirs.attrs["metrics"]  # accuracy and mass, counted from the ids read back
    assert verify_store(image_stores["now"]).ok and verify_store(image_stores["before"]).ok
    assert "codec sample:4:fp16 (ids as gaps)" in format_description(describe_store(image_stores["now"]))
    assert "(ids" not in format_description(describe_store(image_stores["before"]))


def test_a_store_of_gaps_trains_the_student_a_store_of_ids_trains(image_stores, tmp_path):
    metrics = []
    for name in ("now", "before"):
        result = invoke("train", "--out", tmp_path / name, "--student", "mlp:hidden=16", "--dataset",
                        "digits@train", "--store", image_stores[name], "--loss", "kl", "--epochs", "1", "--no-progress")
        assert result.exit_code == 0, result.output
        metrics.append([{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                        for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    assert metrics[0] == metrics[1] and metrics[0]


def test_an_older_reader_refuses_a_store_of_gaps_in_one_line(image_stores, monkeypatch):
    assert FORMAT_VERSION > GAPS_VERSION == packed_ids.PACKED_VERSION + 1
    monkeypatch.setattr(_store, "FORMAT_VERSION", 5)  # what logitcache read before v6
    with pytest.raises(StoreVersionError, match="format v6, newer than the v5 this logitcache reads"):
        open_store(image_stores["now"])
    assert "upgrade logitcache" in one_error(invoke("info", image_stores["now"]))
    assert open_store(image_stores["before"]).teacher().codec.index_gaps is False  # older stores: as before


@pytest.mark.parametrize("edit, why", [({"version": 5}, "format v6's, but the store says v5"),
                                       ({"index_gaps": "yes"}, "index_gaps 'yes' is neither true nor false")])
def test_an_edited_record_of_gaps_is_damage(image_stores, tmp_path, edit, why):
    copy = edited_record_copy(image_stores["now"], tmp_path / "edited.zarr", edit)
    with pytest.raises(CorruptStoreError, match=why):
        open_store(copy).teacher()


def test_a_dump_of_ids_cut_short_resumes_as_ids_to_identical_bytes(tmp_path, ids_as_before):
    """A teacher begun before v6 is finished in its own layout: the writer follows the record."""
    options = dict(codec="sample:4", teacher="tests.factories:breaking_teacher")
    straight, cut = straight_and_cut_short(tmp_path, options, ids_as_before)
    assert 0 < open_store(cut).teacher("default", check=False).shard_done().sum()
    make_store(cut, **options)
    assert open_store(cut).version == 3
    assert store_contents(cut) == store_contents(straight)
