"""Training throughput, cached teacher trajectories against the teacher solved inside the step (same student, batch,
machine), and peak memory per worker in both modes.

    python -m benchmarks.train_speed                                   # CPU: digits, the whole Ray Train path
    python -m benchmarks.train_speed --level step --net tiny-edm       # CPU: one worker's step, network teacher
    python -m benchmarks.train_speed --level step --device cuda --net cifar10 --batch 64 --fast
        # GPU: DDPM++ CIFAR-10 student and teacher (random weights unless --pkl), bf16 autocast

--level ray runs `run_training` twice on the digits default (a trajectory cache is generated first) and reads
samples/s and each worker's peak resident memory from the runs' stats.jsonl, leaving out the first log window. The
10-component mixture teacher costs under a tenth of a tiny-student step, so caching it cannot pay much; a
200-component one (the same exact denoiser, 20 times the work) stands in for a teacher network that costs about
twice the student's step, as the official DDPM++ teacher does.
--level step times `CTMStep` in this process on pre-drawn batches: cached batches carry x_u (solved beforehand by the
same teacher, in its compute dtype), online batches make the step solve Heun^k; data loading is left out of both.
Before timing it checks that the two modes are one computation: from the same initial state, one step of each on the
first batch sees the same draws (x_t, t, u, s, x0, DSM σ and noise) and gives the same loss to fp tolerance, with the
cached x_u solved as the cache writer does (ctm.solver's Heun from t_n, a solver other than the step's).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ctm.networks import build_edm_network, tiny_songunet_kwargs
from ctm.solver import heun_trajectory
from ctm.teachers import EDMTeacher, GaussianMixtureTeacher, load_edm
from ctm.training import heun_segment
from pipeline.config import load_config
from pipeline.datasets import load_dataset
from pipeline.teachers import build_teacher
from pipeline.train.data import OnlineBatches
from pipeline.train.state import build_state, student_kwargs
from pipeline.train.step import CTMStep

CIFAR10_DDPMPP = dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet",
                      embedding_type="positional", encoder_type="standard", decoder_type="standard",
                      channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
                      dropout=0.13)


def teacher_and_images(args):
    """(teacher, images in [-1, 1], labels, student architecture) for --net."""
    if args.net == "digits-gmm":
        cfg = load_config()
        images, labels, _ = load_dataset(cfg.data)
        return build_teacher(cfg), torch.from_numpy(images), torch.from_numpy(labels), "tiny"
    net = load_edm(args.pkl) if args.pkl else build_edm_network(
        **(CIFAR10_DDPMPP if args.net == "cifar10" else tiny_songunet_kwargs(8, 1)))
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    if args.net == "tiny-edm":
        images = torch.from_numpy(load_dataset(load_config().data)[0])
    else:  # no CIFAR-10 on the GPU machine: the speed does not depend on the pixels
        images = torch.rand(4096, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return EDMTeacher(net.to(args.device), fast=args.fast), images, torch.zeros(len(images), dtype=torch.long), \
        "teacher"


def compute_dtype(teacher):
    """The dtype the cache writer and the online step solve in: float64 for the exact mixture, float32 for networks."""
    return torch.float64 if isinstance(teacher, GaussianMixtureTeacher) else torch.float32


@torch.no_grad()
def cache_solve(teacher, x_t, n, k, grid):
    """x_u as the cache writer solves it: Heun from t_n along the grid with Python-float times (ctm.solver), one (n, k)
    group at a time, in the teacher's compute dtype, kept in float32."""
    x_u = torch.empty_like(x_t)
    for n_i, k_i in torch.stack([n, k], 1).unique(dim=0).tolist():
        rows = (n == n_i) & (k == k_i)
        x_u[rows] = heun_trajectory(teacher.denoise, x_t[rows].to(compute_dtype(teacher)),
                                    grid[n_i:n_i + k_i + 1])[-1].float()
    return x_u


def recording(loss, names, seen):
    """`loss` that also keeps its tensor arguments under `names` (None: not kept)."""
    def call(*args):
        seen.update({name: a.detach().clone() for name, a in zip(names, args) if name})
        return loss(*args)
    return call


def same_loss_check(cfg, grid, teacher, batch, device):
    """One step of each mode from the same initial state on `batch` (x_t, n, k, x0; CTMStep draws s, the DSM σ and
    noise from (train.seed, step, micro-batch)), the cached one with x_u from `cache_solve`. Returns whether CTMLoss
    and DSMLoss saw the same draws, the max |Δx_u|, and the loss L_CTM + λ_DSM·L_DSM of each with their relative
    difference."""
    x_u = cache_solve(teacher, batch["x_t"].to(device), batch["n"].to(device), batch["k"].to(device), grid.t).cpu()
    seen, loss = {}, {}
    for mode, b in (("online", batch), ("cached", {**batch, "x_u": x_u})):
        state = build_state(cfg, student_kwargs(cfg, teacher), teacher, device)
        step = CTMStep(cfg, grid, teacher, device)
        seen[mode] = {}
        step.ctm_loss = recording(step.ctm_loss, (None, None, "x_t", "t", "x_u", "u", "s"), seen[mode])
        step.dsm_loss = recording(step.dsm_loss, (None, "x0", "sigma", "noise"), seen[mode])
        stats = step(state, b)
        loss[mode] = stats["loss_ctm"] + stats["lambda_dsm"] * stats["loss_dsm"]
        del state, step
    online, cached = seen["online"], seen["cached"]
    return {"same_draws": all(torch.equal(online[key], cached[key]) for key in online if key != "x_u"),
            "x_u_diff": (online["x_u"] - cached["x_u"]).abs().max().item(),
            "loss_online": loss["online"], "loss_cached": loss["cached"],
            "loss_diff": abs(loss["online"] - loss["cached"]) / abs(loss["online"])}


def step_level(args):
    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    teacher, images, labels, architecture = teacher_and_images(args)
    network_teacher = [] if architecture == "tiny" else ["teacher.kind=edm", "teacher.path=in-memory"]  # built above
    cfg = load_config(overrides=[*network_teacher, f"student.architecture={architecture}",
                                 f"train.distance={args.distance}", f"train.batch_size={args.batch}",
                                 "train.teacher_mode=online"])
    grid = cfg.grid.grid()
    source = OnlineBatches(images, labels, cfg, grid)
    batches = [source(i) for i in range(args.warmup + args.steps)]
    device = torch.device(args.device)
    check = same_loss_check(cfg, grid, teacher, batches[0], device)
    rates, memory = {}, {}
    for mode in ("online", "cached"):
        if mode == "cached":
            with torch.no_grad():
                for b in batches:
                    x_u = heun_segment(teacher.denoise, b["x_t"].to(device, compute_dtype(teacher)), grid.t,
                                       b["n"].to(device), b["k"].to(device))
                    b["x_u"] = x_u.float().cpu()
        state = build_state(cfg, student_kwargs(cfg, teacher), teacher, device)
        step = CTMStep(cfg, grid, teacher, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for i, b in enumerate(batches):
            if i == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            step(state, b)
            state.step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
            memory[mode] = torch.cuda.max_memory_allocated() / 2 ** 20
        rates[mode] = args.steps * args.batch / (time.perf_counter() - started)
        del state, step
    print(f"{args.net} on {args.device}, batch {args.batch}, distance {args.distance}, {args.steps} timed steps "
          f"after {args.warmup}")
    print(f"same draws in both modes (x_t, t, u, s, x0, DSM σ, noise): {'yes' if check['same_draws'] else 'NO'}; "
          f"x_u cached vs online max |Δ| {check['x_u_diff']:.3g}; loss online {check['loss_online']:.6g}, cached "
          f"{check['loss_cached']:.6g}, relative |Δ| {check['loss_diff']:.3g}")
    for mode in rates:
        mem = f"  peak CUDA {memory[mode]:.0f} MiB" if mode in memory else ""
        print(f"{mode:7s} {rates[mode]:9.1f} samples/s{mem}")
    print(f"cached / online: {rates['cached'] / rates['online']:.2f}x")
    return {"rates": rates, "check": check}


def ray_level(args):
    import ray

    from pipeline.cache import generate_cache
    from pipeline.train import run_training
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    root = Path(args.out or tempfile.mkdtemp(prefix="train_speed_"))
    print(f"digits, tiny student, Ray Train with {args.workers} CPU worker(s), batch {args.batch}, {args.steps} steps, "
          f"distance {args.distance}; samples/s: median of the log windows after the first")
    results = {}
    for components in args.components:
        where = root / f"gmm{components}"
        base = [f"teacher.components={components}", "student.architecture=tiny", f"train.distance={args.distance}",
                f"train.batch_size={args.batch}", f"train.steps={args.steps}", f"train.log_every={args.log_every}",
                f"train.checkpoint_every={args.steps}", f"train.num_workers={args.workers}",
                f"train.storage_path={where / 'runs'}", f"cache.root={where / 'cache'}",
                f"cache.num_records={args.records}", "cache.records_per_shard=512"]
        generate_cache(load_config(overrides=base), log=lambda *a: None)
        for mode in ("online", "cached"):
            run_training(load_config(overrides=base + [f"train.teacher_mode={mode}", f"train.run_name={mode}"]),
                         log=lambda *a: None)
            lines = [json.loads(line) for line in (where / "runs" / mode / "stats.jsonl").read_text().splitlines()]
            results[components, mode] = {"samples_per_s": statistics.median(r["samples_per_s"] for r in lines[1:]),
                                         "peak_rss_mb": lines[-1]["peak_rss_mb"]}
            r = results[components, mode]
            print(f"{components:4d}-component teacher  {mode:7s} {r['samples_per_s']:8.1f} samples/s  "
                  f"peak RSS per worker {r['peak_rss_mb']:.0f} MiB", flush=True)
        ratio = results[components, "cached"]["samples_per_s"] / results[components, "online"]["samples_per_s"]
        print(f"{components:4d}-component teacher  cached / online: {ratio:.2f}x", flush=True)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--level", choices=["ray", "step"], default="ray")
    p.add_argument("--net", choices=["digits-gmm", "tiny-edm", "cifar10"], default="digits-gmm",
                   help="--level step: the teacher (the student is its architecture, tiny DDPM++ for the mixture)")
    p.add_argument("--pkl", help="an EDM pickle to use as the teacher instead of random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fast", action="store_true", help="teacher's bf16 + channels_last + compile path (CUDA)")
    p.add_argument("--distance", default="l2", choices=["l2", "pseudo_huber"],
                   help="LPIPS needs weight files that cannot be downloaded here")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=3, help="--level step: untimed steps first")
    p.add_argument("--threads", type=int, default=1, help="--level step on the CPU: torch threads (a Train worker "
                                                          "with one CPU gets one)")
    p.add_argument("--log-every", type=int, default=10, help="--level ray: the samples/s window")
    p.add_argument("--workers", type=int, default=1, help="--level ray: Train workers")
    p.add_argument("--records", type=int, default=2048, help="--level ray: cache records")
    p.add_argument("--components", type=int, nargs="+", default=[10, 200],
                   help="--level ray: mixture components of the digits teacher (its cost grows linearly with them)")
    p.add_argument("--out", help="--level ray: folder for the cache and runs (default: a temporary one)")
    args = p.parse_args(argv)
    return step_level(args) if args.level == "step" else ray_level(args)


if __name__ == "__main__":
    main()
