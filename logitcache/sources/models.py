"""Models by spec string — teachers and students alike.

    >>> get_model("resnet20", num_classes=100)                       # CIFAR-style, registered here
    >>> get_model("mlp:hidden=32", num_classes=10)                    # registered, with arguments
    >>> get_model("torchvision:resnet50", 1000, weights="r50.pth")    # any torchvision model
    >>> get_model("torchscript:teacher.pt", 10)                       # a scripted/traced module
    >>> get_model("export:teacher.pt2", 10)                           # a torch.export program
    >>> get_model("checkpoint:runs/teacher/best.pt", 10)              # what `logitcache train` wrote
    >>> get_model("mypkg.nets:build", 10)                             # called as build(num_classes=10)

Weight files are read with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

from ..errors import ModelError, SpecError
from ._registry import Registry, import_object, parse_kwargs

MODELS = Registry("model")
SCHEMES = ("torchvision", "torchscript", "export", "checkpoint")


def register_model(name: str | None = None):
    """Decorator: register ``builder(num_classes, **kwargs) -> nn.Module``."""
    return MODELS.register(name)


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names (torchvision's are reached as ``torchvision:NAME``)."""
    return MODELS.names(pattern)


def get_model(spec: str, num_classes: int, weights: str | None = None):
    """Build the model a spec names, with ``num_classes`` outputs, and load ``weights`` if given.

    Raises:
        SpecError: the spec names nothing known.
        ModelError: the weights file is missing, unsafe, or does not fit the model.
    """
    scheme, _, rest = spec.partition(":")
    if scheme == "torchvision":
        model = _torchvision_model(rest, num_classes)
    elif scheme == "torchscript":
        model = _torchscript_model(rest)
    elif scheme == "export":
        model = _exported_model(rest)
    elif scheme == "checkpoint":
        from .checkpoints import model_from_checkpoint

        model = model_from_checkpoint(rest)
    elif scheme not in MODELS and "." in scheme and rest:
        model = import_object(spec, "model")(num_classes=num_classes)
    else:
        model = MODELS.get(scheme)(num_classes, **parse_kwargs(rest, f"model {spec!r}"))
    if weights:
        load_weights(model, weights)
    return model


def _torchvision_model(name: str, num_classes: int):
    import torchvision

    name, _, args = name.partition(":")
    known = torchvision.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise SpecError(f"unknown torchvision model {name!r}{hint}")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **parse_kwargs(args, name))


def _torchscript_model(path: str):
    import torch

    if not Path(path).is_file():
        raise ModelError(f"TorchScript file {path} does not exist")
    try:
        return torch.jit.load(path, map_location="cpu")
    except RuntimeError as err:
        raise ModelError(f"{path} is not a TorchScript module ({str(err).splitlines()[0]})") from None


def _exported_model(path: str):
    """A ``torch.export.save``d program (export its batch dimension as dynamic)."""
    import torch

    if not Path(path).is_file():
        raise ModelError(f"exported program {path} does not exist")
    try:
        return torch.export.load(path).module()
    except Exception as err:  # torch.export raises several types for files it cannot read
        raise ModelError(f"{path} is not a torch.export program ({str(err).splitlines()[0]})") from None


def read_state_dict(path: str) -> dict:
    """Tensors from a weights file (a state dict, or a dict holding one under model/state_dict)."""
    import pickle

    import torch

    if not Path(path).is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ModelError(
            f"cannot read weights {path} safely (weights_only=True): {str(err).splitlines()[0]}"
        ) from None
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_weights(model, path: str) -> None:
    """Load a weights file into a model, strictly; a misfit is one readable line."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        details = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise ModelError(f"weights {path} do not fit the model: {details[:300]}") from None


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


# Register the built-in architectures (each family in its own module).
from . import cifar_resnet, small_nets, wide_resnet  # noqa: E402,F401
