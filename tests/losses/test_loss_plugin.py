"""A loss with a hyperparameter is one file: this module defines one (MSE between the logits, times a
``scale`` option), registers it, and trains a student with it from a store through the Python API and
through the CLI, its option set each way."""

import json

import pytest
import torch

from logitcache.cli import cli, refresh_loss_options
from logitcache.losses import Loss, Option, get_loss, register_loss, unregister_loss
from logitcache.train import TrainConfig, train
from tests.conftest import invoke

# -- the loss: everything a new loss needs ------------------------------------------------------------


def logit_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * the mean squared difference of the logits (temperature-free, as in Kim et al. 2021)."""
    return scale * (student_logits.float() - teacher_logits.float()).pow(2).mean()


class LogitMSE:
    def __init__(self, temperature: float = 1.0, scale: float = 1.0):
        self.scale = scale

    def __call__(self, student_logits, teacher_logits, labels=None, epoch: int = 1):
        return logit_mse_loss(student_logits, teacher_logits, self.scale)


MSE = Loss("mse", LogitMSE, "MSE between the student's and the teacher's logits",
           options=(Option("scale", float, 1.0, "The MSE's scale."),))

# -----------------------------------------------------------------------------------------------------


@pytest.fixture
def mse():
    """The loss registered, and the CLI's options regenerated with it; both undone after the test."""
    register_loss(MSE)
    refresh_loss_options(cli.commands["train"])
    yield MSE
    unregister_loss("mse")
    refresh_loss_options(cli.commands["train"])


def first_kd(run) -> float:
    return float((run / "steps.csv").read_text().splitlines()[1].split(",")[-1])


def test_a_loss_defined_here_trains_a_student_through_the_api(tmp_path, digits_store, mse):
    student = torch.randn(4, 10)
    assert get_loss("mse", scale=3.0)(student, student + 1) == pytest.approx(3.0)
    runs = {}
    for scale in (1.0, 4.0):
        out = tmp_path / f"scale{scale:g}"
        train(TrainConfig(out=str(out), student="mlp:hidden=8", dataset="digits@train", store=str(digits_store),
                          loss="mse", loss_options={"mse": {"scale": scale}}, epochs=1, progress=False),
              log=lambda *_: None)
        runs[scale] = out
        assert json.loads((out / "config.json").read_text())["loss_options"]["mse"] == {"scale": scale}
    # the first step's kd is the loss at the same initial weights: the option scales it
    assert first_kd(runs[4.0]) == pytest.approx(4 * first_kd(runs[1.0]), rel=1e-5)


def test_a_loss_defined_here_trains_a_student_through_the_cli(tmp_path, digits_store, mse):
    listed = invoke("train", "--help")
    assert "--mse-scale FLOAT" in listed.output and "mse: MSE between the student's" in " ".join(listed.output.split())
    result = invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
                    "--store", digits_store, "--loss", "kl=0.5,mse", "--temperature", "1", "--mse-scale", "2.5",
                    "--epochs", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["loss"] == "kl=0.5,mse" and recorded["loss_options"]["mse"] == {"scale": 2.5}


def test_the_cli_drops_a_loss_that_is_gone(mse):
    unregister_loss("mse")
    refresh_loss_options(cli.commands["train"])
    assert "--mse-scale" not in [param.opts[0] for param in cli.commands["train"].params]
    register_loss(MSE)  # for the fixture to remove
