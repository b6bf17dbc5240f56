"""Open and create logitcache stores: a Zarr v3 group checked against the format on every open.

    >>> store = open_store("data/stores/digits.zarr")          # read-only, validated
    >>> store = open_store("s3://team/digits.zarr")             # endpoint/credentials from the env
    >>> store.num_samples, store.keys[:2], store.labels[:2]
    >>> teacher = store.teacher()                               # the only complete (or named) teacher
    >>> teacher.take([5, 1, 9])                                 # float32 (3, C) logits

Stores open lazily, reopen in a forked child, and drop their zarr handles when pickled, so a store
object can be handed to DataLoader workers and each worker opens its own (zip files included).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import zarr
import zarr.codecs

from ..errors import (
    CorruptStoreError,
    LogitCacheError,
    NotAStoreError,
    StoreMismatchError,
    StoreNotFoundError,
    StoreVersionError,
    StoreWriteError,
)
from ._backend import first_line, local_path, probe_remote, remote_errors, zarr_store
from ._checks import check_root, check_teacher
from ._create import create_teacher_arrays, teacher_status
from ._fingerprint import dataset_fingerprint, describe_mismatch
from ._schema import (
    FEATURES_VERSION,
    FORMAT_NAME,
    FORMAT_VERSION,
    INTEGRITY_VERSION,
    ROOT_ATTR,
    STATUS_COMPLETE,
    TEACHERS_GROUP,
)
from ._teacher import Teacher
from ._tokens import (
    DATASET_KIND_TOKENS,
    LENGTHS_ARRAY,
    LOSS_MASK_ARRAY,
    TOKEN_ARRAYS,
    TOKENS_ARRAY,
    check_stored_sequences,
    read_token_arrays,
)


class LogitStore:
    """A logitcache store: the samples (keys and labels, or token sequences) plus one group per
    teacher. A teacher's rows are the samples, or, in a token store, the token positions."""

    def __init__(self, location: str | os.PathLike, *, read_only: bool = True, storage_options: dict | None = None):
        self.location = str(location)
        self.read_only = read_only
        self.storage_options = dict(storage_options or {})
        self._group = None
        self._pid = None
        self._cache: dict = {}

    # Zarr handles are per process: drop them when pickled, reopen after a fork.
    def __getstate__(self):
        return {"location": self.location, "read_only": self.read_only, "storage_options": self.storage_options}

    def __setstate__(self, state):
        self.__init__(state["location"], read_only=state["read_only"], storage_options=state["storage_options"])

    def __repr__(self):
        return f"LogitStore({self.location!r}, read_only={self.read_only})"

    @property
    def group(self) -> zarr.Group:
        if self._group is None or self._pid != os.getpid():
            self._group = _open_group(self.location, read_only=self.read_only, storage_options=self.storage_options)
            self._pid = os.getpid()
        return self._group

    def _cached(self, key, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    @property
    def info(self) -> dict:
        """The root attribute: format, version and dataset description."""
        return self._cached("info", lambda: dict(self.group.attrs[ROOT_ATTR]))

    @property
    def dataset(self) -> dict:
        return self.info["dataset"]

    @property
    def version(self) -> int:
        return int(self.info["version"])

    @property
    def num_samples(self) -> int:
        return int(self.dataset["num_samples"])

    @property
    def fingerprint(self) -> str:
        return self.dataset["fingerprint"]

    @property
    def is_tokens(self) -> bool:
        """A token store (format v4): sequences of token ids; teacher rows are positions."""
        return self.dataset.get("kind") == DATASET_KIND_TOKENS

    @property
    def seq_len(self) -> int:
        return int(self.dataset["seq_len"]) if self.is_tokens else 1

    @property
    def num_rows(self) -> int:
        """Rows of every teacher array: one per sample, or one per token position (N * L)."""
        return self.num_samples * self.seq_len

    @property
    def vocab_size(self) -> int | None:
        return int(self.dataset["vocab_size"]) if self.is_tokens else None

    @property
    def tokens(self) -> np.ndarray:
        """(N, L) token ids, checked against the token fingerprint on first use."""
        return self._token_arrays()[TOKENS_ARRAY]

    @property
    def loss_mask(self) -> np.ndarray:
        """(N, L) bool: True where the next token is a training target."""
        return self._token_arrays()[LOSS_MASK_ARRAY]

    @property
    def lengths(self) -> np.ndarray:
        """(N,) real tokens per sequence (the rest is right-padding)."""
        return self._token_arrays()[LENGTHS_ARRAY]

    def sequence_counts(self) -> dict:
        """The sequences checked a block at a time (``check_stored_sequences``, once per open store):
        their counts, and the (N,) ``lengths`` and ``targets_per_sequence``, without the arrays whole."""
        if not self.is_tokens:
            raise StoreMismatchError(f"{self.location} holds labelled samples, not token sequences")
        return self._cached("sequence_counts", lambda: check_stored_sequences(self, per_sequence=True))

    def _token_arrays(self) -> dict[str, np.ndarray]:
        if not self.is_tokens:
            raise StoreMismatchError(f"{self.location} holds labelled samples, not token sequences")
        return self._cached("token_arrays", lambda: read_token_arrays(self, lambda name: _read_checked(self, name)))

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.get("class_names") or [])

    @property
    def keys(self) -> np.ndarray:
        return self._token_arrays()["keys"] if self.is_tokens else self._cached("keys", lambda: _read_checked(self, "keys"))

    @property
    def labels(self) -> np.ndarray:
        if self.is_tokens:
            raise StoreMismatchError(f"{self.location} holds token sequences, not labelled samples")
        return self._cached("labels", lambda: _read_checked(self, "labels").astype(np.int64))

    @property
    def all_teacher_names(self) -> list[str]:
        """Every teacher group, complete, being written or damaged (listed, not opened). A teacher's
        folder whose metadata is missing or unreadable is listed too: damage is never absence (a
        student that asked for its targets must not train without them)."""
        store, root = self.group.store_path.store, self.group.store_path.path
        prefix = "/".join(p for p in (root, TEACHERS_GROUP) if p)

        async def is_teacher(name: str) -> bool:
            if name == "zarr.json" or name.endswith(".partial"):  # the group's own metadata; a killed write's
                return False
            if await store.exists(f"{prefix}/{name}/zarr.json"):
                return True
            return any([True async for _ in store.list_dir(f"{prefix}/{name}")])  # a folder: its metadata is gone

        async def names() -> list[str]:
            children = [name async for name in store.list_dir(prefix)]
            return sorted([name for name in children if await is_teacher(name)])

        with remote_errors(self.location):
            return zarr.core.sync.sync(names())

    @property
    def teacher_names(self) -> list[str]:
        """The complete teachers: a teacher being dumped appears here only once it is complete."""
        return [name for name in self.all_teacher_names if teacher_status(self._teacher_group(name)) == STATUS_COMPLETE]

    def _teacher_group(self, name: str) -> zarr.Group:
        """The teacher's zarr group, its metadata checked readable (``_damage_as_one_line``)."""
        with _damage_as_one_line(f"teacher {name!r} in {self.location}"), remote_errors(self.location):
            return self.group[TEACHERS_GROUP][name]

    def teacher(self, name: str | None = None, *, check: bool = True) -> Teacher:
        """The teacher called ``name`` (complete or not); without a name, the only complete one.

        Its metadata, ledger and (v3) digests are checked first (``_checks.check_teacher``);
        ``check=False`` is for the dump that holds the teacher's lock and may redo it.

        Raises:
            StoreMismatchError: no such teacher. StoreIncompleteError: it is still being created.
            CorruptStoreError: its metadata or ledger was damaged or edited.
        """
        if name is None:
            names = self.teacher_names
            if len(names) != 1:
                listed = ", ".join(names) or "none"
                raise StoreMismatchError(
                    f"{self.location} holds {len(names)} complete teachers ({listed}); name one with --teacher"
                )
            name = names[0]
        if name not in self.all_teacher_names:
            raise StoreMismatchError(
                f"{self.location} has no teacher {name!r}; it has: {', '.join(self.all_teacher_names) or 'none'}"
            )
        teacher = Teacher(self._teacher_group(name), name, self)
        if check:
            check_teacher(teacher)
        return teacher

    def check_dataset(self, keys, labels) -> None:
        """Refuse a dataset whose keys, order, length or labels differ from the store's (and a store
        whose own keys and labels no longer match its recorded fingerprint).

        Raises:
            StoreMismatchError: with a message saying what differs. CorruptStoreError: the store's own.
        """
        if dataset_fingerprint(self.keys, self.labels) != self.fingerprint:
            raise CorruptStoreError(f"{self.location}: the stored keys and labels do not match the store's "
                                    "recorded fingerprint; the store was damaged or edited")
        if dataset_fingerprint(keys, labels) == self.fingerprint:
            return
        why = describe_mismatch(self.keys, self.labels, keys, labels)
        raise StoreMismatchError(f"dataset does not match store {self.location}: {why or 'fingerprints differ'}")

    def has_teacher(self, name: str) -> bool:
        """Whether the teacher's folder exists, its metadata read or not: damage is never absence."""
        return name in self.all_teacher_names

    def create_teacher(self, name: str, **kwargs) -> Teacher:
        """Make the arrays of a new teacher group (see ``create_teacher_arrays``)."""
        if self.read_only:
            raise StoreWriteError(f"{self.location} was opened read-only")
        with _damage_as_one_line(f"the teachers of {self.location}"), remote_errors(self.location):
            # Before the teacher exists, so an older reader refuses the store rather than misread it.
            self._require_version(INTEGRITY_VERSION)  # v3 >= VIEWS_VERSION: views need nothing more
            if kwargs.get("features"):  # only then: a store without features keeps its v3 bytes
                self._require_version(FEATURES_VERSION)
            self._require_version(kwargs["codec"].format_version)  # v5: packed ids, counts; v6: gaps; v7: sums
            teachers = self.group.require_group(TEACHERS_GROUP)
            group = create_teacher_arrays(teachers, name, num_samples=self.num_rows, tokens=self.is_tokens, **kwargs)
        return Teacher(group, name, self)

    def _require_version(self, version: int) -> None:
        """Raise the store's recorded format version to ``version`` (never lower it)."""
        info = dict(self.group.attrs[ROOT_ATTR])
        if info["version"] < version:
            self.group.attrs[ROOT_ATTR] = {**info, "version": version}
            self._cache.pop("info", None)

    def remove_partial_metadata(self) -> int:
        """Delete temp files (``*.partial``) a killed writer left beside the root's and ``teachers``'
        metadata; only for the holder of the store's lock. Returns how many were removed."""
        store = self.group.store_path.store
        shared = ("", "labels/", *(f"{name}/" for name in TOKEN_ARRAYS), f"{TEACHERS_GROUP}/")

        async def sweep() -> int:
            orphans = [key async for key in store.list() if key.endswith(".partial")
                       and key[:key.rfind("/") + 1] in shared]
            for key in orphans:
                await store.delete(key)
            return len(orphans)

        with remote_errors(self.location):
            return zarr.core.sync.sync(sweep())

    def delete_teacher(self, name: str) -> None:
        """Delete everything under the teacher's path (nothing there is fine): only for the holder of
        the teacher's lock, which is why a broken or half-made group is deleted all the same."""
        prefix = "/".join(p for p in (self.group.store_path.path, TEACHERS_GROUP, name) if p)
        with remote_errors(self.location):
            zarr.core.sync.sync(self.group.store_path.store.delete_dir(prefix))


@contextlib.contextmanager
def _damage_as_one_line(what: str):
    """Metadata zarr cannot read (missing, not JSON, not an object, a link loop: KeyError, ValueError,
    TypeError, OSError from zarr) as one CorruptStoreError line; ``remote_errors``' own errors (network,
    credentials, nesting, a bad zip) pass through."""
    try:
        yield
    except LogitCacheError:
        raise
    except Exception as err:
        raise CorruptStoreError(f"{what} cannot be read ({type(err).__name__}: {first_line(err)}); the store "
                                "was damaged or edited") from None


def _read_checked(store: LogitStore, name: str) -> np.ndarray:
    try:
        with remote_errors(store.location):
            return store.group[name][:]
    except KeyError:
        raise CorruptStoreError(f"store array {name!r} is missing") from None
    except (CorruptStoreError, StoreNotFoundError):
        raise
    except Exception as err:  # zarr raises several types for a bad checksum or truncated chunk
        if isinstance(err, (ConnectionError, PermissionError)):
            raise
        raise CorruptStoreError(f"store array {name!r} cannot be read: {err}") from None


def _open_group(location: str, *, read_only: bool, storage_options: dict | None = None) -> zarr.Group:
    path = local_path(location)
    if path is not None and not path.exists():
        raise StoreNotFoundError(f"no store at {location}: the path does not exist")
    if path is None and not probe_remote(location, storage_options):
        raise StoreNotFoundError(f"no store at {location}")
    try:
        with remote_errors(location):
            group = zarr.open_group(zarr_store(location, read_only=read_only, storage_options=storage_options),
                                    mode="r" if read_only else "r+")
            info = group.attrs.get(ROOT_ATTR)
    except (NotAStoreError, StoreNotFoundError, CorruptStoreError):
        raise
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        if path is None:
            raise StoreNotFoundError(f"no store at {location}") from None
        raise NotAStoreError(f"{location} is not a logitcache store (no Zarr v3 group there)") from None
    except (ValueError, TypeError, AttributeError) as err:  # zarr's, on root metadata that is not an object
        raise NotAStoreError(f"{location} is not a logitcache store (its root metadata cannot be read: "
                             f"{type(err).__name__}: {first_line(err)})") from None
    validate_root(info, location)
    return group


def validate_root(info, location: str) -> None:
    """Check the root attribute names this format at a version we can read."""
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise NotAStoreError(f"{location} is a Zarr group but not a logitcache store (no '{ROOT_ATTR}' attribute)")
    version = info.get("version")
    if not isinstance(version, int) or version < 1:
        raise StoreVersionError(f"{location} has an unreadable format version {version!r}")
    if version > FORMAT_VERSION:
        raise StoreVersionError(
            f"{location} is logitcache store format v{version}, newer than the v{FORMAT_VERSION} "
            "this logitcache reads; upgrade logitcache"
        )


def open_store(location, *, read_only: bool = True, storage_options: dict | None = None) -> LogitStore:
    """Open an existing store and check its format and version now (not on first use).

    Raises:
        StoreNotFoundError, NotAStoreError, StoreVersionError, StoreConnectionError, StoreAccessError.
    """
    store = LogitStore(location, read_only=read_only, storage_options=storage_options)
    with remote_errors(store.location):
        store.group  # noqa: B018 - validates now, so errors surface at open
        check_root(store)
    return store
