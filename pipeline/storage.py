"""Where the project's files live: a local folder or any fsspec URL (s3://, gs://, file://), and its one atomic write.

A local file is replaced whole or not at all: written beside its target under a temporary name, synced, then renamed
over it (`atomic_file`, atomic on POSIX). Object stores have no rename, but a single PUT replaces an object whole, so
there `Folder.write_bytes` is one PUT; what must appear together (a cache's shards) becomes visible only when one
object that lists it (the manifest) is written.

fsspec ships the local, memory and HTTP filesystems; s3:// needs s3fs (installed with the project) and gs:// needs
gcsfs (`pip install 'ctm-ray[gcs]'`). Without the package fsspec raises a bare ImportError deep inside a stage;
`url_to_fs` names the extra to install instead.
"""

import hashlib
import json
import os
import uuid
from contextlib import contextmanager

import fsspec
import pyarrow.fs
import zarr
from fsspec.implementations.local import LocalFileSystem

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


class MissingFilesystem(ImportError, ValueError):
    """A URL whose fsspec filesystem is not installed; a ValueError too, so the stages' one-line errors report it."""


def url_to_fs(url, **storage_options):
    """fsspec.core.url_to_fs(url, **storage_options), naming the extra to install when the protocol's package is
    missing."""
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as e:
        protocol = str(url).split("://", 1)[0].lower()
        extra = EXTRAS.get(protocol)
        todo = (f"pip install 'ctm-ray[{extra}]'" if extra else
                f"install the fsspec filesystem package for {protocol}:// (see fsspec's list of implementations)")
        raise MissingFilesystem(f"{url}: {protocol}:// needs a package that is not installed ({e}): {todo}") from e


@contextmanager
def atomic_file(path, mode="wb"):
    """Open a temporary file beside the local `path` for writing; on leaving the block it is synced and renamed over
    `path` (a reader sees the old file or the new one, never half of one); on an error it is removed. Permissions
    follow the umask, as for any file the user writes."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Folder:
    """One folder on a local disk or an fsspec filesystem; paths inside it are relative names ("a/b.json"). A local
    folder is made absolute (a relative one means the driver's folder on every worker of its node). Pickles by URL."""

    def __init__(self, url, storage_options=None):
        self.url, self.storage_options = str(url), dict(storage_options or {})
        self.fs, path = url_to_fs(self.url, **self.storage_options)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.path = os.path.abspath(path) if self.local else path.rstrip("/")
        if self.local:
            self.url = self.path

    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state):
        Folder.__init__(self, state["url"], state["storage_options"])

    def __repr__(self):
        return f"{type(self).__name__}({self.url!r})"

    def child(self, name):
        return Folder(self.join_url(name), self.storage_options)

    @property
    def name(self):
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def full(self, rel=""):
        return f"{self.path}/{rel}" if rel else self.path

    def join_url(self, rel):
        return self.full(rel) if self.local else f"{self.url.rstrip('/')}/{rel}"

    def ray_storage_filesystem(self):
        """The filesystem Ray (RunConfig's storage_filesystem) reaches this folder through: None for a local disk, the
        fsspec filesystem wrapped for pyarrow otherwise."""
        return None if self.local else pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(self.fs))

    def zarr_store(self, rel, read_only=True):
        if self.local:
            return zarr.storage.LocalStore(self.full(rel), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.join_url(rel), storage_options=self.storage_options,
                                                 read_only=read_only)

    # ---- reading ------------------------------------------------------------------------------------------------
    def exists(self, rel):
        if not self.local:
            self.fs.invalidate_cache(self.full(rel))
        return self.fs.exists(self.full(rel))

    def read_bytes(self, rel):
        return self.fs.cat_file(self.full(rel))

    def read_text(self, rel):
        """The text at `rel`, or None where there is none."""
        try:
            return self.read_bytes(rel).decode()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_json(self, rel):
        """The JSON object at `rel`, or None where there is none."""
        text = self.read_text(rel)
        if text is None:
            return None
        try:
            return json.loads(text)
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

    def sha256(self, rel):
        return hashlib.sha256(self.read_bytes(rel)).hexdigest()

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

    def listdir(self, rel=""):
        """Names directly inside the folder `rel` ([] when there is none)."""
        if not self.local:
            self.fs.invalidate_cache(self.full(rel))
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.full(rel), detail=False))
        except FileNotFoundError:
            return []

    # ---- writing ------------------------------------------------------------------------------------------------
    def write_bytes(self, rel, data):
        """Replace the object at `rel` whole: `atomic_file` locally, one PUT on object stores."""
        if not self.local:
            self.fs.pipe_file(self.full(rel), data)
            return
        with atomic_file(self.full(rel)) as f:
            f.write(data)

    def write_text(self, rel, text):
        self.write_bytes(rel, text.encode())

    def write_json(self, rel, obj):
        self.write_bytes(rel, json.dumps(obj, indent=1).encode())

    def put(self, local_file, rel):
        """Copy a local file to `rel` (through `atomic_file` on a local folder)."""
        if not self.local:
            self.fs.put_file(local_file, self.full(rel))
            return
        with open(local_file, "rb") as src, atomic_file(self.full(rel)) as f:
            f.write(src.read())

    def move(self, src, dst):
        """Rename `src` (a file or a folder) to `dst`: atomic on a local disk; a copy and a delete on object stores."""
        if self.local:
            os.rename(self.full(src), self.full(dst))
        else:
            self.fs.mv(self.full(src), self.full(dst), recursive=True)

    def remove(self, rel):
        try:
            self.fs.rm(self.full(rel), recursive=True)
        except FileNotFoundError:
            pass
