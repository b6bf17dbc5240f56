"""Token-level losses against dense references: exact where the stored form allows, unbiased where
it samples, and averaged over target tokens only."""

import math

import pytest
import torch

from logitcache.errors import ConfigError
from logitcache.losses import (
    dense_token_kl,
    sampled_token_kl,
    token_kl,
    token_loss,
    token_loss_sums,
    token_loss_names,
    topk_token_kl,
)


def _topk_targets(teacher_logits, k):
    log_p = teacher_logits.double().log_softmax(-1)
    indices = log_p.topk(k, -1).indices
    tail = log_p.scatter(-1, indices, float("-inf")).logsumexp(-1)
    return indices, log_p.gather(-1, indices).float(), tail.float()


def _bucketed_kl(p, q, indices):
    """KL between two dense distributions (P, V) coarsened to the K indices plus one bucket."""
    p_top, q_top = p.gather(-1, indices), q.gather(-1, indices)
    p_b = torch.cat([p_top, 1 - p_top.sum(-1, keepdim=True)], -1)
    q_b = torch.cat([q_top, 1 - q_top.sum(-1, keepdim=True)], -1)
    return (p_b * (p_b.log() - q_b.log())).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kl_is_the_kl_over_the_kept_tokens_and_one_tail_bucket(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(64, 50) * 2, torch.randn(64, 50) * 2
    indices, logprobs, tail = _topk_targets(teacher, 8)
    found = topk_token_kl(student, indices, logprobs, tail, temperature)
    # The teacher at T as the topk codec decodes it: kept tokens exact, the tail spread evenly.
    dense = torch.full((64, 50), 0.0, dtype=torch.float64)
    dense[:] = (tail.double() - math.log(42))[:, None]
    dense.scatter_(-1, indices, logprobs.double())
    p = (dense / temperature).softmax(-1)
    q = (student.double() / temperature).softmax(-1)
    expected = _bucketed_kl(p, q, indices) * temperature**2
    torch.testing.assert_close(found.double(), expected, rtol=1e-4, atol=1e-5)


def test_topk_kl_stays_exact_when_the_students_tail_is_tiny():
    """Where the student puts all but <1e-3 of its mass on the kept tokens, 1 - sum(top) would lose
    the tail's digits; those rows sum the other tokens exactly, value and gradient."""
    torch.manual_seed(1)
    student = torch.randn(32, 40)
    student[:16, :4] += 25.0  # a confident student: tails around 1e-9
    indices = torch.arange(4).repeat(32, 1)
    logprobs, tail = torch.full((32, 4), math.log(0.2)), torch.full((32,), math.log(0.2))
    a, b = student.clone().requires_grad_(), student.double().clone().requires_grad_()
    found = topk_token_kl(a, indices, logprobs, tail)
    log_q = b.log_softmax(-1)
    log_q_tail = log_q.scatter(-1, indices, float("-inf")).logsumexp(-1)
    expected = (0.2 * (logprobs.double() - log_q.gather(-1, indices))).sum(-1) + 0.2 * (math.log(0.2) - log_q_tail)
    torch.testing.assert_close(found.double(), expected, rtol=1e-5, atol=1e-4)
    found.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-4)


def test_sampled_kl_is_unbiased_for_the_dense_kl():
    torch.manual_seed(2)
    student, teacher = torch.randn(4, 30), torch.randn(4, 30) * 2
    temperature, k, repeats = 2.0, 6, 4000
    p = (teacher / temperature).softmax(-1)
    draws = torch.multinomial(p.repeat(repeats, 1), k, replacement=True)  # (repeats * 4, k)
    weights = torch.full(draws.shape, 1 / k)
    logprobs = p.log().repeat(repeats, 1).gather(-1, draws)
    estimate = sampled_token_kl(student.repeat(repeats, 1), draws, weights, logprobs, temperature)
    dense = dense_token_kl(student, teacher, temperature)
    torch.testing.assert_close(estimate.reshape(repeats, 4).mean(0), dense, rtol=0.03, atol=0.01)


def test_sampled_targets_refuse_another_temperature():
    teacher = {"indices": torch.zeros(2, 3, dtype=torch.long), "weights": torch.ones(2, 3) / 3,
               "logprobs": torch.zeros(2, 3), "temperature": torch.tensor([2.0])}
    with pytest.raises(ConfigError, match="temperature 1 differs from the temperature 2"):
        token_kl(torch.randn(2, 5), teacher, 1.0)
    assert torch.isfinite(token_kl(torch.randn(2, 5), teacher, 2.0)).all()


def test_losses_average_over_target_tokens_and_ignore_the_rest():
    torch.manual_seed(3)
    logits, teacher = torch.randn(2, 6, 10), torch.randn(2, 6, 10)
    labels = torch.tensor([[-100, 1, 2, 3, 4, 5], [-100, 7, -100, -100, -100, -100]])  # 5 targets + 1
    sums = token_loss_sums(logits, labels, {"logits": teacher}, 1.0)
    targets = [(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 3, 4), (0, 4, 5), (1, 0, 7)]  # (sequence, position, next token)
    ce = [-logits[i, t].log_softmax(-1)[y] for i, t, y in targets]
    kl = [dense_token_kl(logits[i, t][None], teacher[i, t][None])[0] for i, t, _ in targets]
    assert sums.count == 6
    torch.testing.assert_close(sums.mean(ce_weight=1.0, kd_weight=0.5), (sum(ce) + 0.5 * sum(kl)) / 6)
    changed_logits, changed_teacher = logits.clone(), teacher.clone()
    changed_logits[1, 1:], changed_teacher[1, 1:] = 99.0, -99.0  # positions whose next token is no target
    changed = token_loss_sums(changed_logits, labels, {"logits": changed_teacher}, 1.0)
    torch.testing.assert_close(changed.mean(), sums.mean())


def test_only_ce_and_kl_are_defined_on_tokens():
    assert token_loss_names() == ["ce", "kl"] and token_loss("kl").needs_teacher
    with pytest.raises(ConfigError, match="--loss dist is not defined on token positions; token data trains with "
                                          "--loss ce or kl"):
        token_loss("dist")
