"""What a dump reports and what it reproduces (issue 14, items 10 and 12): the teacher's own accuracy,
from its outputs before encoding, apart from the stored targets' agreement with it; and a store's
bytes as a function of the logits alone, whatever the thread counts."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from logitcache.sources import get_dataset
from logitcache.store import open_store
from tests.conftest import invoke, make_store, store_contents
from tests.factories import TeacherFailed, linear_teacher


def own_top1_classes() -> tuple[np.ndarray, np.ndarray]:
    """The linear teacher's own top-1 class of every digits@train sample, and the labels."""
    source = get_dataset("digits@train")
    with torch.no_grad():
        logits = linear_teacher()(source.dataset.images)
    return logits.argmax(1).numpy(), source.labels


def test_a_sampled_store_reports_the_teachers_own_accuracy_and_the_targets_agreement(tmp_path):
    store = make_store(tmp_path / "s.zarr", codec="sample:8")
    own, labels = own_top1_classes()
    teacher = open_store(store).teacher()
    outputs, metrics = teacher.attrs["run"]["teacher_outputs"], teacher.attrs["metrics"]
    assert outputs["rows"] == len(labels)
    assert outputs["top1"] == pytest.approx((own == labels).mean(), abs=1e-12)  # before encoding
    stored = teacher.codec.top_classes(teacher.flat(teacher.read_stored(0, len(labels))), 1)[:, 0]
    assert outputs["agreement"] == pytest.approx((stored == own).mean(), abs=1e-12) and 0.5 < outputs["agreement"] < 1
    assert metrics["top1"] == pytest.approx((stored == labels).mean(), abs=1e-12) != outputs["top1"]
    info = " ".join(invoke("info", store).output.split())
    assert (f"accuracy teacher top-1 {outputs['top1']:.2%}, top-5 {outputs['top5']:.2%} on the dumped labels "
            "(its own outputs, before encoding)") in info
    assert (f"targets stored targets' top-1 {metrics['top1']:.2%}; it agrees with the teacher's top-1 on "
            f"{outputs['agreement']:.2%}") in info


def test_a_resumed_dump_keeps_its_metadata_and_says_which_rows_it_saw(tmp_path, monkeypatch):
    """The stored targets' metrics are digested, and a resumed dump's equal an uninterrupted one's;
    the teacher's own outputs are counted by the session that computes them, in the run record."""
    own, labels = own_top1_classes()
    options = dict(codec="fp16", teacher="tests.factories:breaking_teacher")
    straight = open_store(make_store(tmp_path / "straight.zarr", **options)).teacher()
    monkeypatch.setenv("LOGITCACHE_TEST_FAIL_AFTER", "9")  # the probe, then shards 0 and 1 (4 batches each)
    with pytest.raises(TeacherFailed):
        make_store(tmp_path / "s.zarr", **options)
    monkeypatch.delenv("LOGITCACHE_TEST_FAIL_AFTER")
    result = invoke("dump", tmp_path / "s.zarr", "--teacher", options["teacher"], "--dataset", "digits@train",
                    "--codec", "fp16", "--rows-per-shard", "256", "--batch-size", "64", "--no-progress")
    assert result.exit_code == 0, result.output
    resumed = int(re.search(r"resumed: (\d+) shards were already written", result.output)[1])
    assert resumed == 2  # both shards were queued before the teacher failed, so both were written
    teacher = open_store(tmp_path / "s.zarr").teacher()
    assert teacher.attrs["metrics"] == straight.attrs["metrics"] and teacher.digest == straight.digest
    outputs = teacher.attrs["run"]["teacher_outputs"]
    assert outputs["rows"] == len(labels) - 256 * resumed
    assert straight.attrs["run"]["teacher_outputs"]["top1"] == pytest.approx((own == labels).mean(), abs=1e-12)
    assert f"on the {outputs['rows']} rows this run computed (it resumed)" in result.output


class _Pixels(nn.Module):
    """Logits that are input pixels, copied: no arithmetic, so no kernel or thread count can move them."""

    def forward(self, x):
        return x.flatten(1)[:, 20:30] * 8.0


def pixel_teacher(num_classes: int = 10) -> nn.Module:
    return _Pixels()


def test_a_stores_bytes_depend_on_the_logits_alone_not_the_thread_counts(tmp_path):
    """What the README promises across machines: the same logits give the same store, byte for byte
    (the float results that produce logits, and training, may differ with threads and CPUs)."""
    import numcodecs.blosc

    torch_threads, blosc_threads = torch.get_num_threads(), numcodecs.blosc.get_nthreads()
    contents = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            numcodecs.blosc.set_nthreads(threads)
            store = make_store(tmp_path / f"{threads}.zarr", codec="u8",
                               teacher="tests.dump.test_dump_accuracy:pixel_teacher")
            contents.append(store_contents(store))
    finally:
        torch.set_num_threads(torch_threads)
        numcodecs.blosc.set_nthreads(blosc_threads)
    assert contents[0] == contents[1]
