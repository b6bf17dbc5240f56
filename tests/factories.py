"""Small, deterministic teachers and datasets that tests name by spec (``tests.factories:NAME``)."""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn


def linear_teacher(num_classes: int = 10) -> nn.Module:
    """A fixed linear map of the 8x8 digits (seeded), with a bias so logits are not centred."""
    generator = torch.Generator().manual_seed(1234)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(num_classes, 64, generator=generator) * 2.0)
        model[1].bias.copy_(torch.randn(num_classes, generator=generator) * 3.0)
    return model


class _Slow(nn.Module):
    """Sleeps per batch so a test can kill a dump part-way through."""

    def __init__(self, inner: nn.Module, seconds: float):
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.inner(x)


def slow_teacher(num_classes: int = 10) -> nn.Module:
    return _Slow(linear_teacher(num_classes), float(os.environ.get("LOGITCACHE_TEST_SLEEP", "0.02")))


class _NaNFor(nn.Module):
    def __init__(self, inner, target):
        super().__init__()
        self.inner, self.target = inner, target

    def forward(self, x):
        out = self.inner(x)
        out[(x.flatten(1) == self.target.flatten()).all(1), 0] = float("nan")
        return out


NAN_ROW = 300


def nan_teacher(num_classes: int = 10) -> nn.Module:
    """Produces a NaN logit for one input: row NAN_ROW of digits@train."""
    from logitcache.sources import get_dataset

    return _NaNFor(linear_teacher(num_classes), get_dataset("digits@train").dataset[NAN_ROW][0])


def spatial_teacher(num_classes: int = 10) -> nn.Module:
    """Outputs (B, C, 8, 8): not logits, so a dump must refuse it."""
    return nn.Conv2d(1, num_classes, 1)


class ShuffledDigits(torch.utils.data.Dataset):
    """The digits training split in another order: same samples, different keys order."""

    def __init__(self, split=None):
        from logitcache.sources import get_dataset

        self.inner = get_dataset("digits@train")
        self.order = np.random.default_rng(0).permutation(len(self.inner))
        self.keys = [self.inner.keys[i] for i in self.order]
        self.targets = [int(self.inner.labels[i]) for i in self.order]

    def __len__(self):
        return len(self.order)

    def __getitem__(self, index):
        return self.inner.dataset[int(self.order[index])]


def shuffled_digits(split=None):
    return ShuffledDigits(split)


def seven_class_student(num_classes: int = 10) -> nn.Module:
    """Ignores ``num_classes``: a head that cannot fit a 10-class store."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))


class _Recording(nn.Module):
    """Keeps a copy of every batch it is given, so a test can compare them with replayed views."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        RECORDED.append(x.detach().clone())
        return self.inner(x)


RECORDED: list[torch.Tensor] = []


def recording_teacher(num_classes: int = 10) -> nn.Module:
    """``linear_teacher`` that records its inputs in ``RECORDED`` (in-process dumps only)."""
    return _Recording(linear_teacher(num_classes))


class TeacherFailed(RuntimeError):
    """What ``failing_teacher`` raises: a teacher that breaks mid-dump (a driver error, a bad batch)."""


class _FailsAfter(nn.Module):
    """Raises ``error`` on batch LOGITCACHE_TEST_FAIL_AFTER (if set): a dump cut short at a known point."""

    def __init__(self, inner, error: type[BaseException]):
        super().__init__()
        self.inner, self.error, self.calls = inner, error, 0

    def forward(self, x):
        self.calls += 1
        limit = os.environ.get("LOGITCACHE_TEST_FAIL_AFTER")
        if limit and self.calls > int(limit):
            raise self.error
        return self.inner(x)


def interrupted_teacher(num_classes: int = 10) -> nn.Module:
    """Ctrl-C mid-dump: only the shards the writer threads hold are finished, so how many is a race."""
    return _FailsAfter(linear_teacher(num_classes), KeyboardInterrupt)


def breaking_teacher(num_classes: int = 10) -> nn.Module:
    """A teacher that fails mid-dump: every shard already queued is written, so what is kept is exact."""
    return _FailsAfter(linear_teacher(num_classes), TeacherFailed)


def image_teacher(num_classes: int = 3) -> nn.Module:
    """A fixed (seeded) teacher for small RGB images of any size: average-pool to 4x4, then linear."""
    generator = torch.Generator().manual_seed(99)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, num_classes))
    with torch.no_grad():
        model[2].weight.copy_(torch.randn(num_classes, 48, generator=generator))
        model[2].bias.zero_()
    return model


def write_image_folder(root, classes: int = 3, per_class: int = 4, size: int = 20, seed: int = 0) -> None:
    """Real PNG files in ImageFolder's layout (class folders), random but seeded."""
    from pathlib import Path

    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = Path(root) / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size + 4 * c, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i}.png")


class FlatDigits(torch.utils.data.Dataset):
    """digits@train as flat (64,) vectors: same keys and labels, inputs that are not images."""

    def __init__(self, split=None):
        from logitcache.sources import get_dataset

        self.inner = get_dataset("digits@train")
        self.keys, self.targets = self.inner.keys, self.inner.labels.tolist()

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, index):
        image, label = self.inner.dataset[index]
        return image.flatten(), label


def flat_digits(split=None):
    return FlatDigits(split)


def transformable_digits(split=None, transform=None):
    """digits@train from a factory that takes ``transform`` (applied to its (1, 8, 8) tensors)."""
    from logitcache.sources.digits import DigitsDataset, split_indices

    return DigitsDataset(split_indices(split or "train"), transform)


class _Items(torch.utils.data.Dataset):
    """``count`` flat inputs with the given targets/keys/classes attributes (None: attribute absent)."""

    def __init__(self, count, targets=None, keys=None, classes=None, label=0):
        self.count, self.label = count, label
        for name, value in (("targets", targets), ("keys", keys), ("classes", classes)):
            if value is not None:
                setattr(self, name, value)

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if not 0 <= index < self.count:
            raise IndexError(index)
        return torch.zeros(64), self.label


def empty_dataset(split=None):
    """No samples, and no classes attribute (a filter that matched nothing)."""
    return _Items(0)


def text_label_dataset(split=None):
    """Samples whose label is a class name, not an index (and no targets attribute)."""
    return _Items(3, label="cat")


def negative_label_dataset(split=None):
    return _Items(3, targets=[0, -1, 1])


def out_of_range_label_dataset(split=None):
    """Labels up to 5, but only two classes named."""
    return _Items(3, targets=[0, 1, 5], classes=["a", "b"])


def duplicate_key_dataset(split=None):
    return _Items(3, targets=[0, 1, 0], keys=["a", "b", "a"])


def short_keys_dataset(split=None):
    """Three samples, one key."""
    return _Items(3, targets=[0, 1, 0], keys=["a"])


def failing_dataset(split=None):
    raise OSError("the share /mnt/data is not mounted")


def splitless_dataset():
    """A factory that does not take ``split=``."""
    return _Items(3, targets=[0, 1, 0])


def lengthless_dataset(split=None):
    return object()


NOT_A_FACTORY = 42


def not_a_module_teacher(num_classes: int = 10):
    """Returns a plain function, not an nn.Module."""
    return lambda x: x


def failing_teacher(num_classes: int = 10):
    raise ValueError(f"no pretrained head for {num_classes} classes")


def ten_class_teacher(num_classes: int = 10) -> nn.Module:
    """A teacher whose builder ignores the class count it is asked for: always 10 outputs."""
    return linear_teacher(10)


class PositionalDigits(torch.utils.data.Dataset):
    """The digits training split with no keys of its own (so keys are positions), maybe reversed."""

    def __init__(self, reverse: bool):
        from logitcache.sources import get_dataset

        self.inner = get_dataset("digits@train")
        self.order = np.arange(len(self.inner))[::-1 if reverse else 1]
        self.targets = [int(self.inner.labels[i]) for i in self.order]
        self.classes = list(self.inner.classes)

    def __len__(self):
        return len(self.order)

    def __getitem__(self, index):
        return self.inner.dataset[int(self.order[index])]


def positional_digits(split=None):
    return PositionalDigits(reverse=False)


def reversed_positional_digits(split=None):
    return PositionalDigits(reverse=True)


def nan_free_other_teacher(num_classes: int = 10) -> nn.Module:
    """A second fixed linear teacher, different from ``linear_teacher``."""
    torch.manual_seed(999)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    with torch.no_grad():
        model[1].weight.mul_(3.0)
    return model


class TinyLM(nn.Module):
    """A seeded causal LM: embedding, one causal convolution over the last 4 tokens, a linear head.
    Position t sees tokens <= t only, as a real causal LM; fast enough for every token-store test."""

    def __init__(self, vocab: int, context: int = 512, width: int = 32):
        super().__init__()
        generator = torch.Generator().manual_seed(4321)
        self.context_length = context
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Conv1d(width, width, 4)
        self.head = nn.Linear(width, vocab)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    def forward(self, idx):
        h = self.embed(idx).transpose(1, 2)
        h = torch.tanh(self.mix(nn.functional.pad(h, (3, 0))))
        return self.head(h.transpose(1, 2)) * 2.0


def tiny_lm(num_classes: int = 256) -> nn.Module:
    return TinyLM(num_classes)


def short_context_lm(num_classes: int = 256) -> nn.Module:
    return TinyLM(num_classes, context=16)


def small_head_lm(num_classes: int = 256) -> nn.Module:
    """Ignores ``num_classes``: a 100-way head no byte tokenizer fits."""
    return TinyLM(100)


class _NaNAtSequence(nn.Module):
    """A TinyLM whose logits are NaN at position 3 of every sequence holding NAN_TOKEN there."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.context_length = inner, inner.context_length

    def forward(self, idx):
        out = self.inner(idx)
        out[idx[:, 3] == NAN_TOKEN, 3, 0] = float("nan")
        return out


NAN_TOKEN = ord("e")


def nan_lm(num_classes: int = 256) -> nn.Module:
    return _NaNAtSequence(TinyLM(num_classes))


class _SlowLM(nn.Module):
    def __init__(self, inner, seconds):
        super().__init__()
        self.inner, self.seconds, self.context_length = inner, seconds, inner.context_length

    def forward(self, idx):
        time.sleep(self.seconds)
        return self.inner(idx)


def slow_lm(num_classes: int = 256) -> nn.Module:
    return _SlowLM(TinyLM(num_classes), float(os.environ.get("LOGITCACHE_TEST_SLEEP", "0.02")))


def three_class_image_teacher(num_classes: int = 3) -> nn.Module:
    """An image teacher trained for 3 classes, whatever class count it is asked for (a checkpoint's head)."""
    return image_teacher(3)


WIDE_VOCAB = 70_000  # more than 65,536 ids: a sparse store packs them at 17 bits (format v5)


def wide_lm(num_classes: int = 256) -> nn.Module:
    """A TinyLM with a 70,000-id head, whatever vocabulary it is asked for (the byte tokenizer's 256
    ids are its first): token stores of more than 65,536 classes, small enough for tests."""
    return TinyLM(WIDE_VOCAB)
