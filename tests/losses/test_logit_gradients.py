"""The token losses' gradient w.r.t. the logits, written out (``losses/logit_gradients.py``), equals
autograd's through ``position_loss_sums``: every target form, two temperatures, odd rows (an
empty tail, padding draws, non-target rows holding NaN), bfloat16 logits, a reused buffer; and it
steps aside where it must (a sample drawn at another T, a top-k class named twice)."""

from __future__ import annotations

import math

import pytest
import torch

from logitcache.codecs import DenseTargets, SampledTargets, TopKTargets
from logitcache.losses import position_loss_sums
from logitcache.losses.chunked import chunked_head, chunked_token_loss_sums
from logitcache.losses.logit_gradients import buffer_size, written_gradient
from logitcache.losses.token_sums import token_loss_sums
from logitcache.sources import get_model
from logitcache.sources.lm_heads import split_lm

P, V, K = 12, 53, 5
CE_WEIGHT, KD_WEIGHT = 0.6, 1.3


def _teacher(form: str, poisoned: bool = False, named_twice: bool = False) -> object:
    """Targets for P positions, with the rows a real store or a careless caller can hold
    (``poisoned``: NaN in row 1, which is no target; ``named_twice``: a top-k class twice in row 2)."""
    gen = torch.Generator().manual_seed(3)
    if form == "none":
        return None
    if form == "dense":
        logits = torch.randn(P, V, generator=gen) * 3
        logits[1] = float("nan") if poisoned else logits[1]
        return DenseTargets(logits)
    indices = torch.rand(P, V, generator=gen).argsort(-1)[:, :K]
    if form == "topk":
        probs = torch.rand(P, K + 1, generator=gen).softmax(-1)
        logprobs, tail = probs[:, :K].log(), probs[:, K].log()
        if named_twice:
            indices[2, 3] = indices[2, 1]
        tail[4] = float("-inf")  # the teacher's whole mass in its top K
        logprobs[4] = (probs[4, :K] / probs[4, :K].sum()).log()
        if poisoned:
            logprobs[1], tail[1] = float("nan"), float("nan")
        return TopKTargets(indices, logprobs, tail)
    weights = torch.tensor([3, 1, 1, 0, 0], dtype=torch.float32).repeat(P, 1) / 5  # two padding slots
    indices[:, 3:] = 0  # padding draws name class 0, which row 5 also drew
    indices[5, 0] = 0
    logprobs = -torch.rand(P, K, generator=gen) * 4
    logprobs[1] = float("nan") if poisoned else logprobs[1]
    return SampledTargets(indices, weights, logprobs)


def _positions():
    gen = torch.Generator().manual_seed(4)
    next_tokens = torch.randint(0, V, (P,), generator=gen)
    targets = torch.ones(P, dtype=torch.bool)
    targets[1] = targets[7] = False
    return next_tokens, targets


def _autograd(logits, next_tokens, targets, teacher, temperature=1.0):
    logits = logits.detach().requires_grad_()
    ce, kd = position_loss_sums(logits, next_tokens, targets, teacher, temperature)
    (grad,) = torch.autograd.grad(CE_WEIGHT * ce + KD_WEIGHT * kd, logits)
    return ce, kd, grad


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("form", ["none", "dense", "topk", "sample"])
def test_the_written_gradient_is_autograds(form, temperature):
    logits = torch.randn(P, V, generator=torch.Generator().manual_seed(5)) * 2
    next_tokens, targets = _positions()
    teacher = _teacher(form)
    written = written_gradient(logits, next_tokens, targets, teacher, CE_WEIGHT, KD_WEIGHT, temperature)
    assert written is not None
    ce, kd, grad = _autograd(logits, next_tokens, targets, teacher, temperature)
    torch.testing.assert_close(written[0], ce, rtol=1e-6, atol=0)
    torch.testing.assert_close(written[1], kd, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(written[2], grad, rtol=0, atol=1e-6 * float(grad.abs().max()))
    assert not written[2][1].any() and not written[2][7].any()


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("form", ["dense", "topk", "sample"])
def test_what_a_non_target_row_holds_reaches_neither_value_nor_gradient(form, temperature):
    """NaN there: autograd's gradient through ``torch.where`` turns it into NaN everywhere (0 x NaN);
    the written one never reads it."""
    logits = torch.randn(P, V, generator=torch.Generator().manual_seed(5))
    next_tokens, targets = _positions()
    clean = written_gradient(logits, next_tokens, targets, _teacher(form), CE_WEIGHT, KD_WEIGHT, temperature)
    poisoned = written_gradient(logits, next_tokens, targets, _teacher(form, poisoned=True), CE_WEIGHT, KD_WEIGHT,
                                temperature)
    for got, want in zip(poisoned, clean):
        assert torch.equal(got, want)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_bfloat16_logits_get_a_bfloat16_gradient_and_a_reused_buffer_is_written_over(temperature):
    logits = (torch.randn(2, 6, V, generator=torch.Generator().manual_seed(6)) * 2).bfloat16()
    next_tokens, targets = _positions()
    teacher = _teacher("topk")
    shaped = TopKTargets(teacher.indices.reshape(2, 6, K), teacher.logprobs.reshape(2, 6, K),
                         teacher.tail.reshape(2, 6))
    buffer = torch.full((buffer_size(logits, temperature) + 7,), float("nan"))  # larger than needed, and dirty
    ce, kd, grad = written_gradient(logits, next_tokens.reshape(2, 6), targets.reshape(2, 6), shaped, CE_WEIGHT,
                                    KD_WEIGHT, temperature, buffer=buffer)
    expected = _autograd(logits.reshape(P, V), next_tokens, targets, teacher, temperature)
    assert grad.dtype == torch.bfloat16 and grad.shape == logits.shape
    torch.testing.assert_close(ce, expected[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(kd, expected[1], rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.reshape(P, V), expected[2].bfloat16(), rtol=0, atol=1e-2)


def test_it_steps_aside_for_a_sample_drawn_at_another_temperature_and_a_class_named_twice():
    next_tokens, targets = _positions()
    logits = torch.randn(P, V, generator=torch.Generator().manual_seed(7))
    sample = _teacher("sample")
    drawn_at_2 = SampledTargets(sample.indices, sample.weights, sample.logprobs, torch.full((P,), 2.0))
    assert written_gradient(logits, next_tokens, targets, drawn_at_2, 1.0, 1.0) is None  # the formulas refuse it
    assert written_gradient(logits, next_tokens, targets, _teacher("topk", named_twice=True), 1.0, 1.0) is None
    no_target = targets.clone()
    no_target[2] = False  # there it is never read
    assert written_gradient(logits, next_tokens, no_target, _teacher("topk", named_twice=True), 1.0, 1.0) is not None


@pytest.mark.parametrize("temperature", [1.0, 0.5, 7.0])
@pytest.mark.parametrize("tail", [1e-40, 5e-4, 1.05e-3])
def test_a_student_sure_of_the_teachers_top_classes_gets_the_gradient_autograd_does(tail, temperature):
    """The student's tail mass Q under TINY_TAIL (summed exactly, its term taken from the logs) and
    just above it (where 1 - sum q loses digits to both paths): against float64, the written
    gradient and value are as close as the formulas' own float32 ones."""
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(P, V, generator=gen)
    kept = torch.rand(P, V, generator=gen).argsort(-1)[:, :K]
    mask = torch.ones(P, V, dtype=torch.bool).scatter_(1, kept, False)
    inside = (logits / temperature).gather(1, kept).logsumexp(1)
    outside = (logits / temperature).masked_fill(~mask, float("-inf")).logsumexp(1)
    lift = (outside + math.log1p(-tail) - math.log(tail) - inside) * temperature  # the kept classes' mass 1 - tail
    logits = logits.scatter_add(1, kept, lift[:, None].expand(P, K).contiguous())
    probs = torch.rand(P, K + 1, generator=gen)
    probs[:, K] = 20.0  # the teacher's tail: most of its mass
    probs /= probs.sum(-1, keepdim=True)
    teacher = TopKTargets(kept, probs[:, :K].log(), probs[:, K].log())
    next_tokens, targets = _positions()
    written = written_gradient(logits, next_tokens, targets, teacher, CE_WEIGHT, KD_WEIGHT, temperature)
    kd, grad = _topk_float64(logits, next_tokens, targets, teacher, temperature)
    formulas = _autograd(logits, next_tokens, targets, teacher, temperature)  # float32, as the whole logits train

    def error(found: torch.Tensor, exact: torch.Tensor) -> float:
        return float((found.detach().double() - exact).abs().max() / exact.abs().max())

    print(f"Q {tail:g} T {temperature:g}: written {error(written[2], grad):.1e}, formulas {error(formulas[2], grad):.1e}; "
          f"kd {error(written[1], kd):.1e} {error(formulas[1], kd):.1e}")
    assert error(written[2], grad) <= max(2 * error(formulas[2], grad), 1e-6)
    assert error(written[1], kd) <= max(2 * error(formulas[1], kd), 1e-6)


def _topk_float64(logits, next_tokens, targets, teacher, temperature):
    """KL (times T²) and the gradient of the weighted CE + KL in float64, the student's tail summed
    exactly."""
    from logitcache.losses.kd import _tempered_topk

    wide = logits.double().requires_grad_()
    log_q = (wide / temperature).log_softmax(-1)
    log_tail = log_q.scatter(-1, teacher.indices, float("-inf")).logsumexp(-1)
    t_top, t_tail = _tempered_topk(teacher.logprobs.double(), teacher.tail.double(), V, temperature)
    rows = (t_top.exp() * (t_top - log_q.gather(-1, teacher.indices))).sum(-1) + t_tail.exp() * (t_tail - log_tail)
    kd = torch.where(targets, rows, 0.0).sum() * temperature**2
    ce = -torch.where(targets, wide.log_softmax(-1).gather(-1, next_tokens[:, None])[:, 0], 0.0).sum()
    (grad,) = torch.autograd.grad(CE_WEIGHT * ce + KD_WEIGHT * kd, wide)
    return kd.detach(), grad


@pytest.mark.parametrize("named_twice", [False, True])
def test_a_chunked_loss_writes_its_gradient_out_or_steps_aside_and_trains_as_the_whole_logits_do(named_twice,
                                                                                               monkeypatch):
    """A top-k class named twice in one row sends that chunk to autograd; either way the batch's loss
    and gradients equal the materialised path's, and the other chunks are written out."""
    from logitcache.losses import chunked as chunked_module

    answers = []
    monkeypatch.setattr(chunked_module, "written_gradient",
                        lambda *args: answers.append(written_gradient(*args) is not None) or written_gradient(*args))
    torch.manual_seed(0)
    model = get_model("gpt:n_layer=1,n_head=2,n_embd=16,block_size=32", V)
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(8))
    split = split_lm(model, ids[:1])
    with torch.no_grad():
        hidden = split.hidden_states(ids)
    indices = torch.rand(2, 16, V, generator=torch.Generator().manual_seed(9)).argsort(-1)[..., :K]
    if named_twice:
        indices[0, 2, 1] = indices[0, 2, 0]
    probs = torch.rand(2, 16, K + 1, generator=torch.Generator().manual_seed(10)).softmax(-1)
    teacher = TopKTargets(indices, probs[..., :K].log(), probs[..., K].log())
    head = chunked_head(model, split.head_logits, hidden)
    whole_hidden, chunk_hidden = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    whole = token_loss_sums(split.head_logits(whole_hidden), ids, teacher).total(1.0, 1.0)
    chunked = chunked_token_loss_sums(chunk_hidden, head, ids, teacher, chunk_size=8).total(1.0, 1.0)
    assert answers == [not named_twice, True, True, True]  # 4 chunks of 2 x 4 positions
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=0)
    expected = torch.autograd.grad(whole, [whole_hidden, *head.parameters])
    for got, want in zip(torch.autograd.grad(chunked, [chunk_hidden, *head.parameters]), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_a_sample_store_drawn_at_another_temperature_is_still_refused_when_chunked():
    from logitcache.errors import ConfigError

    torch.manual_seed(0)
    model = get_model("gpt:n_layer=1,n_head=2,n_embd=16,block_size=32", V)
    ids = torch.randint(0, V, (1, P), generator=torch.Generator().manual_seed(8))
    split = split_lm(model, ids)
    hidden = split.hidden_states(ids)
    sample = _teacher("sample")
    drawn_at_2 = SampledTargets(sample.indices[None], sample.weights[None], sample.logprobs[None],
                                torch.full((1,), 2.0))
    with pytest.raises(ConfigError, match="differs from the temperature 2"):
        chunked_token_loss_sums(hidden, chunked_head(model, split.head_logits, hidden), ids, drawn_at_2, chunk_size=4)


@pytest.mark.parametrize("form", ["dense", "topk", "sample"])
def test_autocast_around_the_loss_does_not_lower_its_arithmetic(form):
    """The head runs under the caller's autocast; the written loss stays float32 (autocast would
    run its ``vecdot`` in bfloat16)."""
    logits = torch.randn(P, V, generator=torch.Generator().manual_seed(5)) * 4
    next_tokens, targets = _positions()
    plain = written_gradient(logits, next_tokens, targets, _teacher(form), CE_WEIGHT, KD_WEIGHT, 2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = written_gradient(logits, next_tokens, targets, _teacher(form), CE_WEIGHT, KD_WEIGHT, 2.0)
    for got, want in zip(autocast, plain):
        assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want)


def test_the_chunks_buffer_is_made_on_the_logits_device():
    """A CUDA run's first chunk once met a CPU tensor that could not take the device's storage."""
    from logitcache.losses.chunked import LossChunks

    chunks = LossChunks(None, None, None, None, 1.0, (1.0, 1.0), [])
    assert chunks._buffer(10, torch.device("cpu")).device.type == "cpu"
    on_meta = chunks._buffer(10, torch.device("meta"))
    assert on_meta.device.type == "meta" and on_meta.numel() >= 10
    assert chunks._buffer(8, torch.device("meta")) is on_meta  # smaller: the same buffer
