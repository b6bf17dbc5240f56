"""A training run's integrity: one writer per run directory, ``--resume`` only of the very same run,
and checkpoints only of finite weights.

    with hold_run(run, dist):                                # RunInUseError at once: another process writes RUN
        options = options_record(config)                     # the run's options as JSON: all this module reads
        checkpoint = open_resume(run, options, dist, log)    # CheckpointError: --resume would change the run
        start, history = prepare_run(run, options, checkpoint, student, optimizer, dist, log)
        check_step_loss(losses[-1], options["out"], epoch, batch, batches)   # every step: TrainingDivergedError
        dist.agree(weights_error(student, options["out"], epoch))            # every epoch, before its checkpoint
        dist.agree(collapse_error(record, options, num_classes, chance, teacher_top1))   # after DKD's warm-up
        save_epoch(run, options, student, optimizer, num_classes, history)

- **One writer.** Rank 0 holds ``RUN/.lock`` (``RunFiles.lock``) from before the first file is read
  until the command ends; a second command on the same ``--out`` (fresh, ``--overwrite`` or
  ``--resume``) fails at once, naming the holder's pid and host.
- **Resume the same run or nothing.** The new options are compared with those the last checkpoint
  recorded (config.json when it has none); every difference is named in one line, except the
  options in ``train/train_config.py: MAY_CHANGE_ON_RESUME``: how the command executes (workers, progress,
  device, ...) and more ``--epochs``. More epochs extend a step or constant schedule exactly; a
  cosine schedule stretches, so the lr of the epochs still to come rises again and the result is
  not the run those epochs would give from the start. That is allowed (extending a run is common
  and the epochs already done keep their results) and said in a note line. A resume rewrites
  config.json with the options it continues with; every checkpoint records its own.
- **Resume from the same targets.** config.json and every checkpoint also record what the run
  learnt from (``run_targets.py``: each store's teacher digests and sample fingerprint); a
  ``--resume`` after the store was re-dumped (``dump --overwrite``, another store copied in) is
  refused, naming the store and teacher. A run recorded before this record resumes unchecked.
- **Stop a student that collapsed.** After a loss's own warm-up (DKD's), an epoch whose mean
  training cross-entropy is no lower than a uniform guess's, or whose val top-1 is no better than
  always answering the most frequent class, while the store's teacher is well above chance, stops
  the run with what to change (``collapse_error``).
- **A kill anywhere loses nothing.** last.pt is renamed into place first, then best.pt (copied
  whole) and the metrics; a resume rewrites those from the checkpoint, so a run killed between
  the two ends with the files of one never killed. A checkpoint whose records are damaged (its
  history, options, optimizer, non-finite weights) is refused in one line, as is a --resume of a
  run that finished epochs but lost last.pt (it would start again and drop them).
- **Stop at the first non-finite step.** The per-step loss is summed over ranks before the check,
  so every rank sees the same value and all raise together; the weights are checked (through
  ``Distributed.agree``) before each epoch's checkpoint. ``last.pt`` keeps the last finished epoch,
  and no checkpoint is ever written from non-finite weights (``save_checkpoint`` refuses them too).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path

from ..distributed import Distributed
from ..errors import (
    CheckpointError,
    ConfigError,
    LogitCacheError,
    TrainingDivergedError,
)
from ..sources._loading import misfit
from ..sources.checkpoints import (
    describe_non_finite,
    load_checkpoint,
    non_finite_weights,
    save_checkpoint,
)
from ..losses import loss_spec
from ..whole_files import write_whole
from .train_config import TARGETS, cosine_extension, resume_changes
from .run_files import RunFiles
from .run_targets import targets_changes


@contextlib.contextmanager
def hold_run(run: RunFiles, dist: Distributed):
    """Rank 0 holds the run directory's lock for the block; if it cannot, every rank raises why."""
    with contextlib.ExitStack() as stack:
        error = None
        if dist.is_main:
            try:
                stack.enter_context(run.lock())
            except LogitCacheError as err:
                error = err
        dist.agree(error)
        yield


def open_resume(run: RunFiles, options: dict, dist: Distributed, log) -> dict | None:
    """The checkpoint a ``--resume`` continues from, once it is known to be this very run (``options``:
    this command's, as ``train_config.options_record`` writes them); None for a fresh run (no --resume,
    or nothing finished to resume)."""
    if not options["resume"]:
        return None
    if not (run.last.exists() or run.last.is_symlink()):  # a broken link is refused by load_checkpoint
        dist.agree(_lost_checkpoint(run))
        return None
    checkpoint, note, error = None, None, None
    try:
        checkpoint = load_checkpoint(run.last)
        note = _check_same_run(run, options, checkpoint)
    except LogitCacheError as err:
        error = err
    dist.agree(error)
    if note:
        log(note)
    return checkpoint


def _lost_checkpoint(run: RunFiles) -> CheckpointError | None:
    """A run that finished epochs (metrics.jsonl is written after last.pt) but has no last.pt any
    more: a --resume would start it again and drop those epochs' records, so it is refused."""
    if not (run.root / "metrics.jsonl").exists():
        return None  # nothing finished: --resume starts the run
    return CheckpointError(f"{run.root} records finished epochs (metrics.jsonl) but holds no last.pt to resume "
                           "from; put the checkpoint back, or pass --overwrite (instead of --resume) to start again")


def _check_same_run(run: RunFiles, options: dict, checkpoint: dict) -> str | None:
    if checkpoint["model_spec"] != options["student"]:
        raise CheckpointError(
            f"{run.last} is a checkpoint of {checkpoint['model_spec']!r}, not --student {options['student']!r}"
        )
    recorded = _json_entry(run, checkpoint, "config") if "config" in checkpoint else run.read_config()
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{run.root} records no options to check --resume against; "
                              "start a new --out or pass --overwrite (instead of --resume)")
    last = _history(run, checkpoint)[-1]
    try:  # the recorded options as this version writes them; anything else is a damaged (or foreign) file
        changes = resume_changes(recorded, options)
        moved = targets_changes(recorded.get(TARGETS), options.get(TARGETS))
        note = cosine_extension(recorded, options, last["epoch"], last.get("lr"))
    except (TypeError, AttributeError, KeyError, ValueError):
        raise CheckpointError(f"{run.last} records options this logitcache cannot read (damaged?); start a new "
                              "--out or pass --overwrite (instead of --resume)") from None
    if changes:
        raise CheckpointError(f"--resume would change the run: {', '.join(changes)}; "
                              "start a new --out or pass --overwrite (instead of --resume)")
    if moved:
        raise CheckpointError(f"--resume would train on other targets than the run learnt from: {'; '.join(moved)}; "
                              "start a new --out (or pass --overwrite instead of --resume), or re-dump the "
                              "targets it learnt from")
    return note


def _history(run: RunFiles, checkpoint: dict) -> list[dict]:
    """The checkpoint's epoch records, once they are what ``save_epoch`` writes: an object per epoch
    1..n, with numbers (or null) where the run compares them (a damaged record is one line, not a
    traceback on the way)."""
    history = _json_entry(run, checkpoint, "history")
    records = history if isinstance(history, list) else []
    whole = (records and all(isinstance(h, dict) for h in records)
             and [h.get("epoch") for h in records] == list(range(1, len(records) + 1))
             and all(type(h["epoch"]) is int for h in records)
             and all(isinstance(h.get(key), (int, float, type(None))) and not isinstance(h.get(key), bool)
                     for h in records for key in ("lr", "train_loss", "val_top1", "val_loss")))
    if not whole:
        raise CheckpointError(f"{run.last} is damaged: its 'history' is not one record per epoch from 1; "
                              "pass --overwrite (instead of --resume) to start again")
    return history


def _json_entry(run: RunFiles, checkpoint: dict, key: str):
    try:
        return json.loads(checkpoint[key])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{run.last} has no readable {key!r} record") from None


def prepare_run(run: RunFiles, options: dict, checkpoint: dict | None, student, optimizer,
                dist: Distributed, log, connectors=None) -> tuple[int, list]:
    """Where to start: a fresh run directory, or after the epoch of ``checkpoint`` (from open_resume)."""
    if checkpoint is None:
        error = None
        if dist.is_main:
            try:
                run.start(overwrite=options["overwrite"] or options["resume"], config=options)
            except ConfigError as err:
                error = err
        dist.agree(error)
        return 1, []
    try:
        student.load_state_dict(checkpoint["model"])
        if connectors is not None:  # feature losses' connectors: trained with the student, not part of it
            connectors.load_state_dict(checkpoint["connectors"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:  # a damaged optimizer too
        raise CheckpointError(f"{run.last} does not fit this student: {misfit(err)}") from None
    bad = non_finite_weights(student)  # never written by save_checkpoint: a damaged or foreign file
    if bad:
        raise CheckpointError(f"{run.last} is damaged: {describe_non_finite(bad)}; pass --overwrite (instead of "
                              "--resume) to start again")
    history = _history(run, checkpoint)
    start_epoch, error = history[-1]["epoch"] + 1, None
    if dist.is_main:  # rank 0's files; what it cannot write, every rank raises (not a peer's lost link)
        try:
            run.truncate_steps(start_epoch - 1)
            run.remove(run.summary)
            run.write_config(options)
            _write_epoch_files(run, history)  # a kill after last.pt's rename left them an epoch behind
        except LogitCacheError as err:
            error = err
    dist.agree(error)
    log(f"resuming {options['out']} after epoch {start_epoch - 1}")
    return start_epoch, history


def check_step_loss(record: tuple, out: str, epoch: int, batch: int, batches: int) -> None:
    """Stop at a step whose loss is not finite. ``record`` is (step, lr, loss, ce, kd), averaged
    over ranks, so under torchrun every rank sees the same loss and raises here at the same step."""
    step, lr, loss, ce, kd = record
    if math.isfinite(loss):
        return
    raise TrainingDivergedError(
        f"epoch {epoch}, step {step} (batch {batch + 1} of {batches}, lr {lr:.3g}): the training loss is {loss:g} "
        f"(ce {ce:g}, kd {kd:g}); training stopped. {_what_is_kept(out, epoch)}"
    )


def collapse_error(record: dict, options: dict, num_classes: int, chance: float | None,
                   teacher_top1: float | None) -> TrainingDivergedError | None:
    """The error to stop with when, after the loss's warm-up (DKD's), the student is no better than
    chance while its teacher is: its mean training cross-entropy is no lower than a uniform guess's
    (ln C), or its validation top-1 is no higher than always answering the most frequent class
    (``chance``). Checked from the epoch after the warm-up (never on epoch 1, whose mean includes
    the start), and only when the teacher's recorded top-1 (``teacher_top1``, a store's) is at
    least twice a uniform guess's: a student that follows a teacher at chance has not collapsed."""
    flag, warmup = loss_spec(options["loss"]).warmup(options["loss_options"]) or (None, None)
    if warmup is None or record["epoch"] <= max(warmup, 1) or (teacher_top1 or 0) < 2 / num_classes:
        return None
    uniform = math.log(num_classes)
    why = []
    if record["train_ce"] >= uniform:
        why.append(f"its training cross-entropy {record['train_ce']:.3f} is no lower than a uniform guess's "
                   f"(ln {num_classes} = {uniform:.3f})")
    if chance is not None and record.get("val_top1") is not None and record["val_top1"] <= chance:
        why.append(f"its val top-1 {record['val_top1']:.2%} is no better than always answering the most frequent "
                   f"class ({chance:.2%})")
    if not why:
        return None
    return TrainingDivergedError(
        f"epoch {record['epoch']}: the student sits at chance after the {options['loss']} warm-up "
        f"({' and '.join(why)}), while its teacher's top-1 is {teacher_top1:.2%}: it collapsed, so training stopped. "
        f"Lower --lr ({options['lr']:g}) or --kd-weight ({options['kd_weight']:g}), or lengthen {flag} ({warmup}), "
        "then start again with --overwrite"
    )


def weights_error(student, out: str, epoch: int) -> TrainingDivergedError | None:
    """The error to stop with when the weights are no longer finite after ``epoch``'s last step
    (its losses were all finite, but a last update overflowed); None when they are finite."""
    bad = non_finite_weights(student)
    if not bad:
        return None
    return TrainingDivergedError(f"epoch {epoch}: after its last step {describe_non_finite(bad)}; training stopped. "
                                 f"{_what_is_kept(out, epoch)}")


def _what_is_kept(out: str, epoch: int) -> str:
    if epoch > 1:
        kept = f"{Path(out) / 'last.pt'} keeps the weights of epoch {epoch - 1}, the last finished one"
    else:
        kept = "No epoch finished, so there is no checkpoint"
    return (f"{kept}; no checkpoint is written from non-finite weights (lower --lr, or check the data and "
            "options, then start again with --overwrite)")


def save_epoch(run: RunFiles, options: dict, student, optimizer, num_classes: int, history: list,
               connectors=None) -> None:
    state = {"optimizer": optimizer.state_dict(), "epoch": history[-1]["epoch"],
             "history": json.dumps(history), "config": json.dumps(options)}
    if connectors is not None:  # the checkpoint's model stays the plain student
        state["connectors"] = connectors.state_dict()
    save_checkpoint(run.last, model=student, model_spec=options["student"], num_classes=num_classes, state=state)
    _write_epoch_files(run, history)


def _write_epoch_files(run: RunFiles, history: list) -> None:
    """What follows last.pt of the epoch ``history`` ends with: best.pt (when it is the best; copied
    whole, so a kill never tears it) and the metrics. A resume rewrites them too, so a run killed
    between last.pt's rename and these ends with the same files as one never killed."""
    if best(history) is history[-1]:
        write_whole(run.best, lambda partial: shutil.copyfile(run.last, partial))
    run.write_metrics(history)


def best(history: list) -> dict:
    """The epoch with the best validation top-1; for language models, which have no top-1, the
    lowest validation loss; the last epoch when there is no validation."""
    scored = [h for h in history if h.get("val_top1") is not None]
    if scored:
        return max(reversed(scored), key=lambda h: h["val_top1"])
    losses = [h for h in history if h.get("val_loss") is not None]
    return min(reversed(losses), key=lambda h: h["val_loss"]) if losses else history[-1]
