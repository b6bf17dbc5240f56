"""What users hand the sources (files torch reads, code we call), turned into one-line errors.

    >>> with quiet_torch():                      # torch's warnings and log lines stay off the terminal
    ...     program = torch.export.load(path)
    >>> first_line(err)                          # the one line of an exception worth showing
    >>> call_user(factory, "dataset 'pkg.mod:build'", DatasetError, split="train")
    >>> read_state_dict("weights.pth")            # tensors only (weights_only=True), or one ModelError line

torch reports a file it cannot read twice: once as log lines and warnings (a dozen lines of its
internals on stderr) and once as the exception. The exception is what a user needs, so loads run
under ``quiet_torch`` and their failures become one line.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import warnings
from pathlib import Path

from ..errors import LogitCacheError, ModelError

# torch's own advice, appended to every zip-reader error: noise in a one-line message.
_TORCH_BOILERPLATE = (" This is an internal miniz error.", " Please check the warnings above")


@contextlib.contextmanager
def quiet_torch():
    """Silence warnings and logging (torch logs through the logging module) for the block."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), without torch's
    boilerplate advice."""
    text = str(err).strip()
    line = text.splitlines()[0].strip() if text else ""
    for noise in _TORCH_BOILERPLATE:
        line = line.split(noise)[0].rstrip()
    return line or type(err).__name__


def load_failure(err: BaseException) -> str:
    """Why ``torch.load`` could not read a file, in one line. Its unpickler meets junk with any
    exception (KeyError: 174812789, EOFError), which alone says nothing to a user. A file that asks
    to build other objects is said to be one, never with torch's advice to load it with
    ``weights_only=False``: that would run whatever the file asks for."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        wanted = re.search(r"(?:GLOBAL|global:?)\s+([\w.]+)", text)
        what = f" (it asks for {wanted.group(1)})" if wanted else ""
        return (f"it is not a plain state dict of tensors{what}, and logitcache will not unpickle anything else; "
                "save the weights with torch.save(model.state_dict(), PATH)")
    if isinstance(err, (RuntimeError, pickle.UnpicklingError)) and text.strip():
        return first_line(err)
    detail = f": {first_line(err)}" if str(err).strip() else ""
    return f"not a file torch.save wrote ({type(err).__name__}{detail})"


def call_user(function, what: str, error: type[LogitCacheError], *args, **kwargs):
    """Call user code (a factory, a builder); anything it raises becomes one ``error`` line.

    logitcache's own errors pass through unchanged: they are one line already.
    """
    try:
        return function(*args, **kwargs)
    except LogitCacheError:
        raise
    except Exception as err:
        raise error(f"{what}: {type(err).__name__}: {first_line(err)}") from None


def read_state_dict(path: str) -> dict:
    """Tensors from a weights file (a state dict, or a dict holding one under model/state_dict)."""
    import torch

    if not Path(path).is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        with quiet_torch():
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's unpickler raises anything (KeyError, IndexError...) on junk
        raise ModelError(f"cannot read weights {path} safely (weights_only=True): {load_failure(err)}") from None
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def misfit(err: Exception) -> str:
    """What ``load_state_dict`` found wrong, in one line (its message starts with a header line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[1:3] if len(lines) > 1 else lines)[:300] or type(err).__name__
