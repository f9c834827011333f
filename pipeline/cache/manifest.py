"""The cache key (a hash of every field that changes a cache's contents), the manifest and the shard layout."""

import datetime
import hashlib
import json

from pipeline.datasets import hflip_enabled

from .errors import CacheMismatchError

FORMAT = "ctm-trajectory-cache"
FORMAT_VERSION = 1
SOLVER = "heun"


def key_fields(cfg, teacher_id, data_id):
    """Everything that changes a record's bytes; not num_records, records_per_shard, batch size or actor count.

    teacher_id: the teacher's `identity()`; data_id: the dataset's identity (name, content digest ...),
    None in noise mode, where no data enters a record.
    """
    c = cfg.cache
    conditional = teacher_id["label_dim"] > 0 and cfg.data.use_labels
    data = {"use_labels": conditional}
    if c.mode == "data":
        data.update(dict(data_id), hflip=hflip_enabled(cfg.data))
    return {
        "format_version": FORMAT_VERSION,
        "solver": SOLVER,
        "teacher": {k: teacher_id[k] for k in ("kind", "digest", "image_shape", "label_dim")},
        "grid": cfg.grid.grid().to_dict(),
        "cache": {"dtype": c.dtype, "mode": c.mode, "seed": c.seed},
        "data": data,
    }


def _canonical(fields):
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def cache_key(fields):
    """The cache's name: the first 20 hex digits of sha256 over the canonical JSON of its key fields."""
    return hashlib.sha256(_canonical(fields).encode()).hexdigest()[:20]


def flatten(tree, prefix=""):
    """{"grid": {"N": 18}} -> {"grid.N": 18}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_fields(cached, requested):
    """[(dotted field, cached value, requested value)] for every key field that differs."""
    a, b = flatten(cached), flatten(requested)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_fields(manifest, fields, where):
    """Raise CacheMismatchError naming each differing field when `fields` is not what built the cache at `where`."""
    diff = differing_fields(manifest["key_fields"], fields)
    if diff:
        named = "; ".join(f"{k}: cache has {a!r}, config gives {b!r}" for k, a, b in diff)
        raise CacheMismatchError(f"the cache at {where} was built from another configuration ({named}); "
                                 f"use the matching config, or point cache.root elsewhere for a new cache")


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def new_manifest(fields, records_per_shard, grid, image_shape, config):
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "key": cache_key(fields),
        "key_fields": fields,
        "records_per_shard": records_per_shard,
        "num_records": 0,
        "image_shape": list(image_shape),
        "grid": [float(t) for t in grid],
        "config": config,
        "created": now(),
        "updated": now(),
        "shards": [],
    }


def shard_ranges(num_records, records_per_shard):
    """Shard s holds records [s·R, min((s+1)·R, num_records)); only the last one may be short."""
    R = records_per_shard
    return [(s, s * R, min((s + 1) * R, num_records)) for s in range((num_records + R - 1) // R)]


def missing_shards(manifest, num_records):
    """(s, start, stop) of each shard to write so that [0, num_records) is covered.

    A committed short last shard whose range grows is missing too: it is rewritten whole for its longer range
    (its existing records come out bit for bit the same, since a record depends only on the key and its index).
    """
    have = {e["shard"]: e["stop"] for e in manifest["shards"]}
    return [(s, a, b) for s, a, b in shard_ranges(num_records, manifest["records_per_shard"])
            if have.get(s, -1) < b]


def with_entry(manifest, entry):
    """The manifest with `entry` committed (replacing an earlier entry for the same shard)."""
    shards = [e for e in manifest["shards"] if e["shard"] != entry["shard"]] + [entry]
    return {**manifest, "shards": sorted(shards, key=lambda e: e["shard"]), "updated": now()}
