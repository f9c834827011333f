"""Trajectory-cache generation: records per second through the full Ray Data path against a plain loop.

    python -m benchmarks.cache_generation [--records 20000] [--shard 1000] [--batch 256] [--threads 1]

Both sides solve the same records (digits mixture teacher, N = 18, per-sample n) with the same torch thread count:
the plain loop in this process with no writing, the Ray path with one teacher actor of `--threads` CPUs, Zarr
writes and manifest commits. Reported: end to end (actor start-up included, `ray.init` excluded) and steady state
(from the first to the last shard commit), with the pipeline's overhead against the loop.
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
from pipeline.teachers import teacher_identity


def plain_loop(cfg, teacher):
    images, labels, data_id = load_dataset(cfg.data)
    spec = record_spec(cfg, key_fields(cfg, teacher_identity(teacher), data_id))
    start = time.perf_counter()
    with torch.no_grad():
        for _, a, b in shard_ranges(cfg.cache.num_records, cfg.cache.records_per_shard):
            make_records(spec, teacher, images, labels, range(a, b), cfg.cache.batch_size)
    return cfg.cache.num_records / (time.perf_counter() - start)


def ray_path(cfg):
    start = time.perf_counter()
    cache = generate_cache(cfg, log=lambda *_: None)
    total = time.perf_counter() - start
    times = sorted(e["committed"] for e in cache.shards)
    steady = (cfg.cache.num_records - cfg.cache.records_per_shard) / (times[-1] - times[0])
    return cfg.cache.num_records / total, steady


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=20000)
    p.add_argument("--shard", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the loop = CPUs of the teacher actor")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = f"{tmp}/digits_gmm10.npz"
        fit_digits_teacher(n_components=10).save(teacher_path)
        cfg = load_config(overrides=[f"cache.root={tmp}/cache", f"teacher.path={teacher_path}",
                                     f"cache.num_records={args.records}", f"cache.records_per_shard={args.shard}",
                                     f"cache.batch_size={args.batch}", "cache.num_actors=1",
                                     f"cache.cpus_per_actor={args.threads}"])
        torch.set_num_threads(args.threads)
        loop = plain_loop(cfg, GaussianMixtureTeacher.load(teacher_path))
        ray.init(num_cpus=max(4, args.threads + 2), include_dashboard=False, log_to_driver=False)
        end_to_end, steady = ray_path(cfg)
        ray.shutdown()
    print(f"digits mixture teacher, N=18, {args.records} records in shards of {args.shard}, batch {args.batch}, "
          f"{args.threads} thread(s)")
    print(f"plain loop (no writing)          {loop:8.0f} records/s")
    print(f"Ray Data -> Zarr, steady state   {steady:8.0f} records/s   overhead {1 - steady / loop:6.1%}")
    print(f"Ray Data -> Zarr, end to end     {end_to_end:8.0f} records/s   overhead {1 - end_to_end / loop:6.1%} "
          f"(actor start-up included)")


if __name__ == "__main__":
    main()
