"""The CLI on real stores: info/verify output, and every bad input as one line and a non-zero exit."""

import json

import pytest
import torch
from click.testing import CliRunner

from logitcache.cli import cli
from logitcache.store import FORMAT_VERSION, open_store
from tests.conftest import make_store


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *needles):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1, result.output
    for needle in needles:
        assert needle in error_lines[0], result.output


def test_info_human_and_json(digits_store):
    result = invoke("info", digits_store)
    assert result.exit_code == 0
    for needle in ("logitcache format v3", "1437 samples", "teacher   'default': complete", "codec fp32",
                   "top-1", "tests.factories:linear_teacher"):
        assert needle in result.output
    data = json.loads(invoke("info", digits_store, "--json").output)
    assert data["version"] == 3 and data["dataset"]["num_samples"] == 1437
    assert data["teachers"]["default"]["status"] == "complete"
    assert data["teachers"]["default"]["shards_done"] == data["teachers"]["default"]["num_shards"] == 6


def test_verify_passes_a_good_store_against_its_dataset(digits_store):
    result = invoke("verify", digits_store, "--dataset", "digits@train")
    assert result.exit_code == 0 and "verified" in result.output


def test_verify_names_a_flipped_byte_and_a_truncated_shard(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    shard = path / "teachers/default/logits/c/1/0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    last = path / "teachers/default/logits/c/4/0"
    last.write_bytes(last.read_bytes()[:-10])
    result = invoke("verify", path)
    assert_one_line_error(result, "failed verification: 2 problem(s)")
    assert "rows 256-512: checksum mismatch" in result.output and "[shard 1]" in result.output
    assert "[shard 4]" in result.output


def test_verify_names_a_missing_shard_and_a_dataset_mismatch(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    for file in (path / "teachers/default/logits/c/2").iterdir():
        file.unlink()
    result = invoke("verify", path, "--dataset", "tests.factories:shuffled_digits")
    assert_one_line_error(result, "failed verification")
    assert "shard 2 of array 'logits' is missing" in result.output
    assert "same samples in another order" in result.output


def test_a_directory_in_place_of_a_shard_is_a_missing_shard_for_verify_and_train(tmp_path):
    path = make_store(tmp_path / "s.zarr")
    shard = path / "teachers/default/logits/c/2/0"
    shard.unlink()
    shard.mkdir()  # a local read must not raise IsADirectoryError with a traceback
    assert_one_line_error(invoke("verify", path), "failed verification")
    result = invoke("train", "--store", path, "--dataset", "digits@train", "--student", "mlp:hidden=8", "--loss", "kl",
                    "--epochs", "1", "--out", tmp_path / "run", "--cache-budget", "2000", "--no-progress")
    assert_one_line_error(result, "shard 2 of array 'logits' is missing")


def test_info_on_an_unfinished_store_shows_progress(tmp_path):
    from logitcache.errors import NonFiniteLogitsError

    with pytest.raises(NonFiniteLogitsError):
        make_store(tmp_path / "s.zarr", teacher="tests.factories:nan_teacher")
    result = invoke("info", tmp_path / "s.zarr")
    assert "'default': writing" in result.output and "1/6 shards written" in result.output


def _weights_for_other_model(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    return path


def _unsafe_weights(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"weight": torch.zeros(1), "object": object()}, path)
    return path


def _newer_store(tmp_path):
    path = make_store(tmp_path / "new.zarr")
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["logitcache"]["version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    return path


def _complete_store(tmp_path):
    return make_store(tmp_path / "done.zarr")


DUMP = ["dump", "{tmp}/s.zarr", "--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train",
        "--no-progress"]

BAD_INPUTS = [
    # (name, argv, expected text in the one error line)
    ("missing dataset path", ["dump", "{tmp}/s.zarr", "--teacher", "cnn", "--dataset", "imagefolder:{tmp}/nope"],
     "does not exist"),
    ("missing cifar root", ["dump", "{tmp}/s.zarr", "--teacher", "resnet20", "--dataset", "cifar100:{tmp}"],
     "cifar100 data not found"),
    ("unknown dataset", ["dump", "{tmp}/s.zarr", "--teacher", "cnn", "--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    ("unknown split", ["dump", "{tmp}/s.zarr", "--teacher", "cnn", "--dataset", "digits@test"], "no split 'test'"),
    ("unknown model", ["dump", "{tmp}/s.zarr", "--teacher", "resnet1000", "--dataset", "digits"], "unknown model"),
    ("unknown torchvision model", ["dump", "{tmp}/s.zarr", "--teacher", "torchvision:resnet51", "--dataset", "digits"],
     "did you mean"),
    ("unimportable factory", ["dump", "{tmp}/s.zarr", "--teacher", "no.such.module:f", "--dataset", "digits"],
     "cannot import"),
    ("unknown codec", DUMP + ["--codec", "int4"], "unknown codec 'int4'"),
    ("weights that do not fit", DUMP + ["--weights", "{weights}"], "do not fit the model"),
    ("weights that need unpickling", DUMP + ["--weights", "{unsafe}"], "cannot read weights"),
    ("missing weights file", DUMP + ["--weights", "{tmp}/none.pt"], "does not exist"),
    ("output not (B, C)", ["dump", "{tmp}/s.zarr", "--teacher", "tests.factories:spatial_teacher", "--dataset",
                           "digits"], "(batch, classes)"),
    ("complete store, other settings", ["dump", "{complete}", "--teacher", "tests.factories:linear_teacher",
                                        "--dataset", "digits@train", "--rows-per-shard", "256",
                                        "--batch-size", "32"], "--overwrite"),
    ("unwritable output path", ["dump", "{tmp}/file/s.zarr", "--teacher", "tests.factories:linear_teacher",
                                "--dataset", "digits"], "{tmp}/file/s.zarr"),
    ("batch size 0", DUMP + ["--batch-size", "0"], "--batch-size must be at least 1"),
    ("negative batch size", DUMP + ["--batch-size", "-3"], "--batch-size must be at least 1"),
    ("bad teacher name", DUMP + ["--teacher-name", "a/b"], "--teacher-name"),
    ("unknown device", DUMP + ["--device", "tpu9"], "--device"),
    ("missing checkpoint", ["dump", "{tmp}/s.zarr", "--teacher", "checkpoint:{tmp}/none.pt", "--dataset", "digits"],
     "checkpoint {tmp}/none.pt does not exist"),
    ("not a logitcache checkpoint", ["dump", "{tmp}/s.zarr", "--teacher", "checkpoint:{weights}", "--dataset", "digits"],
     "is not a logitcache checkpoint"),
    ("missing exported program", ["dump", "{tmp}/s.zarr", "--teacher", "export:{tmp}/none.pt2", "--dataset", "digits"],
     "does not exist"),
    ("missing torchscript file", ["dump", "{tmp}/s.zarr", "--teacher", "torchscript:{tmp}/none.pt", "--dataset",
                                  "digits"], "does not exist"),
    ("malformed storage option", DUMP + ["--storage-option", "endpoint"], "is not of the form key=value"),
    ("pack to a name without .zip", ["pack", "{complete}", "{tmp}/packed.tar"], "must end in .zip"),
    ("info on a non-store", ["info", "{tmp}"], "not a logitcache store"),
    ("info on a missing path", ["info", "{tmp}/missing.zarr"], "does not exist"),
    ("verify on a non-store", ["verify", "{tmp}"], "not a logitcache store"),
    ("newer format version", ["info", "{newer}"], f"newer than the v{FORMAT_VERSION} "),
    ("verify a newer format", ["verify", "{newer}"], "upgrade logitcache"),
    *[(f"cache budget {size}", ["train", "--out", "{tmp}/r", "--student", "mlp", "--dataset", "digits@train",
                                "--store", "{complete}", "--cache-budget", size], "is not a size" if size != "-1GiB"
       else "is negative") for size in ("inf", "nan", "lots", "-1GiB")],
]


@pytest.mark.parametrize("name, argv, expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_and_non_zero(tmp_path, name, argv, expected):
    (tmp_path / "file").write_text("not a directory")
    values = {"tmp": tmp_path}
    joined = " ".join(argv)
    if "{weights}" in joined:
        values["weights"] = _weights_for_other_model(tmp_path)
    if "{unsafe}" in joined:
        values["unsafe"] = _unsafe_weights(tmp_path)
    if "{newer}" in joined:
        values["newer"] = _newer_store(tmp_path)
    if "{complete}" in joined:
        values["complete"] = _complete_store(tmp_path)
    result = invoke(*[a.format(**values) for a in argv])
    assert_one_line_error(result, expected.format(**values))
    if argv[0] == "dump" and (tmp_path / "s.zarr").exists():  # no half-made store that reads as complete
        store = open_store(tmp_path / "s.zarr")
        assert all(not store.teacher(n).is_complete for n in store.teacher_names)


def test_help_says_what_device_and_no_progress_take():
    """--device takes auto too; --no-progress has help on train and run; run's --help says where
    relative paths in a pipeline start (issue 14, item 11)."""
    for verb in ("dump", "train"):
        assert "auto (cuda when a GPU is visible, else cpu)" in " ".join(invoke(verb, "--help").output.split())
    for verb in ("dump", "train", "run"):
        assert "--no-progress No progress bar" in " ".join(invoke(verb, "--help").output.split())
    run_help = " ".join(invoke("run", "--help").output.split())
    assert "Relative paths in the file are relative to the directory run is started in, not to the file's" in run_help


def registered_specs(kind: str) -> list[str]:
    """How the help must write every entry of one registry (its grammar; a model's bare name)."""
    from logitcache.sources import _registry as registries
    from logitcache.store import list_codecs

    if kind == "codecs":
        return list_codecs()
    if kind == "models":
        return registries.MODELS.names() + registered_specs("model_schemes")
    registry = {"model_schemes": registries.MODEL_SCHEMES, "datasets": registries.DATASETS,
                "token_datasets": registries.TOKEN_DATASETS, "tokenizers": registries.TOKENIZERS}[kind]
    return [registry.about(name).grammar for name in registry.names()]


SPEC_OPTIONS = [
    ("dump", "--teacher", ["models"]), ("dump", "--dataset", ["datasets", "token_datasets"]),
    ("dump", "--tokenizer", ["tokenizers"]), ("dump", "--codec", ["codecs"]),
    ("train", "--student", ["models"]), ("train", "--online-teacher", ["models"]),
    ("train", "--dataset", ["datasets", "token_datasets"]), ("train", "--val-dataset", ["datasets", "token_datasets"]),
    ("train", "--tokenizer", ["tokenizers"]), ("verify", "--dataset", ["datasets", "token_datasets"]),
]


@pytest.mark.parametrize("command, option, kinds", SPEC_OPTIONS)
def test_spec_help_names_everything_registered(command, option, kinds):
    """The help of every spec option is made from the registries, so none can be missing from it."""
    import re

    import click

    ctx = click.Context(cli.commands[command])
    param = next(p for p in ctx.command.params if option in p.opts)
    help_text = param.get_help_record(ctx)[1]
    assert "{" not in help_text, help_text
    for kind in kinds:
        for spec in registered_specs(kind):
            assert re.search(rf"(?<![\w-]){re.escape(spec)}(?![\w-])", help_text), (option, spec, help_text)


def test_command_help_shows_the_registries_and_the_top_help_stays_light():
    """The drift issue 21 found: dump's --teacher lacked hf: and timm:, --dataset cifar10:, hf:, parquet:.
    ``logitcache --help`` and a usage error still import no torch, zarr or numpy."""
    import subprocess
    import sys

    dump_help = " ".join(invoke("dump", "--help").output.split())
    for spec in ("hf:DIR, a local Hugging Face", "timm:NAME[:k=v,...], a timm model", "cifar10:ROOT[@train|test]",
                 "hf:DIR[:image=COL,label=COL]", "parquet:FILES", "resnet56", "package.module:factory"):
        assert spec in dump_help
    code = ("import sys; from click.testing import CliRunner; from logitcache.cli import cli; "
            "CliRunner().invoke(cli, ['--help']); CliRunner().invoke(cli, ['dump']); "
            "print(sorted(m for m in ('torch', 'zarr', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_info_reads_plainly_for_factory_datasets_and_older_stores(tmp_path):
    """No 'split None', and an older format reads as still supported, not as a warning (item 9)."""
    from pathlib import Path

    store = make_store(tmp_path / "s.zarr", dataset="tests.factories:flat_digits")
    out = invoke("info", store).output
    assert "split None" not in out and "this logitcache reads" not in out
    assert out.splitlines()[:2] == [f"store     {store}  (logitcache format v3)",
                                    "dataset   tests.factories:flat_digits: 1437 samples, 10 classes"]
    legacy = Path(__file__).resolve().parents[1] / "data" / "legacy" / "v1.zarr"
    assert "(logitcache format v1: an older format, still read; stores made now are v3)" in invoke("info", legacy).output
