"""Writing: a Ray Data Datasink that writes each shard whole, and one actor that commits shards to the manifest.

Each input row of the sink is one complete shard (made by one teacher-actor call), so a write task never holds part
of a shard. The shard is committed by rename (local) and then listed in the manifest by the `ManifestCommitter`,
the manifest's only writer during a run, which replaces `manifest.json` atomically after every shard. A run killed
at any point leaves committed shards listed and anything else unlisted, to be removed by the next run.
"""

import time

import numpy as np
import ray
from ray.data import Datasink
from ray.data.block import BlockAccessor

from .manifest import with_entry
from .shards import write_shard

MANIFEST = "manifest.json"
SHARD_COLUMNS = ("shard", "shard_start", "shard_stop")


@ray.remote(num_cpus=0)
class ManifestCommitter:
    """Adds committed shards to the manifest, one at a time, and reports progress."""

    def __init__(self, store, manifest, todo_records):
        self.store, self.manifest = store, manifest
        self.todo_records, self.done_records, self.started = todo_records, 0, time.time()

    def commit(self, entry):
        entry = {**entry, "committed": time.time()}
        self.manifest = with_entry(self.manifest, entry)
        self.store.write_json(MANIFEST, self.manifest)
        self.done_records += entry["count"]
        print(f"[cache] shard {entry['shard']} committed (records {entry['start']}..{entry['stop'] - 1}); "
              f"{self.done_records}/{self.todo_records} records of this run after {time.time() - self.started:.1f} s",
              flush=True)
        return self.done_records


class ShardSink(Datasink):
    """Each row: one whole shard (`shard`, `shard_start`, `shard_stop` and the record arrays); writes and commits it."""

    def __init__(self, store, key, committer):
        self.store, self.key, self.committer = store, key, committer

    def write(self, blocks, ctx):
        entries = []
        for block in blocks:
            batch = BlockAccessor.for_block(block).to_batch_format("numpy")
            for row in range(len(batch["shard"])):
                arrays = {name: np.asarray(batch[name][row]) for name in batch if name not in SHARD_COLUMNS}
                shard, start, stop = (int(batch[name][row]) for name in SHARD_COLUMNS)
                entry = write_shard(self.store, shard, start, stop, arrays, self.key)
                ray.get(self.committer.commit.remote(entry))
                entries.append(entry)
        return entries

    def get_name(self):
        return "TrajectoryCacheShards"
