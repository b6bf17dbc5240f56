"""Feature losses against transcriptions of their reference code, written here from the papers and the
reference implementations' arithmetic (mdistiller's AT, RKD, FitNet, ReviewKD; ICKD's official code),
sample by sample in float64; and every registered feature loss on the contract the trainer relies on."""

import math

import pytest
import torch
import torch.nn.functional as F

from logitcache.errors import ConfigError, SpecError
from logitcache.features.extract import attention, gram
from logitcache.features.losses import (
    AT,
    ICKD,
    RKD,
    FitNet,
    Level,
    ReviewKD,
    at_loss,
    feature_loss_spec,
    hcl_loss,
    ickd_loss,
    list_feature_losses,
    rkd_loss,
)


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def relu_randn(*shape, seed=0):
    return randn(*shape, seed=seed).relu()  # post-ReLU maps, as the reference code taps them


# -- transcriptions ------------------------------------------------------------------------------

def at_reference(student_maps, teacher_maps):
    """Zagoruyko & Komodakis, as the reference code computes it: per sample, the spatial map of the mean over
    channels of the squared activations, divided by its L2 norm; the squared differences averaged over the
    batch and positions; the larger of two maps average-pooled to the smaller one's size; levels summed."""
    total = 0.0
    for fs, ft in zip(student_maps, teacher_maps):
        fs, ft = fs.double(), ft.double()
        side = min(fs.shape[2], ft.shape[2])
        fs, ft = F.adaptive_avg_pool2d(fs, side), F.adaptive_avg_pool2d(ft, side)
        squares = 0.0
        for b in range(fs.shape[0]):
            qs = sum(fs[b, c] ** 2 for c in range(fs.shape[1])).flatten() / fs.shape[1]
            qt = sum(ft[b, c] ** 2 for c in range(ft.shape[1])).flatten() / ft.shape[1]
            qs, qt = qs / max(qs.norm(), 1e-12), qt / max(qt.norm(), 1e-12)
            squares += ((qs - qt) ** 2).sum()
        total += squares / (fs.shape[0] * side * side)
    return float(total)


def huber(x, y):
    d = abs(x - y)
    return 0.5 * d * d if d <= 1 else d - 0.5


def rkd_reference(student, teacher, distance_weight=25.0, angle_weight=50.0):
    """Park et al. 2019, eqs. (3)-(7), with the reference code's means: distances normalised by their mean
    over distinct pairs, Huber over all B² pairs (0 on the diagonal); angles at each vertex i between
    e_j - e_i and e_k - e_i (0 when j or k is i), Huber over all B³ triplets."""
    s, t = student.double(), teacher.double()
    n = len(s)

    def distances(e):
        d = [[float((e[i] - e[j]).norm()) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[d[i][j] / mean for j in range(n)] for i in range(n)]

    def cosine(e, i, j, k):
        if j == i or k == i:
            return 0.0
        a, b = e[j] - e[i], e[k] - e[i]
        return float(a @ b / (a.norm() * b.norm()))

    ds, dt = distances(s), distances(t)
    loss_d = sum(huber(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n**2
    loss_a = sum(huber(cosine(s, i, j, k), cosine(t, i, j, k))
                 for i in range(n) for j in range(n) for k in range(n)) / n**3
    return distance_weight * loss_d + angle_weight * loss_a


def batch_norm_train(x, bn):
    """Batch norm in training mode with the module's affine weights: per-channel batch statistics."""
    dims = [0, 2, 3] if x.ndim == 4 else [0]
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    shape = [1, -1] + [1] * (x.ndim - 2)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.double().view(shape) + bn.bias.double().view(shape)


@torch.no_grad()
def fitnet_reference(student_map, teacher_map, regressor):
    """Romero et al. 2015 as CIFAR code runs it: conv regressor (its kind by the sizes), BN, ReLU, then
    the mean squared error."""
    conv, x = regressor.conv, student_map.double()
    weight, bias = conv.weight.double(), conv.bias.double()
    if isinstance(conv, torch.nn.ConvTranspose2d):
        out = F.conv_transpose2d(x, weight, bias, stride=2, padding=1)
    else:
        out = F.conv2d(x, weight, bias, stride=conv.stride, padding=conv.padding)
    out = batch_norm_train(out, regressor.bn).relu()
    return float(((out - teacher_map.double()) ** 2).mean())


@torch.no_grad()
def ickd_reference(student_map, teacher_map, embed):
    """Liu et al. 2021 (ICKD's code): the student embedded by a 1x1 conv and BN; per sample the C x C Gram
    of the (C, HW) features, each row divided by its L2 norm; the squared differences summed and divided
    by C·B."""
    x = torch.einsum("oc,bchw->bohw", embed.conv.weight.double()[:, :, 0, 0], student_map.double())
    x = batch_norm_train(x, embed.bn)
    total, (b, c) = 0.0, x.shape[:2]
    for i in range(b):
        fs, ft = x[i].reshape(c, -1), teacher_map[i].double().reshape(c, -1)
        gs, gt = fs @ fs.T, ft @ ft.T
        gs = gs / gs.norm(dim=1, keepdim=True).clamp_min(1e-12)
        gt = gt / gt.norm(dim=1, keepdim=True).clamp_min(1e-12)
        total += float(((gs - gt) ** 2).sum())
    return total / (c * b)


def hcl_reference(student_maps, teacher_maps):
    """Chen et al. 2021, HCL: per level the MSE, plus the MSE of 4x4, 2x2, 1x1 average pools smaller than the
    map, weighted 1/2, 1/4, 1/8, divided by the sum of the weights; levels summed."""
    total = 0.0
    for fs, ft in zip(student_maps, teacher_maps):
        fs, ft = fs.double(), ft.double()
        level, weights, weight = float(((fs - ft) ** 2).mean()), 1.0, 1.0
        for side in (4, 2, 1):
            if side < fs.shape[2]:
                weight /= 2
                level += weight * float(((F.adaptive_avg_pool2d(fs, side) - F.adaptive_avg_pool2d(ft, side)) ** 2).mean())
                weights += weight
        total += level / weights
    return total


@torch.no_grad()
def abf_reference(fusion, x, below, out_size):
    """ReviewKD's ABF: 1x1 conv + BN; with a level below, nearest-upsample it, 1x1 conv + sigmoid of both to
    two maps, x·a0 + below·a1; nearest-resize to the teacher's size; 3x3 conv + BN. Returns (output, x)."""
    x = F.conv2d(x.double(), fusion.reduce[0].weight.double())
    x = batch_norm_train(x, fusion.reduce[1])
    if below is not None:
        below = F.interpolate(below, size=x.shape[-2:], mode="nearest")
        conv = fusion.attention[0]
        z = torch.sigmoid(F.conv2d(torch.cat([x, below], 1), conv.weight.double(), conv.bias.double()))
        x = x * z[:, 0:1] + below * z[:, 1:2]
    if tuple(x.shape[-2:]) != tuple(out_size):
        x = F.interpolate(x, size=out_size, mode="nearest")
    out = batch_norm_train(F.conv2d(x, fusion.out[0].weight.double(), padding=1), fusion.out[1])
    return out, x


# -- parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("student_side, teacher_side", [(8, 8), (8, 4), (4, 8)])
def test_at_equals_the_reference(student_side, teacher_side):
    student = [relu_randn(6, 4, student_side, student_side, seed=1), relu_randn(6, 8, 4, 4, seed=2)]
    teacher = [relu_randn(6, 16, teacher_side, teacher_side, seed=3), relu_randn(6, 32, 4, 4, seed=4)]
    expected = at_reference(student, teacher)
    levels = [Level(f"l{i}", tuple(s.shape[1:]), "map", tuple(t.shape[1:])) for i, (s, t) in
              enumerate(zip(student, teacher))]
    assert AT(levels)(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    if student_side >= teacher_side:  # a cached attention map gives the same loss as the map it came from
        cached = [attention(t) for t in teacher]
        assert at_loss(student, cached).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("batch, dim, scale", [(2, 4, 1.0), (7, 16, 1.0), (9, 64, 10.0)])
def test_rkd_equals_the_reference(batch, dim, scale):
    student, teacher = randn(batch, dim, seed=5, scale=scale), randn(batch, 2 * dim, seed=6, scale=scale)
    assert rkd_loss(student, teacher).item() == pytest.approx(rkd_reference(student, teacher), rel=1e-5)
    maps = teacher.view(batch, 2 * dim, 1, 1).expand(-1, -1, 3, 3)  # a map pools to the same embedding
    value = RKD([Level("e", (dim,), "map", (2 * dim, 3, 3))])([student], [maps])
    assert value.item() == pytest.approx(rkd_reference(student, teacher), rel=1e-5)


@pytest.mark.parametrize("student_shape, teacher_shape", [((4, 8, 8), (16, 8, 8)), ((4, 8, 8), (16, 4, 4)),
                                                          ((4, 4, 4), (16, 8, 8)), ((4, 8, 8), (16, 6, 6))])
def test_fitnet_equals_the_reference(student_shape, teacher_shape):
    torch.manual_seed(0)
    loss = FitNet([Level("h", student_shape, "map", teacher_shape)])
    student, teacher = relu_randn(5, *student_shape, seed=7), relu_randn(5, *teacher_shape, seed=8)
    expected = fitnet_reference(student, teacher, loss.regressors[0])
    assert loss([student], [teacher]).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("cached", ["map", "gram"])
def test_ickd_equals_the_reference(cached):
    torch.manual_seed(0)
    loss = ICKD([Level("g", (4, 8, 8), cached, (16, 8, 8) if cached == "map" else (16, 16))])
    student, teacher = relu_randn(6, 4, 8, 8, seed=9), relu_randn(6, 16, 8, 8, seed=10)
    expected = ickd_reference(student, teacher, loss.embeds[0])
    value = loss([student], [teacher if cached == "map" else gram(teacher)])
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert ickd_loss(loss.embeds[0](student), gram(teacher)).item() == pytest.approx(expected, rel=1e-5)


def test_reviewkd_equals_the_reference():
    torch.manual_seed(0)
    student = [relu_randn(4, 4, 8, 8, seed=11), relu_randn(4, 8, 4, 4, seed=12), randn(4, 8, seed=13)]
    teacher = [randn(4, 16, 8, 8, seed=14), randn(4, 32, 4, 4, seed=15), randn(4, 32, seed=16)]
    levels = [Level("a", (4, 8, 8), "map", (16, 8, 8)), Level("b", (8, 4, 4), "map", (32, 4, 4)),
              Level("e", (8,), "pool", (32,))]
    loss = ReviewKD(levels)
    x = [s.double() if s.ndim == 4 else s.double()[:, :, None, None] for s in student]
    sizes = [(8, 8), (4, 4), (1, 1)]
    fused, below = [None] * 3, None
    for i in (2, 1, 0):
        fused[i], below = abf_reference(loss.fusions[i], x[i], below, sizes[i])
    targets = [t if t.ndim == 4 else t[:, :, None, None] for t in teacher]
    expected = hcl_reference(fused, targets)
    assert loss(student, teacher, epoch=20).item() == pytest.approx(expected, rel=1e-5)
    assert loss(student, teacher, epoch=5).item() == pytest.approx(expected * 5 / 20, rel=1e-5)  # warm-up
    assert hcl_loss([f.float() for f in fused], targets).item() == pytest.approx(expected, rel=1e-5)


# -- the registry's contract --------------------------------------------------------------------

LEVELS = {
    "at": [Level("a", (4, 8, 8), "attention", (8, 8))],
    "rkd": [Level("e", (8,), "pool", (16,))],
    "fitnet": [Level("m", (4, 8, 8), "map", (16, 4, 4))],
    "ickd": [Level("g", (4, 4, 4), "gram", (16, 16))],
    "reviewkd": [Level("m", (4, 8, 8), "map", (16, 8, 8)), Level("e", (8,), "pool", (16,))],
}


def cached_like(level, batch=6, seed=0):
    return relu_randn(batch, *level.teacher_shape, seed=seed)


@pytest.mark.parametrize("name", list_feature_losses())
def test_every_feature_loss_trains_the_student_and_its_connectors(name):
    spec = feature_loss_spec(name)
    assert spec.weight > 0 and spec.accepts and spec.min_batch == 2
    levels = LEVELS[name]
    loss = spec.build(levels)
    student = [relu_randn(6, *lv.student_shape, seed=i).requires_grad_() for i, lv in enumerate(levels)]
    value = loss(student, [cached_like(lv, seed=9) for lv in levels], epoch=40)
    assert value.dtype == torch.float32 and math.isfinite(value.item()) and value.item() > 0
    value.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(p.grad is not None for p in loss.parameters())  # connectors learn (RKD and AT have none)


def test_half_precision_features_are_computed_in_float32():
    student, teacher = randn(6, 16, seed=1), randn(6, 32, seed=2)
    value = rkd_loss(student.to(torch.bfloat16), teacher.to(torch.float16))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(rkd_loss(student.to(torch.bfloat16).float(), teacher.half().float()).item())


def test_impossible_pairs_are_one_line_errors():
    with pytest.raises(ConfigError, match="cannot map the student's 4x4 map onto the teacher's 9x9"):
        FitNet([Level("m", (4, 4, 4), "map", (16, 9, 9))])
    with pytest.raises(ConfigError, match="a cached attention cannot be pooled"):
        AT([Level("a", (4, 4, 4), "attention", (8, 8))])
    with pytest.raises(ConfigError, match="needs a \\(channels, height, width\\) map"):
        ICKD([Level("g", (16,), "gram", (16, 16))])
    with pytest.raises(ConfigError, match="at least 2 samples"):
        rkd_loss(randn(1, 4), randn(1, 4))
    with pytest.raises(SpecError, match="known: at, fitnet, ickd, reviewkd, rkd"):
        feature_loss_spec("crd")
