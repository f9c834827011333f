"""A cache that lost its manifest keeps its shards: each shard group names its key and record range in its attributes
and lists its objects' sha256 in checksums.json, so every shard folder that verifies against those is adopted whole,
and only the records no adopted shard holds are solved again.
"""

import collections
import hashlib
import json
import time

from .cache import SHARDS
from .shards import CHECKSUMS, shard_problems


def shard_entry(store, path):
    """(key, manifest entry) that the shard folder `path` describes itself by; (None, None) when it cannot say."""
    try:
        listing = store.read_bytes(f"{path}/{CHECKSUMS}")
        sizes = {p: int(s["size"]) for p, s in json.loads(listing).items()}
        attrs = json.loads(store.read_bytes(f"{path}/zarr.json"))["attributes"]
        shard, start, stop = (int(attrs[k]) for k in ("shard", "start", "stop"))
        key = attrs["key"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None
    return key, {"shard": shard, "path": path, "start": start, "stop": stop, "count": stop - start,
                 "nbytes": sum(sizes.values()) + len(listing), "checksums_sha256": hashlib.sha256(listing).hexdigest(),
                 "committed": time.time()}


def records_per_shard(entries, configured):
    """R of the shards found: start = shard·R for every shard but the first; with only shard 0, the config's R unless
    shard 0 is longer."""
    votes = collections.Counter(e["start"] // e["shard"] for e in entries
                                if e["shard"] > 0 and e["start"] % e["shard"] == 0)
    if votes:
        return votes.most_common(1)[0][0]
    return max([configured] + [e["stop"] for e in entries])


def adopt_shards(store, manifest, log=print):
    """`manifest` (new: no shards) with every shard folder of its key that passes the full check, one per shard
    number (the longest, when an extension left a shorter copy). Folders not adopted stay unlisted: leftovers."""
    found, refused = [], []
    for name in store.listdir(SHARDS):
        if name.startswith(".tmp-"):
            continue
        key, entry = shard_entry(store, f"{SHARDS}/{name}")
        if entry is None:
            refused.append((name, ["its attributes or checksums.json cannot be read"]))
        elif key != manifest["key"]:
            refused.append((name, [f"it belongs to cache {key}"]))
        elif problems := shard_problems(store, entry, full=True):
            refused.append((name, problems))
        else:
            found.append(entry)
    R = records_per_shard(found, manifest["records_per_shard"])
    chosen = {}
    for e in found:
        fits = e["start"] == e["shard"] * R and 0 < e["count"] <= R
        if fits and e["stop"] > chosen.get(e["shard"], {"stop": -1})["stop"]:
            chosen[e["shard"]] = e
    shards = [chosen[s] for s in sorted(chosen)]
    if found or refused:
        log(f"[cache] {store.url} has no readable manifest: adopted {len(shards)} shards that verify "
            f"({sum(e['count'] for e in shards)} records, {R} per shard)")
    for name, problems in refused:
        log(f"[cache] shards/{name} does not verify ({'; '.join(problems)}): its records will be solved again")
    return {**manifest, "records_per_shard": R, "num_records": sum(e["count"] for e in shards), "shards": shards}
