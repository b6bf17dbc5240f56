"""``sample:K`` rows that keep one log-probability sum (format v7): the same loss and the very same
gradients as per-class log-probabilities on the same draws, older records read and resumed in
their own form, older readers refusing v7, and every malformed record refused in one line.

Stores "as before v7" are made by this checkout with ``for_classes`` giving the per-class float16
form under the name ``sample:K`` and no ``logprob_sum`` in the record (``per_class_as_before``):
what every sample teacher written before v7 holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from logitcache.codecs import get_codec, get_stored_codec
from logitcache.codecs.packed_ids import GAPS_VERSION, LOGPROB_SUM_VERSION
from logitcache.codecs.sample import SampleCodec
from logitcache.errors import CorruptStoreError, SpecError, StoreVersionError
from logitcache.losses import sampled_kd_loss
from logitcache.losses.kd import sampled_token_kl
from logitcache.sources.checkpoints import load_checkpoint
from logitcache.store import FORMAT_VERSION, _store, open_store, verify_store
from logitcache.store_info import describe_store, format_description
from tests import factories
from tests.codecs.test_codecs import realistic_logits
from tests.conftest import edited_record_copy, invoke, make_store, one_error, store_contents, straight_and_cut_short

HAMLET = Path(__file__).resolve().parents[2] / "data" / "text" / "shakespeare" / "hamlet.md"


def per_class(self, num_classes, whole=SampleCodec.for_classes):
    """``SampleCodec.for_classes`` as before v7: a ``sample:K`` keeps float16 log-probabilities per class."""
    return whole(self, num_classes).with_logprob_sum(False)


@pytest.fixture
def per_class_as_before(monkeypatch):
    monkeypatch.setattr(SampleCodec, "for_classes", per_class)
    return monkeypatch


def targets(name: str, logits: np.ndarray, shard: int = 2):
    codec = get_codec(name).for_classes(logits.shape[1])
    stored = codec.encode_shard(logits, shard)
    return codec, stored, codec.training_targets(stored)


def loss_and_gradient(loss, student: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    student = student.clone().requires_grad_(True)
    value = loss(student, *args)
    (gradient,) = torch.autograd.grad(value.sum(), student)
    return value.detach(), gradient


# -- the codec -------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab, temperature", [(300, 1.0), (4096, 2.0), (131_072, 1.0)])
def test_a_row_sum_gives_the_per_class_loss_and_the_very_same_gradient(vocab, temperature):
    logits = realistic_logits(16, vocab, seed=7)
    name = f"sample:12:{temperature:g}"
    summed, stored, ours = targets(name, logits)
    _, exact, theirs = targets(f"{name}:fp32", logits)
    assert set(stored) - set(exact) == {"logprob_sum"} and stored["logprob_sum"].dtype == np.float32
    assert summed.logprob_sum and summed.format_version == LOGPROB_SUM_VERSION == GAPS_VERSION + 1
    assert torch.equal(ours.indices, theirs.indices) and torch.equal(ours.weights, theirs.weights)
    used = ours.weights > 0
    assert torch.equal(ours.logprobs, torch.where(used, ours.logprobs[:, :1], 0.0))  # the sum in every used slot
    student = torch.randn(16, vocab, generator=torch.Generator().manual_seed(3))
    for loss, args in [(sampled_kd_loss, ("indices", "weights", "logprobs")),
                       (sampled_token_kl, ("indices", "weights", "logprobs"))]:
        value, gradient = loss_and_gradient(loss, student, *[getattr(ours, a) for a in args], temperature)
        value_fp32, gradient_fp32 = loss_and_gradient(loss, student, *[getattr(theirs, a) for a in args], temperature)
        torch.testing.assert_close(value.mean(), value_fp32.mean(), rtol=1e-6, atol=0)  # the loss: a mean
        torch.testing.assert_close(value, value_fp32, rtol=1e-5, atol=0)  # a row's: float32's rounding of its terms
        assert torch.equal(gradient, gradient_fp32)


def test_a_row_sum_is_the_weighted_sum_of_the_per_class_log_probabilities():
    logits = realistic_logits(40, 500, seed=2)
    _, stored, _ = targets("sample:12", logits)
    _, per_class_stored, _ = targets("sample:12:fp32", logits)
    counts = per_class_stored["counts"].astype(np.float64)
    expected = np.where(counts > 0, counts * per_class_stored["logprobs"], 0).sum(1) / 12
    np.testing.assert_allclose(stored["logprob_sum"], expected, rtol=1e-6)
    assert (stored["logprob_sum"] < 0).all()


def test_rows_ok_catches_a_sum_that_is_not_finite():
    codec, stored, _ = targets("sample:4", realistic_logits(5, 300))
    assert codec.rows_ok(stored).all()
    stored["logprob_sum"][1], stored["logprob_sum"][3] = np.nan, -np.inf
    assert codec.rows_ok(stored).tolist() == [True, False, True, False, True]
    unwritten = {key: np.full((2, spec.width) if spec.per_class else (2,), spec.fill_value, spec.dtype)
                 for key, spec in codec.arrays.items()}
    assert not codec.rows_ok(unwritten).any() and codec.stored_mass(stored) is None


def test_names_and_forms():
    forms = {name: get_codec(name).for_classes(131_072) for name in
             ("sample:12", "sample:12:fp16", "sample:12:fp32", "sample:12:counts", "sample:12:2", "sample:12:2:fp16")}
    assert {name: codec.name for name, codec in forms.items()} == {name: name for name in forms}
    assert {name: "logprob_sum" in codec.arrays for name, codec in forms.items()} == {
        "sample:12": True, "sample:12:fp16": False, "sample:12:fp32": False, "sample:12:counts": False,
        "sample:12:2": True, "sample:12:2:fp16": False}
    assert {name: codec.format_version for name, codec in forms.items()} == {
        "sample:12": 7, "sample:12:fp16": 6, "sample:12:fp32": 6, "sample:12:counts": 6, "sample:12:2": 7,
        "sample:12:2:fp16": 6}
    assert [forms[name].bytes_per_sample(131_072) for name in ("sample:12", "sample:12:fp16")] == [26 + 24 + 4, 74]
    assert get_codec("sample:12:counts:fp16").name == "sample:12:counts"  # accepted before v7: still


def test_a_record_without_the_field_is_the_per_class_float16_form():
    before = get_stored_codec("sample:12", 131_072, 17, True)  # a v6 teacher's record
    assert before.name == "sample:12" and not before.logprob_sum and before.arrays["logprobs"].dtype == "float16"
    assert before.format_version == GAPS_VERSION and before.mass_note == "in the sampled classes"
    assert get_stored_codec("sample:12", 131_072, 17, True, True).arrays.keys() == \
        get_codec("sample:12").for_classes(131_072).arrays.keys()
    assert get_stored_codec("sample:12:fp32", 300).arrays["logprobs"].dtype == "float32"


@pytest.mark.parametrize("name, row_sum, why", [
    ("sample:4", "yes", "logprob_sum 'yes' is neither true nor false"),
    ("sample:4", 1, "logprob_sum 1 is neither true nor false"),
    ("sample:4:fp16", True, "keeps per-class log-probabilities, not one sum per row"),
    ("sample:4:fp32", True, "keeps per-class log-probabilities, not one sum per row"),
    ("sample:4:counts", True, "keeps no log-probabilities, not one sum per row"),
    ("topk:4", True, "keeps no log-probability sum per row"),
    ("fp16", True, "keeps no log-probability sum per row"),
])
def test_a_records_logprob_sum_is_checked(name, row_sum, why):
    with pytest.raises(SpecError, match=why):
        get_stored_codec(name, 300, None, name.startswith("sample"), row_sum)


# -- stores ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_stores(tmp_path_factory) -> dict:
    """sample:4 stores of the linear teacher on digits: one sum per row (now), fp32 and fp16 per class,
    and a ``sample:4`` written as before v7 (per-class float16, no ``logprob_sum`` in its record)."""
    root = tmp_path_factory.mktemp("sums")
    made = {name: make_store(root / f"{name.replace(':', '_')}.zarr", codec=name)
            for name in ("sample:4", "sample:4:fp32", "sample:4:fp16")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SampleCodec, "for_classes", per_class)
        made["before"] = make_store(root / "before.zarr", codec="sample:4")
    return made


def test_stores_record_their_form(image_stores):
    now, fp16, before = (open_store(image_stores[name]) for name in ("sample:4", "sample:4:fp16", "before"))
    assert (now.version, fp16.version, before.version) == (7, 6, 6)
    assert now.teacher().attrs["logprob_sum"] is True and set(now.teacher().arrays) >= {"logprob_sum"}
    assert "logprob_sum" not in fp16.teacher().attrs and "logprob_sum" not in before.teacher().attrs
    assert before.teacher().attrs["codec"] == "sample:4" and fp16.teacher().attrs["codec"] == "sample:4:fp16"
    assert all(verify_store(image_stores[name]).ok for name in image_stores)
    text = format_description(describe_store(image_stores["sample:4"]))
    assert "format v7" in text and "one log-probability sum per row, codec sample:4 (ids as gaps)" in text


def test_a_store_written_before_v7_reads_as_it_did(image_stores):
    """The same draws: the old ``sample:4`` holds exactly what ``sample:4:fp16`` holds now."""
    before, fp16 = open_store(image_stores["before"]).teacher(), open_store(image_stores["sample:4:fp16"]).teacher()
    assert not before.codec.logprob_sum and before.codec.arrays.keys() == fp16.codec.arrays.keys()
    rows = before.num_samples
    ours, theirs = before.read_stored(0, rows), fp16.read_stored(0, rows)
    assert all(np.array_equal(ours[key], theirs[key], equal_nan=True) for key in theirs)
    assert before.attrs["metrics"] == fp16.attrs["metrics"] and 0 < before.attrs["metrics"]["mass_stored"] < 1
    assert "(in the sampled classes)" in format_description(describe_store(image_stores["before"]))


def test_a_row_sum_store_trains_the_student_a_per_class_fp32_store_trains(image_stores, tmp_path):
    runs = {}
    for name in ("sample:4", "sample:4:fp32"):
        out = tmp_path / name.replace(":", "_")
        result = invoke("train", "--out", out, "--student", "mlp:hidden=16", "--dataset", "digits@train", "--store",
                        image_stores[name], "--loss", "kl", "--epochs", "2", "--no-progress")
        assert result.exit_code == 0, result.output
        runs[name] = ([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()],
                      load_checkpoint(out / "last.pt")["model"])
    (ours, weights), (theirs, same) = runs.values()
    assert all(torch.equal(weights[key], same[key]) for key in weights)  # the very same gradients, every step
    assert len(ours) == 2 and all(a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
                                  for a, b in zip(ours, theirs))


def test_an_older_reader_refuses_a_store_of_row_sums_in_one_line(image_stores, monkeypatch):
    assert FORMAT_VERSION == LOGPROB_SUM_VERSION
    monkeypatch.setattr(_store, "FORMAT_VERSION", 6)  # what logitcache read before v7
    with pytest.raises(StoreVersionError, match="format v7, newer than the v6 this logitcache reads"):
        open_store(image_stores["sample:4"])
    assert "upgrade logitcache" in one_error(invoke("info", image_stores["sample:4"]))
    assert open_store(image_stores["before"]).teacher().codec.arrays["logprobs"].dtype == "float16"


def test_a_store_of_a_later_version_is_refused_in_one_line(image_stores, tmp_path):
    copy = tmp_path / "later.zarr"
    shutil.copytree(image_stores["sample:4"], copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs["logitcache"] = {**group.attrs["logitcache"], "version": FORMAT_VERSION + 1}
    assert f"format v{FORMAT_VERSION + 1}, newer than the v{FORMAT_VERSION}" in one_error(invoke("info", copy))


@pytest.mark.parametrize("store, edit, why", [
    ("sample:4", {"version": 6}, "format v7's, but the store says v6"),
    ("sample:4", {"logprob_sum": "yes"}, "logprob_sum 'yes' is neither true nor false"),
    ("sample:4", {"logprob_sum": False}, "logprobs"),  # its arrays are not a per-class form's
    ("sample:4:fp16", {"logprob_sum": True}, "keeps per-class log-probabilities, not one sum per row"),
])
def test_an_edited_record_of_row_sums_is_damage(image_stores, tmp_path, store, edit, why):
    copy = edited_record_copy(image_stores[store], tmp_path / "edited.zarr", edit)
    with pytest.raises(CorruptStoreError, match=why):
        open_store(copy).teacher()
    assert "Error" in one_error(invoke("verify", copy))


@pytest.mark.parametrize("spelled", ["sample:4", "sample:4:fp16"])
def test_a_dump_begun_before_v7_resumes_in_its_own_form(tmp_path, per_class_as_before, spelled):
    """A ``sample:4`` teacher of per-class log-probabilities is finished as one: the writer follows the
    record, and the same command is not refused as other settings, whether it said ``sample:4`` or
    ``sample:4:fp16`` (which dumps before v7 recorded as ``sample:4``)."""
    options = dict(codec="sample:4", teacher="tests.factories:breaking_teacher")
    straight, cut = straight_and_cut_short(tmp_path, options, per_class_as_before)
    assert 0 < open_store(cut).teacher("default", check=False).shard_done().sum()
    row_sums = invoke("dump", cut, "--teacher", options["teacher"], "--dataset", "digits@train", "--codec",
                      "sample:4:counts", "--rows-per-shard", "256", "--batch-size", "64", "--no-progress")
    assert "used other settings (codec differ)" in one_error(row_sums)  # another form: as other codecs are
    make_store(cut, **{**options, "codec": spelled})
    assert open_store(cut).version == 6 and "logprob_sum" not in open_store(cut).teacher().attrs
    assert store_contents(cut) == store_contents(straight)


def test_a_row_sum_dump_cut_short_resumes_to_identical_bytes(tmp_path, monkeypatch):
    options = dict(codec="sample:4", teacher="tests.factories:breaking_teacher")
    straight = make_store(tmp_path / "straight.zarr", **options)
    monkeypatch.setenv("LOGITCACHE_TEST_FAIL_AFTER", "9")
    with pytest.raises(factories.TeacherFailed):
        make_store(tmp_path / "cut.zarr", **options)
    monkeypatch.delenv("LOGITCACHE_TEST_FAIL_AFTER")
    make_store(tmp_path / "cut.zarr", **options)
    assert open_store(tmp_path / "cut.zarr").version == 7
    assert store_contents(tmp_path / "cut.zarr") == store_contents(straight)


def test_the_same_token_dump_on_a_teacher_written_before_v7_finds_it_complete(tmp_path, per_class_as_before):
    """Its layout follows its rows' bytes (per-class: wider), so the settings the same command makes
    now must be those of the teacher's own form, or the dump would refuse it as made with others."""
    text = tmp_path / "hamlet-start.md"
    text.write_text(HAMLET.read_text()[:4_000])  # 62 sequences: enough for the two forms' layouts to differ
    args = ["dump", tmp_path / "s.zarr", "--teacher", "tests.factories:tiny_lm", "--dataset", f"text:{text}",
            "--tokenizer", "bytes", "--seq-len", "64", "--codec", "sample:12", "--no-progress"]
    assert invoke(*args).exit_code == 0
    per_class_as_before.undo()
    before = store_contents(tmp_path / "s.zarr")
    new = tmp_path / "new.zarr"
    assert invoke(*args[:1], new, *args[2:]).exit_code == 0
    layouts = [open_store(path).teacher().attrs["layout"] for path in (tmp_path / "s.zarr", new)]
    assert layouts[0] != layouts[1]  # so the settings differ unless the dump follows the record
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert store_contents(tmp_path / "s.zarr") == before
    assert "logprobs" in open_store(tmp_path / "s.zarr").teacher().arrays
