"""Trajectory-cache reading: training samples per second and bytes read per sample.

    python -m benchmarks.cache_reading [--records 16384] [--shard 2048] [--batch 256]

Samples/s: the Datasource through `iter_torch_batches` (pairs: x0, x_t = states[n], x_u = states[n+k]) against
reading the same arrays straight with zarr-python in this process (and the Datasource's own read function without
Ray). Bytes per sample: everything the read of the pairs
fetches from the store, against the two float16 states a sample needs, for the digits cache (1×8×8 states) and a
synthetic shard of CIFAR-10 shape (3×32×32, N = 18).
"""

import argparse
import collections
import math
import os
import tempfile
import time

import numpy as np
import ray
import torch
import zarr
from zarr.storage import WrapperStore

from ctm.digits import fit_digits_teacher
from ctm.schedule import sample_n
from pipeline.cache import cache_dataset, generate_cache
from pipeline.cache.draws import draw_k
from pipeline.cache.shards import ShardReader, write_shard
from pipeline.cache.source import iter_pairs
from pipeline.storage import Folder
from pipeline.config import load_config


class CountingStore(Folder):
    """A cache store that counts the bytes read from it, per array (checksums.json and metadata as their own)."""

    def __init__(self, url, storage_options=None):
        super().__init__(url, storage_options)
        self.nbytes = collections.Counter()

    def count(self, rel, nbytes):
        parts = rel.split("/")
        self.nbytes[parts[2] if len(parts) > 3 else parts[-1]] += nbytes

    def read_bytes(self, rel):
        data = super().read_bytes(rel)
        self.count(rel, len(data))
        return data

    def read_ranges(self, rel, starts, ends):
        out = super().read_ranges(rel, starts, ends)
        self.count(rel, sum(map(len, out)))
        return out

    def zarr_store(self, rel, read_only=True):
        return _CountingZarrStore(super().zarr_store(rel, read_only), self, rel)


class _CountingZarrStore(WrapperStore):
    def __init__(self, store, counter, rel):
        super().__init__(store)
        self.counter, self.rel = counter, rel

    async def get(self, key, prototype, byte_range=None):
        buf = await self._store.get(key, prototype, byte_range)
        self.counter.count(f"{self.rel}/{key}", 0 if buf is None else len(buf))
        return buf


def datasource_rate(cache, batch):
    for epoch in (0, 1):  # epoch 0 warms the read workers up
        start, count = time.perf_counter(), 0
        for b in cache_dataset(cache, pairs=True, epoch=epoch).iter_torch_batches(batch_size=batch):
            count += len(b["x_t"])
    return count / (time.perf_counter() - start)


def reader_rate(cache, batch):
    """The Datasource's read function in this process, without Ray."""
    start, count = time.perf_counter(), 0
    for entry in cache.shards:
        reader = ShardReader(cache.store, entry)
        for b in iter_pairs(reader, 0, entry["count"], mode=cache.mode, N=cache.N, K=cache.K, epoch=1, seed=0,
                            block_rows=batch):
            count += len({name: torch.from_numpy(a) for name, a in b.items()}["x_t"])
    return count / (time.perf_counter() - start)


def raw_zarr_rate(cache, batch):
    """The same pairs read with zarr alone: whole small arrays, then the two states per record in one selection."""
    start, count = time.perf_counter(), 0
    for entry in cache.shards:
        g = zarr.open_group(cache.store.zarr_store(entry["path"]), mode="r", use_consolidated=True)
        n, index, x0, label = g["start"][:], g["index"][:], g["x0"][:], g["label"][:]
        k = draw_k(n, index, cache.N, cache.K, 0, 1)
        rows = np.arange(len(n))
        shape = cache.image_shape
        coords = [np.concatenate([rows, rows]), np.concatenate([n, n + k])]
        coords = [c[(...,) + (None,) * len(shape)] for c in coords] + \
                 [g_[None] for g_ in np.meshgrid(*[np.arange(d) for d in shape], indexing="ij")]
        states = g["states"].vindex[tuple(np.broadcast_arrays(*coords))].astype(np.float32)
        for b in range(0, len(n), batch):
            pair = {"x0": x0[b:b + batch], "label": label[b:b + batch], "x_t": states[b:b + batch],
                    "x_u": states[len(n) + b:len(n) + b + batch]}
            count += len({name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in pair.items()}["x_t"])
    return count / (time.perf_counter() - start)


def bytes_per_sample(store, entries, N, K, mode="data"):
    """(states bytes, all bytes) the Datasource's read function fetches per training sample, and a state's bytes."""
    counting, samples = CountingStore(store.url, store.storage_options), 0
    for entry in entries:
        reader = ShardReader(counting, entry)
        for b in iter_pairs(reader, 0, entry["count"], mode=mode, N=N, K=K, epoch=0, seed=0):
            samples += len(b["n"])
    state = 2 * math.prod(reader.group["states"].shape[2:])
    return counting.nbytes["states"] / samples, sum(counting.nbytes.values()) / samples, state


def cifar_shaped_shard(root, records, N=18):
    """One shard of random CIFAR-shaped records with n from its official marginal (no teacher needed)."""
    rng = np.random.default_rng(0)
    n = sample_n(records, N, N - 1, torch.Generator().manual_seed(0)).numpy()
    states = rng.standard_normal((records, N, 3, 32, 32)).astype(np.float16)
    states[np.arange(N)[None] < n[:, None]] = np.nan
    arrays = {"states": states, "start": n, "x0": rng.standard_normal((records, 3, 32, 32)).astype(np.float32),
              "label": np.zeros(records, np.int64), "index": np.arange(records), "data_index": np.arange(records),
              "flip": np.zeros(records, bool), "seed": np.arange(records)}
    store = Folder(root)
    return store, [write_shard(store, 0, 0, records, arrays, key="synthetic")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=16384)
    p.add_argument("--shard", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = f"{tmp}/digits_gmm10.npz"
        fit_digits_teacher(n_components=10).save(teacher_path)
        cfg = load_config(overrides=[f"cache.root={tmp}/cache", f"teacher.path={teacher_path}",
                                     f"cache.num_records={args.records}", f"cache.records_per_shard={args.shard}"])
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        cache = generate_cache(cfg, log=lambda *_: None)
        source, raw = datasource_rate(cache, args.batch), raw_zarr_rate(cache, args.batch)
        plain = reader_rate(cache, args.batch)
        ray.shutdown()
        digits = bytes_per_sample(cache.store, cache.shards, cache.N, cache.K)
        cifar = bytes_per_sample(*cifar_shaped_shard(f"{tmp}/cifar", 2048), 18, 17)
    print(f"digits cache: {args.records} records, shards of {args.shard}, float16 states of 1x8x8, N=18")
    print(f"Datasource -> iter_torch_batches   {source:9.0f} samples/s   ({source / raw:.2f}x raw zarr)")
    print(f"raw zarr, one process              {raw:9.0f} samples/s")
    print(f"our shard reader, one process      {plain:9.0f} samples/s   (the Datasource's read function, no Ray)")
    for name, (states, total, state) in (("digits 1x8x8", digits), ("CIFAR 3x32x32", cifar)):
        print(f"bytes per sample, {name:13s}: states {states:8.0f} B = {states / (2 * state):.2f}x the two states "
              f"({2 * state} B); everything {total:8.0f} B = {total / (2 * state):.2f}x (x0, labels, metadata)")


if __name__ == "__main__":
    main()
