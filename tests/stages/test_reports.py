"""``logitcache plot`` and ``logitcache runs`` (issue 14, item 4): real runs read back from their files;
a real PNG whose pixels show each run's curves in both panels."""

import json

import numpy as np
import pytest

from logitcache.train import TrainConfig, train
from tests.conftest import invoke, one_error

matplotlib = pytest.importorskip("matplotlib", reason="the plot extra (and dev) installs matplotlib")

BLUE, ORANGE = (0.122, 0.467, 0.706), (1.0, 0.498, 0.055)  # matplotlib's C0 and C1: the first and second run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short label-only runs that differ in learning rate, so their curves differ."""
    root = tmp_path_factory.mktemp("runs")
    for name, lr in (("slow", 0.01), ("fast", 0.5)):
        train(TrainConfig(out=str(root / name), student="mlp:hidden=8", dataset="digits@train",
                          val_dataset="digits@val", epochs=3, lr=lr, progress=False), log=lambda *_: None)
    return root


def colour_pixels(png, colour) -> tuple[int, int]:
    """Pixels of ``colour`` in the left panel (validation) and the right panel (training loss)."""
    from matplotlib.image import imread

    pixels = imread(png)[..., :3]
    near = (np.abs(pixels - np.array(colour)).max(axis=2) < 0.08)
    half = pixels.shape[1] // 2
    return int(near[:, :half].sum()), int(near[:, half:].sum())


def test_plot_draws_each_run_in_both_panels(tmp_path, runs):
    both, slow, fast = tmp_path / "both.png", tmp_path / "slow.png", tmp_path / "fast.png"
    assert invoke("plot", runs / "slow", runs / "fast", "-o", both).output == f"wrote {both}\n"
    invoke("plot", runs / "slow", "-o", slow)
    invoke("plot", runs / "fast", "-o", fast)
    from matplotlib.image import imread

    image = imread(both)
    assert image.shape[:2] == (420, 1100)
    assert (image[..., :3] < 0.95).any(axis=2).mean() > 0.02  # not a blank canvas
    assert all(count > 40 for count in colour_pixels(both, BLUE) + colour_pixels(both, ORANGE))
    assert sum(colour_pixels(slow, ORANGE)) == 0  # one run: one colour
    # the same colour, other metrics: the curves sit elsewhere
    changed = np.abs(imread(slow)[..., :3] - imread(fast)[..., :3]).max(axis=2) > 0.2
    assert changed.sum() > 500


def test_a_directory_of_runs_stands_for_each_run_in_it(tmp_path, runs):
    out = tmp_path / "all.png"
    assert invoke("plot", runs, "-o", out).exit_code == 0
    assert all(count > 40 for count in colour_pixels(out, BLUE) + colour_pixels(out, ORANGE))


def test_runs_is_a_table_of_settings_and_results(runs):
    result = invoke("runs", runs)
    assert result.exit_code == 0, result.output
    header, rule, *rows = result.output.splitlines()
    assert header.split() == ["run", "student", "loss", "lr", "batch", "epochs", "best", "val", "top-1", "last",
                              "val", "top-1", "train", "loss", "time"]
    assert [row.split()[0] for row in rows] == ["fast", "slow"]  # a directory's runs, by name
    for row, name in zip(rows, ("fast", "slow")):
        records = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
        best = max(reversed(records), key=lambda r: r["val_top1"])
        assert row.split()[1:6] == ["mlp:hidden=8", "ce", "0.5" if name == "fast" else "0.01", "64", "3"]
        assert f"{best['val_top1']:.2%} @ epoch {best['epoch']}" in row
        assert f"{records[-1]['val_top1']:.2%}" in row and f"{records[-1]['train_loss']:.4f}" in row


def test_a_path_without_runs_is_one_error_line(tmp_path):
    assert "is not a training run (no metrics.jsonl) and holds none" in one_error(invoke("runs", tmp_path))
    assert "is not a training run" in one_error(invoke("plot", tmp_path / "nothing", "-o", tmp_path / "x.png"))


def _run_dir(path, lines, config=None):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_bytes(lines)
    (path / "config.json").write_text(json.dumps(config or {"student": "mlp", "loss": "ce", "epochs": 2}))
    return path


def _epochs(*losses):
    return "".join(json.dumps({"epoch": i, "lr": 0.1, "train_loss": loss, "val_top1": None}) + "\n"
                   for i, loss in enumerate(losses, 1)).encode()


def test_a_binary_metrics_file_is_one_line(tmp_path):
    run = _run_dir(tmp_path / "r", b"\x89PNG\r\n\x1a\n\x00\xff")
    assert "is not text" in one_error(invoke("runs", run))
    assert "is not text" in one_error(invoke("plot", run, "-o", tmp_path / "p.png"))


@pytest.mark.parametrize("line", [b"[1, 2]\n", b'"epoch"\n', b'{"epoch": "1"}\n', b'{"epoch": 1, "train_loss": "x"}\n',
                                  b"[" * 100_000 + b"]" * 100_000 + b"\n"])
def test_metrics_lines_that_are_not_epoch_records_are_one_line(tmp_path, line):
    run = _run_dir(tmp_path / "r", line)
    assert "line 1 is not an epoch record" in one_error(invoke("runs", run))


def test_a_run_that_finished_no_epoch_is_skipped_with_a_note_not_hiding_the_others(tmp_path):
    good = _run_dir(tmp_path / "runs" / "good", _epochs(1.0, 0.5))
    failed = tmp_path / "runs" / "failed"
    failed.mkdir()
    (failed / ".lock").write_text("")
    for paths in ([good, failed], [tmp_path / "runs"]):
        result = invoke("runs", *paths)
        assert result.exit_code == 0, result.output
        assert "good" in result.output and f"skipped {failed}: it finished no epoch" in result.output
    assert "finished an epoch" in one_error(invoke("runs", failed))


def test_plot_ticks_whole_epochs_and_labels_a_log_axis_in_plain_numbers(tmp_path):
    pytest.importorskip("matplotlib")
    from logitcache.reports import draw_runs, read_runs

    figure = draw_runs(read_runs([_run_dir(tmp_path / "r", _epochs(0.9, 0.7, 0.6))]))
    figure.canvas.draw()
    panel = figure.axes[-1]
    assert panel.get_yscale() == "log"
    assert all(tick == int(tick) for tick in panel.get_xticks())
    labels = [t.get_text() for t in panel.get_yticklabels(minor=True) + panel.get_yticklabels() if t.get_text()]
    assert labels and all("times" not in text and "×" not in text and "^" not in text for text in labels)


def test_hand_edited_options_of_any_type_show_as_question_marks(tmp_path):
    config = {"student": ["mlp"], "loss": 5, "temperature": "hot", "lr": "fast", "batch_size": [32], "epochs": True}
    result = invoke("runs", _run_dir(tmp_path / "r", _epochs(1.0, 0.5), config))
    assert result.exit_code == 0, result.output
    assert "5 T=?  ?   ?" in result.output


def test_options_and_summary_that_are_fifos_are_not_read(tmp_path):
    """A read of a FIFO waits for a writer forever: a run whose config.json or summary.json is one
    is read as a run without them."""
    import os
    import threading

    run = _run_dir(tmp_path / "r", _epochs(1.0, 0.5))
    (run / "config.json").unlink()
    for name in ("config.json", "summary.json"):
        os.mkfifo(run / name)
    result = []
    reader = threading.Thread(target=lambda: result.append(invoke("runs", run)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "runs waits on a FIFO"
    assert result[0].exit_code == 0 and "r    ?" in result[0].output, result[0].output


def test_plot_to_a_format_matplotlib_lacks_or_under_a_file_is_one_line(tmp_path):
    run = _run_dir(tmp_path / "r", _epochs(1.0, 0.5))
    assert "plot writes" in one_error(invoke("plot", run, "-o", tmp_path / "curves.txt"))
    (tmp_path / "file").write_text("")
    assert f"cannot write {tmp_path}/file/p.png" in one_error(invoke("plot", run, "-o", tmp_path / "file" / "p.png"))


def test_a_hand_edited_nan_is_never_the_best_epoch(tmp_path):
    """NaN would win a max that met it first (every comparison with it is false)."""
    from logitcache.reports import read_runs

    records = [{"epoch": 1, "lr": 0.1, "train_loss": 1.0, "val_top1": 0.5},
               {"epoch": 2, "lr": 0.1, "train_loss": 0.9, "val_top1": float("nan")}]
    lines = "".join(json.dumps(record) + "\n" for record in records).encode()  # json writes NaN as NaN
    (run,) = read_runs([_run_dir(tmp_path / "r", lines)])
    assert run.best("val_top1")["epoch"] == 1
    result = invoke("runs", tmp_path / "r")
    assert result.exit_code == 0 and "50.00% @ epoch 1" in result.output, result.output
