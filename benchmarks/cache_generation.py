"""Trajectory-cache generation: records per second through the full Ray Data path against a plain loop.

    python -m benchmarks.cache_generation [--records 20000] [--shard 1000] [--batch 256] [--threads 1]

Both sides solve the same records (digits mixture teacher, N = 18, per-sample n) with the same torch thread count:
the plain loop in this process with no writing, the Ray path with one teacher actor of `--threads` CPUs, Zarr
writes and manifest commits. The Ray path is timed end to end (actor start-up included, `ray.init` excluded) for
`--records` and for a fifth of them into fresh caches, after a warm-up run; the difference gives the marginal rate
without start-up. Runs alternate between the two sides and each timing is the fastest of its repeats, which
keeps other load on a shared machine out of the ratio as far as possible.
"""

import argparse
import os
import tempfile
import time

import ray
import torch

from ctm.digits import fit_digits_teacher
from ctm.teachers import GaussianMixtureTeacher
from pipeline.cache import generate_cache
from pipeline.cache.generate import record_spec
from pipeline.cache.manifest import key_fields, shard_ranges
from pipeline.cache.records import make_records
from pipeline.config import load_config
from pipeline.datasets import load_dataset


def plain_loop(cfg, teacher):
    """Seconds to make every record of `cfg`'s cache in this process, shard by shard, without writing."""
    images, labels, data_id = load_dataset(cfg.data)
    spec = record_spec(cfg, key_fields(cfg, teacher.identity(), data_id))
    start = time.perf_counter()
    with torch.no_grad():
        for _, a, b in shard_ranges(cfg.cache.num_records, cfg.cache.records_per_shard):
            make_records(spec, teacher, images, labels, range(a, b), cfg.cache.batch_size)
    return time.perf_counter() - start


def ray_path(cfg):
    """Seconds for `generate_cache` to write `cfg`'s cache from nothing."""
    start = time.perf_counter()
    generate_cache(cfg, log=lambda *_: None)
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=20000)
    p.add_argument("--shard", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the loop = CPUs of the teacher actor")
    p.add_argument("--repeats", type=int, default=2, help="each timing is the fastest of this many runs")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    small = args.records // 5
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = f"{tmp}/digits_gmm10.npz"
        fit_digits_teacher(n_components=10).save(teacher_path)

        def config(records, seed):
            return load_config(overrides=[
                f"cache.root={tmp}/cache", f"teacher.path={teacher_path}", f"cache.num_records={records}",
                f"cache.records_per_shard={args.shard}", f"cache.batch_size={args.batch}", "cache.num_actors=1",
                f"cache.cpus_per_actor={args.threads}", f"cache.seed={seed}"])

        torch.set_num_threads(args.threads)
        teacher = GaussianMixtureTeacher.load(teacher_path)
        t_loop = [plain_loop(config(args.records, 0), teacher)]
        ray.init(num_cpus=max(4, args.threads + 2), include_dashboard=False, log_to_driver=False)
        ray_path(config(small, 2))  # warm-up: worker processes started, imports cached
        t_small, t_large = [], []
        for seed in range(args.repeats):  # fresh caches each time
            t_small.append(ray_path(config(small, 10 + seed)))
            t_large.append(ray_path(config(args.records, 20 + seed)))
            t_loop.append(plain_loop(config(args.records, 0), teacher))
        ray.shutdown()
    t_loop, t_small, t_large = min(t_loop), min(t_small), min(t_large)  # the least disturbed of the repeats
    loop = args.records / t_loop
    end_to_end, marginal = args.records / t_large, (args.records - small) / (t_large - t_small)
    print(f"digits mixture teacher, N=18, records in shards of {args.shard}, batch {args.batch}, "
          f"{args.threads} torch thread(s) on each side")
    print(f"plain loop, no writing ({args.records} records)         {loop:8.0f} records/s")
    print(f"Ray Data -> Zarr, end to end ({args.records} records)   {end_to_end:8.0f} records/s   "
          f"overhead {1 - end_to_end / loop:6.1%}")
    print(f"Ray Data -> Zarr, marginal ({small} -> {args.records})  {marginal:8.0f} records/s   "
          f"overhead {1 - marginal / loop:6.1%}   (fixed start-up {t_small - small / marginal:.1f} s)")


if __name__ == "__main__":
    main()
