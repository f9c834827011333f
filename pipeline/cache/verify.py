"""`verify`: every committed shard against the manifest; `describe`: what a cache holds."""

from concurrent.futures import ThreadPoolExecutor

from .cache import leftovers
from .errors import REPAIR, DamagedShardError
from .manifest import shard_ranges
from .shards import damaged, shard_problems


def verify_cache(cache, full=True, threads=8):
    """{"ok", "checked", "damaged": [{shard, path, start, stop, problems}], "missing": [(shard, start, stop)],
    "leftovers": [path]}. full=False: object lists, sizes and the sha256 of the small objects (metadata, 1-D arrays);
    full=True: every sha256, and every stored state read (present, crc32c, finite)."""
    with ThreadPoolExecutor(threads) as pool:
        problems = list(pool.map(lambda e: shard_problems(cache.store, e, full=full), cache.shards))
    broken = [{k: e[k] for k in ("shard", "path", "start", "stop")} | {"problems": p}
              for e, p in zip(cache.shards, problems) if p]
    have = {(e["shard"], e["stop"]) for e in cache.shards}
    target = max(cache.manifest["num_records"], cache.num_records)
    missing = [(s, a, b) for s, a, b in shard_ranges(target, cache.manifest["records_per_shard"])
               if (s, b) not in have]
    return {"ok": not broken and not missing, "checked": len(cache.shards), "damaged": broken,
            "missing": missing, "leftovers": leftovers(cache.store, cache.manifest)}


def damaged_error(url, damaged_shards):
    """One DamagedShardError naming every damaged shard of a verify report, its problems and the repair command."""
    if len(damaged_shards) == 1:
        return damaged(damaged_shards[0], "; ".join(damaged_shards[0]["problems"]))
    named = "; ".join(f"shard {d['shard']} (records {d['start']}..{d['stop'] - 1}, {d['path']}): "
                      f"{', '.join(d['problems'])}" for d in damaged_shards)
    return DamagedShardError(f"{len(damaged_shards)} shards of the cache at {url} are damaged: {named}; rewrite them "
                             f"with `{REPAIR}`")


def format_report(cache, report):
    lines = [f"cache {cache.url}: {report['checked']} shards checked, {cache.num_records} records"]
    for d in report["damaged"]:
        lines.append(f"DAMAGED shard {d['shard']} (records {d['start']}..{d['stop'] - 1}, {d['path']}): "
                     + "; ".join(d["problems"]))
    for s, a, b in report["missing"]:
        lines.append(f"MISSING shard {s} (records {a}..{b - 1}): not generated yet")
    for rel in report["leftovers"]:
        lines.append(f"leftover {rel} (not in the manifest; the next generate run removes it)")
    if report["damaged"]:
        lines.append(f"rewrite the damaged shards with `{REPAIR}` (the config that made the cache)")
    elif report["missing"]:
        lines.append("rerun `python -m jobs.generate_trajectories generate` with the same config to finish the cache")
    lines.append("OK" if report["ok"] else "NOT OK")
    return "\n".join(lines)


def _size(nbytes):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1024


def describe_cache(cache):
    m, f = cache.manifest, cache.manifest["key_fields"]
    t, g, c, d = f["teacher"], f["grid"], f["cache"], f["data"]
    data = (f"{d['name']} ({d['num_images']} images, digest {d['digest'][:12]}, hflip {d['hflip']}, "
            f"labels to teacher {d['use_labels']})" if c["mode"] == "data" else f"none (noise mode; labels to teacher "
                                                                               f"{d['use_labels']})")
    return "\n".join([
        f"cache     {cache.url}",
        f"key       {cache.key} (format version {f['format_version']})",
        f"records   {cache.num_records} in {len(cache.shards)} shards of {m['records_per_shard']} "
        f"(requested {m['num_records']})",
        f"size      {_size(sum(e['nbytes'] for e in cache.shards))} on disk",
        f"teacher   {t['kind']}, image shape {tuple(t['image_shape'])}, {t['label_dim']} labels, "
        f"digest {t['digest'][:12]}",
        f"grid      N={g['N']} σ_min={g['sigma_min']} σ_max={g['sigma_max']} ρ={g['rho']} K={g['K']}, "
        f"solver {f['solver']}",
        f"states    {c['dtype']}, mode {c['mode']}, seed {c['seed']}",
        f"data      {data}",
        f"written   {m['created']} .. {m['updated']}",
    ])
