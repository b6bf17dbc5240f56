"""Several teachers in one store: adding, picking, ensembles, identity checks, and their errors."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from logitcache.train.paired_data import TeacherLogits, ensemble_logits

from logitcache.cli import cli
from logitcache.store import open_store
from tests.conftest import make_store


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
    """default: the linear teacher, C=10; wide: the same with a 12-way head; trained: a CNN."""
    path = make_store(tmp_path_factory.mktemp("teachers") / "s.zarr")
    make_store(path, teacher="tests.factories:linear_teacher", num_classes=12, teacher_name="wide")
    make_store(path, teacher="cnn:width=4", teacher_name="cnn", codec="u8")
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def train_args(tmp_path, store, *extra):
    return ["train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
            "--store", store, "--loss", "kl", "--epochs", "1", "--no-progress", *extra]


def test_info_lists_every_teacher_with_provenance(two_teachers):
    result = invoke("info", two_teachers)
    for name, spec in (("default", "tests.factories:linear_teacher"), ("wide", "linear_teacher"), ("cnn", "cnn:width=4")):
        assert f"teacher   '{name}': complete" in result.output and spec in result.output


def test_ensemble_is_the_mean_of_tempered_probabilities(two_teachers):
    store = open_store(two_teachers)
    ensemble = TeacherLogits.open(str(two_teachers), "default,cnn", temperature=4.0)
    rows = [0, 9, 500]
    parts = torch.stack([torch.from_numpy(store.teacher(n).take(rows)) for n in ("default", "cnn")])
    expected = (parts / 4.0).softmax(-1).mean(0)
    got = torch.stack([ensemble[r] for r in rows])
    assert torch.allclose((got / 4.0).softmax(-1), expected, atol=1e-6)
    assert ensemble.teacher_names == ["default", "cnn"]


def test_ensemble_of_one_is_the_teacher_itself():
    logits = torch.randn(1, 5, 7) * 3
    combined = ensemble_logits(logits, 2.0)
    assert torch.allclose((combined / 2.0).softmax(-1), (logits[0] / 2.0).softmax(-1), atol=1e-6)


def test_train_from_an_ensemble_and_from_a_named_teacher(tmp_path, two_teachers):
    result = invoke(*train_args(tmp_path, two_teachers, "--teacher", "default,cnn"))
    assert result.exit_code == 0 and "teacher 'default,cnn'" in result.output
    result = invoke(*train_args(tmp_path, two_teachers, "--teacher", "cnn", "--overwrite"))
    assert result.exit_code == 0


def test_expect_teacher_accepts_the_recorded_digest_and_refuses_others(tmp_path, two_teachers):
    digest = open_store(two_teachers).teacher("default").attrs["settings"]["parameters_sha256"]
    ok = invoke(*train_args(tmp_path, two_teachers, "--teacher", "default", "--expect-teacher", digest[7:23]))
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("extra, says", [
    (["--teacher", "default,wide"], "one class count; these have default: 10, wide: 12"),
    (["--teacher", "default", "--expect-teacher", "0123456789abcdef"], "is not the expected teacher 0123456789abcdef"),
    (["--teacher", "default,cnn", "--expect-teacher", "0123456789"], "names 1 digests for 2 teachers"),
    (["--teacher", "default", "--expect-teacher", "abc"], "too short"),
    (["--teacher", "nosuch"], "has no teacher 'nosuch'; it has: cnn, default, wide"),
    ([], "holds 3 complete teachers (cnn, default, wide); name one with --teacher"),
])
def test_teacher_choice_errors(tmp_path, two_teachers, extra, says):
    result = invoke(*train_args(tmp_path, two_teachers, *extra))
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code != 0 and len(errors) == 1 and says in errors[0], result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_teacher_name_clash_is_refused_and_leaves_the_teacher_intact(two_teachers):
    before = open_store(two_teachers).teacher("wide").read(0, 50)
    result = invoke("dump", two_teachers, "--teacher", "cnn", "--dataset", "digits@train", "--teacher-name", "wide",
                    "--no-progress")
    assert result.exit_code == 1 and "already holds a complete teacher 'wide'" in result.output
    assert np.array_equal(open_store(two_teachers).teacher("wide").read(0, 50), before)
