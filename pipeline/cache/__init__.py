"""The trajectory cache: the teacher's Heun segments, solved once by Ray Data actors, stored as Zarr v3 shards.

    cache = generate_cache(cfg)                    # create, resume or extend (Ray initialised)
    cache = open_cache(cfg.cache.root, cfg)        # refuses a cache built from other key fields
    ds = cache_dataset(cache, pairs=True, epoch=e) # rows x0, label, index, n, k, x_t, x_u
"""

from .cache import TrajectoryCache, config_key_fields, open_cache
from .errors import (CacheError, CacheMismatchError, CacheNotFoundError, DamagedManifestError, DamagedShardError,
                     NonFiniteStatesError)
from .generate import generate_cache
from .manifest import cache_key, key_fields
from .source import CacheDatasource, cache_dataset
from .verify import damaged_error, describe_cache, format_report, verify_cache

__all__ = ["TrajectoryCache", "open_cache", "config_key_fields", "generate_cache", "cache_dataset", "CacheDatasource",
           "verify_cache", "describe_cache", "format_report", "damaged_error", "cache_key", "key_fields", "CacheError",
           "CacheMismatchError", "CacheNotFoundError", "DamagedShardError", "DamagedManifestError",
           "NonFiniteStatesError"]
