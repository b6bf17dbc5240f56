"""The codec contract, for every registered codec (``codec_examples``: a new codec is tested here
without a line of its own): stored arrays as declared, the batch decode and the typed targets equal
to the numpy decode and sparse targets, the targets' row operations, the device reduction's arrays."""

import numpy as np
import pytest
import torch

from logitcache.codecs import (
    DenseTargets,
    SampledTargets,
    TopKTargets,
    codec_examples,
    get_codec,
    list_families,
    targets_from_fields,
)
from logitcache.errors import SpecError
from tests.codecs.test_codecs import realistic_logits


def check_codec_contract(name: str, classes: int = 300, rows: int = 40) -> None:
    """Everything a codec promises the rest of logitcache, checked on ``rows`` x ``classes`` logits."""
    codec = get_codec(name).for_classes(classes)
    logits = realistic_logits(rows, classes, seed=7)
    stored = codec.encode_shard(logits, 3)
    assert set(stored) == set(codec.arrays) and codec.rows_ok(stored).all()
    for key, spec in codec.arrays.items():
        width = (spec.width or classes,) if spec.per_class else ()
        assert stored[key].dtype == np.dtype(spec.dtype) and stored[key].shape == (rows, *width), key
    targets = codec.training_targets(stored)
    assert type(targets) is codec.target_type
    assert codec.has_sparse_form == (codec.target_type is not DenseTargets)
    if codec.has_dense_form:  # the torch decode is the numpy decode, bit for bit
        decoded = torch.from_numpy(codec.decode(stored))
        assert torch.equal(codec.decode_batch(stored).view(torch.int32), decoded.view(torch.int32))
    else:
        with pytest.raises(SpecError):
            codec.decode(stored)
    if codec.has_sparse_form:
        want = codec.sparse_targets(stored)
        assert set(targets.rows()) == set(want)
        assert all(torch.equal(targets.rows()[key], torch.from_numpy(values)) for key, values in want.items())
    else:
        assert codec.sparse_targets(stored) is None and torch.equal(targets.logits, decoded)
    check_row_operations(targets, rows)
    check_device_reduction(codec, logits, stored)
    top = codec.top_classes(stored, 5)
    top1, top5 = codec.label_hits(stored, top[:, 0], 5)
    assert top1.all() and top5.all()


def check_row_operations(targets, rows: int) -> None:
    """Selection, reshaping, concatenation, moves and Hugging Face columns act on every row field."""
    fields = targets.rows()
    picked = targets[np.array([5, 0, 17])]
    assert all(torch.equal(picked.rows()[key], values[[5, 0, 17]]) for key, values in fields.items())
    shaped = targets.unflatten(0, (4, rows // 4))
    assert all(torch.equal(shaped.rows()[key], values.reshape(4, rows // 4, *values.shape[1:]))
               for key, values in fields.items())
    joined = type(targets).cat([targets[:10], targets[10:]])
    assert all(torch.equal(joined.rows()[key], values) for key, values in fields.items())
    again = targets_from_fields(targets.to("cpu", non_blocking=True).columns())
    assert type(again) is type(targets) and all(torch.equal(again.rows()[k], v) for k, v in fields.items())
    assert set(targets.columns("teacher_")) == {f"teacher_{key}" for key in fields}


def check_device_reduction(codec, logits: np.ndarray, stored: dict) -> None:
    """A token dump's reduction (here on the CPU) stores what the host encoding stores: the same
    arrays, every row written, the same mass; the log-sum-exp where the codec keeps it."""
    chunk = torch.from_numpy(logits.copy())
    reduced, mass, norm = codec.reduce_logits(chunk, codec.uniforms(3, len(logits)))
    assert torch.equal(chunk, torch.from_numpy(logits))  # given back as it was
    assert {k: (v.dtype, v.shape) for k, v in reduced.items()} == {k: (v.dtype, v.shape) for k, v in stored.items()}
    assert codec.rows_ok(reduced).all() and mass.shape == (len(logits),)
    if codec.has_dense_form and not codec.has_sparse_form:
        assert all(np.array_equal(reduced[k], stored[k]) for k in stored) and bool((mass == 1).all())
    if codec.keeps_logsumexp:
        expected = torch.logsumexp(torch.from_numpy(logits).double(), 1).float()
        torch.testing.assert_close(norm, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", codec_examples())
def test_every_registered_codec_keeps_the_codec_contract(name):
    check_codec_contract(name)


def test_the_built_in_codecs_declare_what_they_are():
    kinds = {name: (get_codec(name).target_type, get_codec(name).has_dense_form, get_codec(name).sampled_at)
             for name in ("fp16", "u8", "topk:5", "sample:4", "sample:4:2")}
    assert kinds == {"fp16": (DenseTargets, True, None), "u8": (DenseTargets, True, None),
                     "topk:5": (TopKTargets, True, None), "sample:4": (SampledTargets, False, 1.0),
                     "sample:4:2": (SampledTargets, False, 2.0)}
    assert [name for name in codec_examples() if get_codec(name).keeps_logsumexp] == ["topk:5", "topk:3:fp32"]
    assert list_families() == ["topk:K", "sample:K[:T]"]


def test_an_unknown_codec_lists_every_name_and_family():
    with pytest.raises(SpecError, match=r"unknown codec 'int4'; choose one of bf16, fp16, fp32, u8, topk:K, "
                                        r"sample:K\[:T\]$"):
        get_codec("int4")


def test_targets_of_no_known_kind_are_refused():
    with pytest.raises(ValueError, match="of no known kind"):
        targets_from_fields({"indices": torch.zeros(2, 3)})
