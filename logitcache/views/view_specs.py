"""Replayable augmentation: K random views per sample, each described by a few numbers.

    >>> augment = parse_augment("crop=0.35-1,flip,size=224")
    >>> params = augment.draw(seed=0, index=17, views=4)      # float16 (4, 5): x0, y0, w, h, flip
    >>> view = apply_view(image, params[2], size=(160, 160))  # view 2, rebuilt at another resolution

A view is a box in normalised coordinates of the input tensor (x0, y0 = top-left corner, w, h =
width and height as fractions of the input's width and height; a box may reach outside the
image, which reads as zeros) plus a horizontal flip. The box is cut out, resized to the view
size and flipped. Parameters depend only on (seed, sample index), never on the image, so a dump
can be resumed or split across processes and still draws the same views. They are rounded to
float16 (a step of at most 1/2048 of the image side below 1, so ~0.1 px at 224 px) and stored;
views are always built from those float16 values, so the student's replay and the teacher's
input are computed from the very same numbers.

Spec grammar (comma-separated steps, or a preset name):

    crop=SMIN-SMAX[:RMIN-RMAX]  a random resized crop: area fraction in [SMIN, SMAX] and aspect
                                ratio (w/h, in normalised units) log-uniform in [RMIN, RMAX]
                                (default 3/4-4/3), as torchvision's RandomResizedCrop draws them
    shift=F                     the whole input moved by up to F of its size each way, the gap
                                zero-filled (CIFAR's pad-4 random crop of 32 px is shift=0.125)
    flip[=P]                    horizontal flip with probability P (default 0.5)
    size=N or size=HxW          views are N x N (or H x W) pixels; default: the input's own size
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import SpecError

PARAM_NAMES = ("x0", "y0", "w", "h", "flip")  # the columns of a store's view_params array
PARAM_DTYPE = "float16"
VIEW_SEED_TAG = 0x71E5  # view draws: np.random.default_rng([VIEW_SEED_TAG, seed, sample index])
HASH_NAME = "blake2b-64"  # view_hashes: 8-byte BLAKE2b of dtype, shape and bytes of the view tensor
MAX_TRIES = 10  # crop draws rejected as too large for the image before falling back to the whole image

PRESETS = {
    "imagenet": "crop=0.08-1,flip,size=224",  # Inception-style crops, as FKD and most ImageNet recipes
    "fkd": "crop=0.35-1,flip,size=224",  # FKD's softer crop scale for ResNet-50 students
    "cifar": "shift=0.125,flip",  # pad 4 and crop 32, plus flip
}


@dataclass(frozen=True)
class ViewAugment:
    """A parsed ``--augment`` spec: how to draw view parameters, and the view size."""

    spec: str  # canonical form, recorded in the store
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    shift: float | None = None
    flip: float = 0.0
    size: tuple[int, int] | None = None

    def draw(self, seed: int, index: int, views: int) -> np.ndarray:
        """float16 (views, 5) parameters for one sample: a pure function of (seed, index)."""
        rng = np.random.default_rng([VIEW_SEED_TAG, seed, index])
        params = np.empty((views, len(PARAM_NAMES)), dtype=np.float64)
        for view in range(views):
            params[view, :4] = self._box(rng)
            params[view, 4] = 1.0 if self.flip and rng.random() < self.flip else 0.0
        return params.astype(PARAM_DTYPE)

    def _box(self, rng) -> tuple[float, float, float, float]:
        if self.shift is not None:
            return rng.uniform(-self.shift, self.shift), rng.uniform(-self.shift, self.shift), 1.0, 1.0
        if self.scale is None:
            return 0.0, 0.0, 1.0, 1.0
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(MAX_TRIES):
            area = rng.uniform(*self.scale)
            ratio = math.exp(rng.uniform(*log_ratio))
            width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)
            if width <= 1 and height <= 1:
                return rng.uniform(0, 1 - width), rng.uniform(0, 1 - height), width, height
        return 0.0, 0.0, 1.0, 1.0

    def describe(self) -> str:
        """What the view draws do, for ``info`` and logs."""
        parts = []
        if self.scale is not None:
            parts.append(f"random crop of {self.scale[0]:g}-{self.scale[1]:g} of the area, "
                         f"aspect {self.ratio[0]:.3g}-{self.ratio[1]:.3g}")
        if self.shift is not None:
            parts.append(f"shift up to {self.shift:g} each way")
        if self.flip:
            parts.append(f"flip p={self.flip:g}")
        parts.append(f"{self.size[0]}x{self.size[1]} px" if self.size else "input size")
        return ", ".join(parts)


def parse_augment(spec: str) -> ViewAugment:
    """Parse a view spec (grammar in the module docstring) or preset.

    Raises:
        SpecError: an unknown step, a malformed or out-of-range value, or crop with shift.
    """
    text = PRESETS.get(spec.strip(), spec)
    fields: dict = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, arg = item.partition("=")
        if name not in _STEPS:
            raise SpecError(f"--augment {spec!r}: unknown step {name!r}; steps: {', '.join(_STEPS)}; "
                            f"presets: {', '.join(PRESETS)}")
        if name in fields:
            raise SpecError(f"--augment {spec!r}: step {name!r} is given twice")
        fields[name] = _STEPS[name](arg if sep else None, spec)
    if not fields:
        raise SpecError(f"--augment {spec!r} has no steps")
    if "crop" in fields and "shift" in fields:
        raise SpecError(f"--augment {spec!r}: give crop or shift, not both (each one sets the view's box)")
    scale, ratio = fields.get("crop", (None, (3 / 4, 4 / 3)))
    augment = ViewAugment("", scale=scale, ratio=ratio, shift=fields.get("shift"), flip=fields.get("flip", 0.0),
                          size=fields.get("size"))
    return replace(augment, spec=_canonical(augment))


def _canonical(a: ViewAugment) -> str:
    steps = []
    if a.scale is not None:
        steps.append(f"crop={a.scale[0]:g}-{a.scale[1]:g}:{a.ratio[0]:.17g}-{a.ratio[1]:.17g}")
    if a.shift is not None:
        steps.append(f"shift={a.shift:g}")
    if a.flip:
        steps.append(f"flip={a.flip:g}")
    if a.size:
        steps.append(f"size={a.size[0]}x{a.size[1]}")
    return ",".join(steps) or "none"


def _range(arg: str | None, step: str, spec: str, low: float, high: float) -> tuple[float, float]:
    try:
        first, second = (_number(part) for part in (arg or "").split("-"))
    except ValueError:
        raise SpecError(f"--augment {spec!r}: {step} needs a range A-B, got {arg!r}") from None
    if not (low <= first <= second <= high) or second <= 0:
        raise SpecError(f"--augment {spec!r}: {step} range {arg!r} must satisfy {low:g} <= A <= B <= {high:g}, B > 0")
    return first, second


def _number(text: str) -> float:
    """A float, or a fraction such as 3/4."""
    top, slash, bottom = text.partition("/")
    return float(top) / float(bottom) if slash else float(text)


def _crop(arg, spec):
    area, _, ratio = (arg or "").partition(":")
    return _range(area, "crop", spec, 0.0, 1.0), (_range(ratio, "crop ratio", spec, 0.0, math.inf)
                                                   if ratio else (3 / 4, 4 / 3))


def _shift(arg, spec):
    try:
        value = _number(arg or "")
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise SpecError(f"--augment {spec!r}: shift needs a fraction in (0, 1), got {arg!r}")
    return value


def _flip(arg, spec):
    try:
        value = 0.5 if arg is None else _number(arg)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise SpecError(f"--augment {spec!r}: flip takes a probability in [0, 1], got {arg!r}")
    return value


def _size(arg, spec):
    parts = (arg or "").lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise SpecError(f"--augment {spec!r}: size needs N or HxW in pixels, got {arg!r}")
    return values


_STEPS = {"crop": _crop, "shift": _shift, "flip": _flip, "size": _size}


def pixel_box(params, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, box height, box width) in pixels of an H x W input, from stored float16 params."""
    x0, y0, w, h = (float(v) for v in params[:4])
    return (math.floor(y0 * height + 0.5), math.floor(x0 * width + 0.5),
            max(1, math.floor(h * height + 0.5)), max(1, math.floor(w * width + 0.5)))


def apply_view(image, params, size: tuple[int, int] | None = None):
    """The view of a (C, H, W) tensor that ``params`` (one row of view_params) describes.

    Raises:
        SpecError: the input is not a (C, H, W) tensor.
    """
    import torch
    from torchvision.transforms.v2 import functional as F

    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        kind = f"a tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise SpecError(f"views are cut from (C, H, W) tensors, but the dataset gives {kind}; "
                        "end --transform with to_tensor")
    top, left, box_h, box_w = pixel_box(params, image.shape[1], image.shape[2])
    out = F.resized_crop(image, top, left, box_h, box_w, list(size or image.shape[1:]), antialias=True)
    return F.horizontal_flip(out) if params[4] >= 0.5 else out


def view_hash(view) -> int:
    """A 64-bit BLAKE2b of a view tensor's dtype, shape and bytes (``view_hashes``' values)."""
    array = view.detach().cpu().contiguous().numpy()
    digest = hashlib.blake2b(f"{array.dtype.str}{array.shape}".encode(), digest_size=8)
    digest.update(memoryview(array).cast("B"))
    return int.from_bytes(digest.digest(), "little")
