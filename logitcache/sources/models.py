"""Models by spec string — teachers and students alike.

    >>> get_model("resnet20", num_classes=100)                       # CIFAR-style, registered
    >>> get_model("mlp:hidden=32", num_classes=10)                    # registered, with arguments
    >>> get_model("torchvision:resnet50", 1000, weights="r50.pth")    # a scheme: any torchvision model
    >>> get_model("checkpoint:runs/teacher/best.pt", 10)              # what `logitcache train` wrote
    >>> get_model("mypkg.nets:build", 10)                             # called as build(num_classes=10)
    >>> get_model("nets:build", 10)                                   # a top-level module (nets.py) too
    >>> list_models(), list_model_schemes()

A spec is ``SCHEME:REST`` for a registered scheme (``torchvision``, ``timm``, ``torchscript``,
``export``, ``checkpoint``, ``hf``, ``hf-config``: each registers itself in its own module, see
``register_model_scheme``), else ``NAME[:k=v,...]`` for a registered architecture, else
``module:factory``; a module that does not exist is an unknown name.

Weight files are read with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""

from __future__ import annotations

import hashlib
import inspect

from ..errors import ModelError, SpecError
from ._loading import call_user, misfit, read_state_dict
from ._registry import MODEL_SCHEMES, MODELS, import_object, parse_kwargs, register_model, register_model_scheme

__all__ = ["file_sha256", "get_model", "list_model_schemes", "list_models", "load_weights", "model_transform",
           "num_parameters", "parameters_sha256", "register_model", "register_model_scheme", "weights_in_spec"]


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names (torchvision's are reached as ``torchvision:NAME``)."""
    return MODELS.names(pattern)


def list_model_schemes(pattern: str = "*") -> list[str]:
    """Registered model schemes: the ``SCHEME`` of ``SCHEME:REST`` specs."""
    return MODEL_SCHEMES.names(pattern)


def get_model(spec: str, num_classes: int, weights: str | None = None):
    """Build the model a spec names, with ``num_classes`` outputs, and load ``weights`` if given.

    Raises:
        SpecError: the spec names nothing known.
        ModelError: the weights file is missing, unsafe, or does not fit the model.
    """
    scheme, _, rest = spec.partition(":")
    if scheme in MODEL_SCHEMES:
        model = MODEL_SCHEMES.get(scheme).build(rest, num_classes)
    elif scheme not in MODELS and rest:  # module:factory; an unknown module is an unknown name
        factory = import_object(spec, "model", MODELS)
        model = _checked_module(call_user(factory, f"model {spec!r}", ModelError, num_classes=num_classes), spec)
    else:
        model = _registered_model(spec, scheme, rest, num_classes)
    if weights:
        load_weights(model, weights)
    return model


def model_transform(spec: str) -> str | None:
    """The input transform a model spec brings with it (a ``timm:`` model's data config, as
    transform steps), or None: the dataset's own default then applies."""
    entry, rest = _scheme(spec)
    return entry.transform(rest) if entry is not None and entry.transform is not None else None


def weights_in_spec(spec: str) -> str | None:
    """The weights file a spec itself reads (``--weights`` aside), whose sha256 names the teacher."""
    entry, rest = _scheme(spec)
    return entry.weights_file(rest) if entry is not None and entry.weights_file is not None else None


def _scheme(spec: str) -> tuple:
    """(the registered scheme a spec starts with or None, the rest of the spec)."""
    scheme, _, rest = spec.partition(":")
    return (MODEL_SCHEMES.get(scheme) if scheme in MODEL_SCHEMES else None), rest


def _registered_model(spec: str, name: str, args: str, num_classes: int):
    builder = MODELS.get(name)
    kwargs = parse_kwargs(args, f"model {spec!r}")
    _check_arguments(builder, kwargs, spec)
    return call_user(builder, f"cannot build model {spec!r}", ModelError, num_classes, **kwargs)


def _check_arguments(builder, kwargs: dict, spec: str) -> None:
    """Arguments a builder does not take are refused by name, with the ones it does."""
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builder without a signature Python can read: it checks its own
        return
    takes = [n for n, p in parameters.items()
             if n != "num_classes" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [k for k in kwargs if k not in takes]
    if unknown:
        raise SpecError(f"model {spec!r}: unknown argument(s) {', '.join(unknown)}; "
                        f"it takes {', '.join(takes) or 'none'}")
    for key, value in kwargs.items():
        default = parameters[key].default
        if not _same_kind(value, default):
            raise SpecError(f"model {spec!r}: {key} takes {_kind_name(default)}, got {value!r}")


def _same_kind(value, default) -> bool:
    """A spec value fits an int/float/bool default only if it is of that kind (ints fit floats)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _kind_name(default) -> str:
    return "true or false" if isinstance(default, bool) else "an integer" if isinstance(default, int) else "a number"


def _checked_module(model, spec: str):
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec!r}: the factory returned an object of type {type(model).__name__}, "
                         "not a torch.nn.Module")
    return model


def load_weights(model, path: str) -> None:
    """Load a weights file into a model, strictly; a misfit is one readable line."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except Exception as err:
        raise ModelError(f"weights {path} do not fit the model: {misfit(err)}") from None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def parameters_sha256(model) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, bytes): the teacher's identity."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
