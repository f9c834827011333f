"""Opening a cache: find it by its key under a root (or at its own path), refuse one built from another config."""

import torch

from pipeline.datasets import dataset_identity
from pipeline.storage import Folder
from pipeline.teachers import configured_teacher_identity

from .errors import REPAIR, CacheError, CacheNotFoundError, DamagedManifestError
from .manifest import FORMAT, FORMAT_VERSION, cache_key, check_fields, differing_fields, key_fields
from .shards import ShardReader
from .sink import MANIFEST

SHARDS = "shards"
REQUIRED = ("key", "key_fields", "records_per_shard", "num_records", "image_shape", "grid", "shards")
ENTRY = ("shard", "path", "start", "stop", "count", "nbytes", "checksums_sha256")


class TrajectoryCache:
    """A cache as its manifest describes it; reads go through `cache_dataset` or `read_shard`. Pickles by URL."""

    def __init__(self, store, manifest):
        self.store, self.manifest = store, manifest

    def __repr__(self):
        return f"TrajectoryCache({self.url!r}, {self.num_records} records)"

    @property
    def url(self):
        return self.store.url

    @property
    def key(self):
        return self.manifest["key"]

    @property
    def grid(self):
        return torch.tensor(self.manifest["grid"], dtype=torch.float64)

    @property
    def N(self):
        return len(self.manifest["grid"])

    @property
    def K(self):
        return self.manifest["key_fields"]["grid"]["K"]

    @property
    def mode(self):
        return self.manifest["key_fields"]["cache"]["mode"]

    @property
    def dtype(self):
        return self.manifest["key_fields"]["cache"]["dtype"]

    @property
    def image_shape(self):
        return tuple(self.manifest["image_shape"])

    @property
    def shards(self):
        """The complete shards in record order: dicts of shard, path, start, stop, count, nbytes, checksums_sha256."""
        return self.manifest["shards"]

    @property
    def num_records(self):
        """Records held by complete shards."""
        return sum(e["count"] for e in self.shards)

    def verify(self, full=True):
        from .verify import verify_cache
        return verify_cache(self, full=full)

    def describe(self):
        from .verify import describe_cache
        return describe_cache(self)

    def read_shard(self, entry):
        """Every array of one shard (states as float32), after the cheap check; DamagedShardError when damaged."""
        reader = ShardReader(self.store, entry)
        columns = reader.columns(0, reader.count)
        return {**columns, "states": reader.trajectories(0, reader.count, columns["start"])}


def config_key_fields(cfg, teacher=None):
    """The key fields `cfg` names: the identity of `teacher` (None: of the configured teacher, remembered from its
    file) and of the dataset, from its files (nothing is decoded to float; `pipeline.datasets.dataset_identity`)."""
    teacher_id = configured_teacher_identity(cfg) if teacher is None else teacher.identity()
    data_id = dataset_identity(cfg.data) if cfg.cache.mode == "data" else None
    return key_fields(cfg, teacher_id, data_id)


def check_format(manifest, where):
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{where}/{MANIFEST} is format {manifest.get('format')!r} version "
                         f"{manifest.get('format_version')!r}; this code reads {FORMAT!r} version {FORMAT_VERSION}")


def read_manifest(store):
    """The manifest of the cache folder `store`; None where there is none; DamagedManifestError where it cannot be
    read (truncated, emptied, overwritten), which `generate --repair` rebuilds from the shards."""
    def damaged(why):
        return DamagedManifestError(f"{store.join_url(MANIFEST)} is damaged ({why}); rebuild it from the shards that "
                                    f"verify with `{REPAIR}`")
    try:
        manifest = store.read_json(MANIFEST)
    except ValueError as e:
        raise damaged("not valid JSON") from e
    if manifest is None:
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise damaged(f"not a {FORMAT!r} manifest")
    check_format(manifest, store.url)
    lacks = [k for k in REQUIRED if k not in manifest]
    if lacks or not isinstance(manifest["shards"], list) or \
            not all(isinstance(e, dict) and all(k in e for k in ENTRY) for e in manifest["shards"]):
        raise damaged(f"it lacks {', '.join(lacks)}" if lacks else "a shard entry lacks a field")
    return manifest


def cache_folder(root, fields):
    """`root` itself when it is a cache folder (it holds a manifest, or bears the key as its name), else root/<key>."""
    key = cache_key(fields)
    return root if root.name == key or root.exists(MANIFEST) else root.child(key)


def locate(root, fields):
    """(store, manifest or None) of the cache for `fields` (see cache_folder).

    A manifest found there whose key fields differ raises CacheMismatchError before anything is written; one that
    cannot be read raises DamagedManifestError.
    """
    store = cache_folder(root, fields)
    manifest = read_manifest(store)
    if manifest is not None:
        check_fields(manifest, fields, store.url)
    return store, manifest


def _neighbours(root, fields):
    """'<key> differs in <field>, <field>' for each cache under `root`, against `fields`."""
    out = []
    for name in root.listdir():
        try:
            manifest = read_manifest(root.child(name))
        except CacheError:
            out.append(f"{name} has a damaged {MANIFEST}")
            continue
        if manifest is not None:
            diff = [k for k, _, _ in differing_fields(manifest["key_fields"], fields)]
            out.append(f"{name} differs in {', '.join(diff)}")
    return out


def open_cache(root_or_url, cfg=None, storage_options=None, teacher=None):
    """The cache at `root_or_url` (a cache folder), or the one `cfg` names under that root.

    With `cfg`, the cache's key fields must equal the config's, or CacheMismatchError names each differing field;
    `teacher`, where the caller has built it, names the teacher (else its identity is remembered from its file).
    `storage_options` (fsspec: endpoint_url, key, secret ...) default to cfg.cache.storage_options.
    """
    if storage_options is None:
        storage_options = cfg.cache.storage_options if cfg is not None else {}
    root = Folder(root_or_url, storage_options)
    if cfg is None:
        manifest = read_manifest(root)
        if manifest is None:
            raise CacheNotFoundError(f"no {MANIFEST} at {root.url}: pass a cache folder (<cache.root>/<key>), "
                                     f"or a config to find its cache under a root" + _orphans(root))
        return TrajectoryCache(root, manifest)
    fields = config_key_fields(cfg, teacher)
    store, manifest = locate(root, fields)
    if manifest is None:
        others = _neighbours(root, fields) if store is not root else []
        raise CacheNotFoundError(
            f"no cache for this configuration at {store.url}; generate it with `python -m jobs.generate_trajectories "
            f"--config ...`" + _orphans(store) + (f" (caches under {root.url}: {'; '.join(others)})" if others else ""))
    return TrajectoryCache(store, manifest)


def _orphans(store):
    """What `generate` does with the shard folders of a cache folder that lost its manifest."""
    names = [n for n in store.listdir(SHARDS) if not n.startswith(".tmp-")]
    return (f"; it lacks its {MANIFEST} but holds {len(names)} shard folders: `generate` adopts those that verify "
            f"and solves only the rest") if names else ""


def leftovers(store, manifest):
    """Paths in the cache folder that no committed shard uses: interrupted writes and superseded short shards."""
    used = {e["path"] for e in manifest["shards"]}
    stale = [f"{SHARDS}/{name}" for name in store.listdir(SHARDS) if f"{SHARDS}/{name}" not in used]
    return stale + [name for name in store.listdir() if name.startswith(".tmp-")]


def remove_leftovers(store, manifest):
    for rel in leftovers(store, manifest):
        store.remove(rel)
