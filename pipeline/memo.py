"""Identities remembered per machine, keyed by the sizes and modification times of the files they were computed from.

Hashing an ImageNet-sized dataset, or loading a teacher only to hash its weights, costs minutes; every stage's driver
needs those identities (the cache key) again. A stamp names the files (their sizes and modification times or ETags)
and the settings that read them; an identity computed for a stamp is kept in this process and in
`$CTM_DIGEST_CACHE` (default `~/.cache/ctm-ray/digests`), one small JSON file per stamp. A file changed in place
changes its stamp, so a remembered identity is never stale; a memo folder that cannot be written is skipped.
"""

import copy
import hashlib
import json
import os
from pathlib import Path

from pipeline.storage import atomic_file

VERSION = 1  # raise it when what a remembered value means changes: every stamp then misses once
VERSION_KEYS = ("mtime", "LastModified", "ETag", "updated", "md5Hash", "crc32c")  # local, S3, GCS
_here = {}


def memo_dir():
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctm-ray" / "digests"
    return Path(os.environ.get("CTM_DIGEST_CACHE") or default)


def file_version(info):
    """What tells a file's versions apart in an fsspec `info` dict, besides its size: [] when the store says nothing."""
    return [str(info[k]) for k in VERSION_KEYS if info.get(k) is not None]


def remembered(stamp, compute):
    """compute() (a JSON-able value) for `stamp` (a JSON-able description of the inputs), computed once per machine."""
    key = hashlib.sha256(json.dumps([VERSION, stamp], sort_keys=True).encode()).hexdigest()
    if key not in _here:
        path = memo_dir() / f"{key}.json"
        try:
            _here[key] = json.loads(path.read_text())["value"]
        except (OSError, ValueError, KeyError):
            _here[key] = compute()
            _write(path, {"stamp": stamp, "value": _here[key]})
    return copy.deepcopy(_here[key])


def _write(path, payload):
    try:
        with atomic_file(path, "w") as f:
            json.dump(payload, f)
    except OSError:
        pass
