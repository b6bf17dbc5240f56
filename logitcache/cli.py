"""The ``logitcache`` command: one verb per stage, each a thin call into the library.

    $ logitcache dump STORE --teacher SPEC --dataset SPEC [--codec fp16]
    $ logitcache info STORE [--json]
    $ logitcache verify STORE [--dataset SPEC]      # with SPEC: rebuild and check hashed views
    $ logitcache train --out RUN --student SPEC --dataset SPEC [--store STORE --loss dist]
    $ logitcache train --out RUN --student gpt:... --store LM.zarr [--val-store VAL.zarr --loss kl]
    $ logitcache pack STORE STORE.zip
    $ logitcache export LM.zarr OUT --format axolotl   # a topk:K token store as axolotl's KD dataset
    $ logitcache run pipelines/digits.toml
    $ logitcache runs data/runs/digits              # a table of runs; plot RUN... -o FILE.png draws them

Library errors become one-line messages with a non-zero exit; torch and zarr are imported inside
the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .cli_options import (
    DEVICE_HELP,
    ByteSize,
    LossList,
    RegistryHelp,
    defaults,
    friendly_errors,
    refresh_loss_options,
    storage_option,
)
from .dump.dump_config import DumpConfig
from .train.train_config import TrainConfig, gather_loss_options

DUMP, TRAIN = defaults(DumpConfig), defaults(TrainConfig)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="logitcache")
def cli():
    """Run a teacher once, cache its logits in a Zarr store, and distil students from it."""


@cli.command()
@click.argument("store")
@click.option("--teacher", required=True, cls=RegistryHelp, help="Teacher spec: {model_specs}.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights file for the teacher (state dict).")
@click.option("--dataset", required=True, cls=RegistryHelp, help="Dataset spec, optionally ending in @SPLIT: "
              "{dataset_specs}. With --tokenizer, token data: {token_dataset_specs}.")
@click.option("--split", help="Dataset split, unless the spec ends with @SPLIT.")
@click.option("--transform", help="Input transform preset or steps (default: the dataset's eval transform).")
@click.option("--teacher-name", default=DUMP["teacher_name"], show_default=True,
              help="Name of the teacher inside the store.")
@click.option("--codec", default=DUMP["codec"], show_default=True, cls=RegistryHelp,
              help="{codecs}; for large label spaces topk:K (the K most probable classes plus a "
              "tail bucket) or sample:K[:T] (K draws from the teacher at temperature T).")
@click.option("--batch-size", default=DUMP["batch_size"], show_default=True, type=int)
@click.option("--batch-tokens", default=DUMP["batch_tokens"], show_default=True, type=int,
              help="Token dumps: tokens the teacher reads a batch (whole sequences, at least one; --batch-size "
              "caps the sequences). Its head's logits are made a chunk of positions at a time, so this sizes "
              "the body's activations; lower it if the teacher runs out of memory.")
@click.option("--workers", default=DUMP["workers"], show_default=True, type=int, help="DataLoader worker processes.")
@click.option("--device", default=DUMP["device"], show_default=True, help=DEVICE_HELP)
@click.option("--bf16", is_flag=True, help="Run the teacher under bf16 autocast (logits are cast to fp32).")
@click.option("--num-classes", type=int, help="Teacher head size (default: the dataset's class count).")
@click.option("--rows-per-shard", type=int, help="Rows per shard, the unit of writing and resuming.")
@click.option("--augment", metavar="SPEC", help="Dump random views the students will replay: comma-separated "
              "crop=SMIN-SMAX[:RMIN-RMAX], shift=F, flip[=P], size=N; or a preset: imagenet, fkd, cifar "
              "(see docs/FORMAT.md).")
@click.option("--views", type=int, help="Views per sample with --augment (default 1); --batch-size counts views.")
@click.option("--seed", default=DUMP["seed"], show_default=True, type=int, help="Seed of the view draws, of --generate's draws, and of a teacher built without --weights.")
@click.option("--record-view-hashes", is_flag=True,
              help="Store a hash of every view's input, so verify --dataset and train --check-views can prove "
              "the replay exact.")
@click.option("--tokenizer", metavar="SPEC", cls=RegistryHelp, help="Make a token store (language models) with "
              "this tokenizer: {tokenizer_specs}. --dataset is then token data, and --batch-size counts sequences.")
@click.option("--seq-len", type=int, help="Token dumps: positions per stored sequence (packed blocks, or one "
              "padded sample each).")
@click.option("--generate", is_flag=True, help="The teacher writes a response to each prompt of --dataset "
              "(jsonl:FILE:FIELD: text, or chat messages rendered with the tokenizer's chat template); the store "
              "keeps prompt and response, the loss mask on the response, and the targets that chose each token.")
@click.option("--temperature", default=DUMP["temperature"], show_default=True, type=float,
              help="--generate: sampling temperature (0: greedy).")
@click.option("--top-p", default=DUMP["top_p"], show_default=True, type=float,
              help="--generate: sample from the most likely tokens holding this much probability.")
@click.option("--max-new-tokens", default=DUMP["max_new_tokens"], show_default=True, type=int,
              help="--generate: the longest response (it also ends at the tokenizer's end-of-text).")
@click.option("--greedy", is_flag=True, help="--generate: always the most likely token (--temperature 0).")
@click.option("--features", metavar="NAME=LAYER[:REDUCE],...", help="Also store these teacher features per "
              "sample: LAYER is a module path of the teacher, REDUCE pool (C values), attention (HxW), gram (CxC) or "
              "map (CxHxW, the default); for --feature-loss at, rkd, fitnet, ickd, reviewkd.")
@click.option("--feature-codec", default=DUMP["feature_codec"], show_default=True,
              type=click.Choice(["fp16", "bf16", "fp32"]), help="How --features are stored.")
@click.option("--overwrite", is_flag=True, help="Replace this teacher if the store already holds it.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@storage_option
@friendly_errors
def dump(store, no_progress, **options):
    """Run a teacher over a dataset and write its raw logits into STORE (resumable)."""
    from .distributed import is_main_process
    from .dump import dump as run_dump

    summary = run_dump(DumpConfig(store=store, progress=not no_progress, **options))
    if is_main_process():
        click.echo("\n".join(summary.lines()))


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@storage_option
@friendly_errors
def info(store, as_json, storage_options):
    """Describe a store: dataset, teachers, provenance, codec, size, accuracy."""
    from .store_info import describe_store, format_description

    description = describe_store(store, storage_options)
    click.echo(json.dumps(description, indent=2) if as_json else format_description(description))
    damaged = [name for name, teacher in description["teachers"].items() if teacher.get("status") == "damaged"]
    if damaged:  # described, and still a failure: a script must not take a damaged store for a good one
        raise click.ClickException(f"{store}: teacher {', '.join(map(repr, damaged))} is damaged; "
                                   "`logitcache verify` lists every problem")


@cli.command()
@click.argument("store")
@click.option("--dataset", cls=RegistryHelp, help="Also check that this dataset spec matches the store's "
              "fingerprint, and rebuild every view whose hash the store recorded: {dataset_specs}. A token store: "
              "the token data it was dumped from, {token_dataset_specs}.")
@click.option("--split", help="Dataset split, unless the spec ends with @SPLIT.")
@click.option("--teacher", "teachers", help="Check only these teachers (comma-separated); default: all.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Processes rebuilding views.")
@storage_option
@friendly_errors
def verify(store, dataset, split, teachers, workers, storage_options):
    """Read every chunk of STORE and check checksums, completeness, values and fingerprint."""
    from .verify import verify_with_dataset

    report = verify_with_dataset(store, dataset, split=split, storage_options=storage_options, workers=workers,
                                 teachers=[t for t in (teachers or "").split(",") if t] or None)
    for line in report.checked:
        click.echo(f"ok    {line}")
    for line in report.problems:
        click.echo(f"FAIL  {line}", err=True)
    if not report.ok:
        raise click.ClickException(f"{store} failed verification: {len(report.problems)} problem(s)")
    click.echo(f"{store}: verified")


@cli.command()
@click.option("--out", required=True, help="Run directory: checkpoints, metrics.jsonl/csv, steps.csv.")
@click.option("--student", required=True, cls=RegistryHelp, help="Student spec: {model_specs}.")
@click.option("--dataset", cls=RegistryHelp, help="Training dataset spec; must match the store's fingerprint: "
              "{dataset_specs}. Not with a token store, which holds its sequences; without a store, token data with "
              "--tokenizer and --seq-len: {token_dataset_specs}.")
@click.option("--val-dataset", cls=RegistryHelp, help="Validation dataset spec, evaluated after every epoch: "
              "{dataset_specs}; or token data, tokenised with --tokenizer or the store's tokenizer: "
              "{token_dataset_specs}.")
@click.option("--store", help="Store with the teacher's logits (not needed for --loss ce); a token store is "
              "also the training data.")
@click.option("--val-store", help="Token data: a store the teacher dumped over held-out text; gives validation "
              "loss, perplexity and the student's top-1 agreement with the teacher.")
@click.option("--tokenizer", metavar="SPEC", cls=RegistryHelp, help="Token data without a store (or for "
              "--val-dataset): {tokenizer_specs}.")
@click.option("--seq-len", type=int, help="Token data without a store: tokens per training sequence.")
@click.option("--teacher", help="Teacher name inside the store (default: its only complete teacher); "
              "a,b trains from the ensemble: the mean of the teachers' probabilities at --temperature.")
@click.option("--expect-teacher", help="Refuse the store unless its teacher digest (info prints it; give all "
              "64 hex digits to pin the exact logits) or its weights or parameters sha256 starts with this "
              "(comma-separated for an ensemble).")
@click.option("--online-teacher", cls=RegistryHelp, help="Run this teacher spec in the loop instead of a store "
              "(for comparison): {model_specs}.")
@click.option("--online-teacher-weights", type=click.Path(dir_okay=False))
@click.option("--loss", type=LossList(), metavar="NAME[=WEIGHT],...")  # help: refresh_loss_options
@click.option("--temperature", type=float)
@click.option("--kd-weight", default=TRAIN["kd_weight"], show_default=True, type=float,
              help="The weight of each --loss given without one.")
@click.option("--ce-weight", default=TRAIN["ce_weight"], show_default=True, type=float)
# here: each loss's own options (--dist-beta, --dkd-warmup, ...), from the loss registry (refresh_loss_options)
@click.option("--feature-loss", metavar="NAME[=WEIGHT],...", help="Also learn from the teacher's features: at, rkd, "
              "fitnet, ickd, reviewkd, each with its paper's weight unless one is given (added to --loss).")
@click.option("--student-features", metavar="NAME=LAYER,...", help="The student's module for each teacher feature "
              "(by the store's feature NAME) that --feature-loss learns from; in order, shallow to deep.")
@click.option("--features", metavar="NAME=LAYER[:REDUCE],...", help="With --online-teacher and --feature-loss: the "
              "teacher's features, as dump --features names them.")
@click.option("--optimizer", default=TRAIN["optimizer"], show_default=True, type=click.Choice(["sgd", "adamw"]))
@click.option("--lr", default=TRAIN["lr"], show_default=True, type=float)
@click.option("--momentum", default=TRAIN["momentum"], show_default=True, type=float)
@click.option("--weight-decay", default=TRAIN["weight_decay"], show_default=True, type=float)
@click.option("--schedule", default=TRAIN["schedule"], show_default=True,
              type=click.Choice(["cosine", "step", "constant"]))
@click.option("--milestones", default="",
              help="Epochs after which --schedule step multiplies lr by --lr-gamma, e.g. 150,180,210.")
@click.option("--lr-gamma", default=TRAIN["lr_gamma"], show_default=True, type=float)
@click.option("--warmup-epochs", default=TRAIN["warmup_epochs"], show_default=True, type=int)
@click.option("--epochs", default=TRAIN["epochs"], show_default=True, type=int)
@click.option("--batch-size", default=TRAIN["batch_size"], show_default=True, type=int)
@click.option("--seed", default=TRAIN["seed"], show_default=True, type=int)
@click.option("--device", default=TRAIN["device"], show_default=True, help=DEVICE_HELP)
@click.option("--bf16", is_flag=True, help="bf16 autocast for the student's forward pass.")
@click.option("--chunked-loss/--no-chunked-loss", default=None, help="Token runs: the loss a chunk of positions "
              "at a time through the student's head, never the whole (batch, positions, vocabulary) logits "
              "(default: when those would take over 128 MiB and the student splits at its head; not under torchrun).")
@click.option("--workers", default=TRAIN["workers"], show_default=True, type=int)
@click.option("--transform", help="Training input transform (default: the store teacher's, else the dataset's eval "
              "transform).")
@click.option("--augment", help="Random steps added to the transform, e.g. random_crop=32:4,flip,erasing=0.25; "
              "from a multi-view store only steps it does not replay: color_jitter=B[:C[:S[:H]]], erasing=P.")
@click.option("--val-transform", help="Validation transform (default: the store teacher's, unless --transform is "
              "given; else the dataset's eval transform).")
@click.option("--view-order", default=TRAIN["view_order"], show_default=True, type=click.Choice(["random", "cycle"]),
              help="Multi-view stores: which stored view each sample shows per epoch (cycle: all K over K epochs).")
@click.option("--view-size", type=int, help="Multi-view stores: replay views at N x N pixels (default: the dump's).")
@click.option("--check-views", is_flag=True, help="Before training, rebuild every stored view and check it "
              "against the hash the dump recorded.")
@click.option("--mixup", default=TRAIN["mixup"], show_default=True, type=float,
              help="Mixup Beta alpha (0: off); cached teacher probabilities are mixed with the same weight.")
@click.option("--cutmix", default=TRAIN["cutmix"], show_default=True, type=float,
              help="CutMix Beta alpha (0: off); with --mixup too, each batch uses one of them.")
@click.option("--cache-budget", default=TRAIN["cache_budget"], show_default=f"{TRAIN['cache_budget'] / 2**30:g}GiB",
              type=ByteSize(),
              help="Hold the logits in memory (as stored) up to this size, else stream them by chunk.")
@click.option("--allow-partial", is_flag=True, help="Train on the written part of an unfinished store.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--tensorboard", is_flag=True, help="Also write the run's scalars (every step and epoch) as "
              "TensorBoard event files in RUN/tensorboard (needs the tensorboard package).")
@storage_option
@friendly_errors
def train(milestones, no_progress, **options):
    """Train a student from a store's cached logits (or from labels alone with --loss ce); a token
    store trains a language model."""
    from .train import train as run_train

    try:
        steps = tuple(int(m) for m in milestones.split(",") if m.strip())
    except ValueError:
        raise click.BadParameter(f"{milestones!r} is not a comma-separated list of epochs",
                                 param_hint="--milestones") from None
    from .distributed import is_main_process

    options = gather_loss_options(options)  # --dkd-beta ... -> loss_options
    summary = run_train(TrainConfig(milestones=steps, progress=not no_progress, **options), log=click.echo)
    if is_main_process():
        click.echo("\n".join(summary.lines()))


refresh_loss_options(train)


@cli.command()
@click.argument("store")
@click.argument("destination", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace DESTINATION if it exists.")
@storage_option
@friendly_errors
def pack(store, destination, overwrite, storage_options):
    """Verify STORE and pack it into one zip file (DESTINATION.zip), readable as a store."""
    from .store import pack_store

    count = pack_store(store, destination, overwrite=overwrite, storage_options=storage_options)
    click.echo(f"packed {count} objects of {store} into {destination}")


@cli.command()
@click.argument("store")
@click.argument("out", type=click.Path())
@click.option("--format", "export_format", required=True, type=click.Choice(["axolotl"]),
              help="axolotl: the Hugging Face dataset (save_to_disk) its KD plugin trains from, from a topk:K "
              "token store (train it with kd_temperature: 1.0).")
@click.option("--teacher", help="Teacher name inside the store (default: its only complete teacher).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is a saved dataset (or a file).")
@storage_option
@friendly_errors
def export(store, out, export_format, teacher, overwrite, storage_options):
    """Write a store's teacher targets as another trainer's dataset in OUT (a local directory).

    The target columns are read from the store, checked against its digests, a block at a time."""
    from .export_axolotl import export_axolotl

    summary = export_axolotl(store, out, teacher=teacher, overwrite=overwrite, storage_options=storage_options,
                             log=click.echo)
    click.echo(summary.line())


@cli.command(name="run")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@friendly_errors
def run_command(pipeline, no_progress):
    """Run a pipeline file: teacher, dump, students; complete steps are skipped.

    Relative paths in the file are relative to the directory run is started in, not to the file's."""
    from .pipeline_run import format_results, run_pipeline

    results = run_pipeline(pipeline, log=click.echo, progress=not no_progress)
    click.echo("")
    click.echo(format_results(results))


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="The PNG file to write.")
@friendly_errors
def plot(runs, out):
    """Draw runs' validation top-1 (or loss) and training loss per epoch into one PNG.

    RUNS are train --out directories, or directories of them (a pipeline's runs); a line per run.
    Needs matplotlib."""
    from .reports import plot_runs, read_runs

    click.echo(f"wrote {plot_runs(read_runs(runs, log=_to_stderr), out)}")


@cli.command(name="runs")
@click.argument("runs", nargs=-1, required=True)
@friendly_errors
def runs_command(runs):
    """Print a table of runs: their settings, best and last results.

    RUNS are train --out directories, or directories of them (a pipeline's runs)."""
    from .reports import format_runs, read_runs

    click.echo(format_runs(read_runs(runs, log=_to_stderr)))


def _to_stderr(message: str) -> None:
    click.echo(message, err=True)


def _quiet_abandoned_requests(unraisable):
    """Async requests a failed remote operation left behind raise again when collected; the
    failure was already reported as one line, so their cleanup noise is dropped."""
    if type(unraisable.object).__name__ == "coroutine":
        return
    sys.__unraisablehook__(unraisable)


def main():
    sys.unraisablehook = _quiet_abandoned_requests
    cli(prog_name="logitcache")
