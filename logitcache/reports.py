"""``logitcache runs`` and ``logitcache plot``: training runs read back from their files, as a table
and as curves.

    >>> runs = read_runs(["data/runs/digits"])      # a directory of runs stands for every run in it
    >>> print(format_runs(runs))                    # settings and best/last results, a row per run
    >>> plot_runs(runs, "digits.png")               # val top-1 and train loss per epoch, a line per run

A run is a directory ``train`` wrote: its ``metrics.jsonl`` (one record per finished epoch),
``config.json`` (its options) and, once it finished, ``summary.json``; a run still training is
read as far as it got. The validation curve is top-1 when the runs have it, else the validation
loss (a language model's). matplotlib is an optional extra (``pip install 'logitcache[plot]'``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, FileWriteError, RunNotFoundError

METRICS = "metrics.jsonl"


@dataclass
class Run:
    """One training run's files: its label, options, epoch records and (once finished) summary."""

    name: str
    path: Path
    config: dict
    history: list[dict]
    complete: bool

    def last(self, key: str):
        return self.history[-1].get(key) if self.history else None

    def best(self, key: str) -> dict | None:
        """The epoch record with the best ``key`` (highest top-1, lowest loss); None without values
        (a hand-edited NaN, or a value that is no number, is none: it would win every comparison)."""
        scored = [h for h in self.history if _finite(h.get(key))]
        if not scored:
            return None
        pick = max if "top" in key else min
        return pick(reversed(scored), key=lambda h: h[key])  # ties: the latest epoch, as train picks best.pt


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_runs(paths, log=None) -> list[Run]:
    """The runs at ``paths``; a directory holding no run stands for the runs directly inside it. A
    run that started but finished no epoch (a ``train`` that failed: no ``metrics.jsonl`` yet) is
    skipped with a note to ``log`` rather than hiding the others' table.

    Raises:
        RunNotFoundError: a path that is no run and holds none; no run to show at all.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / METRICS).is_file():
            found.append(path)
            continue
        if _started(path):
            _note(log, f"skipped {path}: it finished no epoch (no {METRICS})")
            continue
        inside = sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
        for run in (p for p in inside if not (p / METRICS).is_file() and _started(p)):
            _note(log, f"skipped {run}: it finished no epoch (no {METRICS})")
        inside = [p for p in inside if (p / METRICS).is_file()]
        if not inside and not any(_started(p) for p in (path.iterdir() if path.is_dir() else [])):
            raise RunNotFoundError(f"{path} is not a training run (no {METRICS}) and holds none; give the --out "
                                   "directory of a `logitcache train`, or a directory of them")
        found += inside
    if not found:
        raise RunNotFoundError(f"no run in {', '.join(map(str, paths))} finished an epoch")
    names = [p.name for p in found]
    return [_read_run(p, p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}") for p in found]


def _started(path: Path) -> bool:
    """A directory ``train`` started a run in: its lock or its options are there."""
    return path.is_dir() and any((path / name).exists() for name in (".lock", "config.json"))


def _note(log, message: str) -> None:
    if log is not None:
        log(message)


def _read_run(path: Path, name: str) -> Run:
    try:
        lines = (path / METRICS).read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise RunNotFoundError(f"{path / METRICS} is not text; is it a logitcache run?") from None
    history = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not _epoch_record(record):
            raise RunNotFoundError(f"{path / METRICS} line {number} is not an epoch record (a JSON object with an "
                                   "epoch); is it a logitcache run?")
        history.append(record)
    config = _json(path / "config.json")
    summary = _json(path / "summary.json")
    return Run(name, path, config if isinstance(config, dict) else {}, history,
               isinstance(summary, dict) and bool(summary.get("complete")))


NUMBERS = ("train_loss", "val_loss", "val_top1", "val_top5", "epoch_seconds", "lr")


def _epoch_record(record) -> bool:
    """A JSON object with a whole epoch number and numbers (or null) where the table and plot read them."""
    return (isinstance(record, dict) and type(record.get("epoch")) is int
            and all(isinstance(record.get(key), (int, float, type(None))) for key in NUMBERS))


def _json(path: Path):
    """The file's JSON, or None: missing, damaged, or no regular file (a FIFO's read would wait forever)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None


def validation_metric(runs: list[Run]) -> str | None:
    """``val_top1`` when any run has it, else ``val_loss`` when any has that, else None."""
    for key in ("val_top1", "val_loss"):
        if any(h.get(key) is not None for run in runs for h in run.history):
            return key
    return None


def format_runs(runs: list[Run]) -> str:
    """A table: each run's student, loss, lr, batch and epochs, and its best and last results."""
    metric = validation_metric(runs)
    label = {"val_top1": "val top-1", "val_loss": "val loss"}.get(metric, "val")
    rows = [("run", "student", "loss", "lr", "batch", "epochs", f"best {label}", f"last {label}", "train loss",
             "time")]
    for run in runs:
        config = run.config
        loss = str(config.get("loss") or "?")  # config.json as written by hand may hold anything
        if loss != "ce" and config.get("temperature") is not None:
            loss += f" T={_number(config['temperature'])}"
        total = config.get("epochs")
        epochs = f"{len(run.history)}" if run.complete else f"{len(run.history)}/{total or '?'}"
        best = run.best(metric) if metric else None
        seconds = sum(h.get("epoch_seconds") or 0 for h in run.history)
        rows.append((run.name, str(config.get("student", "?")), loss, _number(config.get("lr")),
                     _number(config.get("batch_size")), epochs,
                     f"{_value(best[metric], metric)} @ epoch {best['epoch']}" if best else "-",
                     _value(run.last(metric), metric) if metric else "-",
                     _value(run.last("train_loss"), "train_loss"), f"{seconds:.1f} s"))
    return _table(rows)


def _value(value, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if "top" in key else f"{value:.4f}"


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _table(rows: list[tuple]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_runs(runs: list[Run], out, title: str | None = None) -> Path:
    """Write one PNG: the validation curve (top-1 in %, or loss) and the training loss per epoch,
    one line per run, the same colour for a run in both panels.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    figure = draw_runs(runs, title)
    out = Path(out)
    kinds = figure.canvas.get_supported_filetypes()
    if out.suffix and out.suffix[1:].lower() not in kinds:
        raise ConfigError(f"--out {out}: plot writes {', '.join(sorted(kinds))} files, not {out.suffix}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out)
    except OSError as err:
        raise FileWriteError(f"cannot write {out}: {err.strerror or err}") from None
    return out


def draw_runs(runs: list[Run], title: str | None = None):
    """The figure ``plot_runs`` saves (a matplotlib Figure)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ConfigError("plot needs matplotlib: pip install 'logitcache[plot]' (or pip install matplotlib)") from None
    metric = validation_metric(runs)
    figure = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    panels = figure.subplots(1, 2 if metric else 1, squeeze=False)[0]
    for index, run in enumerate(runs):
        colour = f"C{index % 10}"
        epochs = [h["epoch"] for h in run.history]
        if metric:
            values = [h.get(metric) for h in run.history]
            scale = 100 if metric == "val_top1" else 1
            panels[0].plot(epochs, [v * scale if v is not None else float("nan") for v in values],
                           color=colour, label=run.name, marker="." if len(epochs) < 40 else None)
        panels[-1].plot(epochs, [h.get("train_loss", float("nan")) for h in run.history], color=colour,
                        label=run.name)
    if metric:
        panels[0].set_ylabel("validation top-1 (%)" if metric == "val_top1" else "validation loss")
        panels[0].set_title("validation " + ("top-1" if metric == "val_top1" else "loss"))
    panels[-1].set_ylabel("training loss (epoch mean)")
    panels[-1].set_title("training loss")
    if all((h.get("train_loss") or 0) > 0 for run in runs for h in run.history):
        panels[-1].set_yscale("log")  # a teacher's cross-entropy and a student's KD total differ by decades
        for formatter in (panels[-1].yaxis.set_major_formatter, panels[-1].yaxis.set_minor_formatter):
            formatter(_plain_log_labels())
    for panel in panels:
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.2
        panel.set_xlabel("epoch")
        panel.grid(True, alpha=0.3)
    panels[0].legend(loc="best", fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def _plain_log_labels():
    """matplotlib's choice of which log ticks to label, written as plain numbers ("6", "0.4"), not
    as "6x10^0"."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter()
