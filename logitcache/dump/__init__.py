"""Stage 1, ``logitcache dump``: run a teacher once over a dataset and write its raw logits into a store.

    >>> from logitcache.dump import DumpConfig, dump
    >>> summary = dump(DumpConfig(store="data/stores/digits.zarr", teacher="checkpoint:t/best.pt",
    ...                           dataset="digits@train"))
    >>> print("\n".join(summary.lines()))

The package, file by file:

- ``dump_config.py``: ``DumpConfig``, the options and the one source of their defaults (no torch).
- ``run.py``: ``dump()``, read top to bottom: build, probe, lock, open or create, write, complete.
- ``resume.py``: the store and teacher a dump opens or makes under their locks, and what a rerun resumes.
- ``loop.py``: batches through the teacher into the background writer, shard by shard.
- ``settings.py``: what a dump records (settings a resume must match, provenance).
- ``summary.py``: what it says when it ends.

``DumpConfig`` imports nothing heavy; the rest loads on first use, so ``logitcache --help`` and the
CLI's option defaults never import torch.
"""

from .dump_config import DumpConfig

__all__ = ["DumpConfig", "DumpSummary", "dump", "validate"]


def __getattr__(name: str):
    if name in ("dump", "validate"):
        from . import run

        return getattr(run, name)
    if name == "DumpSummary":
        from .summary import DumpSummary

        return DumpSummary
    raise AttributeError(f"module 'logitcache.dump' has no attribute {name!r}")
