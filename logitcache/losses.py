"""Distillation losses as pure tensor functions, plus thin modules that hold their settings.

    >>> kd_loss(student_logits, teacher_logits, temperature=4.0)        # Hinton KD (KLDiv)
    >>> dist_loss(student_logits, teacher_logits, temperature=1.0)      # DIST, Huang et al. 2022
    >>> dkd_loss(student_logits, teacher_logits, labels, alpha=1.0, beta=8.0, temperature=4.0)
    >>> get_loss("dist", temperature=4.0)(student_logits, teacher_logits, labels, epoch=1)
    >>> topk_kd_loss(...), sampled_kd_loss(...)   # KD from sparse stores (topk:K, sample:K)
    >>> loss_spec("dist").build(config), loss_spec("dist").min_batch   # what the trainer asks

Every loss ``train`` takes, ``ce`` included, is one registered ``Loss``: its module, its default
temperature, the smallest batch it is defined on, whether it reads sparse targets or mixed
samples, and which options it takes. Adding a loss touches this file (and its test) only.

All arithmetic runs in float32 whatever the inputs' dtype: stored fp16/bf16 logits and autocast
outputs are upcast first (DIST's 1e-8 epsilon vanishes in half precision). The training total is
``ce_weight * CE + kd_weight * KD`` (see train/loop.py). Shapes: logits (B, C), labels (B,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .codecs import DenseTargets, SampledTargets, Targets, TopKTargets
from .errors import ConfigError, SpecError
from .registry import Registry

LOSSES = Registry("loss")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2, batch mean.

    The value is computed exactly as the reference does (log_softmax, softmax, ``kl_div``), and its
    gradient in one pass, ``T * (q - p) / B`` (``_KDivergence``), instead of autograd back through
    ``kl_div`` and ``log_softmax``: a third less time, the same value to the bit."""
    student, teacher = student_logits.float(), teacher_logits.float()
    if teacher.requires_grad:  # a teacher that learns too: let autograd give it its gradient
        return _kd_value(student, teacher, temperature)
    return _KDivergence.apply(student, teacher, temperature)


def _kd_value(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    log_q = F.log_softmax(student / temperature, dim=1)
    p = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_q, p, reduction="none").sum(1).mean() * temperature**2


class _KDivergence(torch.autograd.Function):
    """``kd_loss`` with its gradient written out: d/ds [T^2/B sum p (log p - log_softmax(s/T))] is
    T/B (softmax(s/T) - p) for a teacher distribution p (sum 1). The forward keeps log q and p
    (no autograd graph), the backward is one elementwise pass over them."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        log_q = F.log_softmax(student / temperature, dim=1)
        p = F.softmax(teacher / temperature, dim=1)
        ctx.save_for_backward(log_q, p)
        ctx.temperature = temperature
        return F.kl_div(log_q, p, reduction="none").sum(1).mean() * temperature**2

    @staticmethod
    def backward(ctx, grad: Tensor):
        log_q, p = ctx.saved_tensors
        return log_q.exp().sub_(p).mul_(grad * ctx.temperature / log_q.shape[0]), None, None


def topk_kd_loss(student_logits: Tensor, indices: Tensor, logprobs: Tensor, tail: Tensor,
                 temperature: float = 1.0) -> Tensor:
    """KD from a ``topk:K`` store without a dense teacher: KL(teacher || student) with both
    distributions coarsened to the teacher's K classes plus one tail bucket, times T^2.

    indices, logprobs: (B, K) the teacher's top classes and log-probabilities; tail: (B,) log of
    the remaining mass. At T=1 the teacher side is exact. At other temperatures the kept classes
    are tempered exactly and the tail as if its mass were spread evenly (the dense decoding's view).
    """
    num_classes, k = student_logits.shape[1], indices.shape[1]
    s = student_logits.float() / temperature
    norm_s = s.logsumexp(1)
    log_q_top = s.gather(1, indices) - norm_s[:, None]
    log_q_tail = s.scatter(1, indices, float("-inf")).logsumexp(1) - norm_s
    spread = math.log(num_classes - k)
    t_top = logprobs.float() / temperature
    t_tail = (tail.float() - spread) / temperature + spread
    norm_t = torch.cat([t_top, t_tail[:, None]], 1).logsumexp(1)
    log_p_top, log_p_tail = t_top - norm_t[:, None], t_tail - norm_t
    kl = (log_p_top.exp() * (log_p_top - log_q_top)).sum(1) + log_p_tail.exp() * (log_p_tail - log_q_tail)
    return kl.mean() * temperature**2


def sampled_kd_loss(student_logits: Tensor, indices: Tensor, weights: Tensor, logprobs: Tensor,
                    temperature: float = 1.0) -> Tensor:
    """KD from a ``sample:K`` store: ``sum_k w_k (log p_k - log q_k)``, an unbiased estimate of
    KL(p_T || q_T) (and of its gradient), where the classes were drawn from p_T and w_k = count/K.

    indices, weights, logprobs: (B, K); padding entries have weight 0. ``temperature`` must be the
    one the samples were drawn at (train checks this at start-up).
    """
    log_q = (student_logits.float() / temperature).log_softmax(1).gather(1, indices)
    return (weights * (logprobs - log_q)).sum(1).mean() * temperature**2


def kd_from_targets(student_logits: Tensor, targets: Tensor | Targets, temperature: float) -> Tensor:
    """Hinton KD from dense teacher logits (a tensor, or ``DenseTargets``), or from a sparse codec's
    typed targets (``TopKTargets``, ``SampledTargets``), by their type."""
    match targets:
        case TopKTargets():
            return topk_kd_loss(student_logits, targets.indices, targets.logprobs, targets.tail, temperature)
        case SampledTargets():
            return sampled_kd_loss(student_logits, targets.indices, targets.weights, targets.logprobs, temperature)
        case DenseTargets():
            return kd_loss(student_logits, targets.logits, temperature)
        case Targets():
            raise TypeError(f"KD has no form for {type(targets).__name__} targets")
    return kd_loss(student_logits, targets, temperature)


def _pearson_distance(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """1 - mean over rows of the Pearson correlation between rows of a and b."""
    a = a - a.mean(1).unsqueeze(1)
    b = b - b.mean(1).unsqueeze(1)
    correlation = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1 - correlation.mean()


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """DIST: beta * inter-class + gamma * intra-class Pearson distance of softened predictions.

    The intra-class term correlates each class's column across the batch, so it depends on the
    batch a process sees (under DDP: the per-process batch) and needs at least 2 samples.
    """
    if student_logits.shape[0] < 2:
        raise ConfigError(
            "DIST needs at least 2 samples per batch: its intra-class term correlates over the batch"
        )
    p_student = (student_logits.float() / temperature).softmax(dim=1)
    p_teacher = (teacher_logits.float() / temperature).softmax(dim=1)
    inter = temperature**2 * _pearson_distance(p_student, p_teacher, eps)
    intra = temperature**2 * _pearson_distance(p_student.transpose(0, 1), p_teacher.transpose(0, 1), eps)
    return beta * inter + gamma * intra


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD, times T^2, batch mean.

    TCKD is the KL between binary (target, all others) probabilities; NCKD the KL between the
    distributions over the non-target classes alone. Non-target classes are masked out with -inf
    rather than a large constant, and their 0 * log 0 terms are zeroed explicitly.
    """
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    target = F.one_hot(labels, s.shape[1]).bool()
    p_s, p_t = s.softmax(1), t.softmax(1)
    b_s = torch.stack([p_s[target], (p_s * ~target).sum(1)], dim=1)  # (B, 2)
    b_t = torch.stack([p_t[target], (p_t * ~target).sum(1)], dim=1)
    tckd = (b_t * (b_t.clamp_min(1e-30).log() - b_s.clamp_min(1e-30).log())).sum(1)
    log_q_s = s.masked_fill(target, float("-inf")).log_softmax(1)
    log_q_t = t.masked_fill(target, float("-inf")).log_softmax(1)
    nckd = torch.where(target, 0.0, log_q_t.exp() * (log_q_t - log_q_s)).sum(1)
    return (alpha * tckd + beta * nckd).mean() * temperature**2


class KLDiv(nn.Module):
    """Hinton KD. Holds the temperature; ``forward`` calls ``kd_loss``."""

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits, teacher_logits, labels=None, epoch: int = 1):
        return kd_from_targets(student_logits, teacher_logits, self.temperature)


class DIST(nn.Module):
    """DIST. Holds temperature, beta (inter-class) and gamma (intra-class)."""

    def __init__(self, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0):
        super().__init__()
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    def forward(self, student_logits, teacher_logits, labels=None, epoch: int = 1):
        return dist_loss(student_logits, teacher_logits, self.temperature, self.beta, self.gamma)


class DKD(nn.Module):
    """DKD with the paper's linear warm-up: the loss is scaled by min(epoch / warmup, 1)."""

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0, warmup: int = 20):
        super().__init__()
        self.temperature, self.alpha, self.beta, self.warmup = temperature, alpha, beta, warmup

    def forward(self, student_logits, teacher_logits, labels, epoch: int = 1):
        ramp = min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        return ramp * dkd_loss(student_logits, teacher_logits, labels, self.alpha, self.beta, self.temperature)


@dataclass(frozen=True)
class Loss:
    """A loss ``train`` takes, and what the trainer needs to know about it."""

    name: str
    module: type[nn.Module] | None  # None: the labels' cross-entropy alone, no teacher
    temperature: float = 1.0  # the default --temperature
    min_batch: int = 1  # the smallest batch its value is defined on (the last batch is dropped below it)
    reads_sparse: bool = False  # learns from topk:K / sample:K targets without building a dense row
    mixes: bool = True  # defined on Mixup/CutMix samples, which have two classes each
    options: dict[str, str] = field(default_factory=dict)  # module argument -> TrainConfig field
    warmup: str | None = None  # the TrainConfig field of its warm-up epochs: a run checks it learns after them

    @property
    def needs_teacher(self) -> bool:
        return self.module is not None

    def build(self, config) -> nn.Module | None:
        """The module for a run's options (``config``: a TrainConfig), or None for ``ce``."""
        if self.module is None:
            return None
        return self.module(temperature=config.temperature,
                           **{argument: getattr(config, option) for argument, option in self.options.items()})


for _loss in (
    Loss("ce", None),
    Loss("kl", KLDiv, temperature=4.0, reads_sparse=True),
    Loss("dist", DIST, temperature=1.0, min_batch=2,  # the intra-class term correlates over the batch
         options={"beta": "dist_beta", "gamma": "dist_gamma"}),
    Loss("dkd", DKD, temperature=4.0, mixes=False,  # splits the target class from the rest: one per sample
         options={"alpha": "dkd_alpha", "beta": "dkd_beta", "warmup": "dkd_warmup"}, warmup="dkd_warmup"),
):
    LOSSES.register(_loss.name)(_loss)


def loss_spec(name: str) -> Loss:
    """The registered loss ``name`` (SpecError listing the known ones if there is none)."""
    return LOSSES.get(name)


def loss_names() -> list[str]:
    """Every loss ``train`` takes, ``ce`` included."""
    return LOSSES.names()


def list_losses(pattern: str = "*") -> list[str]:
    """The KD losses: the ones that learn from a teacher (``ce`` is the labels alone)."""
    return [name for name in LOSSES.names(pattern) if LOSSES.get(name).needs_teacher]


def get_loss(name: str, **kwargs) -> nn.Module:
    """The KD loss module called ``name`` with its settings.

    Raises:
        SpecError: not a KD loss (``ce`` has no module); the message lists the KD losses.
    """
    if name not in list_losses():
        raise SpecError(f"unknown loss {name!r}; known: {', '.join(list_losses())}")
    return LOSSES.get(name).module(**kwargs)
