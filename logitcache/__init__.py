"""logitcache: run the teacher once, cache its logits in a Zarr store, distil students from it.

    $ logitcache run pipelines/digits.toml            # the embedded default, end to end
    >>> from logitcache.store import open_store       # read a store from Python

Importing ``logitcache`` is light (no torch, no zarr); the stages import what they need.
"""

__version__ = "0.2.0"
