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
    with pytest.raises(SpecError, match="bf16, fp16, fp32, u8, topk:K"):
        get_codec("int4")


@pytest.mark.parametrize("c, k", [(10, 3), (1000, 50), (70_000, 10)])
def test_topk_keeps_the_top_classes_and_the_tail_mass_exactly(c, k):
    logits = realistic_logits(16, c, seed=3)
    codec = get_codec(f"topk:{k}").for_classes(c)
    stored = codec.encode(logits)
    ids_bytes = k * 2 if c <= 65536 else -(-k * 17 // 8)  # uint16, else 17 bits: 16 + 1 packed (format v5)
    assert stored["indices"].dtype == np.uint16
    assert stored["indices"].shape == stored["logprobs"].shape == (16, k)
    exact = torch.log_softmax(torch.from_numpy(logits).double(), 1).numpy()
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    assert np.array_equal(codec.read_indices(stored), top)
    assert np.allclose(stored["logprobs"], np.take_along_axis(exact, top, 1), atol=2e-2, rtol=1e-3)
    tail_mass = 1 - np.exp(np.take_along_axis(exact, top, 1)).sum(1)
    assert np.allclose(np.exp(stored["tail"].astype(np.float64)), tail_mass, rtol=1e-5, atol=1e-12)
    decoded = codec.decode(stored)
    assert np.allclose(np.exp(decoded.astype(np.float64)).sum(1), 1, atol=1e-2)  # a distribution again
    assert np.array_equal(decoded.argmax(1), logits.argmax(1))
    assert np.allclose(codec.stored_mass(stored), 1 - tail_mass, atol=1e-2)
    assert codec.bytes_per_sample(c) == ids_bytes + k * 2 + 4


def test_topk_is_exact_on_the_kept_classes_at_any_temperature():
    logits = realistic_logits(8, 100)
    codec = get_codec("topk:20").for_classes(100)
    decoded = codec.decode(codec.encode(logits))
    top = np.argsort(-logits, axis=1)[:, :20]
    for t in (1.0, 4.0):  # ratios among the kept classes survive tempering
        kept = np.take_along_axis(decoded, top, 1) / t
        original = np.take_along_axis(logits, top, 1) / t
        assert np.allclose(kept - kept[:, :1], original - original[:, :1], atol=0.05)


def test_topk_unwritten_rows_decode_to_nan_and_bad_k_is_refused():
    codec = get_codec("topk:4").for_classes(10)
    unwritten = {k: np.full((2, s.width) if s.per_class else (2,), s.fill_value, dtype=s.dtype)
                 for k, s in codec.arrays.items()}
    assert np.isnan(codec.decode(unwritten)).all()
    for name in ("topk:0", "topk:x", "topk:"):
        with pytest.raises(SpecError, match="positive number"):
            get_codec(name)
    with pytest.raises(SpecError, match="keeps 10 of only 10 classes"):
        get_codec("topk:10").for_classes(10)


def test_fp16_casts_are_numpys_bit_for_bit():
    """The fp16 codec casts with torch (numpy's half casts are 5-10x slower); the bytes must be the
    ones numpy writes, over a sweep of every exponent (subnormals, ties, overflow to inf)."""
    from logitcache.codecs import cast

    bits = np.arange(0, 2**32, 251, dtype=np.uint64).astype(np.uint32)
    singles = bits.view(np.float32)
    singles = singles[np.isfinite(singles)]
    with np.errstate(over="ignore"):
        assert np.array_equal(cast(singles, np.float16).view(np.uint16), singles.astype(np.float16).view(np.uint16))
    halves = np.arange(2**16, dtype=np.uint16).view(np.float16)
    finite = np.isfinite(halves)
    widened = cast(halves, np.float32)
    assert np.array_equal(widened[finite].view(np.uint32), halves[finite].astype(np.float32).view(np.uint32))
    assert np.isnan(widened[np.isnan(halves)]).all()
    frozen = realistic_logits()
    frozen.flags.writeable = False  # torch shares no read-only memory: numpy's cast, the same bytes
    assert np.array_equal(cast(frozen, np.float16), frozen.astype(np.float16))
    codec = get_codec("fp16")
    assert np.array_equal(codec.encode(realistic_logits())["logits"], realistic_logits().astype(np.float16))


def test_fp16_rows_ok_reads_the_bits_and_flags_unwritten_and_infinite_rows():
    stored = get_codec("fp16").encode(realistic_logits(n=6))
    stored["logits"][1, 3] = np.nan  # the fill value
    stored["logits"][4, 0] = -np.inf
    assert get_codec("fp16").rows_ok(stored).tolist() == [True, False, True, True, False, True]
