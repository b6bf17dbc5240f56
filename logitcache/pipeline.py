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
each step is one ``train``/``dump`` call. A step whose outputs are already complete is skipped,
an unfinished one resumes, and the closing table reads every result back from disk.
Relative paths are relative to the directory ``run`` is started in.
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .dump import DumpConfig, dump
from .errors import ConfigError, LogitCacheError, StoreExistsError
from .run_files import RunFiles
from .train import TrainConfig, train


@dataclass
class StepResult:
    step: str
    what: str
    result: str
    seconds: float | None
    skipped: bool = False


def load_pipeline(path) -> dict:
    """Parse and check a pipeline file; unknown tables or keys are errors, not silently ignored."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file {path} does not exist")
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"pipeline {path} is not valid TOML: {err}") from None
    unknown = set(spec) - {"pipeline", "teacher", "dump", "defaults", "students"}
    if unknown:
        raise ConfigError(f"pipeline {path}: unknown table(s) {', '.join(sorted(unknown))}")
    if "dump" not in spec or not spec.get("students"):
        raise ConfigError(f"pipeline {path} needs a [dump] table and at least one [students.NAME] table")
    return spec


def _config(cls, options: dict, where: str):
    allowed = {f.name for f in fields(cls)}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}")
    if "milestones" in options:
        options = {**options, "milestones": tuple(options["milestones"])}
    try:
        return cls(**options)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def run_pipeline(path, log=print, progress: bool = True) -> list[StepResult]:
    """Run every step of a pipeline that is not complete yet; return one result per step."""
    spec = load_pipeline(path)
    meta = spec.get("pipeline", {})
    runs = Path(meta.get("runs", f"data/runs/{Path(path).stem}"))
    results = []
    if "teacher" in spec:
        options = {"loss": "ce", "progress": progress, **spec["teacher"]}
        options.setdefault("out", str(runs / "teacher"))
        results.append(_train_step("teacher", _config(TrainConfig, options, "[teacher]"), log))
    results.append(_dump_step(_config(DumpConfig, {"progress": progress, **spec["dump"]}, "[dump]"), log))
    for name, options in spec["students"].items():
        merged = {"progress": progress, **spec.get("defaults", {}), **options}
        merged.setdefault("out", str(runs / name))
        if merged.get("loss", "dist") != "ce":
            merged.setdefault("store", spec["dump"]["store"])
        results.append(_train_step(name, _config(TrainConfig, merged, f"[students.{name}]"), log))
    _write_results(runs, results)
    return results


def _train_step(name: str, config: TrainConfig, log) -> StepResult:
    config = config.resolved()
    run = RunFiles(Path(config.out))
    what = f"{config.student}, {config.loss}" + (f" T={config.temperature:g}" if config.loss != "ce" else "")
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
        summary = dump(config, log=log)
        for line in summary.lines():
            log(f"[dump] {line}")
        skipped = False
    except StoreExistsError:
        log(f"[dump] {config.store} already holds a complete teacher {config.teacher_name!r}: skipped")
        skipped = True
    from .store import open_store

    metrics = open_store(config.store).teacher(config.teacher_name).attrs["metrics"]
    result = f"teacher top-1 {metrics['top1']:.2%} on the dumped {'views' if config.view_count else 'set'}"
    return StepResult("dump", what, result, None if skipped else time.perf_counter() - started, skipped)


def format_results(results: list[StepResult]) -> str:
    """The closing table: each step, what it ran, its accuracy and how long it took."""
    rows = [("step", "what", "result", "time")]
    for r in results:
        rows.append((r.step, r.what, r.result, "done earlier" if r.skipped else f"{r.seconds:.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write_results(runs: Path, results: list[StepResult]) -> None:
    try:
        runs.mkdir(parents=True, exist_ok=True)
        (runs / "results.md").write_text(format_results(results) + "\n")
    except OSError as err:
        raise LogitCacheError(f"cannot write {runs / 'results.md'}: {err}") from None
