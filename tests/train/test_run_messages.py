"""What ``train`` says and writes about a run (issue 14, items 5-9): TensorBoard event files, a
progress bar that stays small, the temperature of a sampled store, DKD's warm-up and a collapsed
student, and a run without a validation set."""

import json
import math

import pytest
import torch
from torch import nn

from logitcache.errors import TrainingDivergedError
from logitcache.sources import get_dataset
from logitcache.train import TrainConfig, train
from logitcache.train.checkpointing import collapse_error
from logitcache.train.train_config import options_record
from tests.conftest import make_store


def config(tmp_path, name="run", **overrides):
    options = dict(out=str(tmp_path / name), student="mlp:hidden=8", dataset="digits@train",
                   val_dataset="digits@val", epochs=2, batch_size=64, progress=False)
    options.update(overrides)
    return TrainConfig(**options)


def test_tensorboard_event_files_hold_every_step_and_epoch_once_across_a_resume(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (and dev) installs it")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = []

    def stop_after_epoch_one(line):
        lines.append(line)
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, tensorboard=True), log=stop_after_epoch_one)
    board = tmp_path / "run" / "tensorboard"
    assert f"tensorboard: tensorboard --logdir {board}" in lines
    train(config(tmp_path, tensorboard=True, resume=True), log=lambda *_: None)
    events = EventAccumulator(str(board))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(2 * 23))  # 1437 samples / 64: 23 steps per epoch, each once
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    top1 = events.Scalars("val/top1")
    assert [e.step for e in top1] == [22, 45]  # each epoch's last step
    assert [e.value for e in top1] == pytest.approx([r["val_top1"] for r in records])
    assert {"train/ce", "train/kd", "train/lr", "epoch/train_loss", "val/loss"} <= set(events.Tags()["scalars"])


def test_the_progress_bar_redraws_rarely_and_shows_the_rate(tmp_path, capsys):
    """A digits run used to write ~200 KB of redraws to a redirected stderr (a redraw every step);
    stderr that is not a terminal now gets a couple of lines per epoch, with the rate in steps."""
    train(config(tmp_path, epochs=3, progress=True, val_dataset=None), log=lambda *_: None)
    err = capsys.readouterr().err
    assert "step/s" in err and "epoch 3/3" in err
    assert len(err) < 2000, err  # 3 epochs x 23 steps
    assert err.count("\r") <= 3 * 3, err


def test_on_a_terminal_the_bar_redraws_twice_a_second_with_steps_per_second(monkeypatch):
    import io
    import re
    import sys
    import time

    from logitcache.progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(range(60), enabled=True, desc="epoch 1/1", unit="step")
    started = time.perf_counter()
    for step in bar:
        time.sleep(0.02)
        bar.set_postfix(loss=f"{step:.4f}", refresh=False)  # as train sets it: no redraw of its own
    redraws = terminal.getvalue().count("\r")
    assert redraws <= 2 * (time.perf_counter() - started) + 3, terminal.getvalue()  # not one per step
    assert re.search(r"\d+\.\d+step/s", terminal.getvalue()), terminal.getvalue()


def test_kl_from_a_sampled_store_takes_its_temperature(tmp_path):
    store = make_store(tmp_path / "s.zarr", codec="sample:8:2")
    lines = []
    train(config(tmp_path, store=str(store), loss="kl", epochs=1, val_dataset=None), log=lines.append)
    assert lines[0] == "--temperature 2: the temperature the store's classes were sampled at (sample:8:2)"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["temperature"] == 2.0
    train(config(tmp_path, store=str(store), loss="kl", epochs=2, val_dataset=None, resume=True),
          log=lambda *_: None)  # a resume without --temperature is the same run


def test_a_dkd_warmup_longer_than_the_run_is_said_first(tmp_path, digits_store):
    lines = []
    train(config(tmp_path, store=str(digits_store), loss="dkd", epochs=1), log=lines.append)
    assert lines[0].startswith("note: --dkd-warmup 20 is longer than this 1-epoch run: the dkd term ramps up over "
                               "20 epochs and ends at 5% of its weight")


class _Oracle(nn.Module):
    """A teacher that knows every digit's label (looked up by its pixels): 100% top-1, with a fixed
    (seeded) shape over the other classes."""

    def __init__(self, num_classes: int):
        super().__init__()
        source = get_dataset("digits@all")
        self.labels = {image.numpy().tobytes(): int(label)
                       for image, label in zip(source.dataset.images, source.dataset.targets)}
        self.others = torch.randn(num_classes, num_classes, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        labels = torch.tensor([self.labels[row.numpy().tobytes()] for row in x])
        return 8.0 * nn.functional.one_hot(labels, len(self.others)).float() + self.others[labels]


def oracle_teacher(num_classes: int = 10) -> nn.Module:
    return _Oracle(num_classes)


def test_a_student_that_collapses_after_the_dkd_warmup_stops(tmp_path):
    """--dkd-warmup 1 at a high lr sends the student to chance under a perfect teacher: the run
    stops after the warm-up with what to change, instead of training on at 10 %."""
    store = make_store(tmp_path / "s.zarr", teacher="tests.train.test_run_messages:oracle_teacher")
    lines = []
    with pytest.raises(TrainingDivergedError, match="epoch 2: the student sits at chance after the dkd warm-up "
                                                    r"\(its training cross-entropy .* while its teacher's top-1 is "
                                                    r"100.00%: it collapsed.* Lower --lr \(0.5\)"):
        train(config(tmp_path, student="mlp:hidden=32", store=str(store), loss="dkd",
                     loss_options={"dkd": {"warmup": 1}}, lr=0.5,
                     epochs=4), log=lines.append)
    assert any(line.startswith("epoch 2/4") for line in lines) and not any("epoch 3/4" in line for line in lines)


def test_the_collapse_check_waits_for_the_warmup_and_needs_chance():
    dkd = options_record(TrainConfig(out="x", student="mlp", dataset="digits", store="s", loss="dkd",
                                     loss_options={"dkd": {"warmup": 3}}).resolved())
    at_chance = {"epoch": 4, "train_ce": math.log(10) + 0.01, "val_top1": 0.5}
    assert collapse_error({**at_chance, "epoch": 3}, dkd, 10, None, 0.9) is None  # still warming up
    assert "cross-entropy" in str(collapse_error(at_chance, dkd, 10, None, 0.9))
    assert collapse_error({**at_chance, "train_ce": 1.0}, dkd, 10, 0.2, 0.9) is None  # learning
    assert "most frequent class (20.00%)" in str(collapse_error({**at_chance, "train_ce": 1.0, "val_top1": 0.2},
                                                                  dkd, 10, 0.2, 0.9))
    assert collapse_error(at_chance, dkd, 10, 0.2, 0.15) is None  # its teacher is at chance too: it follows it
    assert collapse_error(at_chance, dkd, 10, 0.2, None) is None  # an online teacher: no recorded accuracy
    kl = options_record(TrainConfig(out="x", student="mlp", dataset="digits", store="s", loss="kl").resolved())
    assert collapse_error(at_chance, kl, 10, 0.2, 0.9) is None  # only losses with a warm-up are checked


def test_a_run_without_validation_says_so(tmp_path):
    summary = train(config(tmp_path, loss="ce", epochs=1, val_dataset=None), log=lambda *_: None)
    assert summary.lines()[1:] == [f"  last epoch: train loss {summary.last['train_loss']:.4f}",
                                   "  no validation set (--val-dataset), so best.pt is the last epoch's weights"]
    assert not any("n/a" in line for line in summary.lines())
