"""GPU: the DDPM++ CIFAR-10 teacher through Ray Data into Zarr against the bare fast solver, in one run.

    python -m benchmarks.cache_gpu                                   # random weights, paper-size DDPM++ (55.7M)
    python -m benchmarks.cache_gpu --pkl edm-cifar10-32x32-uncond-vp.pkl
    python -m benchmarks.cache_gpu --net tiny --records 128 --shard 32 --batch 16   # CPU smoke test of the logic

Both sides run the teacher's fast path (bf16 autocast, channels_last, torch.compile on CUDA) over full 18-point
trajectories (noise-mode records: n = 0, 34 NFE each) at the same batch. Bare: `heun_trajectory` on the device,
nothing kept. Ray: `generate_cache` with `--actors-per-gpu` teacher actors sharing the one GPU (the pipeline's own
draws, host copies, Arrow blocks, Zarr writes and commits), timed end to end for `--records` and for a quarter of
them into fresh caches after a warm-up run; the difference is the marginal rate, free of actor start-up and
compilation. Target: marginal ≥ 90% of bare. Needs ray and zarr installed on the GPU machine.
"""

import argparse
import os
import tempfile
import time

import ray
import torch

from ctm.networks import build_edm_network, tiny_songunet_kwargs
from ctm.schedule import Grid
from ctm.solver import heun_trajectory
from ctm.teachers import EDMTeacher, load_edm
from pipeline.cache import generate_cache
from pipeline.config import load_config

CIFAR10_DDPMPP = dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet",
                      embedding_type="positional", encoder_type="standard", decoder_type="standard",
                      channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
                      dropout=0.13)


class NetworkTeacher:
    """device -> EDMTeacher of one fixed network (seeded random weights, or an EDM pickle); pickles to Ray actors."""

    def __init__(self, kwargs, pkl=None, seed=0, fast=True):
        self.kwargs, self.pkl, self.seed, self.fast = kwargs, pkl, seed, fast

    def __call__(self, device):
        if self.pkl:
            net = load_edm(self.pkl)
        else:
            torch.manual_seed(self.seed)
            net = build_edm_network(**self.kwargs)
        return EDMTeacher(net.to(device), fast=self.fast)


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bare_rate(teacher, shape, batch, records, device):
    """Images per second of the fast solver alone: full N-point Heun trajectories from 80·z, on the device."""
    grid = Grid(18).t
    x = torch.randn(batch, *shape, device=device) * 80
    heun_trajectory(teacher.denoise, x, grid)  # warm-up and compilation
    synchronize(device)
    start = time.perf_counter()
    for _ in range(max(1, records // batch)):
        heun_trajectory(teacher.denoise, x, grid)
    synchronize(device)
    return max(1, records // batch) * batch / (time.perf_counter() - start)


def ray_seconds(cfg, factory):
    start = time.perf_counter()
    generate_cache(cfg, teacher_factory=factory, log=lambda *_: None)
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="cifar10", choices=["cifar10", "tiny"])
    p.add_argument("--pkl", help="an EDM pickle to use instead of random weights")
    p.add_argument("--records", type=int, default=16384)
    p.add_argument("--shard", type=int, default=2048)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--actors-per-gpu", type=int, default=2,
                   help="teacher actors sharing the GPU, so that one's host work overlaps the other's solves")
    p.add_argument("--root", help="cache folder (default: a temporary folder on local disk)")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = CIFAR10_DDPMPP if args.net == "cifar10" else tiny_songunet_kwargs(8, 3)
    factory = NetworkTeacher(kwargs, args.pkl)
    teacher = factory(device)
    shape = (teacher.net.img_channels, teacher.net.img_resolution, teacher.net.img_resolution)
    bare = bare_rate(teacher, shape, args.batch, args.records, device)
    del teacher
    if device == "cuda":
        torch.cuda.empty_cache()
    small = max(args.shard, args.records // 4)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or f"{tmp}/cache"

        def config(records, seed):
            return load_config(overrides=[f"cache.root={root}", "cache.mode=noise", f"cache.num_records={records}",
                                          f"cache.records_per_shard={args.shard}", f"cache.batch_size={args.batch}",
                                          f"cache.num_actors={args.actors_per_gpu}",
                                          f"cache.gpus_per_actor={1 / args.actors_per_gpu}", f"cache.seed={seed}",
                                          "teacher.kind=edm", f"teacher.path={args.pkl or 'random-weights-seed0'}"])

        ray.init(include_dashboard=False, log_to_driver=False)
        ray_seconds(config(args.shard, 2), factory)  # warm-up: worker processes, the compiler's caches
        t_small, t_large = ray_seconds(config(small, 1), factory), ray_seconds(config(args.records, 0), factory)
        ray.shutdown()
    marginal = (args.records - small) / (t_large - t_small)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{args.net} DDPM++ teacher on {name}, batch {args.batch}, 18-point trajectories (34 NFE), fast path "
          f"{'on' if device == 'cuda' else 'off (CPU)'}, {args.actors_per_gpu} teacher actor(s) per GPU")
    print(f"bare fast solver                     {bare:9.1f} images/s")
    print(f"Ray Data -> Zarr, marginal           {marginal:9.1f} images/s   {marginal / bare:6.1%} of bare "
          f"(target >= 90%; {small} -> {args.records} records)")
    print(f"Ray Data -> Zarr, end to end         {args.records / t_large:9.1f} images/s   "
          f"{args.records / t_large / bare:6.1%} of bare (actor start-up and compilation included)")


if __name__ == "__main__":
    main()
