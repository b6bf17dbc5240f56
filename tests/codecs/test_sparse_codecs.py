"""Sparse stores for large label spaces: topk:K and sample:K, their losses, and training from them."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from logitcache.cli import cli
from logitcache.errors import SpecError
from logitcache.losses import kd_loss, sampled_kd_loss, topk_kd_loss
from logitcache.store import get_codec, open_store, verify_store
from tests.conftest import make_store
from tests.codecs.test_codecs import realistic_logits


def sample(logits, name, shard=0):
    codec = get_codec(name).for_classes(logits.shape[1])
    stored = codec.encode_shard(logits, shard)
    return codec, stored, {k: torch.from_numpy(v) for k, v in codec.sparse_targets(stored).items()}


def test_sample_codec_stores_unique_draws_with_counts_and_teacher_logprobs():
    logits = realistic_logits(32, 200)
    codec, stored, _ = sample(logits, "sample:12:2:fp16")
    counts = stored["counts"].astype(int)
    assert (counts.sum(1) == 12).all() and codec.rows_ok(stored).all()
    exact = torch.log_softmax(torch.from_numpy(logits).double() / 2, 1).numpy()
    for row in range(32):
        used = counts[row] > 0
        idx = codec.read_indices(stored)[row, used]
        assert (np.diff(idx) > 0).all()  # unique, ascending
        assert np.allclose(stored["logprobs"][row, used], exact[row, idx], atol=2e-2, rtol=1e-3)
    again = codec.encode_shard(logits, 0)
    assert all(np.array_equal(again[k], stored[k], equal_nan=True) for k in stored)  # seeded: repeatable
    other = codec.encode_shard(logits, 1)
    assert not np.array_equal(other["indices"], stored["indices"])  # another shard, other draws
    assert codec.bytes_per_sample(200) == 12 * 6 and codec.name == "sample:12:2:fp16"
    with pytest.raises(SpecError, match="stores samples"):
        codec.decode(stored)


def test_sampled_kl_is_unbiased_for_the_dense_kl_and_its_gradient():
    """The mean of the estimate over many independent draws matches the dense KL (fixed seeds)."""
    logits = realistic_logits(8, 100, seed=1)
    student = torch.randn(8, 100, generator=torch.Generator().manual_seed(2), requires_grad=True)
    dense = kd_loss(student, torch.from_numpy(logits), 2.0)
    (dense_grad,) = torch.autograd.grad(dense, student)
    values, grads = [], []
    for shard in range(400):
        _, _, targets = sample(logits, "sample:12:2", shard)
        value = sampled_kd_loss(student, targets["indices"], targets["weights"], targets["logprobs"], 2.0)
        (grad,) = torch.autograd.grad(value, student)
        values.append(value.item())
        grads.append(grad)
    values = np.array(values)
    stderr = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - dense.item()) < 4 * stderr
    grads = torch.stack(grads)
    grad_err = grads.std(0) / np.sqrt(len(grads))
    assert ((grads.mean(0) - dense_grad).abs() <= 4 * grad_err + 1e-6).float().mean() > 0.99


def test_topk_sparse_kl_is_the_exact_bucketed_kl_at_t1():
    logits = realistic_logits(6, 50, seed=4)
    student = torch.randn(6, 50, generator=torch.Generator().manual_seed(5))
    codec, stored, t = sample(logits, "topk:7")
    got = topk_kd_loss(student, t["indices"], t["logprobs"], t["tail"], 1.0)
    p = torch.log_softmax(torch.from_numpy(logits).double(), 1).exp()
    q = torch.log_softmax(student.double(), 1).exp()
    idx = t["indices"]
    p_top, q_top = p.gather(1, idx), q.gather(1, idx)
    p_tail, q_tail = 1 - p_top.sum(1), 1 - q_top.sum(1)
    expected = ((p_top * (p_top / q_top).log()).sum(1) + p_tail * (p_tail / q_tail).log()).mean()
    assert got.item() == pytest.approx(expected.item(), rel=2e-3)
    _, _, nearly_all = sample(logits, "topk:49")
    close = topk_kd_loss(student, nearly_all["indices"], nearly_all["logprobs"], nearly_all["tail"], 1.0)
    assert close.item() == pytest.approx(kd_loss(student, torch.from_numpy(logits), 1.0).item(), rel=2e-3)


@pytest.fixture(scope="module")
def sampled_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("sparse") / "s.zarr", codec="sample:6")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_sample_store_dumps_verifies_and_reports_its_mass(sampled_store, tmp_path):
    """Per-class log-probabilities hold the sampled classes' mass; one sum per row holds none."""
    teacher = open_store(sampled_store).teacher()
    assert teacher.codec.name == "sample:6" and verify_store(sampled_store).ok
    assert teacher.attrs["metrics"]["mass_stored"] is None and teacher.attrs["logprob_sum"] is True
    info = invoke("info", sampled_store)
    assert "mass      not known: a row sum keeps no class's probability" in info.output
    per_class = make_store(tmp_path / "fp16.zarr", codec="sample:6:fp16")
    assert 0 < open_store(per_class).teacher().attrs["metrics"]["mass_stored"] < 1
    assert "% of the probability mass is stored exactly (in the sampled classes)" in invoke("info", per_class).output
    assert json.loads(invoke("info", sampled_store, "--json").output)["teachers"]["default"]["codec"] == "sample:6"


def test_codec_names_and_value_dtypes():
    assert get_codec("topk:5:fp32").for_classes(10).arrays["logprobs"].dtype == "float32"
    assert get_codec("sample:4:2:fp32").name == "sample:4:2:fp32"
    assert get_codec("sample:4:fp32").arrays["logprobs"].dtype == "float32"
    for bad in ("topk:5:2", "sample:4:0", "sample:4:x", "sample:", "topk:-1"):
        with pytest.raises(SpecError):
            get_codec(bad)


@pytest.mark.parametrize("codec", ["topk:3", "sample:6"])
def test_kl_trains_from_sparse_targets_in_memory_and_streamed(tmp_path, codec, sampled_store):
    store = sampled_store if codec.startswith("sample") else make_store(tmp_path / "t.zarr", codec=codec)
    for budget in ("4GiB", "4KiB"):
        result = invoke("train", "--out", tmp_path / budget, "--student", "mlp:hidden=8", "--dataset", "digits@train",
                        "--store", store, "--loss", "kl", "--temperature", "1", "--epochs", "1", "--no-progress",
                        "--cache-budget", budget)
        assert result.exit_code == 0, result.output
        assert f"sparse {codec} targets" in result.output
        assert ("in memory" in result.output) == (budget == "4GiB")


@pytest.mark.parametrize("extra, says", [
    (["--loss", "dist"], "stored as sample:6 (sampled classes, no distribution), which this loss cannot use"),
    (["--loss", "kl", "--temperature", "4"], "differs from the temperature 1 the store's classes were sampled at"),
])
def test_losses_that_cannot_use_a_sample_store_say_so_at_start(tmp_path, sampled_store, extra, says):
    result = invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
                    "--store", sampled_store, "--epochs", "1", "--no-progress", *extra)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code != 0 and len(errors) == 1 and says in errors[0], result.output


def test_dist_trains_from_a_topk_store_through_its_dense_decoding(tmp_path):
    store = make_store(tmp_path / "t.zarr", codec="topk:4")
    result = invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
                    "--store", store, "--loss", "dist", "--epochs", "1", "--no-progress")
    assert result.exit_code == 0 and "sparse" not in result.output


def test_a_codec_this_version_does_not_know_is_refused_by_name(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    meta_path = store / "teachers" / "default" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["logitcache_teacher"]["codec"] = "vq:256"
    meta_path.write_text(json.dumps(meta))
    result = invoke("verify", store)
    assert result.exit_code != 0 and "unknown codec 'vq:256'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("temperature", ["inf", "nan", "1e-300", "0.0009", "1001", "-2"])
def test_a_sampling_temperature_out_of_range_is_refused(temperature):
    with pytest.raises(SpecError, match=f"the temperature {temperature} is not between 0.001 and 1000$"):
        get_codec(f"sample:4:{temperature}")
    assert get_codec("sample:4:0.001").sampled_at == 0.001 and get_codec("sample:4:1000").sampled_at == 1000


def test_a_new_teacher_keeps_no_more_entries_per_row_than_classes():
    from logitcache.codecs import get_new_codec, get_stored_codec

    with pytest.raises(SpecError, match="codec sample:257 keeps 257 entries per row, more than the teacher's 256 "
                                        "classes: give at most 256, or a dense codec"):
        get_new_codec("sample:257", 256)
    assert get_new_codec("sample:256", 256).k == 256
    assert get_stored_codec("sample:257", 256).k == 257  # a teacher written before the bound still opens
    with pytest.raises(SpecError, match="keeps 256 of only 256 classes"):
        get_new_codec("topk:256", 256)


def test_dumps_refuse_codecs_wider_than_the_teachers_head_or_at_an_unusable_temperature(tmp_path):
    text = tmp_path / "a.md"
    text.write_text("To be, or not to be, that is the question. " * 20)
    token_dump = ["--teacher", "tests.factories:tiny_lm", "--dataset", f"text:{text}", "--tokenizer", "bytes",
                  "--seq-len", "64", "--no-progress"]
    image_dump = ["--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train", "--no-progress"]
    for dump, codec, says in (
            (token_dump, "sample:100000", "codec sample:100000 keeps 100000 entries per row, more than the teacher's "
                                          "256 classes"),
            (token_dump, "topk:300", "codec topk:300 keeps 300 of only 256 classes"),
            (token_dump, "sample:8:1e-300", "the temperature 1e-300 is not between 0.001 and 1000"),
            (image_dump, "sample:11", "codec sample:11 keeps 11 entries per row, more than the teacher's 10 classes"),
            (image_dump, "sample:4:inf", "the temperature inf is not between 0.001 and 1000")):
        result = invoke("dump", tmp_path / "s.zarr", *dump, "--codec", codec)
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert result.exit_code != 0 and "Traceback" not in result.output and len(errors) == 1, result.output
        assert says in errors[0], (codec, result.output)
        assert not (tmp_path / "s.zarr").exists()  # refused before the store is made
