"""Where a cache lives: a local folder or any fsspec URL (s3://, gs://, file://), with atomic commits on each.

Local folders commit by rename (atomic on POSIX). Object stores have no atomic rename, so there a shard is written
under its final, unique name and becomes visible only when the manifest (one object, replaced by a single PUT)
lists it; readers trust only the manifest.
"""

import hashlib
import json
import os
import uuid

import zarr
from fsspec.implementations.local import LocalFileSystem

from pipeline.storage_errors import url_to_fs


class CacheStore:
    """One folder (a cache root, or one cache inside it) on a local disk or an fsspec filesystem. Pickles by URL."""

    def __init__(self, url, storage_options=None):
        self.url, self.storage_options = str(url), dict(storage_options or {})
        self.fs, path = url_to_fs(self.url, **self.storage_options)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.path = os.path.abspath(path) if self.local else path.rstrip("/")
        if self.local:
            self.url = self.path  # relative folders mean the driver's folder on every worker of this node

    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state):
        self.__init__(state["url"], state["storage_options"])

    def __repr__(self):
        return f"CacheStore({self.url!r})"

    def child(self, name):
        return CacheStore(self.join_url(name), self.storage_options)

    @property
    def name(self):
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def full(self, rel=""):
        return f"{self.path}/{rel}" if rel else self.path

    def join_url(self, rel):
        if self.local:
            return self.full(rel)
        return f"{self.url.rstrip('/')}/{rel}"

    # ---- zarr ----------------------------------------------------------------------------------------------------
    def zarr_store(self, rel, read_only=True):
        if self.local:
            return zarr.storage.LocalStore(self.full(rel), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.join_url(rel), storage_options=self.storage_options,
                                                 read_only=read_only)

    # ---- objects ------------------------------------------------------------------------------------------------
    def read_bytes(self, rel):
        return self.fs.cat_file(self.full(rel))

    def read_json(self, rel):
        """The JSON object at `rel`, or None where there is none."""
        try:
            data = self.read_bytes(rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return json.loads(data)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.join_url(rel)} is not valid JSON ({e}); it was not written by this code") from e

    def read_ranges(self, rel, starts, ends):
        """The bytes [start, end) of the object at `rel` for each range (concurrent requests on object stores)."""
        if not self.local:
            n = len(starts)
            return self.fs.cat_ranges([self.full(rel)] * n, [int(s) for s in starts], [int(e) for e in ends],
                                      on_error="raise")
        fd = os.open(self.full(rel), os.O_RDONLY)
        try:
            return [os.pread(fd, int(e) - int(s), int(s)) for s, e in zip(starts, ends)]
        finally:
            os.close(fd)

    def write_bytes(self, rel, data):
        """Replace the object at `rel` atomically: tmp + os.replace locally, one PUT on object stores."""
        if not self.local:
            self.fs.pipe_file(self.full(rel), data)
            return
        target = self.full(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{os.path.dirname(target)}/.tmp-{uuid.uuid4().hex}-{os.path.basename(target)}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def write_json(self, rel, obj):
        self.write_bytes(rel, json.dumps(obj, indent=1).encode())

    def objects(self, rel):
        """{path inside `rel`: size in bytes} of every object under the folder `rel` ({} when there is none)."""
        base = self.full(rel)
        if not self.local:
            self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(base) + 1:]: int(info["size"]) for p, info in found.items() if info["type"] == "file"}

    def exists(self, rel):
        if not self.local:
            self.fs.invalidate_cache(self.full(rel))
        return self.fs.exists(self.full(rel))

    def sha256(self, rel):
        return hashlib.sha256(self.read_bytes(rel)).hexdigest()

    def listdir(self, rel=""):
        """Names directly inside the folder `rel` ([] when there is none)."""
        if not self.local:
            self.fs.invalidate_cache(self.full(rel))
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.full(rel), detail=False))
        except FileNotFoundError:
            return []

    def rename(self, src, dst):
        """Atomic rename of a folder (local folders only)."""
        os.rename(self.full(src), self.full(dst))

    def remove(self, rel):
        try:
            self.fs.rm(self.full(rel), recursive=True)
        except FileNotFoundError:
            pass
