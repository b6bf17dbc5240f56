"""``--loss NAME[=WEIGHT],...``: what a list answers the trainer, the total it trains, and bad lists as
one-line errors through the CLI."""

import csv

import pytest
import torch

from logitcache.errors import ConfigError
from logitcache.losses import dist_loss, dkd_loss, kd_loss, loss_spec
from logitcache.train import TrainConfig, train
from logitcache.train.train_config import validate, warmup_note
from tests.conftest import invoke, one_error


def test_a_list_answers_with_the_strictest_of_its_losses():
    kl, mixed = loss_spec("kl"), loss_spec("kl=1,dist=0.5,dkd")
    assert (kl.needs_teacher, kl.min_batch, kl.reads_sparse, kl.mixes, kl.temperature) == (True, 1, True, True, 4.0)
    assert mixed.needs_teacher and mixed.min_batch == 2  # dist's
    assert not mixed.reads_sparse and not mixed.mixes  # dist needs dense rows, dkd one class per sample
    assert mixed.temperature is None  # kl 4, dist 1, dkd 4: the run must say which
    assert loss_spec("kl,dkd").temperature == 4.0  # they agree
    assert not loss_spec("ce").needs_teacher and loss_spec("ce").temperature == 1.0 and loss_spec("ce").mixes
    assert mixed.warmup({"dkd": {"warmup": 7}}) == ("--dkd-warmup", 7) and kl.warmup({}) is None


def test_the_total_is_ce_plus_each_loss_times_its_weight():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=generator), torch.randn(8, 10, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    kd = loss_spec("kl=2,dist,dkd=0.25").build(temperature=4.0, kd_weight=0.5, options={"dkd": {"warmup": 0}})
    logged, weighted = kd(student, teacher, labels, epoch=1)
    kl, dist, dkd = kd_loss(student, teacher, 4.0), dist_loss(student, teacher, 4.0), dkd_loss(student, teacher, labels)
    torch.testing.assert_close(weighted, 2 * kl + 0.5 * dist + 0.25 * dkd)  # dist without a weight: --kd-weight
    torch.testing.assert_close(logged, kl + dist + dkd)  # what steps.csv calls kd: the losses, unweighted
    assert loss_spec("ce").build(temperature=1.0, kd_weight=1.0, options={}) is None


def test_a_name_without_a_weight_means_what_it_meant(tmp_path, digits_store):
    def steps(name, loss, kd_weight):
        train(TrainConfig(out=str(tmp_path / name), student="mlp:hidden=8", dataset="digits@train",
                          store=str(digits_store), loss=loss, kd_weight=kd_weight, epochs=1, progress=False),
              log=lambda *_: None)
        with open(tmp_path / name / "steps.csv") as handle:
            return [(r["loss"], r["ce"], r["kd"]) for r in csv.DictReader(handle)]

    assert steps("plain", "kl", 0.5) == steps("weighted", "kl=0.5", 3.0)  # the list's weight wins over --kd-weight


def test_the_checks_ask_the_whole_list():
    base = dict(out="x", student="mlp", dataset="digits", store="s")
    with pytest.raises(ConfigError, match=r"--loss kl,dist: the losses' default temperatures differ \(kl 4, dist 1\); "
                                          "give --temperature"):
        validate(TrainConfig(**base, loss="kl,dist").resolved())
    validate(TrainConfig(**base, loss="kl,dist", temperature=2.0).resolved())
    with pytest.raises(ConfigError, match="--loss kl,dist needs --batch-size of at least 2"):
        validate(TrainConfig(**base, loss="kl,dist", temperature=2.0, batch_size=1).resolved())
    with pytest.raises(ConfigError, match="--loss kl,dkd needs one class per sample"):
        validate(TrainConfig(**base, loss="kl,dkd", mixup=0.2).resolved())
    with pytest.raises(ConfigError, match="distils from a teacher"):
        validate(TrainConfig(out="x", student="mlp", dataset="digits", loss="kl=2").resolved())
    note = warmup_note(TrainConfig(**base, loss="kl,dkd", epochs=2).resolved())
    assert note.startswith("note: --dkd-warmup 20 is longer than this 2-epoch run: the kl,dkd term")


TRAIN = ["train", "--out", "{tmp}/run", "--student", "mlp:hidden=8", "--dataset", "digits@train", "--store",
         "{store}", "--epochs", "1", "--no-progress", "--loss"]

BAD_LISTS = [
    ("kl,crd", "--loss 'crd' is unknown; choose ce, dist, dkd, kl"),
    ("kl=x", "--loss 'kl=x': the weight 'x' is not a number"),
    ("kl=-1", "--loss 'kl=-1': the weight must be a finite number >= 0"),
    ("kl=inf", "--loss 'kl=inf': the weight must be a finite number >= 0"),
    ("kl=nan", "--loss 'kl=nan': the weight must be a finite number >= 0"),
    ("kl,dist,kl=2", "--loss 'kl,dist,kl=2': give each loss once, as NAME[=WEIGHT],..."),
    ("kl,", "give each loss once, as NAME[=WEIGHT],..."),
    ("ce,kl", "ce is the labels' cross-entropy, always in the total: weigh it with --ce-weight"),
    ("ce=0.5", "ce is the labels' cross-entropy, always in the total: weigh it with --ce-weight"),
]


@pytest.mark.parametrize("text, says", BAD_LISTS, ids=[b[0] for b in BAD_LISTS])
def test_bad_lists_are_one_line_errors_naming_the_fix(tmp_path, digits_store, text, says):
    result = invoke(*[a.format(tmp=tmp_path, store=digits_store) for a in TRAIN], text)
    error = one_error(result)
    assert error.startswith("Error: Invalid value for '--loss'") and says in error, error
    assert not (tmp_path / "run").exists()


def test_an_unknown_name_alone_says_what_it_always_said(tmp_path, digits_store):
    error = one_error(invoke(*[a.format(tmp=tmp_path, store=digits_store) for a in TRAIN], "crd"))
    assert error == "Error: Invalid value for '--loss': 'crd' is not one of ce, dist, dkd, kl"


def test_a_list_of_disagreeing_temperatures_asks_for_one(tmp_path, digits_store):
    args = [a.format(tmp=tmp_path, store=digits_store) for a in TRAIN]
    error = one_error(invoke(*args, "kl,dist"))
    assert "the losses' default temperatures differ (kl 4, dist 1); give --temperature" in error
    result = invoke(*args, "kl=1,dist=0.5", "--temperature", "2")
    assert result.exit_code == 0, result.output


def test_token_data_trains_with_one_loss(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello world " * 200)
    result = invoke("train", "--out", tmp_path / "run", "--student", "gpt:n_layer=1,n_head=1,n_embd=8",
                    "--dataset", f"text:{text}", "--tokenizer", "bytes", "--seq-len", "16", "--loss", "kl=2")
    assert "--loss kl=2: token data trains with one loss, --loss ce or kl (weigh the KL with --kd-weight)" in \
        one_error(result)
