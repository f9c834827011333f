"""Teacher Heun throughput: images per second over a full N-point CTM trajectory (N−1 Heun steps, 2 NFE each).

    python -m benchmarks.heun_throughput                       # CPU: tiny DDPM++ and the digits mixture teacher
    python -m benchmarks.heun_throughput --device cuda --net cifar10 --batch 64 256 --fast
        # the paper-size DDPM++ CIFAR-10 network (55.7M parameters, random weights unless --pkl is given):
        # fp32 eager baseline (the official sampler's way) against the fast path, side by side, with the ratio and
        # the fast path's max |Δ| from the fp32 endpoint at σ_min (same input)

main returns the teachers and, per batch, the rates, the input x (at σ_max) and each teacher's timed endpoint.
"""

import argparse
import copy
import time

import torch

from ctm.digits import fit_digits_teacher
from ctm.networks import build_edm_network, tiny_songunet_kwargs
from ctm.schedule import Grid
from ctm.solver import heun_trajectory
from ctm.teachers import EDMTeacher, load_edm

CIFAR10_DDPMPP = dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet",
                      embedding_type="positional", encoder_type="standard", decoder_type="standard",
                      channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
                      dropout=0.13)


def images_per_second(teacher, x, grid, device, repeats):
    """(images/s over `repeats` full trajectories from x, the last one's endpoint at σ_min)."""
    heun_trajectory(teacher.denoise, x, grid)  # warm-up (and compilation)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        states = heun_trajectory(teacher.denoise, x, grid)
    if device == "cuda":
        torch.cuda.synchronize()
    return len(x) * repeats / (time.perf_counter() - start), states[-1]


def build_teachers(args):
    if args.net == "digits-gmm":
        return {"gmm (exact)": fit_digits_teacher()}, (1, 8, 8)
    if args.pkl:
        net = load_edm(args.pkl)
    else:
        kwargs = CIFAR10_DDPMPP if args.net == "cifar10" else tiny_songunet_kwargs(16, 3)
        net = build_edm_network(**kwargs)
    net = net.to(args.device)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    teachers = {"fp32 eager": EDMTeacher(net)}
    if args.fast:
        teachers["bf16+channels_last+compile"] = EDMTeacher(copy.deepcopy(net), fast=True)  # its own channels_last copy
    return teachers, shape


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--net", default="tiny", choices=["tiny", "cifar10", "digits-gmm"])
    p.add_argument("--pkl", help="an EDM pickle to time instead of random weights")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--N", type=int, default=18)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--fast", action="store_true", help="also time the fast path (CUDA only)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    teachers, shape = build_teachers(args)
    grid = Grid(args.N).t
    print(f"{args.net} teacher on {args.device}, {args.N}-point grid ({2 * (args.N - 1)} NFE per image)")
    runs = {}
    for batch in args.batch:
        x = torch.randn(batch, *shape, device=args.device) * float(grid[0])  # one input for every teacher
        timed = {name: images_per_second(t, x, grid, args.device, args.repeats) for name, t in teachers.items()}
        runs[batch] = {"rates": {name: r for name, (r, _) in timed.items()}, "x": x.cpu(),
                       "x_end": {name: end.float().cpu() for name, (_, end) in timed.items()}}
        line = "  ".join(f"{name}: {r:8.1f} img/s" for name, r in runs[batch]["rates"].items())
        if len(timed) > 1:
            (base, base_end), *others = timed.values()
            rate, end = others[-1]
            line += f"  ratio {rate / base:.2f}x  max |Δ| at σ_min vs fp32 {(end.float() - base_end).abs().max():.3g}"
        print(f"batch {batch:4d}  {line}", flush=True)
    return {"teachers": teachers, "runs": runs}


if __name__ == "__main__":
    main()
