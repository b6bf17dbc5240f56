"""Cut named features out of a model's forward pass (forward hooks), and reduce them per sample.

    >>> tap = FeatureTap(model, {"emb": "30", "s3": "29"}, reduces={"emb": "pool", "s3": "attention"})
    >>> with tap:
    ...     logits = model(images)
    >>> tap.outputs["emb"].shape, tap.outputs["s3"].shape          # (B, 64), (B, 8, 8)

A teacher's tap (``reduces`` given) reduces each output inside its hook, in float32, so an in-place
operation after the hooked module (torchvision's ``ReLU(inplace=True)``) cannot change what was kept,
and a full map is never held when only its pooled vector is wanted. A student's tap (no reduces) keeps
the raw outputs, attached to the graph, for the losses and their connectors.
"""

from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelError


def pool(values: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C): the global average (RKD's embedding); (B, C) is kept as it is."""
    if values.ndim == 2:
        return values
    _require_map(values, "pool")
    return values.mean(dim=(2, 3))


def attention(values: Tensor, p: float = 2.0) -> Tensor:
    """(B, C, H, W) -> (B, H, W): mean over channels of |x|^p, L2-normalised over H·W (Zagoruyko & Komodakis)."""
    _require_map(values, "attention")
    flat = values.pow(p).mean(1).flatten(1)
    return F.normalize(flat, dim=1).view(values.shape[0], *values.shape[2:])


def gram(values: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, C): the channel correlation F Fᵀ of F = (C, H·W), each row L2-normalised
    (ICKD's inter-channel correlation, Liu et al. 2021)."""
    _require_map(values, "gram")
    flat = values.flatten(2)
    return F.normalize(torch.bmm(flat, flat.transpose(1, 2)), dim=2)


def whole_map(values: Tensor) -> Tensor:
    """The output as it is (FitNet's hint, ReviewKD's levels)."""
    return values


REDUCTIONS = {"pool": pool, "attention": attention, "gram": gram, "map": whole_map}


def reduce(values: Tensor, how: str) -> Tensor:
    """``values`` (B, ...) reduced per sample by ``how`` (one of REDUCTIONS), in float32."""
    return REDUCTIONS[how](values.float())


def _require_map(values: Tensor, how: str) -> None:
    if values.ndim != 4:
        raise ModelError(f"reduce {how!r} needs a (batch, channels, height, width) map, but the layer outputs "
                         f"{tuple(values.shape)}; pick a convolutional layer, or use reduce 'map'")


def find_module(model: nn.Module, path: str, what: str = "model") -> nn.Module:
    """The module at ``path`` (``named_modules`` spelling).

    Raises:
        ModelError: no such module; one line with the closest paths.
    """
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    names = [name for name in modules if name]
    close = difflib.get_close_matches(path, names, n=6, cutoff=0.4) or names[:6]
    raise ModelError(f"the {what} has no module {path!r}; close names: {', '.join(close)}"
                     f"{', …' if len(names) > len(close) else ''} ({len(names)} modules)")


class FeatureTap:
    """Forward hooks on named modules while the tap is entered; ``outputs`` holds the last pass's values.

    Args:
        model: the network whose modules are hooked.
        layers: {name: module path}.
        reduces: {name: reduce} for a teacher (outputs detached, reduced in float32); None for a student.
        what: "teacher" or "student", for error messages.
    """

    def __init__(self, model: nn.Module, layers: dict[str, str], reduces: dict[str, str] | None = None,
                 what: str = "model"):
        self.modules = {name: find_module(model, path, what) for name, path in layers.items()}
        self.layers, self.reduces, self.what = dict(layers), reduces, what
        self.outputs: dict[str, Tensor] = {}
        self._calls: dict[str, int] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def keep(module, inputs, output):
            if not isinstance(output, Tensor):
                raise ModelError(f"{self.what} module {self.layers[name]!r} outputs {type(output).__name__}, not a "
                                 "tensor; name a module that returns one")
            self._calls[name] += 1
            if self.reduces is None:
                self.outputs[name] = output.clone()  # an in-place op after this module must not change it
            else:
                with torch.autocast(output.device.type, enabled=False):  # reductions in float32, even under bf16
                    self.outputs[name] = reduce(output.detach(), self.reduces[name])
        return keep

    def __enter__(self) -> FeatureTap:
        self.outputs, self._calls = {}, {name: 0 for name in self.modules}
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if exc[0] is None:
            self._check_calls()

    def _check_calls(self) -> None:
        for name, calls in self._calls.items():
            if calls != 1:
                how = "never runs" if calls == 0 else f"runs {calls} times"
                raise ModelError(f"{self.what} module {self.layers[name]!r} (feature {name!r}) {how} in one forward "
                                 "pass; name a module that runs exactly once (e.g. its enclosing block)")


def tap_teacher(teacher: nn.Module, specs, sample: Tensor, device, codec: str | None = None,
                bf16: bool = False) -> tuple[FeatureTap, list[dict]]:
    """A reducing tap on a teacher for ``specs`` (grammar.FeatureSpec), and the record of each feature (name,
    layer, reduce, per-sample shape, codec), found by running ``sample`` (one input, no batch axis) through it.

    Raises:
        ModelError: a layer that does not exist, runs other than once, or does not fit its reduce.
    """
    tap = FeatureTap(teacher, {s.name: s.layer for s in specs}, {s.name: s.reduce for s in specs}, what="teacher")
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16), tap:
        teacher(sample.unsqueeze(0).to(device))
    return tap, [{"name": s.name, "layer": s.layer, "reduce": s.reduce, "shape": list(tap.outputs[s.name].shape[1:]),
                  "codec": codec} for s in specs]
