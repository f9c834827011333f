"""What can go wrong with a trajectory cache, each error naming what to do about it."""

REPAIR = "python -m jobs.generate_trajectories generate --repair --config ..."  # with the config that made the cache


class CacheError(RuntimeError):
    """A trajectory cache cannot be used as asked."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """No cache where one was expected."""


class CacheMismatchError(CacheError):
    """The cache was built from another configuration; the message names every differing key field."""


class DamagedShardError(CacheError):
    """A shard's stored bytes disagree with its checksums (a missing or corrupted object) or hold NaN states; it is
    never served, and the message names the repair command."""


class DamagedManifestError(CacheError):
    """manifest.json cannot be read; `generate --repair` rebuilds it from the shards that verify."""


class NonFiniteStatesError(CacheError):
    """The teacher produced NaN or Inf states; the writer refuses them."""
