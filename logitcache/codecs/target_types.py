"""Typed training targets: what a codec's rows become for a loss, as small dataclasses of tensors.

    >>> targets = codec.training_targets(stored)          # e.g. TopKTargets(indices, logprobs, tail)
    >>> targets = targets.to("cuda", non_blocking=True)   # every tensor moved
    >>> targets[rows], targets.unflatten(0, (B, L))       # row selection and shaping, like a tensor's
    >>> targets.columns("teacher_")                       # {"teacher_indices": ..., ...}, Hugging Face names
    >>> targets_from_fields({"logits": logits})           # DenseTargets(logits): the kind these fields make

Losses dispatch on the type (``losses.kd_from_targets``, ``losses.token_kl``), never on which keys a dict
happens to hold. Every field is a tensor whose first dimensions are rows (positions, samples),
except those marked ``rows=False`` (a sampled target's ``temperature``, one per sequence of a
language-model batch), which row operations leave as they are. A subclass is a new kind: it is
found by ``targets_from_fields`` from its field names. torch is only used through the tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from torch import Tensor


class Targets:
    """Base of the typed targets: row operations, moves and Hugging Face columns over the fields."""

    kinds: ClassVar[list[type[Targets]]] = []  # every subclass, in definition order

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Targets.kinds.append(cls)

    def rows(self) -> dict[str, Tensor]:
        """The per-row tensors by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("rows", True)}

    def _map(self, op: Callable, rows_only: bool = True) -> Targets:
        names = [f.name for f in dataclasses.fields(self)
                 if getattr(self, f.name) is not None and (f.metadata.get("rows", True) or not rows_only)]
        return dataclasses.replace(self, **{name: op(getattr(self, name)) for name in names})

    def __getitem__(self, index) -> Targets:
        """The rows ``index`` picks, as a tensor's ``[index]`` picks them."""
        return self._map(lambda values: values[index])

    def unflatten(self, dim: int, sizes: tuple[int, ...]) -> Targets:
        """Every row tensor's dimension ``dim`` split into ``sizes`` (``Tensor.unflatten``)."""
        return self._map(lambda values: values.unflatten(dim, sizes))

    def to(self, device, non_blocking: bool = False) -> Targets:
        return self._map(lambda values: values.to(device, non_blocking=non_blocking), rows_only=False)

    def pin_memory(self) -> Targets:
        return self._map(lambda values: values.pin_memory(), rows_only=False)

    @classmethod
    def cat(cls, parts: list[Targets]) -> Targets:
        """The rows of ``parts`` one after another (the other fields are the first part's)."""
        import torch

        return dataclasses.replace(parts[0], **{name: torch.cat([part.rows()[name] for part in parts])
                                                for name in parts[0].rows()})

    def columns(self, prefix: str = "") -> dict[str, Tensor]:
        """Every field that is set, by ``prefix`` + its name (a language-model batch's ``teacher_*``)."""
        return {prefix + f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}


@dataclasses.dataclass(frozen=True, eq=False)
class DenseTargets(Targets):
    """Teacher logits (or log-probabilities), (..., C): every class."""

    logits: Tensor


@dataclasses.dataclass(frozen=True, eq=False)
class TopKTargets(Targets):
    """A ``topk:K`` row: the K most probable classes, their log-probabilities at T = 1, and the log of
    the rest of the mass (one tail bucket). indices, logprobs: (..., K); tail: (...,). ``vocab_size``:
    the classes the ids index, as a language-model batch carries it (one per sequence), checked
    against the student's head (a sparse row cannot show a wider head is wrong); None: unchecked."""

    indices: Tensor
    logprobs: Tensor
    tail: Tensor
    vocab_size: Tensor | None = dataclasses.field(default=None, metadata={"rows": False})


@dataclasses.dataclass(frozen=True, eq=False)
class SampledTargets(Targets):
    """A ``sample:K[:T]`` row: the classes drawn from the teacher at T, their weights (count / K, 0 for
    padding) and the teacher's log-probabilities of them at T; (..., K) each. ``temperature``: T as a
    language-model batch carries it (one per sequence), checked against the loss's; None where the
    caller checked it already. ``vocab_size``: as ``TopKTargets``'s."""

    indices: Tensor
    weights: Tensor
    logprobs: Tensor
    temperature: Tensor | None = dataclasses.field(default=None, metadata={"rows": False})
    vocab_size: Tensor | None = dataclasses.field(default=None, metadata={"rows": False})


def targets_from_fields(fields: Mapping[str, Tensor]) -> Targets:
    """The typed targets these fields make (a batch's ``teacher_*`` columns, the prefix removed): the
    kind whose required fields are all here and which has a field for each one.

    Raises:
        ValueError: no kind of targets has exactly these fields.
    """
    given = set(fields)
    for kind in Targets.kinds:
        names = {f.name for f in dataclasses.fields(kind)}
        required = {f.name for f in dataclasses.fields(kind) if f.default is dataclasses.MISSING}
        if required <= given <= names:
            return kind(**fields)
    known = "; ".join(", ".join(f.name for f in dataclasses.fields(kind)) for kind in Targets.kinds)
    raise ValueError(f"teacher targets with fields {', '.join(sorted(given))} are of no known kind ({known})")


def as_targets(targets: Targets | Mapping[str, Tensor]) -> Targets:
    """``targets`` typed: as it is, or made from its fields by name (``targets_from_fields``)."""
    return targets if isinstance(targets, Targets) else targets_from_fields(targets)
