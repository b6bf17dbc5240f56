"""Pipelines: one TOML file that trains a teacher, dumps it once, and trains students from it.

    $ logitcache run pipelines/digits.toml

    [pipeline]                      # name, and where student runs go by default
    name = "digits"
    runs = "data/runs/digits"
    [teacher]                       # optional: any `logitcache train` options (loss ce)
    [dump]                          # any `logitcache dump` options
    [defaults]                      # `logitcache train` options shared by every student
    [students.NAME]                 # one table per student; out defaults to RUNS/NAME

Keys are exactly the CLI's option names (with _ for -), so a pipeline holds no logic of its own:
each step is one ``train``/``dump`` call. The whole file is checked before the first step runs
(every key against the options, every value against the option's type, then the checks each
stage makes before it starts), so a typo in the last student stops nothing half-way. A step
whose outputs are already complete is skipped, an unfinished one resumes, and the closing table
reads every result back from disk; it goes to RUNS/results.md (and results.json, whose times a
rerun keeps for the steps it skips), with the runs' curves in RUNS/results.png when matplotlib is
installed. Relative paths in the file are relative to the directory ``run`` is started in, not
to the file's.
"""

from __future__ import annotations

import json
import time
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path

from .dump import DumpConfig, dump
from .errors import LogitCacheError, StoreExistsError
from .train import TrainConfig, train
from .train.run_files import RunFiles, write_atomic


class PipelineError(LogitCacheError, ValueError):
    """A pipeline file is missing or malformed, or one of its options has the wrong name, type or
    value. Not a ConfigError: the command line was fine, so the CLI shows one line, no usage."""


@dataclass
class StepResult:
    step: str
    what: str
    result: str
    seconds: float | None
    skipped: bool = False


TABLES = ("pipeline", "teacher", "dump", "defaults", "students")
PIPELINE_KEYS = {"name": str, "runs": str}


def load_pipeline(path) -> dict:
    """Parse and check a pipeline file's shape: its tables, and the [pipeline] table's keys.

    Unknown tables or keys are errors, not silently ignored; ``plan`` checks the options.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"pipeline file {path} does not exist")
    try:
        spec = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"pipeline {path} is not valid TOML: {err}") from None
    unknown = set(spec) - set(TABLES)
    if unknown:
        raise PipelineError(f"pipeline {path}: unknown table(s) {', '.join(sorted(unknown))}")
    for table in (t for t in TABLES if t in spec):
        _require_table(spec[table], f"[{table}]", path)
    for name, options in spec.get("students", {}).items():
        _require_table(options, f"[students.{name}]", path)
    if "dump" not in spec or not spec.get("students"):
        raise PipelineError(f"pipeline {path} needs a [dump] table and at least one [students.NAME] table")
    for key, value in spec.get("pipeline", {}).items():
        if key not in PIPELINE_KEYS:
            raise PipelineError(f"pipeline {path}: [pipeline] has unknown key {key!r}; keys: name, runs")
        if not isinstance(value, PIPELINE_KEYS[key]):
            raise PipelineError(f"pipeline {path}: [pipeline] {key} = {_show(value)} is {_kind(value)}; "
                              "expected a string")
    return spec


def _require_table(value, where: str, path) -> None:
    if not isinstance(value, dict):
        raise PipelineError(f"pipeline {path}: {where} must be a table of options, but it is {_show(value)} "
                          f"({_kind(value)})")


@dataclass
class Plan:
    """Every step of a pipeline as the config it runs with, all checked before the first step."""

    runs: Path
    teacher: TrainConfig | None
    dump: DumpConfig
    students: dict[str, TrainConfig]
    name: str = ""


def plan(path, progress: bool = True) -> Plan:
    """Read a pipeline and build (and check) the config of every step; nothing runs.

    Raises:
        PipelineError: one line naming the table, key, value and what was expected.
    """
    spec, at = load_pipeline(path), f"pipeline {path}:"
    runs = Path(spec.get("pipeline", {}).get("runs", f"data/runs/{Path(path).stem}"))
    teacher = None
    if "teacher" in spec:
        options = {"loss": "ce", "progress": progress, "out": str(runs / "teacher"), **spec["teacher"]}
        teacher = _checked(_config(TrainConfig, options, f"{at} [teacher]"), f"{at} [teacher]")
    dump_config = _checked(_config(DumpConfig, {"progress": progress, **spec["dump"]}, f"{at} [dump]"),
                           f"{at} [dump]")
    students = {}
    for name, options in spec["students"].items():
        merged = {"progress": progress, "out": str(runs / name), **spec.get("defaults", {}), **options}
        learns = _learns_from_teacher(merged.get("loss", "dist")) or merged.get("feature_loss")
        if learns and not merged.get("online_teacher"):  # a teacher in the loop replaces the store
            merged.setdefault("store", dump_config.store)
        where = f"{at} [students.{name}]"
        students[name] = _checked(_config(TrainConfig, merged, where), where)
    return Plan(runs, teacher, dump_config, students, spec.get("pipeline", {}).get("name", Path(path).stem))


def _config(cls, options: dict, where: str):
    """``cls(**options)``, once every key is a field and every value has the field's type."""
    hints = typing.get_type_hints(cls)
    unknown = set(options) - set(hints)
    if unknown:
        raise PipelineError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}")
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
               and f.name not in options]
    if missing:
        raise PipelineError(f"{where}: missing option(s) {', '.join(missing)}")
    for key, value in options.items():
        if not _fits(value, hints[key]):
            raise PipelineError(f"{where} {key} = {_show(value)} is {_kind(value)}; expected {_describe(hints[key])}")
    if "milestones" in options:
        options = {**options, "milestones": tuple(options["milestones"])}
    return cls(**options)


def _checked(config, where: str):
    """``config`` once it passes the checks its stage makes before it starts (ranges, specs)."""
    try:
        _stage_checks(config)
    except LogitCacheError as err:
        raise PipelineError(f"{where} {err}") from None
    return config


def _stage_checks(config) -> None:
    """What dump and train check before they start (ranges, codecs, view and transform specs)."""
    from .dump import validate as validate_dump
    from .sources.transforms import build_transform
    from .train.config import validate as validate_train

    if isinstance(config, DumpConfig):
        validate_dump(config)
        specs = [config.transform]
    else:
        validate_train(config.resolved())
        specs = [config.transform, config.val_transform, config.augment]
    for spec in filter(None, specs):
        build_transform(spec)


def _fits(value, annotation) -> bool:
    """Does a TOML value have the type a config field is annotated with? (ints fit floats; bools
    are not numbers; arrays fit tuples)"""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_fits(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_fits(v, item) for v in value)
    return isinstance(value, typing.get_origin(annotation) or annotation)


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table",
          list: "an array"}
_KINDS = {**_NAMES, bool: "a boolean"}


def _describe(annotation) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " or ".join(_describe(arm) for arm in typing.get_args(annotation) if arm is not type(None))
    if typing.get_origin(annotation) is tuple:
        return f"an array of {_describe(typing.get_args(annotation)[0]).partition(' ')[2]}s"
    return _NAMES.get(typing.get_origin(annotation) or annotation, str(annotation))


def _show(value) -> str:
    """A value as the pipeline file spells it (TOML's strings, true/false and arrays are JSON's)."""
    return json.dumps(value, default=str)


def _kind(value) -> str:
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def run_pipeline(path, log=print, progress: bool = True) -> list[StepResult]:
    """Run every step of a pipeline that is not complete yet; return one result per step.
    The whole file is checked first: a bad option in the last student stops nothing half-way."""
    steps = plan(path, progress)
    results = []
    if steps.teacher is not None:
        results.append(_train_step("teacher", steps.teacher, log))
    results.append(_dump_step(steps.dump, log))
    for name, config in steps.students.items():
        results.append(_train_step(name, config, log))
    results = _with_recorded_times(steps.runs, results)
    _write_results(steps.runs, results)
    _plot(steps, log)
    return results


def _learns_from_teacher(loss) -> bool:
    """An unknown loss counts as one (the student's checks then name it)."""
    from .losses import LOSSES

    return not (isinstance(loss, str) and loss in LOSSES and not LOSSES.get(loss).needs_teacher)


def _train_step(name: str, config: TrainConfig, log) -> StepResult:
    from .train.loop import with_store_temperature

    config = with_store_temperature(config, lambda line: log(f"[{name}] {line}")).resolved()
    run = RunFiles(Path(config.out))
    what = f"{config.student}, {config.loss}" + (f" T={config.temperature:g}" if _learns_from_teacher(config.loss)
                                                  else "") + (f" + {config.feature_loss}" if config.feature_loss else "")
    if run.is_complete(config.epochs):
        log(f"[{name}] complete in {config.out}: skipped")
        summary, seconds, skipped = json.loads(run.summary.read_text()), None, True
    else:
        log(f"[{name}] training {what} -> {config.out}")
        started = time.perf_counter()
        config.resume = run.last.exists()
        train(config, log=lambda line: log(f"[{name}] {line}"))
        summary, seconds, skipped = json.loads(run.summary.read_text()), time.perf_counter() - started, False
    last, best = summary["last"].get("val_top1"), summary["best"]
    result = "no val set"
    if last is not None:
        result = f"val top-1 {last:.2%} (best {best['val_top1']:.2%} @ epoch {best['epoch']})"
    return StepResult(name, what, result, seconds, skipped)


def _dump_step(config: DumpConfig, log) -> StepResult:
    views = f" x {config.view_count} views" if config.view_count else ""
    what = f"{config.codec} logits{views} -> {config.store}"
    started = time.perf_counter()
    try:
        summary = dump(config, log=lambda line: log(f"[dump] {line}"))
        skipped = summary.samples_this_run == 0  # the same dump again finds every shard written: nothing ran
    except StoreExistsError:
        summary, skipped = None, True
    if skipped:
        log(f"[dump] {config.store} already holds a complete teacher {config.teacher_name!r}: skipped")
    else:
        for line in summary.lines():
            log(f"[dump] {line}")
    from .store import open_store

    attrs = open_store(config.store).teacher(config.teacher_name).attrs
    accuracy = ((attrs.get("run") or {}).get("teacher_outputs") or attrs["metrics"])["top1"]  # its own, if counted
    result = f"teacher top-1 {accuracy:.2%} on the dumped {'views' if config.view_count else 'set'}"
    return StepResult("dump", what, result, None if skipped else time.perf_counter() - started, skipped)


def format_results(results: list[StepResult]) -> str:
    """The closing table: each step, what it ran, its accuracy and how long it took (a step skipped
    as complete: the time the run that did it recorded, or "done earlier" when none did)."""
    rows = [("step", "what", "result", "time")]
    for r in results:
        rows.append((r.step, r.what, r.result, "done earlier" if r.seconds is None else f"{r.seconds:.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


RESULTS_JSON = "results.json"  # beside results.md: each step's result and time, for the next run to keep


def _with_recorded_times(runs: Path, results: list[StepResult]) -> list[StepResult]:
    """Steps skipped as complete keep the time recorded when they ran (same step, same what)."""
    try:
        recorded = {r["step"]: r for r in json.loads((runs / RESULTS_JSON).read_text())}
    except (OSError, ValueError, TypeError, KeyError):
        recorded = {}
    kept = []
    for result in results:
        earlier = recorded.get(result.step, {})
        if result.skipped and result.seconds is None and earlier.get("what") == result.what:
            result = replace(result, seconds=earlier.get("seconds"))
        kept.append(result)
    return kept


def _write_results(runs: Path, results: list[StepResult]) -> None:
    record = [{"step": r.step, "what": r.what, "result": r.result, "seconds": r.seconds} for r in results]
    try:
        runs.mkdir(parents=True, exist_ok=True)
        write_atomic(runs / "results.md", format_results(results) + "\n")
        write_atomic(runs / RESULTS_JSON, json.dumps(record, indent=2) + "\n")
    except OSError as err:
        raise LogitCacheError(f"cannot write the results into {runs}: {err}") from None


def _plot(steps: Plan, log) -> None:
    """The runs' curves beside results.md (results.png), when matplotlib is installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log(f"(no curves: install matplotlib, or pip install 'logitcache[plot]', for {steps.runs / 'results.png'})")
        return
    from .reports import plot_runs, read_runs

    outs = ([steps.teacher.out] if steps.teacher else []) + [c.out for c in steps.students.values()]
    path = plot_runs(read_runs(outs), steps.runs / "results.png", title=f"pipeline {steps.name}")
    log(f"curves: {path}")
