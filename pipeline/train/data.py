"""Where each step's batch comes from: this worker's share of the global batch, as a dict of CPU tensors.

- online: real images drawn as the official code does (reference §3): an epoch-wise permutation of the dataset,
  flips, one k per optimiser step with P(k) ∝ k, n ~ U{0..N−1−k} and fresh z, x_t = x0 + t_n·z. Every draw is a
  function of (train.seed, step, global micro-batch index), so the position in the data is the step itself.
- cached: rows of the trajectory cache (x0, label, index, n, k, x_t, x_u) from this worker's shard of the Ray Dataset
  that TorchTrainer splits across workers. The cache is read as consecutive epochs (k redrawn given n each epoch,
  reference §9) starting at the epoch of the run's newest checkpoint; a resumed worker skips the rows it had used.
"""

import math

import torch

from ctm.schedule import k_probs
from pipeline.cache import cache_dataset
from pipeline.datasets import apply_flips, flip_mask
from pipeline.train.rundir import RunDir
from pipeline.train.step import STREAM_DATA, STREAM_K, STREAM_PERM, generator_for, seed_for

ROW_KEYS = ("x0", "label", "index", "n", "k", "x_t", "x_u")


class OnlineBatches:
    """batches(step) -> this worker's share of the step's global batch, for the teacher to solve inside the step."""

    def __init__(self, images, labels, cfg, grid, rank=0, world_size=1):
        t = cfg.train
        self.images, self.labels = torch.as_tensor(images), torch.as_tensor(labels)
        self.grid, self.N, self.K = grid.to(torch.float64), len(grid), cfg.grid.K_max
        self.data_cfg, self.seed, self.B = cfg.data, t.seed, t.batch_size
        self.share = t.batch_size // world_size
        self.micro = t.micro_batch or self.share
        self.rank = rank
        self._perms = {}

    def permutation(self, epoch):
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            g = generator_for(self.seed, epoch, 0, STREAM_PERM)
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
        k = int(torch.multinomial(k_probs(self.K), 1, generator=generator_for(self.seed, step, 0, STREAM_K))) + 1
        index = self.indices(step)
        first = self.rank * (self.share // self.micro)
        parts = []
        for i in range(self.share // self.micro):
            g = generator_for(self.seed, step, first + i, STREAM_DATA)
            idx = index[i * self.micro:(i + 1) * self.micro]
            x0 = apply_flips(self.images[idx], flip_mask(len(idx), g, self.data_cfg))
            n = torch.randint(0, self.N - k, (len(idx),), generator=g)
            z = torch.randn(x0.shape, generator=g)
            x_t = x0 + self.grid[n].float()[:, None, None, None] * z
            parts.append({"x0": x0, "label": self.labels[idx], "index": idx, "n": n,
                          "k": torch.full_like(n, k), "x_t": x_t})
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


class CachedBatches:
    """batches(step) -> the next `share` rows of this worker's dataset shard (a ray.data.DataIterator).

    The shard streams cache epochs from `first_epoch` on (see CacheEpochs), mixed through a seeded shuffle buffer of
    four batches; resuming at `step`, the rows this worker had used since then are skipped. A shard that runs out
    starts another pass.
    """

    def __init__(self, shard, share, step=0, first_epoch=0, rows_per_epoch=0, seed=0):
        self.shard, self.share, self.seed = shard, share, seed
        self.skip = max(0, step * share - first_epoch * rows_per_epoch)
        self.rows, self.buffer, self.buffered = None, [], 0

    def _stream(self):
        while True:
            empty = True
            for batch in self.shard.iter_torch_batches(batch_size=self.share, local_shuffle_buffer_size=4 * self.share,
                                                       local_shuffle_seed=self.seed):
                empty = False
                drop = min(self.skip, len(batch["n"]))
                self.skip -= drop
                if drop < len(batch["n"]):
                    yield {key: v[drop:] for key, v in batch.items()}
            if empty:
                raise RuntimeError("this worker's shard of the training dataset is empty: the cache holds fewer "
                                   "records than train.num_workers")

    def position(self, step):
        return {"mode": "cached", "rows": step * self.share}

    def __call__(self, step):
        if self.rows is None:
            self.rows = self._stream()
        while self.buffered < self.share:
            batch = next(self.rows)
            self.buffer.append(batch)
            self.buffered += len(batch["n"])
        rows = {key: torch.cat([b[key] for b in self.buffer]) for key in ROW_KEYS if key in self.buffer[0]}
        rest = {key: v[self.share:] for key, v in rows.items()}
        self.buffer, self.buffered = ([rest], len(rest["n"])) if len(rest["n"]) else ([], 0)
        return {key: v[:self.share] for key, v in rows.items()}


def first_epoch(step, batch_size, num_records):
    """The cache epoch that holds sample step·B of the run: where CacheEpochs starts a resumed run's stream."""
    return step * batch_size // num_records


class CacheEpochs:
    """TorchTrainer's cached-mode dataset, a callable it calls at each worker-group start (the first and every
    restart): cache epochs e0, e0+1, ... up to the run's last step as one stream, k redrawn given n and the shard
    order reshuffled each epoch (seeded by train.seed). e0 holds the newest checkpoint of the run directory, so a
    resumed run reads at most one epoch it does not use; the resumed workers skip the rows they had used of it."""

    def __init__(self, cfg, cache):
        self.cfg, self.cache = cfg, cache

    def __call__(self):
        t = self.cfg.train
        steps = RunDir(t.storage_path, t.run_name, t.storage_options).checkpoint_steps()
        M = self.cache.num_records
        first = first_epoch(steps[-1] if steps else 0, t.batch_size, M)
        last = max(math.ceil(t.steps * t.batch_size / M), first + 1)
        epochs = [cache_dataset(self.cache, pairs=True, epoch=e, seed=t.seed)
                  .randomize_block_order(seed=seed_for(t.seed, e, 0, STREAM_PERM)) for e in range(first, last)]
        stream = epochs[0].union(*epochs[1:]) if len(epochs) > 1 else epochs[0]
        # the split's progress bars would print thousands of lines into a job's log (one redraw per block and
        # operator, each epoch); rank 0 prints the run's own progress lines instead
        stream.context.enable_progress_bars = False
        return stream
