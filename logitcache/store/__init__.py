"""The logitcache store format (v4): a self-describing, checksummed Zarr v3 group of logits, every
chunk bound to its place by a digest; a token store also holds the token sequences themselves, and a
teacher may hold named features beside its logits.

    >>> from logitcache.store import open_store
    >>> store = open_store("data/stores/digits.zarr")
    >>> store.keys[:3], store.labels[:3], store.teacher_names
    >>> store.teacher().take([0, 5, 2])     # float32 (3, C) decoded logits

This layer knows numpy and zarr only: no torch, no models, no training. It asks ``logitcache.codecs``
for a teacher's codec by name (``get_codec``, ``Codec``, ``ArraySpec`` and ``list_codecs`` are
re-exported here). docs/FORMAT.md is the specification; this package is its reference implementation.
"""

from ..codecs import CODECS, ArraySpec, Codec, get_codec, list_codecs
from ._backend import local_path, storage_options_for
from ._checks import MAX_VIEWS, check_teacher
from ._create import clear_unfinished
from ._features import FEATURE_CODECS, REDUCES, bytes_per_sample, feature_array_name, feature_codec, nbytes_features
from ._fingerprint import dataset_fingerprint, describe_mismatch
from ._lock import LOCK_DIR, writer_lock
from ._pack import pack_store
from ._root import (
    create_store,
    create_token_store,
    holds_files,
    is_unfinished_creation,
    remove_location,
)
from ._schema import (
    BASE_VERSION,
    FORMAT_NAME,
    FORMAT_VERSION,
    STATUS_COMPLETE,
    STATUS_CREATING,
    STATUS_WRITING,
    VIEW_HASHES_ARRAY,
    VIEW_PARAMS_ARRAY,
    Layout,
    choose_layout,
)
from ._store import LogitStore, open_store
from ._teacher import Teacher
from ._tokens import LOGSUMEXP_ARRAY, token_fingerprint
from ._verify import VerifyReport, verify_store
from ._writer import BackgroundWriter

__all__ = [
    "MAX_VIEWS",
    "ArraySpec",
    "BASE_VERSION",
    "CODECS",
    "FEATURE_CODECS",
    "REDUCES",
    "bytes_per_sample",
    "feature_array_name",
    "feature_codec",
    "nbytes_features",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOCK_DIR",
    "LOGSUMEXP_ARRAY",
    "STATUS_COMPLETE",
    "STATUS_CREATING",
    "STATUS_WRITING",
    "VIEW_HASHES_ARRAY",
    "VIEW_PARAMS_ARRAY",
    "BackgroundWriter",
    "Codec",
    "Layout",
    "LogitStore",
    "Teacher",
    "VerifyReport",
    "check_teacher",
    "choose_layout",
    "clear_unfinished",
    "create_store",
    "create_token_store",
    "dataset_fingerprint",
    "describe_mismatch",
    "get_codec",
    "holds_files",
    "is_unfinished_creation",
    "list_codecs",
    "local_path",
    "open_store",
    "pack_store",
    "remove_location",
    "storage_options_for",
    "token_fingerprint",
    "verify_store",
    "writer_lock",
]
