"""The options each loss declares: the CLI options and help generated from them, the pipeline keys and
tables, config.json and checkpoints, and a --resume of a run recorded with the older flat fields."""

import json

import pytest
import torch

from logitcache.cli import cli
from logitcache.errors import ConfigError
from logitcache.losses import LOSSES, declared_options, loss_names, resolved_loss_options
from logitcache.pipeline_plan import PipelineError, plan
from logitcache.train import TrainConfig, train
from logitcache.train.train_config import gather_loss_options, options_record, resume_changes, validate
from tests.conftest import invoke, one_error

# What the CLI had as hand-written options before the losses declared them: same names, defaults, help.
FLAGS = {"--dist-beta": (1.0, "DIST inter-class weight."), "--dist-gamma": (1.0, "DIST intra-class weight."),
         "--dkd-alpha": (1.0, None), "--dkd-beta": (8.0, None), "--dkd-warmup": (20, "Epochs of DKD warm-up.")}


def test_train_options_are_generated_from_the_declarations():
    params = {param.opts[0]: param for param in cli.commands["train"].params}
    for flag, (default, help_text) in FLAGS.items():
        assert params[flag].default == default and type(params[flag].default) is type(default)
        assert help_text is None or params[flag].help == help_text
    names = list(params)
    assert names.index("--ce-weight") < names.index("--dist-beta") < names.index("--dkd-warmup") < \
        names.index("--feature-loss")
    assert {flag for flag in params if flag.startswith(("--dist-", "--dkd-"))} == set(FLAGS)


def test_train_help_lists_every_loss_and_option_from_the_registry():
    from logitcache.features.losses import list_feature_losses

    result = invoke("train", "--help")
    assert result.exit_code == 0 and "--loss NAME[=WEIGHT],..." in result.output
    params = {param.opts[0]: param for param in cli.commands["train"].params}
    for name in loss_names():
        assert f"{name}: {LOSSES.get(name).help}" in params["--loss"].help
    for loss, option in declared_options():
        assert f"--{loss}-{option.name}" in result.output
    assert "own: dist 1, dkd 4, kl 4;" in params["--temperature"].help
    feature_help = params["--feature-loss"].help  # hand-written: held to the registry here
    assert all(name in feature_help for name in list_feature_losses())


def test_flat_keys_and_tables_gather_into_loss_options():
    assert gather_loss_options({"lr": 0.1, "dkd_beta": 4, "dist": {"gamma": 2.0}}) == \
        {"lr": 0.1, "loss_options": {"dkd": {"beta": 4}, "dist": {"gamma": 2.0}}}
    assert gather_loss_options({"lr": 0.1}) == {"lr": 0.1}
    with pytest.raises(ConfigError, match="--dkd-beta is given twice"):
        gather_loss_options({"dkd_beta": 4, "dkd": {"beta": 5}})
    assert resolved_loss_options({"dkd": {"beta": 4}})["dkd"] == {"alpha": 1.0, "beta": 4.0, "warmup": 20}


def test_bad_loss_options_are_one_line_errors():
    base = dict(out="x", student="mlp", dataset="digits", store="s", loss="dkd")
    for options, says in [({"dkd": {"gamma": 1.0}}, "dkd has no option 'gamma'; its options: --dkd-alpha"),
                          ({"kl": {"scale": 1.0}}, "loss options for 'kl': it is not a loss with options"),
                          ({"dkd": {"warmup": 2.5}}, "--dkd-warmup takes an integer, got 2.5"),
                          ({"dist": {"beta": "x"}}, "--dist-beta takes a number, got 'x'"),
                          ({"dist": {"beta": float("nan")}}, "--dist-beta must be a finite number")]:
        with pytest.raises(ConfigError, match=says):
            validate(TrainConfig(**base, loss_options=options).resolved())


def test_config_json_records_every_option(tmp_path, digits_store):
    result = invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
                    "--store", digits_store, "--loss", "dkd", "--dkd-beta", "4", "--epochs", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["loss_options"] == {"dist": {"beta": 1.0, "gamma": 1.0},
                                        "dkd": {"alpha": 1.0, "beta": 4.0, "warmup": 20}}
    assert "dkd_beta" not in recorded


def _old_layout(record: dict) -> dict:
    """A record as the code before the loss registry wrote it: every loss option a flat field."""
    old = {key: value for key, value in record.items() if key != "loss_options"}
    for loss, values in record["loss_options"].items():
        old.update({f"{loss}_{name}": value for name, value in values.items()})
    return old


def test_a_record_of_flat_fields_compares_as_its_section():
    config = TrainConfig(out="x", student="mlp", dataset="digits", store="s", loss="dkd",
                         loss_options={"dkd": {"beta": 4.0}}).resolved()
    old = _old_layout(options_record(config))
    assert old["dkd_beta"] == 4.0 and resume_changes(old, options_record(config)) == []
    changed = TrainConfig(**{**vars(config), "loss_options": {"dkd": {"beta": 8.0}}}).resolved()
    assert resume_changes(old, options_record(changed)) == ["dkd-beta (4 -> 8)"]
    older = {key: value for key, value in old.items() if not key.startswith("dist_")}  # before DIST's options
    assert resume_changes(older, options_record(config)) == []  # absent: their defaults, as the run had


def test_a_run_recorded_with_flat_fields_resumes(tmp_path, digits_store):
    from logitcache.sources.checkpoints import load_checkpoint

    options = dict(out=str(tmp_path / "run"), student="mlp:hidden=8", dataset="digits@train",
                   store=str(digits_store), loss="dist", epochs=1, progress=False)
    train(TrainConfig(**options, loss_options={"dist": {"beta": 2.0}}), log=lambda *_: None)
    config_json, last = tmp_path / "run" / "config.json", tmp_path / "run" / "last.pt"
    config_json.write_text(json.dumps(_old_layout(json.loads(config_json.read_text()))))
    checkpoint = load_checkpoint(last)
    checkpoint["config"] = json.dumps(_old_layout(json.loads(checkpoint["config"])))
    torch.save(checkpoint, last)
    args = ["train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
            "--store", digits_store, "--loss", "dist", "--epochs", "2", "--no-progress", "--resume"]
    refused = invoke(*args)  # --dist-beta's default, 1, is not the recorded 2
    assert "--resume would change the run: dist-beta (2 -> 1)" in one_error(refused)
    resumed = invoke(*args, "--dist-beta", "2")
    assert resumed.exit_code == 0 and "resuming" in resumed.output, resumed.output


PIPELINE = """
[dump]
store = "{tmp}/s.zarr"
teacher = "cnn"
dataset = "digits@train"

[defaults]
student = "mlp:hidden=8"
dataset = "digits@train"
{defaults}

[students.a]
loss = "dkd"
{student}
"""


@pytest.mark.parametrize("defaults, student, expected", [
    ("", "dkd_beta = 4", {"beta": 4.0}),
    ("", "[students.a.dkd]\nbeta = 4\nwarmup = 2", {"beta": 4.0, "warmup": 2}),
    ("dkd_alpha = 0.5", "[students.a.dkd]\nbeta = 4", {"alpha": 0.5, "beta": 4.0}),
    ("[defaults.dkd]\nalpha = 0.5\nbeta = 2", "dkd_beta = 4", {"alpha": 0.5, "beta": 4.0}),
])
def test_pipeline_keys_flat_or_in_a_table_of_their_loss(tmp_path, defaults, student, expected):
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE.format(tmp=tmp_path, defaults=defaults, student=student))
    config = plan(path, progress=False).students["a"]
    assert config.loss_options["dkd"] == expected


@pytest.mark.parametrize("student, says", [
    ('dkd_beta = "x"', 'dkd_beta = "x" is a string; expected a number'),
    ("dkd_warmup = 1.5", "dkd_warmup = 1.5 is a number; expected an integer"),
    ("dkd_beta = 4\n[students.a.dkd]\nbeta = 5", "--dkd-beta is given twice"),
    ("[students.a.dkd]\ngamma = 5", "dkd has no option 'gamma'"),
])
def test_bad_pipeline_loss_options(tmp_path, student, says):
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE.format(tmp=tmp_path, defaults="", student=student))
    with pytest.raises(PipelineError, match="students.a") as err:
        plan(path, progress=False)
    assert says in str(err.value)


@pytest.mark.parametrize("flag", ["--dkd-warmup", "--dkd-beta", "--dkd-alpha", "--dist-beta", "--dist-gamma"])
def test_a_negative_loss_option_is_refused(tmp_path, digits_store, flag):
    from tests.conftest import invoke, one_error

    loss = flag.split("-")[2]
    result = invoke("train", "--out", tmp_path / "r", "--student", "mlp", "--dataset", "digits@train", "--store",
                    digits_store, "--loss", loss, flag, "-1", "--epochs", "1", "--no-progress")
    assert f"{flag} must be at least 0, got -1" in one_error(result)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
