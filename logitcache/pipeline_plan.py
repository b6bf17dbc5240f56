"""Pipelines: one TOML file that trains a teacher, dumps it once, and trains students from it.

    $ logitcache run pipelines/digits.toml

    [pipeline]                      # name, where student runs go by default, and
    name = "digits"                 # repeatable = true: numerics that repeat on any x86-64
    runs = "data/runs/digits"       # machine, whatever its load (repeatable.py)
    [teacher]                       # optional: any `logitcache train` options (loss ce)
    [dump]                          # any `logitcache dump` options
    [dumps.NAME]                    # or several dumps (codecs, splits); each is one `dump` call
    [defaults]                      # `logitcache train` options shared by every student
    [students.NAME]                 # one table per student; out defaults to RUNS/NAME

A student that learns from a teacher reads the store of the one dump by default; with several
dumps it names its ``store`` (and ``teacher``, when a store holds more than one). A student of a
token store (a dump with ``tokenizer``) is a language model: its table reports validation loss
and perplexity instead of top-1.

Keys are exactly the CLI's option names (with _ for -), and a loss's options may also be a table
of their own (``[students.NAME.dkd]`` with ``beta = 4`` is ``dkd_beta = 4``), so a pipeline holds
no logic of its own: each step is one ``train``/``dump`` call. The whole file is checked before the first step runs
(every key against the options, every value against the option's type, then the checks each
stage makes before it starts), so a typo in the last student stops nothing half-way; running
the steps is ``pipeline_run.py``. Relative paths in the file are relative to the directory
``run`` is started in, not to the file's.
"""

from __future__ import annotations

import re
import tomllib
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from .dump import DumpConfig
from .errors import LogitCacheError
from .losses.declarations import option_key
from .option_types import describe, fits, kind, show
from .train import TrainConfig
from .train.train_config import gather_loss_options


class PipelineError(LogitCacheError, ValueError):
    """A pipeline file is missing or malformed, or one of its options has the wrong name, type or
    value. Not a ConfigError: the command line was fine, so the CLI shows one line, no usage."""


TABLES = ("pipeline", "teacher", "dump", "dumps", "defaults", "students")
PIPELINE_KEYS = {"name": str, "runs": str, "repeatable": bool}
STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a student's run folder name, inside RUNS


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
    except RecursionError:
        raise PipelineError(f"pipeline {path} nests arrays or tables too deeply to read") from None
    unknown = set(spec) - set(TABLES)
    if unknown:
        raise PipelineError(f"pipeline {path}: unknown table(s) {', '.join(sorted(unknown))}")
    for table in (t for t in TABLES if t in spec):
        _require_table(spec[table], f"[{table}]", path)
    for group in ("dumps", "students"):
        for name, options in spec.get(group, {}).items():
            _require_table(options, f"[{group}.{name}]", path)
    if ("dump" in spec) == bool(spec.get("dumps")) or not spec.get("students"):
        raise PipelineError(f"pipeline {path} needs a [dump] table (or [dumps.NAME] tables, not both) and at least "
                            "one [students.NAME] table")
    for key, value in spec.get("pipeline", {}).items():
        if key not in PIPELINE_KEYS:
            raise PipelineError(f"pipeline {path}: [pipeline] has unknown key {key!r}; keys: "
                                f"{', '.join(PIPELINE_KEYS)}")
        if not isinstance(value, PIPELINE_KEYS[key]):
            raise PipelineError(f"pipeline {path}: [pipeline] {key} = {show(value)} is {kind(value)}; "
                                f"expected {describe(PIPELINE_KEYS[key])}")
    for group in ("dumps", "students"):
        for name in spec.get(group, {}):
            if not STEP_NAME.fullmatch(name) or name in (".", ".."):
                raise PipelineError(f"pipeline {path}: [{group}.{name}]: a step's name must be up to 100 letters, "
                                    "digits, '_', '.' and '-', starting with a letter or digit (it names a folder)")
    return spec


def _require_table(value, where: str, path) -> None:
    if not isinstance(value, dict):
        raise PipelineError(f"pipeline {path}: {where} must be a table of options, but it is {show(value)} "
                          f"({kind(value)})")


@dataclass
class Plan:
    """Every step of a pipeline as the config it runs with, all checked before the first step."""

    runs: Path
    teacher: TrainConfig | None
    dumps: dict[str, DumpConfig]  # by step name: "dump", or "dump NAME" for [dumps.NAME]
    students: dict[str, TrainConfig]
    name: str = ""
    repeatable: bool = False  # run every step with repeatable_numerics()


def plan(path, progress: bool = True) -> Plan:
    """Read a pipeline and build (and check) the config of every step; nothing runs.

    Raises:
        PipelineError: one line naming the table, key, value and what was expected.
    """
    spec, at = load_pipeline(path), f"pipeline {path}:"
    runs = Path(spec.get("pipeline", {}).get("runs", f"data/runs/{Path(path).stem}"))
    teacher = None
    if "teacher" in spec:
        options = _train_options({"loss": "ce", "progress": progress, "out": str(runs / "teacher")}, spec["teacher"],
                                 where=f"{at} [teacher]")
        teacher = _checked(_config(TrainConfig, options, f"{at} [teacher]"), f"{at} [teacher]")
    tables = {"dump": spec["dump"]} if "dump" in spec else {f"dump {n}": o for n, o in spec["dumps"].items()}
    dumps = {}
    for step, options in tables.items():
        where = f"{at} [{step.replace(' ', 's.', 1)}]"
        dumps[step] = _checked(_config(DumpConfig, {"progress": progress, **options}, where), where)
    _one_dump_per_teacher(dumps, at)
    token_stores = {d.store for d in dumps.values() if d.tokenizer}
    students = {}
    for name, options in spec["students"].items():
        where = f"{at} [students.{name}]"
        merged = _train_options({"progress": progress, "out": str(runs / name)}, spec.get("defaults", {}), options,
                                where=where)
        _default_store(merged, dumps, where)
        config = _config(TrainConfig, merged, where)
        students[name] = _checked(config, where, token_store=config.store in token_stores)
    table = spec.get("pipeline", {})
    return Plan(runs, teacher, dumps, students, table.get("name", Path(path).stem), table.get("repeatable", False))


def _one_dump_per_teacher(dumps: dict[str, DumpConfig], at: str) -> None:
    """Two dumps into one store's one teacher would make the second refuse (other settings) or
    redo the first half-way; said before any step runs."""
    seen: dict[tuple, str] = {}
    for step, config in dumps.items():
        target = (config.store, config.teacher_name)
        if target in seen:
            raise PipelineError(f"{at} [{seen[target].replace(' ', 's.', 1)}] and [{step.replace(' ', 's.', 1)}] both "
                                f"dump teacher {config.teacher_name!r} into {config.store}; give each its own "
                                "teacher_name (or store)")
        seen[target] = step


def _train_options(*tables: dict, where: str) -> dict:
    """A train step's options from its tables, each over the ones before it; each loss's options, flat (``dkd_beta``)
    or in a table of their own (``[students.NAME.dkd]``), gathered into ``loss_options``, option by option."""
    merged: dict = {}
    for table in tables:
        try:
            table = gather_loss_options(table)
        except LogitCacheError as err:
            raise PipelineError(f"{where} {err}") from None
        loss_options = merged.pop("loss_options", {})
        for loss, values in table.pop("loss_options", {}).items():
            loss_options[loss] = {**loss_options.get(loss, {}), **values}
        merged.update(table)
        if loss_options:
            merged["loss_options"] = loss_options
    for loss, name, value in _declared_values(merged.get("loss_options", {})):
        if not fits(value, loss.option(name).type):
            raise PipelineError(f"{where} {option_key(loss.name, name)} = {show(value)} is {kind(value)}; "
                                f"expected {describe(loss.option(name).type)}")
    return merged


def _declared_values(loss_options: dict):
    """(Loss, option name, value) for each entry that names a declared option (validate reports the rest)."""
    from .losses import LOSSES, loss_names

    for loss, values in loss_options.items():
        entry = LOSSES.get(loss) if loss in loss_names() else None
        for name, value in (values.items() if entry is not None and isinstance(values, dict) else ()):
            if name in [option.name for option in entry.options]:
                yield entry, name, value


def _default_store(options: dict, dumps: dict[str, DumpConfig], where: str) -> None:
    """A student that learns from a teacher, and names no store, reads the one the dumps write."""
    learns = learns_from_teacher(options.get("loss", "dist")) or options.get("feature_loss")
    if not learns or "store" in options or options.get("online_teacher"):  # a teacher in the loop replaces it
        return
    stores = sorted({d.store for d in dumps.values()})
    if len(stores) > 1:
        raise PipelineError(f"{where} learns from a teacher: name its store ({' or '.join(stores)})")
    options["store"] = stores[0]


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
        if not fits(value, hints[key]):
            raise PipelineError(f"{where} {key} = {show(value)} is {kind(value)}; expected {describe(hints[key])}")
    if "milestones" in options:
        options = {**options, "milestones": tuple(options["milestones"])}
    return cls(**options)


def _checked(config, where: str, token_store: bool = False):
    """``config`` once it passes the checks its stage makes before it starts (ranges, specs);
    ``token_store``: a student's store is one of the pipeline's token dumps."""
    try:
        _stage_checks(config, token_store)
    except LogitCacheError as err:
        raise PipelineError(f"{where} {err}") from None
    return config


def _stage_checks(config, token_store: bool) -> None:
    """What dump and train check before they start (ranges, codecs, view and transform specs); a
    student's, the checks that need no store (its store may not be dumped yet)."""
    from .dump import validate as validate_dump
    from .sources.transforms import build_transform
    from .train.resolve import check_options

    if isinstance(config, DumpConfig):
        validate_dump(config)
        specs = [config.transform]
    else:
        check_options(config, token_store)  # a token run refuses every transform option
        specs = [config.transform, config.val_transform, config.augment]
    for spec in filter(None, specs):
        build_transform(spec)


def learns_from_teacher(loss) -> bool:
    """Does a --loss list learn from a teacher? A bad one counts as one (the student's checks then name it)."""
    from .losses import loss_spec

    try:
        return not isinstance(loss, str) or loss_spec(loss).needs_teacher
    except LogitCacheError:
        return True
