"""A language-model student's validation against its teacher: ``val_kl``, the KD term on the
held-out store (``train/token_task.py: evaluate``), beside loss, perplexity and agreement.

The tiny seeded teacher (``tests.factories.tiny_lm``) dumped over held-out Hamlet in each target
form; the teacher itself as a student has KL 0, a stranger's KL is the dense one computed here."""

from __future__ import annotations

import json

import pytest
import torch

from logitcache.lm import TokenStoreDataset
from logitcache.sources import get_model
from logitcache.train import TrainConfig
from logitcache.train.token_task import evaluate
from tests.train.test_token_training import STUDENT, dump, lm_train, records, stores, text  # noqa: F401


@pytest.fixture(scope="module")
def val_stores(tmp_path_factory, text):  # noqa: F811
    """The held-out text in a dense (fp32), a top-k and a sampled (T = 2) store."""
    root = tmp_path_factory.mktemp("val")
    return {codec: dump(root / f"{codec.replace(':', '_')}.zarr", text, codec, split="val")
            for codec in ("fp32", "topk:8", "sample:12:2")}


def _evaluate(student, store) -> dict:
    config = TrainConfig(out="unused", student="unused", batch_size=4, temperature=4.0)  # val_kl is at T = 1
    return evaluate(student, TokenStoreDataset(store), config, torch.device("cpu"))


@pytest.mark.parametrize("codec, tolerance", [("fp32", 1e-6), ("topk:8", 2e-3), ("sample:12:2", 2e-3)])
def test_the_teacher_as_its_own_student_has_no_kl_to_itself(val_stores, codec, tolerance):
    metrics = _evaluate(get_model("tests.factories:tiny_lm", 256), val_stores[codec])
    assert abs(metrics["val_kl"]) < tolerance  # topk/sample: float16 log-probabilities
    if codec != "sample:12:2":  # a sampled row's most drawn token is not always the teacher's top one
        assert metrics["val_agreement"] == 1.0


def test_val_kl_on_a_dense_store_is_the_exact_kl_per_target_token(val_stores):
    torch.manual_seed(1)
    student = get_model(STUDENT, 256)
    data = TokenStoreDataset(val_stores["fp32"])
    batch = data.batch(range(len(data)))
    with torch.no_grad():
        log_q = student(batch["input_ids"]).log_softmax(-1)[:, :-1]  # (N, L - 1, V): positions with a next token
    log_p = batch["teacher_logits"].log_softmax(-1)[:, :-1]
    per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
    targets = batch["labels"][:, 1:] != -100
    expected = float(per_position[targets].mean())
    assert expected > 0.5 and _evaluate(student, val_stores["fp32"])["val_kl"] == pytest.approx(expected, rel=1e-5)


def test_val_kl_falls_as_the_student_trains_and_is_in_every_report(tmp_path, stores, val_stores):  # noqa: F811
    result = lm_train(tmp_path / "kd", stores["fp16"], "--val-store", val_stores["fp32"], "--epochs", "3",
                      "--ce-weight", "0")
    assert result.exit_code == 0, result.output
    assert "and KL to it at T = 1 as its stored targets define it (fp32: " in result.output
    rows = records(tmp_path / "kd")
    assert rows[0]["val_kl"] > rows[1]["val_kl"] > rows[2]["val_kl"] > 0
    for row in rows:
        assert f"KL to the teacher {row['val_kl']:.4f} nats/token" in result.output  # each epoch's line
    summary = json.loads((tmp_path / "kd" / "summary.json").read_text())
    assert summary["last"]["val_kl"] == rows[-1]["val_kl"]
    best = min(rows, key=lambda r: r["val_loss"])
    assert f"perplexity {best['val_ppl']:.3f}, KL to the teacher {best['val_kl']:.4f} nats/token" in result.output
    assert "val_kl" in (tmp_path / "kd" / "metrics.csv").read_text().splitlines()[0]


def test_a_sampled_validation_store_gives_its_kl_at_the_temperature_it_was_drawn_at(tmp_path, stores,  # noqa: F811
                                                                                    val_stores):
    result = lm_train(tmp_path / "kd", stores["topk:8"], "--val-store", val_stores["sample:12:2"], "--epochs", "1")
    assert result.exit_code == 0, result.output  # the run trains at T = 1; its validation reads the draws at 2
    assert "KL to it at T = 2 (times T², as trained) as its stored targets define it (sample:12:2: " in result.output
    assert records(tmp_path / "kd")[0]["val_kl"] > 0


def test_validation_without_a_teacher_has_no_kl(tmp_path, stores, text):  # noqa: F811
    result = lm_train(tmp_path / "kd", stores["topk:8"], "--val-dataset", f"text:{text}@val", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert records(tmp_path / "kd")[0]["val_kl"] is None and "KL to the teacher" not in result.output


def test_metrics_csv_takes_a_metric_the_first_epochs_lack(tmp_path):
    """A run resumed from epochs recorded before ``val_kl`` existed: its table gains the column."""
    from logitcache.train.run_files import RunFiles

    run = RunFiles(tmp_path)
    run.write_metrics([{"epoch": 1, "val_loss": 2.5}, {"epoch": 2, "val_loss": 2.4, "val_kl": 0.3}])
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,val_loss,val_kl", "1,2.5,", "2,2.4,0.3"]
