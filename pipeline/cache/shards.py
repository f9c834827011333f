"""One shard: a Zarr v3 group holding records [start, stop), written whole, checked against its checksums.

Arrays (first axis: the shard's records):
  states      (R, N, C, H, W) cache dtype, fill NaN: states before a record's n are never stored. Chunks (1, 1, C, H, W)
              inside one sharded object, so reading two states of a record reads those two chunks and the shard index.
  x0          (R, C, H, W) float32, chunks (1, C, H, W) in one sharded object (zeros in noise mode).
  start (n), label, index (record index), data_index, seed: int64; flip: bool. One chunk each.
Every chunk carries a crc32c, so a corrupted chunk fails to decode; `checksums.json` lists each object's size and
sha256, and the manifest holds the sha256 of `checksums.json`. Zarr writes the metadata and the 1-D arrays; the two
sharded objects are encoded and read by `shardcodec`, to the same bytes.

What each check reads: the quick check (training's pre-check, `generate`, `verify --quick`) lists the objects, compares
sizes and hashes every small object (metadata and 1-D arrays); a reader hashes the metadata it opens and checks each
chunk's crc32c (and that its values are finite) as it reads it; the full check hashes every object and reads every
stored state.
"""

import contextlib
import hashlib
import json
import uuid
import warnings

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from .errors import REPAIR, DamagedShardError, NonFiniteStatesError
from .shardcodec import EMPTY, decode_chunks, decode_index, encode_shard, failing_chunk, index_nbytes

CHECKSUMS = "checksums.json"
FILL = {"states": np.nan, "x0": np.nan, "start": -1, "label": -1, "index": -1, "data_index": -1, "seed": -1,
        "flip": False}
CHUNK_AXES = {"states": 2, "x0": 1}  # axes chunked by 1 in the sharded arrays; the rest of each is one chunk


def _object(name, ndim):
    """The key of an array's only object (its one shard or chunk)."""
    return f"{name}/c/{'/'.join('0' * ndim)}"


def bulk(path):
    """Whether an object is one of the two large sharded objects (states, x0), whose chunks and index each carry a
    crc32c checked as they are read; every other object (metadata, 1-D arrays) is small and read whole."""
    parts = path.split("/")
    return parts[0] in CHUNK_AXES and parts[1:2] == ["c"]


def _nonfinite(arrays, start, shard):
    """NonFiniteStatesError naming the first record whose stored states (from its n on) or x0 hold NaN or Inf."""
    states, n = arrays["states"], arrays["start"]
    N = states.shape[1]
    bad = ~np.isfinite(states.reshape(*states.shape[:2], -1)).all(axis=2) & (np.arange(N)[None] >= n[:, None])
    bad_x0 = ~np.isfinite(arrays["x0"].reshape(len(n), -1)).all(axis=1)
    rows = np.flatnonzero(bad.any(axis=1) | bad_x0)
    if not len(rows):
        return None
    r = rows[0]
    what = (f"its state {int(np.argmax(bad[r]))} on the grid (the teacher's Heun solve from n = {n[r]}); check the "
            f"teacher's parameters (teacher.path) for NaN or Inf" if bad[r].any() else
            "its image x0; check the dataset (data.path)")
    return NonFiniteStatesError(f"record {start + r} holds NaN or Inf in {what}. Nothing of shard {shard} (records "
                                f"{start}..{start + len(n) - 1}) was written")


def write_shard(store, shard, start, stop, arrays, key):
    """Write records [start, stop) as one group, commit it (rename locally) and return its manifest entry.

    Locally the group is written under `shards/.tmp-<name>` and renamed to `shards/<name>`; on object stores it is
    written at `shards/<name>` directly and becomes part of the cache only when the manifest lists it.
    """
    count = stop - start
    if not np.array_equal(arrays["index"], np.arange(start, stop)):
        raise ValueError(f"shard {shard} must hold records {start}..{stop - 1} in order")
    error = _nonfinite(arrays, start, shard)
    if error is not None:
        raise error
    name = f"{shard:06d}-{uuid.uuid4().hex[:8]}.zarr"
    final = f"shards/{name}"
    tmp = f"shards/.tmp-{name}" if store.local else final
    attributes = {"key": key, "shard": shard, "start": start, "stop": stop}
    group = zarr.open_group(store.zarr_store(tmp, read_only=False), mode="w", zarr_format=3, attributes=attributes)
    for array_name, data in arrays.items():
        if len(data) != count:
            raise ValueError(f"array {array_name} has {len(data)} records, shard {shard} needs {count}")
        axes = CHUNK_AXES.get(array_name)
        chunks = data.shape if axes is None else (1,) * axes + data.shape[axes:]
        a = group.create_array(array_name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                               shards=None if axes is None else data.shape, compressors=[Crc32cCodec()],
                               fill_value=FILL[array_name])
        if axes is None:
            a[...] = data
        else:
            store.write_bytes(f"{tmp}/{_object(array_name, data.ndim)}", encode_shard(data, axes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not (yet) in the v3 spec; zarr-python reads it
        zarr.consolidate_metadata(group.store)
    sums = {p: {"size": size, "sha256": store.sha256(f"{tmp}/{p}")} for p, size in sorted(store.objects(tmp).items())}
    listing = json.dumps(sums, indent=1, sort_keys=True).encode()
    store.write_bytes(f"{tmp}/{CHECKSUMS}", listing)
    if store.local:
        store.move(tmp, final)
    return {"shard": shard, "path": final, "start": start, "stop": stop, "count": count,
            "nbytes": sum(s["size"] for s in sums.values()) + len(listing),
            "checksums_sha256": hashlib.sha256(listing).hexdigest()}


def _listing_problems(store, entry):
    """(problems, checksums) from the object list and sizes: cheap, one listing and one small read."""
    objects = store.objects(entry["path"])
    if not objects:
        return [f"missing: no objects at {entry['path']}"], None
    try:
        listing = store.read_bytes(f"{entry['path']}/{CHECKSUMS}")
    except FileNotFoundError:
        return [f"{CHECKSUMS} is missing"], None
    if hashlib.sha256(listing).hexdigest() != entry["checksums_sha256"]:
        return [f"{CHECKSUMS} does not match the manifest"], None
    sums = json.loads(listing)
    problems = [f"unexpected object {p}" for p in sorted(set(objects) - set(sums) - {CHECKSUMS})]
    for p, want in sums.items():
        if p not in objects:
            problems.append(f"missing object {p}")
        elif objects[p] != want["size"]:
            problems.append(f"object {p} has {objects[p]} bytes, expected {want['size']}")
    return problems, sums


def shard_problems(store, entry, full=False):
    """What is wrong with a committed shard: [] when sound. Quick: object list, sizes and the sha256 of every small
    object (metadata, 1-D arrays); full: the sha256 of every object, then every stored state read and checked."""
    problems, sums = _listing_problems(store, entry)
    if not problems:
        problems = [f"object {p} fails its sha256 checksum" for p, want in sums.items()
                    if (full or not bulk(p)) and store.sha256(f"{entry['path']}/{p}") != want["sha256"]]
    if full and not problems:
        problems = _content_problems(store, entry)
    return problems


def _content_problems(store, entry, block_rows=64):
    """Record counts, record indices, start indices and every stored state and x0 (present and finite)."""
    count = entry["stop"] - entry["start"]
    try:
        reader = ShardReader(store, entry)
        problems = [f"array {name} holds {reader.group[name].shape[0]} records, expected {count}"
                    for name in FILL if reader.group[name].shape[0] != count]
        if problems:
            return problems
        columns = reader.columns(0, count)
        if not np.array_equal(columns["index"], np.arange(entry["start"], entry["stop"])):
            return [f"index does not run over records {entry['start']}..{entry['stop'] - 1}"]
        N = reader.group["states"].shape[1]
        if ((columns["start"] < 0) | (columns["start"] > N - 2)).any():
            return [f"start holds a grid index outside 0..{N - 2}"]
        for lo in range(0, count, block_rows):
            hi = min(lo + block_rows, count)
            reader.trajectories(lo, hi, columns["start"][lo:hi])
    except DamagedShardError as e:
        return [e.problem]
    return []


def damaged(entry, why):
    e = DamagedShardError(f"shard {entry['shard']} (records {entry['start']}..{entry['stop'] - 1}, {entry['path']}) "
                          f"is damaged: {why}; rewrite it with `{REPAIR}`")
    e.problem = why
    return e


@contextlib.contextmanager
def refusing(entry):
    """Turn a failed read (crc32c mismatch, missing object) into DamagedShardError naming the shard."""
    try:
        yield
    except (ValueError, OSError, KeyError) as e:
        raise damaged(entry, f"{type(e).__name__}: {e}") from e


class ShardReader:
    """Reads a committed shard after the cheap check (object list and sizes against its checksums, and the sha256 of
    the group metadata, which holds every array's metadata).

    Anything damaged that a read meets (metadata failing its sha256, a chunk failing its crc32c, a stored state missing
    from the index or not finite) raises DamagedShardError naming the shard. Each sharded array's index is read once
    per reader.
    """

    def __init__(self, store, entry):
        self.store, self.entry = store, entry
        problems, self.sums = _listing_problems(store, entry)
        if not problems and store.sha256(f"{entry['path']}/zarr.json") != self.sums.get("zarr.json", {}).get("sha256"):
            problems = ["object zarr.json fails its sha256 checksum"]  # the only metadata read: it is consolidated
        if problems:
            raise damaged(entry, "; ".join(problems))
        with refusing(entry):
            self.group = zarr.open_group(store.zarr_store(entry["path"]), mode="r", use_consolidated=True)
        self.count = entry["stop"] - entry["start"]
        self._index = {}

    def columns(self, lo, hi):
        """Every per-record array but `states` for shard rows [lo, hi)."""
        with refusing(self.entry):
            cols = {name: self.group[name][lo:hi] for name in FILL if name not in CHUNK_AXES}
        return {**cols, "x0": self._chunks("x0", np.arange(lo, hi)).astype(np.float32)}

    def states(self, rows, cols):
        """states[rows[i], cols[i]] as float32 (len(rows), C, H, W): only those chunks and the index are read."""
        N = self.group["states"].shape[1]
        return self._chunks("states", np.asarray(rows) * N + np.asarray(cols)).astype(np.float32)

    def trajectories(self, lo, hi, start):
        """states[lo:hi] as float32 (hi − lo, N, C, H, W), NaN before each record's n."""
        N = self.group["states"].shape[1]
        out = np.full((hi - lo, *self.group["states"].shape[1:]), np.nan, np.float32)
        stored = np.arange(N)[None] >= np.asarray(start)[:, None]
        rows, cols = np.nonzero(stored)
        out[rows, cols] = self.states(rows + lo, cols)
        return out

    def _offsets(self, name):
        if name not in self._index:
            key, array = _object(name, self.group[name].ndim), self.group[name]
            num_chunks = int(np.prod(array.shape[:CHUNK_AXES[name]]))
            size = self.sums[key]["size"]
            with refusing(self.entry):
                raw, = self.store.read_ranges(f"{self.entry['path']}/{key}", [size - index_nbytes(num_chunks)], [size])
                self._index[name] = decode_index(raw, num_chunks)
        return self._index[name]

    def _chunks(self, name, flat):
        """Inner chunks `flat` (C-order numbers in the chunk grid) of a sharded array, stacked."""
        offsets, nbytes = self._offsets(name)
        array = self.group[name]
        missing = offsets[flat] == EMPTY
        if missing.any():
            raise damaged(self.entry, f"{self._chunk(name, flat[missing][0])} is missing from its shard index")
        with refusing(self.entry):
            raws = self.store.read_ranges(f"{self.entry['path']}/{_object(name, array.ndim)}", offsets[flat],
                                          offsets[flat] + nbytes[flat])
        bad = failing_chunk(raws)
        if bad is not None:
            raise damaged(self.entry, f"{self._chunk(name, flat[bad])} fails its crc32c")
        chunks = decode_chunks(raws, array.dtype, array.shape[CHUNK_AXES[name]:])
        finite = np.isfinite(chunks.reshape(len(flat), -1)).all(axis=1)
        if not finite.all():
            raise damaged(self.entry, f"{self._chunk(name, flat[~finite][0])} holds NaN or Inf")
        return chunks

    def _chunk(self, name, f):
        """'state j of record i' or 'x0 of record i' for inner chunk number f of a sharded array."""
        if name == "states":
            N = self.group["states"].shape[1]
            return f"state {f % N} of record {self.entry['start'] + f // N}"
        return f"{name} of record {self.entry['start'] + f}"
