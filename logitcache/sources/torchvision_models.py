"""``torchvision:NAME[:k=v,...]``: any model torchvision builds, with a head of the dataset's classes.

    >>> get_model("torchvision:resnet50", 1000, weights="r50.pth")     # weights: a state dict, strictly
    >>> get_model("torchvision:resnet18:zero_init_residual=true", 10)  # any other builder argument

Built with ``weights=None`` (nothing is downloaded): weights come from ``--weights`` and classes
from ``--num-classes`` or the dataset, so the spec may set neither.
"""

from __future__ import annotations

import difflib

from ..errors import ModelError, SpecError
from ._loading import call_user
from ._registry import parse_kwargs, register_model_scheme


@register_model_scheme("torchvision", grammar="torchvision:NAME[:k=v,...]",
                       description="any torchvision model, random init")
def torchvision_model(rest: str, num_classes: int):
    import torchvision

    name, _, args = rest.partition(":")
    known = torchvision.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise SpecError(f"unknown torchvision model {name!r}{hint}")
    kwargs = parse_kwargs(args, name)
    if "weights" in kwargs or "num_classes" in kwargs:
        raise SpecError(f"torchvision model {name!r}: give weights with --weights and classes with "
                        "--num-classes, not in the spec")
    return call_user(torchvision.models.get_model, f"cannot build torchvision model {name!r}", ModelError, name,
                     weights=None, num_classes=num_classes, **kwargs)
