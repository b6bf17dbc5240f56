"""Losses against the project's reference file and DKD against its paper's equations."""

import importlib.util
from pathlib import Path

import pytest
import torch

from logitcache.errors import ConfigError, SpecError
from logitcache.losses import DKD, dist_loss, dkd_loss, get_loss, kd_loss, list_losses

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "seed_losses.py"


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.skip(f"reference losses not found at {REFERENCE}")
    spec = importlib.util.spec_from_file_location("seed_losses", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logits_grid():
    generator = torch.Generator().manual_seed(0)
    for temperature in (1.0, 4.0):
        for batch in (2, 3, 64, 256):
            for classes in (10, 100, 1000):
                for sharpness in (1.0, 10.0, 100.0):  # up to nearly one-hot distributions
                    student = torch.randn(batch, classes, generator=generator) * sharpness
                    teacher = torch.randn(batch, classes, generator=generator) * sharpness
                    yield temperature, student, teacher


def test_kl_and_dist_equal_the_reference(reference):
    worst = 0.0
    for temperature, student, teacher in logits_grid():
        ours = kd_loss(student, teacher, temperature)
        theirs = reference.KLDiv(temp=temperature)(student, teacher)
        worst = max(worst, (ours - theirs).abs().item())
        ours = dist_loss(student, teacher, temperature)
        theirs = reference.DIST(temp=temperature)(student, teacher)
        worst = max(worst, (ours - theirs).abs().item())
    assert worst <= 1e-6


def test_registered_modules_match_the_functions(reference):
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    assert get_loss("kl", temperature=4.0)(student, teacher) == kd_loss(student, teacher, 4.0)
    assert get_loss("dist", temperature=4.0, beta=2.0, gamma=0.5)(student, teacher) == \
        dist_loss(student, teacher, 4.0, 2.0, 0.5)
    assert get_loss("dkd", warmup=0)(student, teacher, labels) == dkd_loss(student, teacher, labels)
    assert list_losses() == ["dist", "dkd", "kl"]
    with pytest.raises(SpecError, match="known: dist, dkd, kl"):
        get_loss("crd")


def dkd_from_paper(student, teacher, labels, alpha, beta, temperature):
    """Zhao et al. 2022, eqs. (1)-(7), transcribed literally in float64."""
    s, t = student.double() / temperature, teacher.double() / temperature
    p_s, p_t = s.softmax(1), t.softmax(1)
    losses = []
    for i, label in enumerate(labels.tolist()):
        b_t = torch.stack([p_t[i, label], 1 - p_t[i, label]])  # binary: target vs. all others
        b_s = torch.stack([p_s[i, label], 1 - p_s[i, label]])
        tckd = (b_t * (b_t.log() - b_s.log())).sum()
        others = [c for c in range(s.shape[1]) if c != label]
        hat_t = p_t[i, others] / p_t[i, others].sum()  # distribution among non-target classes
        hat_s = p_s[i, others] / p_s[i, others].sum()
        nckd = (hat_t * (hat_t.log() - hat_s.log())).sum()
        losses.append(alpha * tckd + beta * nckd)
    return torch.stack(losses).mean() * temperature**2


@pytest.mark.parametrize("alpha, beta, temperature", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_equals_the_paper(alpha, beta, temperature):
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(16, 10, generator=generator) * 3, torch.randn(16, 10, generator=generator) * 3
    labels = torch.randint(0, 10, (16,), generator=generator)
    ours = dkd_loss(student, teacher, labels, alpha, beta, temperature)
    assert ours.item() == pytest.approx(dkd_from_paper(student, teacher, labels, alpha, beta, temperature).item(),
                                        rel=1e-4)


def test_dkd_warmup_ramps_linearly():
    student, teacher, labels = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    full = dkd_loss(student, teacher, labels)
    assert DKD(warmup=20)(student, teacher, labels, epoch=5) == pytest.approx(full.item() * 0.25)
    assert DKD(warmup=20)(student, teacher, labels, epoch=40) == pytest.approx(full.item())


def test_half_precision_inputs_are_computed_in_float32():
    generator = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(32, 100, generator=generator), torch.randn(32, 100, generator=generator)
    for dtype in (torch.float16, torch.bfloat16):
        for loss in (kd_loss, dist_loss):
            value = loss(student.to(dtype), teacher.to(dtype), 4.0)
            assert value.dtype == torch.float32
            assert value.item() == pytest.approx(loss(student.to(dtype).float(), teacher.to(dtype).float(), 4.0).item())


def test_dist_with_batch_of_one_is_a_clear_error():
    with pytest.raises(ConfigError, match="at least 2 samples"):
        dist_loss(torch.randn(1, 10), torch.randn(1, 10))


def test_gradients_flow_only_to_the_student():
    student = torch.randn(8, 10, requires_grad=True)
    teacher = torch.randn(8, 10)
    for name in ("kl", "dist"):
        get_loss(name)(student, teacher).backward()
        assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
        student.grad = None
