"""Reading: a Ray Data Datasource with one read task per shard (or per record range of one), streaming rows.

With pairs=True a row is one training sample: x0, label, index, n, k (k ~ P(k | n) from (seed, epoch, index)),
x_t = states[n] and x_u = states[n + k], reading only those two states of the record. In noise mode every record
starts at n = 0 and holds the whole trajectory, so n itself is drawn at read time from its official marginal.
With pairs=False a row carries the record's whole `states` (N, C, H, W) float32, NaN before n.
"""

import functools
import math

import numpy as np
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

from .draws import draw_k, draw_n
from .shards import ShardReader

BLOCK_BYTES = 8 << 20  # rows per output block: about 8 MiB of them


def iter_pairs(reader, lo, hi, *, mode, N, K, epoch, seed, block_rows=256):
    """Training samples of shard rows [lo, hi) of a ShardReader, as numpy batches of at most `block_rows` rows."""
    cols = reader.columns(lo, hi)
    n = cols["start"] if mode == "data" else draw_n(cols["index"], N, K, seed, epoch)
    k = draw_k(n, cols["index"], N, K, seed, epoch)
    rows = np.arange(lo, hi)
    states = reader.states(np.concatenate([rows, rows]), np.concatenate([n, n + k]))
    m = hi - lo
    batch = {"x0": cols["x0"], "label": cols["label"], "index": cols["index"], "n": n, "k": k,
             "x_t": states[:m], "x_u": states[m:]}
    for b in range(0, m, block_rows):
        yield {name: a[b:b + block_rows] for name, a in batch.items()}


def iter_records(reader, lo, hi, block_rows=64):
    """Whole records of shard rows [lo, hi): x0, label, index, n, data_index, flip, seed and states (float32)."""
    for b in range(lo, hi, block_rows):
        e = min(b + block_rows, hi)
        cols = reader.columns(b, e)
        n = cols.pop("start")
        yield {**cols, "n": n, "states": reader.trajectories(b, e, n)}


class CacheDatasource(Datasource):
    """The complete shards of a `TrajectoryCache` as a Ray Data source; a damaged shard raises DamagedShardError."""

    def __init__(self, cache, pairs=True, K=None, epoch=0, seed=0, records_per_task=None):
        super().__init__()
        self.cache, self.pairs, self.epoch, self.seed = cache, pairs, epoch, seed
        self.K = cache.K if K is None else K
        if not 1 <= self.K <= cache.N - 1:
            raise ValueError(f"K must lie in 1..N-1 = {cache.N - 1} for this cache, got {K}")
        self.records_per_task = records_per_task

    def _row_bytes(self):
        image = 4 * math.prod(self.cache.image_shape)
        return (3 * image if self.pairs else (self.cache.N + 1) * image) + 64

    def estimate_inmemory_data_size(self):
        return self.cache.num_records * self._row_bytes()

    def _ranges(self):
        for entry in self.cache.shards:
            count = entry["stop"] - entry["start"]
            step = self.records_per_task or count
            for lo in range(0, count, step):
                yield entry, lo, min(lo + step, count)

    def _read(self, entry, lo, hi):
        reader = ShardReader(self.cache.store, entry)
        rows = max(1, BLOCK_BYTES // self._row_bytes())
        if self.pairs:
            batches = iter_pairs(reader, lo, hi, mode=self.cache.mode, N=self.cache.N, K=self.K, epoch=self.epoch,
                                 seed=self.seed, block_rows=rows)
        else:
            batches = iter_records(reader, lo, hi, block_rows=rows)
        for batch in batches:
            yield BlockAccessor.batch_to_block(batch)

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        tasks = []
        for entry, lo, hi in self._ranges():
            meta = BlockMetadata(num_rows=hi - lo, size_bytes=(hi - lo) * self._row_bytes(), exec_stats=None,
                                 input_files=[self.cache.store.join_url(entry["path"])])
            tasks.append(ReadTask(functools.partial(self._read, entry, lo, hi), meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self):
        return "TrajectoryCache"

    def num_tasks(self):
        return sum(1 for _ in self._ranges())


def cache_dataset(cache, pairs=True, K=None, epoch=0, seed=0, records_per_task=None, **read_args):
    """The cache as a `ray.data.Dataset` (see the module docstring for the rows); `read_args` go to read_datasource.

    One output block per read task unless `override_num_blocks` says otherwise (Ray would split them otherwise).
    """
    source = CacheDatasource(cache, pairs, K, epoch, seed, records_per_task)
    read_args.setdefault("override_num_blocks", source.num_tasks())
    return ray.data.read_datasource(source, **read_args)
