"""Pipelines: the shipped recipes parse into valid configs; a small one runs, then skips when done."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from logitcache.cli import cli
from logitcache.dump import DumpConfig
from logitcache.pipeline import _config, load_pipeline
from logitcache.train import TrainConfig

PIPELINES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.toml"))

SMALL = """
[pipeline]
runs = "{tmp}/runs"

[teacher]
student = "cnn:width=8"
dataset = "digits@train"
val_dataset = "digits@val"
epochs = 2

[dump]
store = "{tmp}/digits.zarr"
teacher = "checkpoint:{tmp}/runs/teacher/best.pt"
dataset = "digits@train"

[defaults]
student = "mlp:hidden=8"
dataset = "digits@train"
val_dataset = "digits@val"
epochs = 1

[students.label-only]
loss = "ce"

[students.kl]
loss = "kl"

[students.dist]
loss = "dist"
"""


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_shipped_pipelines_are_valid(path):
    spec = load_pipeline(path)
    _config(DumpConfig, spec["dump"], "[dump]")
    if "teacher" in spec:
        _config(TrainConfig, {"out": "x", **spec["teacher"]}, "[teacher]").resolved()
    for name, options in spec["students"].items():
        _config(TrainConfig, {"out": "x", **spec.get("defaults", {}), **options}, name).resolved()


def test_the_embedded_default_ships():
    assert any(p.name == "digits.toml" for p in PIPELINES)


def test_small_pipeline_runs_end_to_end_then_skips(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL.format(tmp=tmp_path))
    first = CliRunner().invoke(cli, ["run", str(path), "--no-progress"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    table = first.output[first.output.index("step  "):]
    for row in ("teacher", "dump", "label-only", "kl", "dist"):
        assert f"\n{row} " in "\n" + table
    assert "val top-1" in table and "teacher top-1" in table
    assert (tmp_path / "runs" / "results.md").read_text().strip() == table.strip()
    assert f"curves: {tmp_path / 'runs' / 'results.png'}" in first.output  # matplotlib is in the dev extra
    assert (tmp_path / "runs" / "results.png").read_bytes().startswith(b"\x89PNG")
    again = CliRunner().invoke(cli, ["run", str(path), "--no-progress"], catch_exceptions=False)
    assert again.exit_code == 0 and again.output.count(": skipped") == 5
    # every step was skipped, and the table keeps the results and times recorded when they ran
    assert again.output[again.output.index("step  "):] == table
    assert (tmp_path / "runs" / "results.md").read_text().strip() == table.strip()


@pytest.mark.parametrize("text, says", [
    ("[dump]\nstore='x'\n", "at least one [students.NAME]"),
    ("[dump]\nstore='x'\nteacher='cnn'\ndataset='digits'\n[students.a]\nlos='ce'\n", "unknown option(s) los"),
    ("[dumps]\n", "unknown table(s) dumps"),
    ("not toml [", "not valid TOML"),
])
def test_bad_pipeline_files(tmp_path, text, says):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code != 0 and says in result.output and "Traceback" not in result.output


def test_missing_pipeline_file(tmp_path):
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "none.toml")])
    assert result.exit_code != 0 and "does not exist" in result.output
