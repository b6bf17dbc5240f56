"""The paired loader: exact pairing, fingerprint refusals, memory vs streaming, block shuffle, workers."""

import numpy as np
import pytest
import torch
from logitcache.train.paired_data import EpochSampler, PairedDataset, TeacherLogits
from torch.utils.data import DataLoader

from logitcache.errors import (
    NonFiniteLogitsError,
    StoreIncompleteError,
    StoreMismatchError,
)
from logitcache.sources import get_dataset
from logitcache.store import open_store
from tests.conftest import make_store


def test_every_sample_is_paired_with_its_own_logits(digits_store):
    source = get_dataset("digits@train")
    logits = TeacherLogits.open(str(digits_store))
    paired = PairedDataset(source.dataset, logits)
    teacher = open_store(digits_store).teacher()
    for row in (0, 17, 1436):
        inputs, label, targets = paired[row]
        assert label == source.labels[row]
        assert torch.equal(targets, torch.from_numpy(teacher.read(row, row + 1)[0]))


@pytest.mark.parametrize("spec, says", [
    ("digits@val", "has 360 samples but the store was made from 1437"),
    ("tests.factories:shuffled_digits", "same samples in another order"),
])
def test_mismatched_datasets_are_refused(digits_store, spec, says):
    source = get_dataset(spec)
    with pytest.raises(StoreMismatchError, match=says):
        open_store(digits_store).check_dataset(source.keys, source.labels)


def test_relabelled_dataset_is_refused(digits_store):
    source = get_dataset("digits@train")
    labels = source.labels.copy()
    labels[3] = (labels[3] + 1) % 10
    with pytest.raises(StoreMismatchError, match="relabelled: 1 labels differ, first at index 3"):
        open_store(digits_store).check_dataset(source.keys, labels)


def test_streaming_delivers_the_same_logits_as_memory(digits_store):
    memory = TeacherLogits.open(str(digits_store))
    stream = TeacherLogits.open(str(digits_store), budget_bytes=3 * 256 * 10 * 4)
    assert memory.in_memory and not stream.in_memory and stream.window_blocks == 3
    for row in np.random.default_rng(0).permutation(1437)[:300]:
        assert torch.equal(memory[row], stream[row])
    assert len(stream.reader.cache) <= 3


def lru_loads(blocks, capacity):
    cache, loads = [], 0
    for block in blocks.tolist():
        if block in cache:
            cache.remove(block)
        else:
            loads += 1
            if len(cache) == capacity:
                cache.pop(0)
        cache.append(block)
    return loads


def test_block_shuffle_visits_every_row_once_and_stays_in_its_window():
    rows = np.arange(1000)
    sampler = EpochSampler(rows, seed=3, block_rows=64, window_blocks=2)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        order = sampler.order()
        assert sorted(order.tolist()) == rows.tolist()
        assert lru_loads(order // 64, capacity=2) == 16  # a 2-block cache reads each block once
    sampler.set_epoch(1)
    first = sampler.order()
    sampler.set_epoch(2)
    assert not np.array_equal(first, sampler.order())
    sampler.set_epoch(1)
    assert np.array_equal(first, sampler.order())  # a pure function of (seed, epoch)


def test_streaming_loader_with_forked_workers_opens_the_store_lazily(digits_store):
    source = get_dataset("digits@train")
    logits = TeacherLogits.open(str(digits_store), budget_bytes=4 * 256 * 10 * 4, workers=2)
    sampler = EpochSampler(logits.rows, seed=0, block_rows=logits.block_rows, window_blocks=logits.window_blocks)
    loader = DataLoader(PairedDataset(source.dataset, logits), batch_size=100, sampler=sampler, num_workers=2)
    teacher = open_store(digits_store).teacher()
    seen = 0
    for inputs, labels, targets in loader:
        seen += len(labels)
    rows = sampler.order()[:100]
    first = next(iter(loader))
    assert torch.equal(first[2], torch.from_numpy(teacher.take(rows)))
    assert seen == 1437


def test_unfinished_store_is_refused_unless_partial_is_allowed(tmp_path):
    path = tmp_path / "partial.zarr"
    with pytest.raises(NonFiniteLogitsError):
        make_store(path, teacher="tests.factories:nan_teacher")
    with pytest.raises(StoreIncompleteError, match="--allow-partial"):
        TeacherLogits.open(str(path))
    partial = TeacherLogits.open(str(path), allow_partial=True)
    assert partial.rows.tolist() == list(range(256))
