"""The run directory <train.storage_path>/<train.run_name> on a local disk or any fsspec URL (s3://, gs://, ...).

Ray Train writes `checkpoint_<step>/` folders and its `checkpoint_manager_snapshot.json` there; the run adds
`config.yaml`, `stats.jsonl` and `samples/`.
"""

import re

import fsspec
import pyarrow.fs
from fsspec.implementations.local import LocalFileSystem

CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


def checkpoint_dir_name(step):
    return f"checkpoint_{step:07d}"


class RunDir:
    def __init__(self, storage_path, run_name, storage_options=None):
        self.fs, root = fsspec.core.url_to_fs(storage_path, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.path = f"{self.root}/{run_name}"
        self.url = f"{storage_path.rstrip('/')}/{run_name}"

    def ray_storage(self):
        """(storage_path, storage_filesystem) for ray.train.RunConfig: local paths as they are, URLs through fsspec."""
        if isinstance(self.fs, LocalFileSystem):
            return self.root, None
        return self.root, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(self.fs))

    def full(self, name):
        return f"{self.path}/{name}"

    def exists(self, name):
        return self.fs.exists(self.full(name))

    def read_text(self, name):
        return self.fs.cat_file(self.full(name)).decode() if self.exists(name) else None

    def write_text(self, name, text):
        """Write through a temporary name and a move, so a reader never sees half a file."""
        self.fs.makedirs(self.path, exist_ok=True)
        tmp = self.full(f".{name.replace('/', '_')}.tmp")
        self.fs.pipe_file(tmp, text.encode())
        self.fs.mv(tmp, self.full(name))

    def put(self, local_file, name):
        self.fs.makedirs(self.full(name).rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(local_file, self.full(name))

    def checkpoint_steps(self):
        """Steps of the checkpoint folders present, ascending (any state of registration by Ray)."""
        if not self.fs.exists(self.path):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False)]
        return sorted(int(m.group(1)) for m in map(CHECKPOINT_DIR.match, names) if m)
