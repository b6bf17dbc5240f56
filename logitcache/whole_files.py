"""Files written whole or not at all: a temp file beside the target, then a rename.

    >>> write_whole(Path("runs/r/config.json"), lambda partial: partial.write_text(text))
    >>> write_text_whole(Path("runs/r/config.json"), text)

A write that fails (a full disk, a read-only file system) removes its temp file and raises
``FileWriteError``, one line that names the file and the reason: a run or checkpoint is never left
half-written, nor a ``.partial`` behind, and the CLI shows no traceback.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import FileWriteError

LOW_SPACE = 64 << 20  # below this much free space, a failed write is said to be a full disk


def write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """``write(partial)`` into ``.NAME.partial`` beside ``path``, then rename it to ``path``.

    Raises:
        FileWriteError: the write or the rename failed (torch.save reports a full disk as a RuntimeError).
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.unlink(missing_ok=True)  # a link planted there would have the write land on its target
        write(partial)
        os.replace(partial, path)
    except (OSError, RuntimeError) as err:
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass
        raise FileWriteError(f"cannot write {path}: {write_failure(err, path.parent)}") from None


def write_text_whole(path: Path, text: str) -> None:
    write_whole(path, lambda partial: partial.write_text(text))


def write_failure(err: BaseException, folder: Path) -> str:
    """Why a write failed, in words: the OS's reason, or a full disk when little space is left."""
    try:
        if shutil.disk_usage(folder).free < LOW_SPACE:
            return "no space left on the device; free some and rerun (what was written before is kept)"
    except OSError:
        pass
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
