"""Pipelines: the shipped recipes parse into valid configs; a small one runs, then skips when done."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from logitcache.cli import cli
from logitcache.dump import DumpConfig
from logitcache.pipeline_plan import plan
from tests.conftest import one_error

PIPELINES = sorted((Path(__file__).resolve().parents[2] / "pipelines").glob("*.toml"))

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
    steps = plan(path, progress=False)  # every key, type and stage check, as `run` makes before step 1
    assert steps.dumps and steps.students


def test_the_embedded_default_ships():
    assert any(p.name == "digits.toml" for p in PIPELINES)
    assert any(p.name == "shakespeare.toml" for p in PIPELINES)  # the language-model recipe


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
    ("[dumpz]\n", "unknown table(s) dumpz"),
    ("dumps = 3\n[students.a]\n", "[dumps] must be a table"),
    ("[dumps.a]\nstore='x'\n[dump]\nstore='y'\n[students.a]\n", "(or [dumps.NAME] tables, not both)"),
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


LM = """
[pipeline]
runs = "{tmp}/runs"

[teacher]
student = "gpt:n_layer=1,n_head=2,n_embd=32,block_size=64"
dataset = "text:{text}@train"
val_dataset = "text:{text}@val"
tokenizer = "bytes"
seq_len = 64
optimizer = "adamw"
lr = 0.01
batch_size = 16
epochs = 1

[dumps.topk]
store = "{tmp}/train.zarr"
teacher = "checkpoint:{tmp}/runs/teacher/best.pt"
teacher_name = "topk"
dataset = "text:{text}@train"
tokenizer = "bytes"
seq_len = 64
codec = "topk:4"

[dumps.sample]
store = "{tmp}/train.zarr"
teacher = "checkpoint:{tmp}/runs/teacher/best.pt"
teacher_name = "sample"
dataset = "text:{text}@train"
tokenizer = "bytes"
seq_len = 64
codec = "sample:6:2"

[dumps.val]
store = "{tmp}/val.zarr"
teacher = "checkpoint:{tmp}/runs/teacher/best.pt"
dataset = "text:{text}@val"
tokenizer = "bytes"
seq_len = 64
codec = "topk:4"

[defaults]
student = "gpt:n_layer=1,n_head=1,n_embd=16,block_size=64"
store = "{tmp}/train.zarr"
val_store = "{tmp}/val.zarr"
optimizer = "adamw"
lr = 0.01
batch_size = 16
epochs = 1

[students.label-only]
loss = "ce"

[students.kd-topk]
teacher = "topk"

[students.kd-sample]
loss = "kl"
teacher = "sample"
"""


@pytest.fixture
def lm_text(tmp_path) -> Path:
    """The first 6,000 characters of Hamlet."""
    path = tmp_path / "hamlet-start.md"
    path.write_text((Path(__file__).resolve().parents[2] / "data/text/shakespeare/hamlet.md").read_text()[:6_000])
    return path


def test_a_language_model_pipeline_dumps_several_codecs_and_reports_loss_and_perplexity(tmp_path, lm_text):
    path = tmp_path / "lm.toml"
    path.write_text(LM.format(tmp=tmp_path, text=lm_text))
    first = CliRunner().invoke(cli, ["run", str(path), "--no-progress"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    table = first.output[first.output.index("step  "):]
    rows = {line.split("  ")[0]: line for line in table.splitlines()[2:]}
    assert list(rows) == ["teacher", "dump topk", "dump sample", "dump val", "label-only", "kd-topk", "kd-sample"]
    assert "topk:4 targets -> " in table and "[topk]" in table and "[sample]" in table and " B/token" in table
    # a token student's defaults are a language model's: kl at T=1, or the T a sampled store was drawn at
    assert ", kl T=1 from topk:4 (" in rows["kd-topk"] and ", kl T=2 from sample:6:2 (" in rows["kd-sample"]
    for name in ("label-only", "kd-topk", "kd-sample"):
        assert "nats/token, ppl " in rows[name] and "top-1 agreement" in rows[name], rows[name]
    assert "val loss" in rows["teacher"] and "top-1 agreement" not in rows["teacher"]  # held-out text, no store
    again = CliRunner().invoke(cli, ["run", str(path), "--no-progress"], catch_exceptions=False)
    assert again.exit_code == 0 and again.output.count(": skipped") == 7, again.output
    assert again.output[again.output.index("step  "):] == table
    # the file now asks for another codec under a teacher the store already holds complete:
    # an error, not a skipped step whose students would read the old targets
    path.write_text(LM.replace('codec = "topk:4"', 'codec = "topk:5"', 1).format(tmp=tmp_path, text=lm_text))
    changed = CliRunner().invoke(cli, ["run", str(path), "--no-progress"])
    assert changed.exit_code != 0 and "Traceback" not in changed.output, changed.output
    assert "already holds a complete teacher 'topk' made with other settings" in changed.output


@pytest.mark.parametrize("before, after, says", [
    ('teacher = "topk"', 'teacher = "topk"\nmixup = 0.2', "[students.kd-topk] --mixup applies to image data"),
    ('loss = "ce"', 'loss = "dist"', "[students.label-only] --loss dist"),
    ('teacher = "sample"', 'teacher = "sample"\nbatch_size = 0', "--batch-size must be at least 1"),
])
def test_a_bad_language_model_student_stops_the_pipeline_before_its_first_step(tmp_path, lm_text, before, after,
                                                                                 says):
    path = tmp_path / "lm.toml"
    path.write_text(LM.replace(before, after, 1).format(tmp=tmp_path, text=lm_text))
    result = CliRunner().invoke(cli, ["run", str(path), "--no-progress"])
    assert result.exit_code != 0 and says in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_student_of_several_dumps_names_its_store(tmp_path, lm_text):
    path = tmp_path / "lm.toml"
    text = LM.replace('store = "{tmp}/train.zarr"\nval_store', 'val_store')  # the defaults name no store
    path.write_text(text.format(tmp=tmp_path, text=lm_text))
    result = CliRunner().invoke(cli, ["run", str(path), "--no-progress"])
    assert result.exit_code != 0 and "[students.kd-topk] learns from a teacher: name its store" in result.output


REPO = Path(__file__).resolve().parents[2]


def _metrics(runs: Path) -> dict:
    """Every run's epoch records without their times: what must repeat to the digit."""
    import json

    found = {}
    for metrics in sorted(runs.glob("*/metrics.jsonl")):
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        found[metrics.parent.name] = [{k: v for k, v in r.items() if "second" not in k} for r in records]
    return found


def test_a_repeatable_pipeline_repeats_to_the_digit_beside_a_cpu_heavy_process(tmp_path):
    """The same short recipe twice, the second beside two busy processes: every loss and accuracy is
    the same bit for bit (one thread, AVX2 kernels: neither the load nor the machine changes a sum)."""
    import os
    import subprocess
    import sys

    results = []
    for run, busy in (("quiet", 0), ("busy", 2)):
        folder = tmp_path / run
        folder.mkdir()
        path = folder / "small.toml"
        path.write_text(SMALL.format(tmp=folder).replace('runs = "', 'repeatable = true\nruns = "', 1))
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            done = subprocess.run([sys.executable, "-m", "logitcache", "run", str(path), "--no-progress"],
                                  capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        finally:
            for burner in burners:
                burner.kill()
        assert done.returncode == 0, done.stdout + done.stderr
        assert "repeatable numerics: 1 thread, AVX2 kernels" in done.stdout
        results.append(_metrics(folder / "runs"))
    assert set(results[0]) == {"teacher", "label-only", "kl", "dist"} and results[0] == results[1]


@pytest.mark.parametrize(("edit", "says"), [
    (lambda text: text.replace("[students.kl]", "[students.'../../escaped']"), "a step's name must be"),
    (lambda text: text.replace('runs = "', 'repeatable = "yes"\nruns = "', 1), 'repeatable = "yes" is a string; expected true or false'),
    (lambda text: text.replace("[dump]", "[dumps.a]").replace('[defaults]', '[dumps.b]\nstore = "{tmp}/digits.zarr"\n'
                                                                            'teacher = "mlp"\ndataset = "digits@train"\n'
                                                                            'codec = "u8"\n\n[defaults]'),
     "both dump teacher 'default' into"),
])
def test_pipeline_mistakes_are_refused_before_any_step(tmp_path, edit, says):
    path = tmp_path / "bad.toml"
    path.write_text(edit(SMALL).format(tmp=tmp_path))
    result = CliRunner().invoke(cli, ["run", str(path), "--no-progress"], catch_exceptions=False)
    assert result.exit_code != 0 and says in result.output, result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escaped").exists()


def test_a_pipeline_nested_past_the_recursion_limit_is_one_line(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("[pipeline]\nx = " + "[" * 100_000 + "]" * 100_000 + "\n")
    result = CliRunner().invoke(cli, ["run", str(path)], catch_exceptions=False)
    assert result.exit_code == 1 and "nests arrays or tables too deeply" in result.output


QUICK = """
[pipeline]
runs = "{tmp}/runs"

[dump]
store = "{tmp}/digits.zarr"
teacher = "tests.factories:linear_teacher"
dataset = "digits@train"
codec = "fp32"

[defaults]
student = "mlp:hidden=8"
dataset = "digits@train"
val_dataset = "digits@val"
epochs = 1

[students.kl]
loss = "kl"

[students.label-only]
loss = "ce"
"""


def run_quick(tmp_path, old: str = "", new: str = ""):
    """The QUICK pipeline (with ``old`` replaced by ``new``) through ``logitcache run``."""
    path = tmp_path / "p.toml"
    path.write_text(QUICK.format(tmp=tmp_path).replace(old, new) if old else QUICK.format(tmp=tmp_path))
    return CliRunner().invoke(cli, ["run", str(path), "--no-progress"], catch_exceptions=False)


def test_a_complete_student_whose_options_were_edited_is_refused_not_skipped(tmp_path):
    """Skipping it would print the old run's results beside the new options."""
    assert run_quick(tmp_path).exit_code == 0
    line = one_error(run_quick(tmp_path, 'loss = "kl"', 'loss = "kl"\nlr = 0.5'))
    assert "[kl]" in line and "holds a complete run trained with other options: lr (0.05 -> 0.5)" in line


@pytest.mark.parametrize("summary", [b"\x00\xff not json", b"[1, 2]", b'{"complete": true, "epochs": 1}'])
def test_a_damaged_summary_of_a_complete_student_is_redone_not_a_traceback(tmp_path, summary):
    path = tmp_path / "p.toml"
    path.write_text(QUICK.format(tmp=tmp_path))
    first = CliRunner().invoke(cli, ["run", str(path), "--no-progress"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    (tmp_path / "runs" / "label-only" / "summary.json").write_bytes(summary)
    again = CliRunner().invoke(cli, ["run", str(path), "--no-progress"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert again.output.count(": skipped") == 2  # the dump and the kl student; label-only is finished again
    rows = [output[output.index("step  "):].splitlines()[-1] for output in (first.output, again.output)]
    assert rows[0].rsplit("  ", 1)[0] == rows[1].rsplit("  ", 1)[0]  # the same result; the time is this run's


def test_a_complete_dump_whose_options_were_edited_says_what_to_change_in_the_file(tmp_path):
    """dump's own advice names --overwrite and --teacher-name, which `run` has not: a pipeline says the keys."""
    assert run_quick(tmp_path).exit_code == 0
    line = one_error(run_quick(tmp_path, 'codec = "fp32"', 'codec = "fp16"'))
    assert "made with other settings; set overwrite = true (or another teacher_name)" in line, line
    assert "--overwrite" not in line
    line = one_error(run_quick(tmp_path, 'codec = "fp32"', 'codec = "fp16"\noverwrite = true'))
    assert "[kl]" in line and "holds a complete run trained before this run wrote" in line, line  # not skipped: stale
    shutil.rmtree(tmp_path / "runs")
    assert run_quick(tmp_path, 'codec = "fp32"', 'codec = "fp16"\noverwrite = true').exit_code == 0


def test_a_complete_student_whose_store_was_redumped_outside_the_pipeline_is_refused_not_skipped(tmp_path):
    """Its config.json records the teacher digest it learnt from: a `dump --overwrite` by hand (or by
    another pipeline) between two runs is caught, where this run's own dumps record nothing."""
    import json

    from tests.conftest import invoke, make_store

    other = make_store(tmp_path / "other.zarr", codec="fp32")
    student = ('loss = "kl"', f'loss = "kl"\nstore = "{other}"')
    assert run_quick(tmp_path, *student).exit_code == 0
    again = run_quick(tmp_path, *student)
    assert again.exit_code == 0 and f"[kl] complete in {tmp_path / 'runs' / 'kl'}: skipped" in again.output
    redump = invoke("dump", other, "--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train",
                    "--codec", "fp16", "--rows-per-shard", "256", "--overwrite", "--no-progress")
    assert redump.exit_code == 0, redump.output
    line = one_error(run_quick(tmp_path, *student))
    assert line.startswith(f"Error: [kl] {tmp_path / 'runs' / 'kl'} holds a complete run trained from other targets "
                           f"than its stores hold now (teacher 'default' in {other} is now sha256:"), line
    assert "other options" not in line and line.endswith("to train it from the new targets"), line
    config = tmp_path / "runs" / "kl" / "config.json"
    record = json.loads(config.read_text())
    del record["targets"]  # a run recorded before the digests were: nothing to tell the new targets by
    config.write_text(json.dumps(record))
    assert ": skipped" in run_quick(tmp_path, *student).output


def test_a_dump_of_this_run_that_rewrites_the_same_targets_keeps_its_students(tmp_path):
    """A student is stale when its teacher's digest changed, not whenever its store was written: an
    overwrite that dumps the very same logits keeps it; a run recorded before the digests were is
    refused after any dump of this run (nothing tells it the targets are the same)."""
    import json

    rewrite = ('codec = "fp32"', 'codec = "fp32"\noverwrite = true')
    assert run_quick(tmp_path, *rewrite).exit_code == 0
    again = run_quick(tmp_path, *rewrite)
    assert again.exit_code == 0 and "[dump] dumped 1437 samples" in again.output  # written again...
    assert f"[kl] complete in {tmp_path / 'runs' / 'kl'}: skipped" in again.output  # ...with the same digest
    config = tmp_path / "runs" / "kl" / "config.json"
    record = json.loads(config.read_text())
    del record["targets"]
    config.write_text(json.dumps(record))
    line = one_error(run_quick(tmp_path, *rewrite))
    assert line.startswith(f"Error: [kl] {tmp_path / 'runs' / 'kl'} holds a complete run trained before this run "
                           f"wrote {tmp_path / 'digits.zarr'}; delete it"), line
