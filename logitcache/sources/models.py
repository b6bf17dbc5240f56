"""Models by spec string — teachers and students alike.

    >>> get_model("resnet20", num_classes=100)                       # CIFAR-style, registered here
    >>> get_model("mlp:hidden=32", num_classes=10)                    # registered, with arguments
    >>> get_model("torchvision:resnet50", 1000, weights="r50.pth")    # any torchvision model
    >>> get_model("torchscript:teacher.pt", 10)                       # a scripted/traced module
    >>> get_model("export:teacher.pt2", 10)                           # a torch.export program
    >>> get_model("checkpoint:runs/teacher/best.pt", 10)              # what `logitcache train` wrote
    >>> get_model("timm:resnet10t", 10, weights="r10t.pth")           # timm (an optional extra), offline
    >>> get_model("mypkg.nets:build", 10)                             # called as build(num_classes=10)
    >>> get_model("hf:models/qwen", 151936)                            # a local Hugging Face causal LM
    >>> get_model("hf-config:models/small/config.json", 151936)        # its architecture, random init
    >>> get_model("nets:build", 10)                                   # a top-level module (nets.py) too

Weight files are read with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
from pathlib import Path

from ..errors import CheckpointError, LogitCacheError, ModelError, SpecError
from ._loading import call_user, first_line, misfit, quiet_torch, read_state_dict
from ._registry import MODELS, import_object, parse_kwargs, register_model
from .checkpoints import load_checkpoint
from .timm_models import data_transform, timm_model, weights_file

__all__ = ["SCHEMES", "file_sha256", "get_model", "list_models", "load_weights", "model_from_checkpoint",
           "model_transform", "num_parameters", "parameters_sha256", "register_model", "weights_in_spec"]

SCHEMES = ("torchvision", "timm", "torchscript", "export", "checkpoint", "hf", "hf-config")


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
    elif scheme == "timm":
        model = timm_model(rest, num_classes)
    elif scheme == "torchscript":
        model = _torchscript_model(rest)
    elif scheme == "export":
        model = _exported_model(rest)
    elif scheme == "checkpoint":
        model = model_from_checkpoint(rest)
    elif scheme in ("hf", "hf-config"):
        from .hf_models import hf_model

        model = hf_model(scheme, rest, num_classes)
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
    scheme, _, rest = spec.partition(":")
    return data_transform(rest) if scheme == "timm" else None


def weights_in_spec(spec: str) -> str | None:
    """The weights file a spec itself reads (``--weights`` aside), whose sha256 names the teacher."""
    scheme, _, rest = spec.partition(":")
    if scheme in ("torchscript", "export", "checkpoint"):
        return rest
    return weights_file(rest) if scheme == "timm" else None


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


def _torchvision_model(name: str, num_classes: int):
    import torchvision

    name, _, args = name.partition(":")
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


def _torchscript_model(path: str):
    import torch

    if not Path(path).is_file():
        raise ModelError(f"TorchScript file {path} does not exist")
    try:
        with quiet_torch():
            return torch.jit.load(path, map_location="cpu")
    except Exception as err:
        raise ModelError(f"{path} is not a TorchScript module ({first_line(err)})") from None


def _exported_model(path: str):
    """A ``torch.export.save``d program (export its batch dimension as dynamic)."""
    import torch

    if not Path(path).is_file():
        raise ModelError(f"exported program {path} does not exist")
    try:
        with quiet_torch():
            return torch.export.load(path).module()
    except Exception as err:  # torch.export raises several types for files it cannot read
        raise ModelError(f"{path} is not a torch.export program ({_export_failure(path, err)})") from None


def _export_failure(path: str, err: Exception) -> str:
    """Why torch.export.load failed, in words (its own message points at log lines we silenced)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return "not a zip archive"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if not any(n.rpartition("/")[2] == "archive_format" for n in names):
        return "a zip archive with no torch.export program in it (torch.save and TorchScript files are not)"
    return first_line(err)


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


_OPENING: set[str] = set()  # checkpoints being rebuilt now: one whose model_spec leads back to itself is refused


def model_from_checkpoint(path):
    """Rebuild the model a checkpoint was trained as, with its weights loaded."""
    data = load_checkpoint(path)
    key = str(Path(path).resolve())
    if key in _OPENING:
        raise CheckpointError(f"checkpoint {path}: its model_spec {data['model_spec']!r} leads back to itself")
    _OPENING.add(key)
    try:
        model = get_model(data["model_spec"], data["num_classes"])
    except CheckpointError:
        raise
    except LogitCacheError as err:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild its model: {err}") from None
    finally:
        _OPENING.discard(key)
    try:
        model.load_state_dict(data["model"], strict=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} does not fit {data['model_spec']}: {misfit(err)}") from None
    return model
