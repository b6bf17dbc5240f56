"""The errors logitcache raises, so callers can catch one base class and the CLI can print one line.

    >>> from logitcache.errors import LogitCacheError
    >>> try:
    ...     open_store("not-a-store")
    ... except LogitCacheError as err:
    ...     print(err)   # names the bad value, what was expected, and the fix

Where a builtin exception means the same thing, the subclass inherits it too, so
``except FileNotFoundError`` keeps working for code that does not know logitcache.
"""


class LogitCacheError(Exception):
    """Base class: every error logitcache raises on purpose."""


class StoreNotFoundError(LogitCacheError, FileNotFoundError):
    """The store location does not exist."""


class NotAStoreError(LogitCacheError, ValueError):
    """The location exists but does not hold a logitcache store."""


class StoreVersionError(LogitCacheError, ValueError):
    """The store was written by a format version this logitcache cannot read."""


class StoreExistsError(LogitCacheError, FileExistsError):
    """A complete store (or teacher) is already there and --overwrite was not given."""


class StoreMismatchError(LogitCacheError, ValueError):
    """The store was made from another dataset, teacher or settings than the ones given."""


class StoreIncompleteError(LogitCacheError, ValueError):
    """The store (or one teacher in it) has not been completely written."""


class CorruptStoreError(LogitCacheError, ValueError):
    """Stored bytes fail their checksum or decode to values that cannot be right."""


class StoreWriteError(LogitCacheError, OSError):
    """The store location cannot be written."""


class StoreLockedError(LogitCacheError, BlockingIOError):
    """Another process is writing the same teacher right now."""


class RunInUseError(LogitCacheError, BlockingIOError):
    """Another process holds the run directory's lock: it is training into the same --out."""


class TrainingDivergedError(LogitCacheError, FloatingPointError):
    """Training produced a non-finite loss or non-finite weights and stopped; no checkpoint holds them."""


class RunNotFoundError(LogitCacheError, FileNotFoundError):
    """A path given as a training run holds none (no metrics.jsonl), nor do the directories in it."""


class SpecError(LogitCacheError, ValueError):
    """A dataset, model, transform, codec or loss spec string is not understood."""


class DatasetError(LogitCacheError, ValueError):
    """A dataset cannot be loaded from the place its spec names."""


class ModelError(LogitCacheError, ValueError):
    """A model cannot be built, its weights do not fit, or its output has the wrong shape."""


class NonFiniteLogitsError(LogitCacheError, ValueError):
    """The teacher produced NaN or infinite logits."""


class ConfigError(LogitCacheError, ValueError):
    """An option value is out of range or options contradict each other."""


class CheckpointError(LogitCacheError, ValueError):
    """A checkpoint is missing, unreadable, or belongs to another model or run."""


class FileWriteError(LogitCacheError, OSError):
    """A run's file or a checkpoint could not be written whole (a full disk, a read-only place)."""


class StepMemoryError(LogitCacheError, MemoryError):
    """A step ran out of memory; the message names the setting to lower."""


class StoreConnectionError(LogitCacheError, ConnectionError):
    """A remote store cannot be reached (endpoint down, network cut), even after retries."""


class StoreAccessError(LogitCacheError, PermissionError):
    """A remote store refuses the credentials given."""


class OutOfMemoryError(LogitCacheError, MemoryError):
    """A batch needed more memory than the device (or the process's limit) had; a smaller one fits."""
