"""``torchscript:FILE`` and ``export:FILE``: models saved as programs, run without their Python code.

    >>> get_model("torchscript:teacher.pt", 10)      # torch.jit.script / trace, then .save
    >>> get_model("export:teacher.pt2", 10)          # torch.export.save (export the batch dimension as dynamic)

The file is the whole model, weights included, so its sha256 names the teacher; ``num_classes``
is whatever the program outputs.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from ._loading import first_line, quiet_torch
from ._registry import register_model_scheme, rest_is_the_file


@register_model_scheme("torchscript", grammar="torchscript:FILE", description="a TorchScript module",
                       weights_file=rest_is_the_file)
def torchscript_model(path: str, num_classes: int):
    import torch

    if not Path(path).is_file():
        raise ModelError(f"TorchScript file {path} does not exist")
    try:
        with quiet_torch():
            return torch.jit.load(path, map_location="cpu")
    except Exception as err:
        raise ModelError(f"{path} is not a TorchScript module ({first_line(err)})") from None


@register_model_scheme("export", grammar="export:FILE", description="a torch.export program",
                       weights_file=rest_is_the_file)
def exported_model(path: str, num_classes: int):
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
