"""timm models: ``timm:NAME[:k=v,...]``, built offline; timm is an optional extra (``pip install 'logitcache[timm]'``).

    >>> get_model("timm:resnet10t", 1000, weights="resnet10t.pth")          # a state dict, loaded strictly
    >>> get_model("timm:vit_small_patch16_224:pretrained_file=vit.npz", 1000)   # timm's own pretrained loader
    >>> get_model("timm:test_vit:drop_path_rate=0.1", 10)                      # any create_model argument
    >>> data_transform("test_vit")      # 'resize=168:bicubic,center_crop=160,to_tensor,normalize=0.5/0.5/0.5:...'

Nothing is downloaded: models are built with ``pretrained=False``. Weights come from ``--weights FILE``
(a state dict, read with ``weights_only=True`` and loaded strictly, as for every model), or from
``pretrained_file=PATH`` in the spec, which goes through timm's pretrained loader
(``pretrained_cfg_overlay=dict(file=PATH)``): that applies the model's checkpoint filter, so the
original formats timm converts (a ViT's ``.npz``, ``.safetensors``, checkpoints with EMA weights)
load too. The file must fit the head: ``num_classes`` is the model's, and a head of another size
is an error rather than a silently re-initialised classifier.

``data_transform`` turns the model's data config (``timm.data.resolve_data_config``: input size,
interpolation, crop_pct, mean and std) into logitcache's transform steps, so the store records
exactly what the teacher saw; a dump of a ``timm:`` teacher uses it when no ``--transform`` is given.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

from ..errors import ModelError, SpecError
from . import transforms
from ._loading import first_line, misfit, read_state_dict
from ._registry import parse_kwargs, register_model_scheme

NOT_PICKLES = (".safetensors", ".npz", ".npy")  # formats timm reads without unpickling


def data_transform(rest: str) -> str:
    """The transform steps of the model's data config, as timm's eval ``create_transform`` builds it:
    resize the shorter side to floor(size / crop_pct) with the model's interpolation, center-crop
    ``size``, to_tensor, normalize with its mean and std.

    Raises:
        SpecError: timm is not installed, the name is unknown, or the config cannot be written as
            steps (a non-square input, or a crop mode other than center): give ``--transform``.
    """
    timm = _timm()
    name, kwargs = _parse(rest)
    args = {key: kwargs[key] for key in ("img_size", "in_chans") if isinstance(kwargs.get(key), int)}
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as err:  # a tag the architecture does not have
        raise SpecError(f"timm model {name!r}: {first_line(err)}") from None
    from timm.data import resolve_data_config

    config = resolve_data_config(args, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})
    _, height, width = config["input_size"]
    mode = config.get("crop_mode") or "center"
    if height != width or mode != "center":
        raise SpecError(f"timm model {name!r} takes {height}x{width} inputs with crop_mode {mode}, which the "
                        "transform steps cannot write; give --transform (e.g. resize=N,center_crop=N,to_tensor,"
                        "normalize=imagenet)")
    interpolation = config["interpolation"] if config["interpolation"] in transforms.INTERPOLATIONS else "bicubic"
    scale = math.floor(height / config["crop_pct"])
    return ",".join([transforms.resize_step(scale, interpolation), f"center_crop={height}", "to_tensor",
                     transforms.normalize_step(config["mean"], config["std"])])


def weights_file(rest: str) -> str | None:
    """The ``pretrained_file`` a spec reads, if any (its sha256 identifies the teacher)."""
    _, _, args = rest.partition(":")
    value = parse_kwargs(args, f"timm model {rest!r}").get("pretrained_file")
    return str(value) if value is not None else None


@register_model_scheme("timm", grammar="timm:NAME[:k=v,...]",
                       description="a timm model, built offline (the timm extra)",
                       transform=data_transform, weights_file=weights_file)
def timm_model(rest: str, num_classes: int):
    """Build ``NAME[:k=v,...]`` with timm, offline, with ``num_classes`` outputs.

    Raises:
        SpecError: timm is not installed, the name is unknown, or the spec sets what options set.
        ModelError: the pretrained file is missing, unsafe, or does not fit the model.
    """
    timm = _timm()
    name, kwargs = _parse(rest)
    pretrained_file = kwargs.pop("pretrained_file", None)
    options = {"pretrained": False}
    if pretrained_file is not None:
        _check_file(str(pretrained_file))
        # num_classes in the overlay: timm then loads the file's head strictly instead of dropping it
        options = {"pretrained": True,
                   "pretrained_cfg_overlay": {"file": str(pretrained_file), "num_classes": num_classes}}
    try:
        return timm.create_model(name, num_classes=num_classes, **options, **kwargs)
    except (RuntimeError, ValueError, KeyError, TypeError, AssertionError) as err:
        if pretrained_file is not None and "state_dict" in str(err):
            raise ModelError(f"pretrained_file {pretrained_file} does not fit timm model {name!r}: "
                             f"{misfit(err)}") from None
        raise ModelError(f"cannot build timm model {name!r}: {type(err).__name__}: {first_line(err)}") from None


def _timm():
    try:
        import timm
    except ImportError:
        raise SpecError("timm: models need the timm package: pip install 'logitcache[timm]'") from None
    return timm


def _parse(rest: str) -> tuple[str, dict]:
    timm = _timm()
    name, _, args = rest.partition(":")
    if not name:
        raise SpecError("timm model spec is empty: give timm:NAME, e.g. timm:resnet50")
    if not timm.is_model(name):
        known = timm.list_models()
        close = difflib.get_close_matches(name.partition(".")[0], known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise SpecError(f"unknown timm model {name!r}{hint}")
    kwargs = parse_kwargs(args, f"timm model {name!r}")
    for key in ("num_classes", "pretrained", "pretrained_cfg_overlay", "pretrained_cfg", "checkpoint_path"):
        if key in kwargs:
            raise SpecError(f"timm model {name!r}: {key} is set by logitcache (classes with --num-classes or the "
                            "dataset, weights with --weights or pretrained_file=PATH), not in the spec")
    return name, kwargs


def _check_file(path: str) -> None:
    """The pretrained file exists, and a pickle among them holds only tensors (timm may unpickle it
    with weights_only=False on older versions: logitcache reads it safely first)."""
    if not Path(path).is_file():
        raise ModelError(f"pretrained_file {path} does not exist")
    if not path.endswith(NOT_PICKLES):
        read_state_dict(path)
