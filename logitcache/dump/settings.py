"""What a dump records about itself: the settings that determine the stored bytes (a resumed dump
must match them exactly) and the provenance that describes the teacher.

    >>> settings, provenance = dump_settings(config, source, model, num_classes, device, augment)
    >>> codec = dump_codec(config, num_classes)   # the codec's form a store's existing teacher records
"""

from __future__ import annotations

import platform

import numpy as np
import torch

from .. import __version__
from ..codecs import get_new_codec
from ..errors import LogitCacheError
from ..sources import file_sha256, num_parameters, parameters_sha256, weights_in_spec
from ..store import bytes_per_sample as feature_bytes
from ..store import STATUS_CREATING, choose_layout, open_store
from ..views.view_specs import ViewAugment
from ..views.record import bytes_per_view, view_record


def dump_settings(config, source, model, num_classes: int, device,
              augment: ViewAugment | None, features: list[dict] | None = None) -> tuple[dict, dict]:
    """What determines the stored bytes (compared on resume), and what describes the teacher.
    ``features``: the records of the teacher features the dump stores (``features/extract.py: tap_teacher``)."""
    codec = dump_codec(config, num_classes)
    views = max(config.view_count, 1)
    record = view_record(config, augment) if augment else None
    row_bytes = views * (codec.bytes_per_sample(num_classes) + (bytes_per_view(record) if record else 0))
    row_bytes += sum(feature_bytes(f, views) for f in features or [])
    layout = choose_layout(len(source), num_classes * views, 0, rows_per_shard=config.rows_per_shard,
                           row_bytes=row_bytes)
    settings = {
        "teacher": config.teacher,
        **weights_digest(config, model),
        "transform": source.transform,
        "codec": codec.name,
        "layout": layout.to_dict(),
        "batch_size": config.batch_size,
        "bf16": config.bf16,
        "device_type": device.type,
    }
    if record:
        settings["views"] = record
    if features:
        settings["features"] = features
    provenance = {
        "teacher": {"spec": config.teacher, "weights": config.weights, "num_parameters": num_parameters(model)},
        "dataset": source.describe(),
        "software": software(config.teacher),
    }
    return settings, provenance


def dump_codec(config, num_classes: int):
    """The codec a dump writes with: a new teacher's (``get_new_codec``), or where the store holds
    this teacher already under the same codec name or form (``form_name``), the form its record says (a ``sample:K`` written
    before format v7 keeps per-class log-probabilities; ids before v5, whole), so that its settings,
    whose layout follows the row's bytes, and its rows stay its own: the same command resumes it,
    or finds it complete, rather than refuse it as made with other settings.

    Raises:
        SpecError: as ``get_new_codec``.
    """
    codec = get_new_codec(config.codec, num_classes)
    if config.overwrite:
        return codec
    try:
        store = open_store(config.store, storage_options=config.storage_options)
        if not store.has_teacher(config.teacher_name):
            return codec
        existing = store.teacher(config.teacher_name, check=False)
        named = existing.attrs.get("codec") == codec.name or existing.codec.form_name == codec.form_name
        same = named and existing.num_classes == num_classes  # sample:K:fp16 on a sample:K written before v7
        return existing.codec if same and existing.status != STATUS_CREATING else codec  # creating: made anew
    except (LogitCacheError, KeyError, TypeError, ValueError):  # no store yet, or damage the dump's own open names
        return codec


def weights_digest(config, model) -> dict:
    """The teacher's identity in the settings: its weights file's and its parameters' sha256."""
    weights_file = config.weights or weights_in_spec(config.teacher)
    return {"weights_sha256": file_sha256(weights_file) if weights_file else None,
            "parameters_sha256": parameters_sha256(model)}


def software(teacher: str = "") -> dict:
    import numcodecs
    import torchvision
    import zarr

    versions = {"logitcache": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                "zarr": zarr.__version__, "numcodecs": numcodecs.__version__, "numpy": np.__version__,
                "python": platform.python_version()}
    if teacher.startswith("timm:"):  # the architecture's code is timm's: its version is part of the teacher
        import timm

        versions["timm"] = timm.__version__
    return versions
