"""Running a pipeline: each step not yet complete, then the closing table read back from disk.

    >>> results = run_pipeline("pipelines/digits.toml")     # plan (every step checked), then run
    >>> print(format_results(results))

A step whose outputs are already complete is skipped, an unfinished one resumes. The table goes
to RUNS/results.md (and results.json, whose times a rerun keeps for the steps it skips), with the
runs' curves in RUNS/results.png when matplotlib is installed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .dump import DumpConfig, dump
from .errors import LogitCacheError, StoreExistsError
from .pipeline_plan import PipelineError, Plan, learns_from_teacher, plan
from .store import open_store
from .train import TrainConfig, train
from .train.run_files import RunFiles
from .whole_files import write_text_whole


@dataclass
class StepResult:
    step: str
    what: str
    result: str
    seconds: float | None
    skipped: bool = False


def run_pipeline(path, log=print, progress: bool = True) -> list[StepResult]:
    """Run every step of a pipeline that is not complete yet; return one result per step.
    The whole file is checked first: a bad option in the last student stops nothing half-way."""
    steps = plan(path, progress)
    if steps.repeatable:
        from .repeatable import numerics_record, repeatable_numerics

        repeatable_numerics()
        record = numerics_record()
        log(f"repeatable numerics: {record['threads']} thread, {record['cpu_kernels']} kernels")
    results = []
    if steps.teacher is not None:
        results.append(_train_step("teacher", steps.teacher, log))
    rewritten = set()  # the stores a dump of this run wrote: named when a student learnt from other targets
    for step, config in steps.dumps.items():
        results.append(_dump_step(step, config, log))
        if not results[-1].skipped:
            rewritten.add(os.path.abspath(config.store))
    for name, config in steps.students.items():
        results.append(_train_step(name, config, log, rewritten))
    results = _with_recorded_times(steps.runs, results)
    _write_results(steps.runs, results)
    _plot(steps, log)
    return results


def _train_step(name: str, config: TrainConfig, log, rewritten: set[str] = frozenset()) -> StepResult:
    from .train.resolve import resolve

    resolved = resolve(config, lambda line: log(f"[{name}] {line}"))  # its task's defaults, as train resolves them
    config, tokens = resolved.config, resolved.tokens
    run = RunFiles(Path(config.out))
    what = f"{config.student}, {config.loss}" + (f" T={config.temperature:g}" if learns_from_teacher(config.loss)
                                                  else "") + (f" + {config.feature_loss}" if config.feature_loss else "")
    if tokens and config.store and learns_from_teacher(config.loss):
        what += f" from {_teacher_label(resolved.store, config.teacher)}"
    if run.is_complete(config.epochs):
        _check_same_options(name, run, config)
        _check_same_targets(name, run, resolved, rewritten)
        log(f"[{name}] complete in {config.out}: skipped")
        summary, seconds, skipped = run.read_summary(), None, True
    else:
        log(f"[{name}] training {what} -> {config.out}")
        started = time.perf_counter()
        config.resume = run.last.exists()
        train(config, log=lambda line: log(f"[{name}] {line}"))
        summary, seconds, skipped = run.read_summary(), time.perf_counter() - started, False
    return StepResult(name, what, _val_result(summary["last"], summary["best"]), seconds, skipped)


def _check_same_options(name: str, run: RunFiles, config: TrainConfig) -> None:
    """A complete run is this step's only if it was trained with the step's options (as a --resume
    checks them): after an edit of the file, skipping it would report the old run's results as the
    new step's."""
    from .train.train_config import options_record, resume_changes

    recorded = run.read_config()
    changes = resume_changes(recorded, options_record(config)) if isinstance(recorded, dict) else []
    if not isinstance(recorded, dict) or changes:
        why = f"other options: {', '.join(changes)}" if changes else "options it does not record (no readable config.json)"
        raise PipelineError(f"[{name}] {config.out} holds a complete run trained with {why}; delete it, or give "
                            "the step another out, to train it with this file's options")


def _check_same_targets(name: str, run: RunFiles, resolved, rewritten: set[str]) -> None:
    """A complete run is this step's only if its stores still hold the targets it learnt from (their
    teachers' digests, as ``train --resume`` checks them): a store re-dumped since, by this run's
    dump, another pipeline or by hand, would have the old run's results reported as the new
    targets'. A run recorded before the digests were: refused after a dump of this run only."""
    from .train.run_targets import targets_changes, targets_record
    from .train.train_config import TARGETS

    config = resolved.config
    recorded = (run.read_config() or {}).get(TARGETS)
    stores = {os.path.abspath(s) for s in (config.store, config.val_store) if s}
    if recorded is None:
        moved, written = [], sorted(stores & rewritten)
    else:
        moved = targets_changes(recorded, targets_record(config, resolved.store, resolved.tokens))
        written = sorted(stores & rewritten) if moved else []
    if not (moved or written):
        return
    why = f"before this run wrote {', '.join(written)}" if written else "from other targets than its stores hold now"
    raise PipelineError(f"[{name}] {config.out} holds a complete run trained {why}"
                        + (f" ({'; '.join(moved)})" if moved else "")
                        + "; delete it, or give the step another out, to train it from the new targets")


def _val_result(last: dict, best: dict) -> str:
    """The last epoch's validation figure (a language model's: loss and perplexity), and the best."""
    if last.get("val_loss") is not None and last.get("val_ppl") is not None:
        agreement = f", top-1 agreement {last['val_agreement']:.2%}" if last.get("val_agreement") is not None else ""
        return (f"val loss {last['val_loss']:.4f} nats/token, ppl {last['val_ppl']:.3f}{agreement} "
                f"(best {best['val_loss']:.4f} @ epoch {best['epoch']})")
    if last.get("val_top1") is not None:
        return f"val top-1 {last['val_top1']:.2%} (best {best['val_top1']:.2%} @ epoch {best['epoch']})"
    return "no val set"


def _teacher_label(store, teacher_name: str | None) -> str:
    """Which stored teacher a token student reads: its codec and bytes per token."""
    teacher = store.teacher(teacher_name or None, check=False)
    return f"{teacher.codec.name} ({_bytes_per_token(teacher):.1f} B/token)"


def _bytes_per_token(teacher) -> float:
    return teacher.nbytes_stored() / max(teacher.store.dataset["num_tokens"], 1)


def _dump_step(step: str, config: DumpConfig, log) -> StepResult:
    views = f" x {config.view_count} views" if config.view_count else ""
    written = " of the teacher's answers" if config.generate else ""
    what = f"{config.codec} {'targets' if config.tokenizer else 'logits'}{views}{written} -> {config.store}"
    if config.teacher_name != "default":
        what += f" [{config.teacher_name}]"
    started = time.perf_counter()
    # The same dump again finds every shard written and computes nothing. A complete teacher made
    # with other settings (another checkpoint, codec, ...) is an error, never a skipped step.
    try:
        summary = dump(config, log=lambda line: log(f"[{step}] {line}"))
    except StoreExistsError as err:  # its advice names dump's flags, which `run` has not
        head = str(err).split("pass --overwrite")[0].rstrip(" (;")
        raise StoreExistsError(f"{head}; set overwrite = true (or another teacher_name) in this dump's table of the "
                               f"pipeline file, or delete {config.store}") from None
    skipped = _computed(summary) == 0
    if skipped:
        log(f"[{step}] {config.store} already holds a complete teacher {config.teacher_name!r}: skipped")
    else:
        for line in summary.lines():
            log(f"[{step}] {line}")
    teacher = open_store(config.store).teacher(config.teacher_name)
    attrs = teacher.attrs
    if config.tokenizer:
        metrics = attrs["metrics"]
        result = (f"teacher ppl {metrics['perplexity']:.3f}, top-1 {metrics['top1']:.2%} on the dumped tokens; "
                  f"{_bytes_per_token(teacher):.1f} B/token")
    else:
        accuracy = ((attrs.get("run") or {}).get("teacher_outputs") or attrs["metrics"])["top1"]  # its own, if counted
        result = f"teacher top-1 {accuracy:.2%} on the dumped {'views' if config.view_count else 'set'}"
    return StepResult(step, what, result, None if skipped else time.perf_counter() - started, skipped)


def _computed(summary) -> int:
    """Rows (an image dump) or positions (a token dump) this run computed."""
    return summary.positions_this_run if hasattr(summary, "positions_this_run") else summary.samples_this_run


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
        write_text_whole(runs / "results.md", format_results(results) + "\n")
        write_text_whole(runs / RESULTS_JSON, json.dumps(record, indent=2) + "\n")
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
