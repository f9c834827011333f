"""Where each step's batch comes from: this worker's share of the global batch, as a dict of CPU tensors.

Both modes draw as the official loop does (docs/method.md §3): one k per optimiser step with P(k) ∝ k, seeded by
(train.seed, step) so that every micro-batch and every worker of the step shares it, then n ~ U{0..N−1−k} per sample.
- online: real images: an epoch-wise permutation of the dataset, flips, n and fresh z, x_t = x0 + t_n·z. Every draw
  is a function of (train.seed, step, global micro-batch index), so the position in the data is the step itself.
- cached: rows of the trajectory cache (x0, label, index, n, k, x_t, x_u) from this worker's shard of the Ray Dataset
  that TorchTrainer splits across workers, read as consecutive cache epochs (k redrawn given n each epoch,
  docs/method.md §9). A step takes its share from the rows whose k is the step's k (see CachedBatches); the position in
  the data is the number of rows each worker has pulled from its stream, which every checkpoint records.
"""

import json
import math
from collections import deque

import ray.data
import torch
from ray.data import Datasource

from ctm.seeding import TRAIN_DATA, TRAIN_K, TRAIN_PERM, generator_for
from pipeline.cache import CacheDatasource
from pipeline.checkpoint import checkpoint_dir_step
from pipeline.datasets import apply_flips, flip_mask
from pipeline.train.rundir import RunDir

ROW_KEYS = ("x0", "label", "index", "n", "k", "x_t", "x_u")
DATA_FILE = "data.json"  # a checkpoint's data position beside checkpoint.pt, read by CacheEpochs on the driver
UNUSED_FACTOR = 2.5  # rows a stream holds per row the steps use: the queues drop 30-50% (see stream_rows)


def step_k(seed, step, grid):
    """The step's k on `grid`: a function of (train.seed, step) alone, so all micro-batches and workers draw the
    same."""
    return grid.sample_k(generator_for(seed, step, 0, TRAIN_K))
class OnlineBatches:
    """batches(step) -> this worker's share of the step's global batch, for the teacher to solve inside the step.

    images: a `pipeline.datasets.ImageSource` (or an array) read by index, one micro-batch at a time; grid: the run's
    `ctm.schedule.Grid`."""

    def __init__(self, images, labels, cfg, grid, rank=0, world_size=1):
        t = cfg.train
        self.images, self.labels = images, torch.as_tensor(labels)
        self.grid, self.t = grid, grid.t
        self.data_cfg, self.seed, self.B = cfg.data, t.seed, t.batch_size
        self.share = t.batch_size // world_size
        self.micro = t.micro_batch or self.share
        self.rank = rank
        self._perms = {}

    def permutation(self, epoch):
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            g = generator_for(self.seed, epoch, 0, TRAIN_PERM)
            self._perms[epoch] = torch.randperm(len(self.images), generator=g)
        return self._perms[epoch]

    def indices(self, step):
        """Dataset indices of this worker's share: positions step·B + rank·share + i of the epochs' permutations."""
        p = step * self.B + self.rank * self.share + torch.arange(self.share)
        M = len(self.images)
        epochs = p // M
        return torch.cat([self.permutation(int(e))[p[epochs == e] % M] for e in epochs.unique()])

    def position(self, step):
        p = step * self.B
        return {"mode": "online", "epoch": p // len(self.images), "offset": p % len(self.images)}

    def __call__(self, step):
        k = step_k(self.seed, step, self.grid)
        index = self.indices(step)
        first = self.rank * (self.share // self.micro)
        parts = []
        for i in range(self.share // self.micro):
            g = generator_for(self.seed, step, first + i, TRAIN_DATA)
            idx = index[i * self.micro:(i + 1) * self.micro]
            x0 = apply_flips(torch.as_tensor(self.images[idx.numpy()]), flip_mask(len(idx), g, self.data_cfg))
            n = self.grid.sample_n_given_k(len(idx), k, g)
            z = torch.randn(x0.shape, generator=g)
            x_t = x0 + self.t[n].float()[:, None, None, None] * z
            parts.append({"x0": x0, "label": self.labels[idx], "index": idx, "n": n,
                          "k": torch.full_like(n, k), "x_t": x_t})
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


class CachedBatches:
    """batches(step) -> this worker's share of the step: the next `share` rows of its dataset shard (a
    ray.data.DataIterator) whose k is the step's k.

    Each cache row carries (n, k) drawn from the official joint law (n stored, k ~ P(k | n) at read time), so the rows
    with a given k are i.i.d. with n ~ U{0..N−1−k}. The step draws k ~ P(k) from (train.seed, step) and takes its
    share, first in first out, from one queue per k that the stream feeds: every sample then follows the official
    (n, k) law exactly and the whole step shares one k, while each row still reads only the two states it needs.
    The queues fill at rate P(k), the rate at which steps empty them; each holds at most `queue_steps` shares and
    drops its oldest rows beyond (which rows are taken or dropped depends on their k alone, so the law stays exact).

    The position in the data is `rows` pulled from the stream (`unused` of them dropped, never used). `position` empties
    the queues: a run resumed from a checkpoint skips the pulled rows and starts with empty queues, and so continues
    as the uninterrupted run does. A shard that runs out starts another pass.
    """

    def __init__(self, shard, share, grid, seed=0, queue_steps=4, position=None, stream_start=0, dtype=torch.float32):
        self.shard, self.share, self.grid, self.seed = shard, share, grid, seed
        self.cap = queue_steps * share
        position = position or {"rows": 0, "unused": 0}
        self.pulled, self.unused = position["rows"], position["unused"]
        if self.pulled < stream_start:
            raise RuntimeError(f"the data stream starts at row {stream_start}, past this worker's position "
                               f"{self.pulled}: it was built for another checkpoint than the one the worker resumed")
        self.skip = self.pulled - stream_start
        self.dtype = dtype  # x_t, x_u wait in the cache's storage dtype: lossless, half the memory for float16
        self.rows = None
        self.queues = {k: deque() for k in range(1, grid.K + 1)}
        self.lengths = dict.fromkeys(self.queues, 0)

    def _stream(self):
        skip = self.skip
        while True:
            empty = True
            for batch in self.shard.iter_torch_batches(batch_size=self.share):
                empty = False
                drop = min(skip, len(batch["k"]))
                skip -= drop
                if drop < len(batch["k"]):
                    yield {key: batch[key][drop:] for key in ROW_KEYS}
            if empty:
                raise RuntimeError("this worker's shard of the training dataset is empty: the cache holds fewer "
                                   "records than train.num_workers")

    def _pull(self):
        """The next stream batch into the queues; queues past their cap lose their oldest rows."""
        batch = next(self.rows)
        self.pulled += len(batch["k"])
        for key in ("x_t", "x_u"):
            batch[key] = batch[key].to(self.dtype)
        for k in batch["k"].unique().tolist():
            chunk = {key: v[batch["k"] == k] for key, v in batch.items()}
            self.queues[k].append(chunk)
            self.lengths[k] += len(chunk["k"])
        for k, length in self.lengths.items():
            if length > self.cap:
                self._take(k, length - self.cap)
                self.unused += length - self.cap

    def _take(self, k, m):
        """The oldest m rows of queue k."""
        queue, parts, need = self.queues[k], [], m
        while need:
            chunk = queue[0]
            if len(chunk["k"]) <= need:
                parts.append(queue.popleft())
            else:
                parts.append({key: v[:need] for key, v in chunk.items()})
                queue[0] = {key: v[need:] for key, v in chunk.items()}
            need -= len(parts[-1]["k"])
        self.lengths[k] -= m
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

    def position(self, step):
        """This worker's data position at a checkpoint; the queued rows are dropped (see the class docstring)."""
        self.unused += sum(self.lengths.values())
        self.queues = {k: deque() for k in self.queues}
        self.lengths = dict.fromkeys(self.queues, 0)
        return {"mode": "cached", "rows": self.pulled, "unused": self.unused}

    def __call__(self, step):
        if self.rows is None:
            self.rows = self._stream()
        k = step_k(self.seed, step, self.grid)
        while self.lengths[k] < self.share:
            self._pull()
        rows = self._take(k, self.share)
        return {**rows, "x_t": rows["x_t"].float(), "x_u": rows["x_u"].float()}


def cached_position(data):
    """A checkpoint's data position if cached mode can continue from it (it lists every worker's rows), else None."""
    return data if data and data["mode"] == "cached" and "workers" in data else None


def worker_positions(data, world_size):
    """Each worker's {"rows", "unused"} from a checkpoint's data position; when the run resumes on another number of
    workers, the rows are shared out evenly (the law stays exact, but the resumed workers read other rows)."""
    workers = data["workers"]
    if len(workers) == world_size:
        return workers
    return [{key: sum(w[key] for w in workers) // world_size for key in workers[0]}] * world_size


def stream_epoch(data, num_records, world_size):
    """The first cache epoch of a run's stream: the one that holds the next row of the worker that had pulled the
    fewest (data: the newest checkpoint's data position; None for a fresh run). Every worker reads num_records //
    world_size rows of each epoch (exactly with one worker; Ray Data's split is dynamic with several)."""
    if data is None:
        return 0
    return min(w["rows"] for w in worker_positions(data, world_size)) // (num_records // world_size)


def newest_data_position(run):
    """(step, data position) of the checkpoint a run resumes from: the latest that Ray Train registered in the run's
    snapshot (the one `ray.train.get_checkpoint()` hands the workers), never a folder a kill left unregistered;
    (0, None) for a fresh run."""
    registered = run.registered()
    if not registered:
        return 0, None
    text = run.read_text(f"{registered[-1]}/{DATA_FILE}")
    return checkpoint_dir_step(registered[-1]), cached_position(json.loads(text)) if text is not None else None


def stream_rows(t, K, steps):
    """Rows the workers' streams should hold for `steps` more steps of train config `t`: UNUSED_FACTOR times the rows
    the steps take (the queues drop rows), plus a full set of queues at the start and after every checkpoint (each
    empties them). A stream that runs out anyway starts another pass (a resumed run then reads other rows)."""
    return (UNUSED_FACTOR * steps + (steps // t.checkpoint_every + 1) * K * t.queue_steps) * t.batch_size


class EpochsDatasource(Datasource):
    """Cache epochs as one Ray Data source whose read tasks run in stream order: epoch by epoch, each epoch's shard
    ranges in an order seeded by (train.seed, epoch), its k redrawn given n (a union of per-epoch datasets would
    interleave their blocks, so a row's place in the stream would not tell its epoch)."""

    def __init__(self, cache, epochs, seed):
        super().__init__()
        self.cache, self.epochs, self.seed = cache, list(epochs), seed

    def estimate_inmemory_data_size(self):
        return len(self.epochs) * CacheDatasource(self.cache).estimate_inmemory_data_size()

    def num_tasks(self):
        return len(self.epochs) * CacheDatasource(self.cache).num_tasks()

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        tasks = []
        for e in self.epochs:
            epoch = CacheDatasource(self.cache, epoch=e, seed=self.seed).get_read_tasks(parallelism, per_task_row_limit,
                                                                                        data_context)
            order = torch.randperm(len(epoch), generator=generator_for(self.seed, e, 0, TRAIN_PERM)).tolist()
            tasks += [epoch[i] for i in order]
        return tasks

    def get_name(self):
        return "TrajectoryCacheEpochs"


class CacheEpochs:
    """TorchTrainer's cached-mode dataset, a callable it calls at each worker-group start (the first and every
    restart): cache epochs e0, e0+1, ... as one stream (EpochsDatasource), as many as `stream_rows` asks. e0 holds
    the next row of the newest checkpoint's data position, so a resumed run reads at most one epoch it does not use;
    the resumed workers skip the rows they had pulled of it."""

    def __init__(self, cfg, cache):
        self.cfg, self.cache = cfg, cache

    def __call__(self):
        t = self.cfg.train
        step, data = newest_data_position(RunDir(t.storage_path, t.run_name, t.storage_options))
        M = self.cache.num_records
        first = stream_epoch(data, M, t.num_workers)
        count = math.ceil(stream_rows(t, self.cfg.grid.grid().K, max(t.steps - step, 0)) / M) + 1
        source = EpochsDatasource(self.cache, range(first, first + count), t.seed)
        # a read task decodes one shard in milliseconds, but each concurrent one costs a worker process (seconds to
        # start): a read ahead of every training worker keeps up, where Ray's default starts one per CPU at once. The
        # reads reserve no CPU: the training workers may hold all of a cluster's CPUs (2 on a 2-core machine), and a
        # read that waited for one would hang the run
        stream = ray.data.read_datasource(source, override_num_blocks=source.num_tasks(),
                                          concurrency=t.num_workers + 1, num_cpus=0)
        # the split's progress bars would print thousands of lines into a job's log (one redraw per block and
        # operator, each epoch); rank 0 prints the run's own progress lines instead
        stream.context.enable_progress_bars = False
        return stream
