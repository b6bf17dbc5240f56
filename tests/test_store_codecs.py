"""Codecs: round trips, documented error bounds, range checks, and NaN for unwritten rows."""

import numpy as np
import pytest
import torch

from logitcache.errors import SpecError
from logitcache.store import get_codec, list_codecs


def realistic_logits(n=512, c=100, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, c)).astype(np.float32)
    logits[np.arange(n), rng.integers(0, c, n)] += 8.0  # a confident class per row
    return logits


def kl(p_logits, q_logits, t=1.0):
    p = torch.log_softmax(torch.from_numpy(p_logits).double() / t, 1)
    q = torch.log_softmax(torch.from_numpy(q_logits).double() / t, 1)
    return float((p.exp() * (p - q)).sum(1).mean())


def test_every_codec_is_listed_and_round_trips_shape_and_dtype():
    assert list_codecs() == ["bf16", "fp16", "fp32", "u8"]
    logits = realistic_logits()
    for name in list_codecs():
        codec = get_codec(name)
        stored = codec.encode(logits)
        assert set(stored) == set(codec.arrays)
        for array_name, values in stored.items():
            assert values.dtype == np.dtype(codec.arrays[array_name].dtype)
        decoded = codec.decode(stored)
        assert decoded.shape == logits.shape and decoded.dtype == np.float32


@pytest.mark.parametrize(
    "name, max_kl",  # the bounds docs/FORMAT.md quotes, with margin
    [("fp32", 0.0), ("fp16", 1e-5), ("bf16", 1e-3), ("u8", 2e-3)],
)
def test_codec_error_bounds(name, max_kl):
    logits = realistic_logits()
    decoded = get_codec(name).decode(get_codec(name).encode(logits))
    assert kl(logits, decoded, 1.0) <= max_kl
    assert kl(logits, decoded, 4.0) <= max_kl
    if name == "fp32":
        assert np.array_equal(decoded, logits)


def test_bf16_bits_match_torch_round_to_nearest_even():
    logits = realistic_logits(64, 33) * 37.0
    ours = get_codec("bf16").encode(logits)["logits"]
    theirs = torch.from_numpy(logits).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)


def test_u8_decodes_to_log_probabilities_up_to_a_row_constant():
    logits = realistic_logits(32, 10)
    decoded = get_codec("u8").decode(get_codec("u8").encode(logits))
    shift = (decoded - logits).mean(1, keepdims=True)
    step = np.ptp(logits, axis=1, keepdims=True) / 255
    assert np.all(np.abs(decoded - logits - shift) <= step)


def test_u8_constant_row_does_not_divide_by_zero():
    logits = np.zeros((3, 5), np.float32)
    decoded = get_codec("u8").decode(get_codec("u8").encode(logits))
    assert np.isfinite(decoded).all() and np.ptp(decoded, axis=1).max() == 0


def test_fp16_refuses_logits_beyond_its_range():
    with pytest.raises(SpecError, match="bf16 or --codec fp32"):
        get_codec("fp16").encode(np.array([[1e5, 0.0]], np.float32))


def test_fill_values_decode_to_nan():
    for name in list_codecs():
        codec = get_codec(name)
        unwritten = {k: np.full((2, 3) if s.per_class else (2,), s.fill_value, dtype=s.dtype)
                     for k, s in codec.arrays.items()}
        assert np.isnan(codec.decode(unwritten)).all(), name


def test_unknown_codec_lists_choices():
    with pytest.raises(SpecError, match="bf16, fp16, fp32, u8"):
        get_codec("int4")
