"""Input transforms by spec: named presets or comma-separated steps, recorded verbatim in stores.

    >>> build_transform("imagenet")              # resize=256,center_crop=224,to_tensor,normalize=imagenet
    >>> build_transform("random_crop=32:4,flip,to_tensor,normalize=cifar")
    >>> is_random("flip,to_tensor")               # True: the teacher never saw these exact views

Steps: resize=N[:INTERPOLATION] (the shorter side to N; bilinear unless bicubic, nearest,
lanczos, box or hamming is named), center_crop=N, to_tensor,
normalize=imagenet|cifar10|cifar100|mnist or normalize=MEAN/MEAN/MEAN:STD/STD/STD (per channel),
flip (random horizontal flip), random_crop=SIZE[:PAD], random_resized_crop=SIZE,
color_jitter=B[:C[:S[:H]]] (random brightness, contrast, saturation, hue), erasing[=P] (random
erasing on the tensor, probability P, default 0.5), none.

Replayable multi-view augmentation for dumps (``--augment`` of ``logitcache dump``) has its own
grammar, in ``views/view_specs.py``.
"""

from __future__ import annotations

from ..errors import SpecError

PRESETS = {
    "imagenet": "resize=256,center_crop=224,to_tensor,normalize=imagenet",
    "cifar10": "to_tensor,normalize=cifar10",
    "cifar100": "to_tensor,normalize=cifar100",
    "mnist": "to_tensor,normalize=mnist",
    "tensor": "to_tensor",
    "none": "none",
}

NORMALIZATION = {  # (mean, std) per channel, as published with each dataset's usual recipes
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
}

GEOMETRIC_STEPS = {"flip", "random_crop", "random_resized_crop"}  # change which pixels a view holds
TENSOR_STEPS = {"erasing"}  # act on the finished tensor, so they go after the transform
COLOR_STEPS = {"color_jitter"}  # change pixel values, not positions: before normalisation
RANDOM_STEPS = GEOMETRIC_STEPS | TENSOR_STEPS | COLOR_STEPS


def expand(spec: str) -> list[tuple[str, str]]:
    """A preset name or step list -> [(step, argument)], validated."""
    text = PRESETS.get(spec, spec)
    steps = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, arg = item.partition("=")
        if name not in _BUILDERS:
            raise SpecError(
                f"unknown transform step {name!r} in {spec!r}; steps: {', '.join(sorted(_BUILDERS))}; "
                f"presets: {', '.join(sorted(PRESETS))}"
            )
        steps.append((name, arg))
    if not steps:
        raise SpecError(f"transform {spec!r} has no steps; use 'none' for the identity")
    return steps


def is_random(spec: str) -> bool:
    """True if the transform draws random views (augmentation)."""
    return any(name in RANDOM_STEPS for name, _ in expand(spec))


def with_augment(spec: str, augment: str) -> str:
    """The steps of ``spec`` with augmentation added: image steps before it, tensor steps after."""
    steps = expand(augment)
    before = [_join(n, a) for n, a in steps if n not in TENSOR_STEPS]
    after = [_join(n, a) for n, a in steps if n in TENSOR_STEPS]
    return ",".join([*before, canonical(spec), *after])


def split_normalize(spec: str) -> tuple[str, str | None]:
    """``"to_tensor,normalize=cifar10"`` -> ``("to_tensor", "normalize=cifar10")``: a final
    normalize step split off (views are cut before it, so colour steps can act in [0, 1])."""
    steps = expand(spec)
    if len(steps) > 1 and steps[-1][0] == "normalize":
        return ",".join(_join(n, a) for n, a in steps[:-1]), _join(*steps[-1])
    return canonical(spec), None


def only(spec: str | None, steps: set[str]) -> str | None:
    """The steps of ``spec`` named in ``steps``, in order, as a spec (None if there are none)."""
    if not spec:
        return None
    return ",".join(_join(n, a) for n, a in expand(spec) if n in steps) or None


def without(spec: str, step: str) -> str:
    """``spec`` with every ``step`` removed (e.g. the center crop, for multi-view dumps)."""
    return ",".join(_join(n, a) for n, a in expand(spec) if n != step) or "none"


def _join(name: str, arg: str) -> str:
    return f"{name}={arg}" if arg else name


def canonical(spec: str) -> str:
    """The step list a spec stands for, as stored in a store's provenance."""
    return ",".join(_join(n, a) for n, a in expand(spec))


INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


def resize_step(size: int, interpolation: str = "bilinear") -> str:
    """``resize=N``, naming the interpolation unless it is bilinear (the step's default)."""
    return f"resize={size}" + ("" if interpolation == "bilinear" else f":{interpolation}")


def normalize_step(mean, std) -> str:
    """``normalize=NAME`` for a published (mean, std), else ``normalize=M/M/M:S/S/S``."""
    pair = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
    for name, published in NORMALIZATION.items():
        if pair == published:
            return f"normalize={name}"
    return "normalize=" + ":".join("/".join(repr(v) for v in values) for values in pair)


def build_transform(spec: str):
    """A torchvision transform for a spec (preset name or steps)."""
    from torchvision import transforms as T

    built = [_BUILDERS[name](arg, spec) for name, arg in expand(spec)]
    built = [b for b in built if b is not None]
    return T.Compose(built) if built else None


def _int(arg: str, step: str, spec: str) -> int:
    try:
        value = int(arg)
    except ValueError:
        raise SpecError(f"transform {spec!r}: {step} needs a positive integer, got {arg!r}") from None
    if value <= 0:
        raise SpecError(f"transform {spec!r}: {step} needs a positive integer, got {arg!r}")
    return value


def _resize(arg, spec):
    from torchvision import transforms as T

    size, _, interpolation = arg.partition(":")
    interpolation = interpolation or "bilinear"
    if interpolation not in INTERPOLATIONS:
        raise SpecError(f"transform {spec!r}: resize=N:INTERPOLATION takes one of {', '.join(INTERPOLATIONS)}, "
                        f"got {interpolation!r}")
    mode = T.InterpolationMode[interpolation.upper()]
    return T.Resize(_int(size, "resize", spec), interpolation=mode, antialias=True)


def _center_crop(arg, spec):
    from torchvision import transforms as T

    return T.CenterCrop(_int(arg, "center_crop", spec))


def _to_tensor(arg, spec):
    from torchvision import transforms as T

    _no_value(arg, "to_tensor", spec)
    return T.ToTensor()


def _normalize(arg, spec):
    from torchvision import transforms as T

    if arg in NORMALIZATION:
        return T.Normalize(*NORMALIZATION[arg])
    try:
        mean, std = ([float(v) for v in part.split("/")] for part in arg.split(":"))
    except ValueError:
        mean = std = []
    if not mean or len(mean) != len(std) or min(std) <= 0:
        raise SpecError(f"transform {spec!r}: normalize takes one of {', '.join(NORMALIZATION)} or MEAN:STD per "
                        f"channel (e.g. 0.5/0.5/0.5:0.5/0.5/0.5, std > 0), got {arg!r}")
    return T.Normalize(mean, std)


def _flip(arg, spec):
    from torchvision import transforms as T

    _no_value(arg, "flip", spec)
    return T.RandomHorizontalFlip()


def _random_crop(arg, spec):
    from torchvision import transforms as T

    size, _, pad = arg.partition(":")
    return T.RandomCrop(_int(size, "random_crop", spec), padding=_int(pad, "random_crop", spec) if pad else None)


def _random_resized_crop(arg, spec):
    from torchvision import transforms as T

    return T.RandomResizedCrop(_int(arg, "random_resized_crop", spec), antialias=True)


def _erasing(arg, spec):
    from torchvision import transforms as T

    try:
        probability = float(arg) if arg else 0.5
    except ValueError:
        probability = -1.0
    if not 0 <= probability <= 1:
        raise SpecError(f"transform {spec!r}: erasing takes a probability in [0, 1], got {arg!r}")
    return T.RandomErasing(p=probability)


def _color_jitter(arg, spec):
    from torchvision import transforms as T

    try:
        values = [float(v) for v in arg.split(":")] if arg else []
    except ValueError:
        values = []
    if not 1 <= len(values) <= 4 or min(values) < 0 or (len(values) == 4 and values[3] > 0.5):
        raise SpecError(f"transform {spec!r}: color_jitter takes B[:C[:S[:H]]], each >= 0 and H <= 0.5, got {arg!r}")
    return T.ColorJitter(*values)


def _none(arg, spec):
    _no_value(arg, "none", spec)
    return None


def _no_value(arg: str, step: str, spec: str) -> None:
    """Steps without a value refuse one rather than drop it (flip=0.1 is not a flip of p=0.1)."""
    if arg:
        raise SpecError(f"transform {spec!r}: {step} takes no value, got {step}={arg}")


_BUILDERS = {
    "resize": _resize,
    "center_crop": _center_crop,
    "to_tensor": _to_tensor,
    "normalize": _normalize,
    "flip": _flip,
    "random_crop": _random_crop,
    "random_resized_crop": _random_resized_crop,
    "erasing": _erasing,
    "color_jitter": _color_jitter,
    "none": _none,
}
