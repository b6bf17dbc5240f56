"""Logit codecs: how float32 logits become the arrays a teacher stores, and what they train as.

    >>> from logitcache.codecs import get_codec
    >>> codec = get_codec("topk:50").for_classes(1000)
    >>> stored = codec.encode(logits)                   # {"indices", "logprobs", "tail"}: numpy (n, ...)
    >>> codec.decode(stored)                            # float32 (n, 1000), the tail spread evenly
    >>> codec.training_targets(stored)                  # TopKTargets(indices, logprobs, tail): tensors

One file per codec family, each registering itself (``catalog.py``): ``dense.py`` (fp32, fp16,
bf16), ``u8.py``, ``topk.py``, ``sample.py``; ``codec_interface.py`` is the interface every codec implements,
``target_types.py`` the typed targets losses take and ``packed_ids.py`` the bit-packed class ids of
sparse codecs above 65,536 classes. A new codec is one more such file, or a
plugin module that calls ``register_codec``. This package sits below ``store/`` (which asks it for
codecs by name) and imports numpy and ``errors`` only; torch inside the methods that make tensors.
"""

# Each family registers itself on import; families are listed (the unknown-codec message) in this order.
from . import dense, u8  # noqa: F401
from . import topk  # noqa: F401, I001
from . import sample  # noqa: F401
from .codec_interface import ArraySpec, Codec, SparseCodec, cast
from .catalog import (
    CODECS,
    codec_examples,
    get_codec,
    get_new_codec,
    get_stored_codec,
    stored_codec,
    list_codecs,
    list_families,
    register_codec,
    register_family,
    unregister_codec,
)
from .target_types import DenseTargets, SampledTargets, Targets, TopKTargets, as_targets, targets_from_fields

__all__ = [
    "CODECS",
    "ArraySpec",
    "Codec",
    "DenseTargets",
    "SampledTargets",
    "SparseCodec",
    "Targets",
    "TopKTargets",
    "as_targets",
    "cast",
    "codec_examples",
    "get_codec",
    "get_new_codec",
    "get_stored_codec",
    "stored_codec",
    "list_codecs",
    "list_families",
    "register_codec",
    "register_family",
    "targets_from_fields",
    "unregister_codec",
]
