"""One shard: a Zarr v3 group holding records [start, stop), written whole, checked against its checksums.

Arrays (first axis: the shard's records):
  states      (R, N, C, H, W) cache dtype, fill NaN: states before a record's n are never stored. Chunks (1, 1, C, H, W)
              inside one sharded object, so reading two states of a record reads those two chunks and the shard index.
  x0          (R, C, H, W) float32, chunks (1, C, H, W) in one sharded object (zeros in noise mode).
  start (n), label, index (record index), data_index, seed: int64; flip: bool. One chunk each.
Every chunk carries a crc32c, so a corrupted chunk fails to decode; `checksums.json` lists each object's size and
sha256, and the manifest holds the sha256 of `checksums.json`. Zarr writes the metadata and the 1-D arrays; the two
sharded objects are encoded here, to the same bytes layout, since zarr-python spends ~0.1 ms per inner chunk.
"""

import contextlib
import hashlib
import json
import uuid
import warnings

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from .errors import DamagedShardError

CHECKSUMS = "checksums.json"
FILL = {"states": np.nan, "x0": np.nan, "start": -1, "label": -1, "index": -1, "data_index": -1, "seed": -1,
        "flip": False}
EMPTY = 2 ** 64 - 1  # the sharding index's (offset, nbytes) of a chunk that is not stored


def _layout(name, shape):
    """(chunks, shards, axes chunked by 1) of one array: one chunk per state or image in one object; 1-D arrays whole."""
    if name == "states":
        return (1, 1, *shape[2:]), shape, 2
    if name == "x0":
        return (1, *shape[1:]), shape, 1
    return shape, None, 0


def _crc32c(data):
    return np.uint32(google_crc32c.value(data)).tobytes()


def encode_shard(data, chunk_axes):
    """The bytes of one Zarr v3 shard holding all of `data`, whose first `chunk_axes` axes are chunked by 1.

    Sharding codec (Zarr v3 spec) with inner codecs bytes(little) + crc32c and index codecs bytes(little) + crc32c,
    index at the end: stored chunks back to back, then (offset, nbytes) uint64 per inner chunk in C order, with
    (2^64 − 1, 2^64 − 1) for a chunk equal to the fill value NaN, which is not stored.
    """
    rows = np.ascontiguousarray(data, data.dtype.newbyteorder("<")).reshape(int(np.prod(data.shape[:chunk_axes])), -1)
    stored = np.flatnonzero(~np.isnan(rows).all(axis=1))
    raw = rows.view(np.uint8)
    size = raw.shape[1] + 4
    index = np.full((len(rows), 2), EMPTY, dtype="<u8")
    index[stored, 0] = np.arange(len(stored), dtype=np.uint64) * size
    index[stored, 1] = size
    body = np.empty((len(stored), size), np.uint8)
    body[:, :-4] = raw[stored]
    body[:, -4:] = np.frombuffer(b"".join(_crc32c(row) for row in body[:, :-4]), np.uint8).reshape(-1, 4)
    return body.tobytes() + index.tobytes() + _crc32c(index.tobytes())


def write_shard(store, shard, start, stop, arrays, key):
    """Write records [start, stop) as one group, commit it (rename locally) and return its manifest entry.

    Locally the group is written under `shards/.tmp-<name>` and renamed to `shards/<name>`; on object stores it is
    written at `shards/<name>` directly and becomes part of the cache only when the manifest lists it.
    """
    count = stop - start
    if not np.array_equal(arrays["index"], np.arange(start, stop)):
        raise ValueError(f"shard {shard} must hold records {start}..{stop - 1} in order")
    name = f"{shard:06d}-{uuid.uuid4().hex[:8]}.zarr"
    final = f"shards/{name}"
    tmp = f"shards/.tmp-{name}" if store.local else final
    attributes = {"key": key, "shard": shard, "start": start, "stop": stop}
    group = zarr.open_group(store.zarr_store(tmp, read_only=False), mode="w", zarr_format=3, attributes=attributes)
    for array_name, data in arrays.items():
        if len(data) != count:
            raise ValueError(f"array {array_name} has {len(data)} records, shard {shard} needs {count}")
        chunks, shards, chunk_axes = _layout(array_name, data.shape)
        a = group.create_array(array_name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
                               compressors=[Crc32cCodec()], fill_value=FILL[array_name])
        if shards is None:
            a[...] = data
        else:
            store.write_bytes(f"{tmp}/{array_name}/c/{'/'.join('0' * data.ndim)}", encode_shard(data, chunk_axes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not (yet) in the v3 spec; zarr-python reads it
        zarr.consolidate_metadata(group.store)
    sums = {p: {"size": size, "sha256": store.sha256(f"{tmp}/{p}")} for p, size in sorted(store.objects(tmp).items())}
    listing = json.dumps(sums, indent=1, sort_keys=True).encode()
    store.write_bytes(f"{tmp}/{CHECKSUMS}", listing)
    if store.local:
        store.rename(tmp, final)
    return {"shard": shard, "path": final, "start": start, "stop": stop, "count": count,
            "nbytes": sum(s["size"] for s in sums.values()) + len(listing),
            "checksums_sha256": hashlib.sha256(listing).hexdigest()}


def shard_problems(store, entry, full=False):
    """What is wrong with a committed shard: [] when sound. Cheap: object list and sizes; full: every sha256 too."""
    objects = store.objects(entry["path"])
    if not objects:
        return [f"missing: no objects at {entry['path']}"]
    try:
        listing = store.read_bytes(f"{entry['path']}/{CHECKSUMS}")
    except FileNotFoundError:
        return [f"{CHECKSUMS} is missing"]
    if hashlib.sha256(listing).hexdigest() != entry["checksums_sha256"]:
        return [f"{CHECKSUMS} does not match the manifest"]
    sums = json.loads(listing)
    problems = [f"unexpected object {p}" for p in sorted(set(objects) - set(sums) - {CHECKSUMS})]
    for p, want in sums.items():
        if p not in objects:
            problems.append(f"missing object {p}")
        elif objects[p] != want["size"]:
            problems.append(f"object {p} has {objects[p]} bytes, expected {want['size']}")
        elif full and store.sha256(f"{entry['path']}/{p}") != want["sha256"]:
            problems.append(f"object {p} fails its sha256 checksum")
    if full and not problems:
        problems += _content_problems(open_group(store, entry), entry)
    return problems


def _content_problems(group, entry):
    count = entry["stop"] - entry["start"]
    problems = [f"array {name} holds {group[name].shape[0]} records, expected {count}"
                for name in FILL if group[name].shape[0] != count]
    if not problems and not np.array_equal(group["index"][:], np.arange(entry["start"], entry["stop"])):
        problems.append(f"index does not run over records {entry['start']}..{entry['stop'] - 1}")
    return problems


def open_group(store, entry, zarr_store=None):
    return zarr.open_group(zarr_store or store.zarr_store(entry["path"]), mode="r", use_consolidated=True)


def open_checked(store, entry, zarr_store=None):
    """The shard's group after the cheap check; DamagedShardError when an object is missing or resized."""
    problems = shard_problems(store, entry)
    if problems:
        raise damaged(entry, "; ".join(problems))
    with refusing(entry):
        return open_group(store, entry, zarr_store)


def damaged(entry, why):
    return DamagedShardError(f"shard {entry['shard']} (records {entry['start']}..{entry['stop'] - 1}, {entry['path']}) "
                             f"is damaged: {why}; run `python -m jobs.generate_trajectories verify`, then "
                             f"`generate --repair` to rewrite it")


@contextlib.contextmanager
def refusing(entry):
    """Turn a failed read (crc32c mismatch, missing object) into DamagedShardError naming the shard."""
    try:
        yield
    except (ValueError, OSError, KeyError) as e:
        raise damaged(entry, f"{type(e).__name__}: {e}") from e


def read_columns(group, entry, lo, hi):
    """Every per-record array but `states` for shard rows [lo, hi)."""
    with refusing(entry):
        return {name: group[name][lo:hi] for name in FILL if name != "states"}


def read_states(group, entry, rows, cols):
    """states[rows[i], cols[i]] as float32 (len(rows), C, H, W): only those chunks and the shard index are read."""
    shape = group["states"].shape[2:]
    grids = np.meshgrid(*[np.arange(d) for d in shape], indexing="ij")
    coords = [np.asarray(rows)[(...,) + (None,) * len(shape)], np.asarray(cols)[(...,) + (None,) * len(shape)]]
    coords += [g[None] for g in grids]
    with refusing(entry):
        out = group["states"].vindex[tuple(np.broadcast_arrays(*coords))].astype(np.float32)
    if np.isnan(out).any():
        raise damaged(entry, "a stored state reads as the fill value (a chunk is missing)")
    return out


def read_trajectories(group, entry, lo, hi, start):
    """states[lo:hi] as float32 (NaN before each record's n); a NaN from n on means a missing chunk."""
    with refusing(entry):
        out = group["states"][lo:hi].astype(np.float32)
    stored = np.arange(out.shape[1])[None] >= np.asarray(start)[:, None]
    if np.isnan(out[stored]).any():
        raise damaged(entry, "a stored state reads as the fill value (a chunk is missing)")
    return out
