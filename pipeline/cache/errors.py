"""What can go wrong with a trajectory cache, each error naming what to do about it."""


class CacheError(RuntimeError):
    """A trajectory cache cannot be used as asked."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """No cache where one was expected."""


class CacheMismatchError(CacheError):
    """The cache was built from another configuration; the message names every differing key field."""


class DamagedShardError(CacheError):
    """A shard's stored bytes disagree with the manifest (a missing or corrupted object); it is never served."""
