"""Write N images from a CTM student, from a training checkpoint or an export, at a chosen NFE and γ; no Ray.

    python -m jobs.sample --checkpoint DIR [--ema-rate 0.999] --num 64 --nfe 1 --gamma 0 --out samples.png
    python -m jobs.sample --export FILE.safetensors --num 10000 --two-step 15 11 --out samples.npz
    python -m jobs.sample --export FILE.safetensors --num 100 --nfe 2 --gamma 0.3 --labels 3 --out samples/
    python -m jobs.sample --checkpoint DIR --schedule best --nfe 2 --out samples.png   # the searched NFE-2 schedule

The samplers use the run's σ range, ρ and N-point grid (the checkpoint's config, or the export's metadata):
--nfe K --gamma G is γ-sampling (paper Alg. 2: γ = 0 deterministic long jumps, γ = 1 the CM multistep sampler);
--two-step I1 I2 jumps σ_max → t_I1, renoises to t_I2 and jumps to σ_min; --schedule best samples the schedule that
a schedule search (python -m jobs.sweep_schedule) wrote for --nfe into schedules.json beside the checkpoint. Only the student's weights are read: no
discriminator, optimiser state or other EMA. OUT is a .png grid, an .npz of uint8 `images` (N, H, W, C) with int64
`labels` (N,), -1 for an unconditional student, or a folder of PNGs (one subfolder per class for a class-conditional
student). The same seed, batch size and settings give the same images.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ctm.sampling import gamma_steps, jump_sample, two_step_times
from ctm.schedule import Grid
from jobs.common import fail
from pipeline.export import ExportError, load_checkpoint_student, load_export
from pipeline.evaluation.schedules import best_schedule
from pipeline.images import save_grid


class SampleError(ValueError):
    """Sampling arguments that cannot work together; the message says what to pass instead."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="training checkpoint directory (or its checkpoint.pt)")
    source.add_argument("--export", help="exported student (.safetensors from python -m jobs.export)")
    p.add_argument("--ema-rate", type=float, help="with --checkpoint: the EMA to sample (default 0.999; 0: online θ)")
    p.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--nfe", type=int, help="γ-sampling: network evaluations (default 1)")
    p.add_argument("--gamma", type=float, help="γ-sampling: γ in [0, 1] (default 0)")
    p.add_argument("--two-step", type=int, nargs=2, metavar=("I1", "I2"),
                   help="the 2-step sampler on the run's grid instead of γ-sampling, 0 < I2 <= I1 < N-1")
    p.add_argument("--schedule", choices=["best"],
                   help="the best searched schedule at --nfe (default 2): from the checkpoint's schedules.json, or "
                        "the schedules an export carries")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents, labels and renoising noise")
    p.add_argument("--labels", type=int, nargs="+", metavar="CLASS",
                   help="class-conditional students: one class for every image, or one per image (default: random)")
    p.add_argument("--batch-size", type=int, default=64, help="images per network call (default 64)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="OUT.png (a grid), OUT.npz, or a folder (OUTDIR/)")
    return p.parse_args(argv)


def output_kind(out):
    """'png', 'npz' or 'folder' from the --out path."""
    suffix = Path(out).suffix.lower()
    if out.endswith(("/", "\\")) or Path(out).is_dir() or not suffix:
        return "folder"
    if suffix in (".png", ".npz"):
        return suffix[1:]
    raise SampleError(f"--out {out}: write a .png grid, an .npz, or a folder (end the path with /)")


def check_args(args):
    """Every argument that needs no network, before any weight is read."""
    output_kind(args.out)
    if args.num < 1 or args.batch_size < 1:
        raise SampleError(f"--num and --batch-size must be positive, got {args.num} and {args.batch_size}")
    if args.export and args.ema_rate is not None:
        raise SampleError("--ema-rate picks an EMA of a checkpoint; an export holds one already (drop --ema-rate)")
    if args.two_step and (args.nfe not in (None, 2) or args.gamma is not None):
        raise SampleError("--two-step is the 2-step sampler (NFE 2, no γ): drop --nfe and --gamma")
    if args.schedule and (args.gamma is not None or args.two_step):
        raise SampleError("--schedule best sets γ and the times (from the checkpoint's schedules.json, or those an "
                          "export carries): drop --gamma and --two-step")
    if args.labels and len(args.labels) not in (1, args.num):
        raise SampleError(f"--labels takes one class for every image or one per image ({args.num}), "
                          f"got {len(args.labels)}")


def schedule(args, info):
    """(t_steps, s_steps, description) of the jumps on the run's grid info["grid"] = {N, sigma_min, sigma_max, rho}."""
    grid = Grid(**info["grid"])
    if args.two_step:
        i1, i2 = args.two_step
        if not 0 < i2 <= i1 < grid.N - 1:
            raise SampleError(f"--two-step needs 0 < I2 <= I1 < N-1 = {grid.N - 1} on the run's grid, "
                              f"got {i1} {i2}")
        return (*two_step_times(grid, i1, i2), f"2-step i1={i1} i2={i2}")
    if args.schedule:
        nfe = args.nfe or 2
        if args.export:
            entry = info.get("schedules", {}).get(str(nfe))
            if entry is None:
                raise SampleError(f"{args.export} carries searched schedules for NFE "
                                  f"{sorted(int(n) for n in info.get('schedules', {}))}, not {nfe}: search one on its "
                                  "checkpoint (python -m jobs.sweep_schedule) and export it again")
        else:
            try:
                entry = best_schedule(args.checkpoint, nfe)
            except ValueError as e:
                raise SampleError(str(e)) from None
        return entry["t_steps"], entry["s_steps"], f"searched schedule NFE {entry['nfe']} γ={entry['gamma']:.4g}"
    nfe, gamma = args.nfe or 1, args.gamma or 0.0
    if nfe < 1 or not 0 <= gamma <= 1:
        raise SampleError(f"need --nfe >= 1 and 0 <= --gamma <= 1, got {nfe} and {gamma}")
    t_steps, s_steps = gamma_steps(nfe, gamma, grid)
    return t_steps, s_steps, f"NFE {nfe} γ={gamma:g}"


def class_labels(args, label_dim):
    """(num,) int64 classes for a class-conditional student (seeded random unless --labels), None otherwise."""
    if not label_dim:
        if args.labels:
            raise SampleError("this student is unconditional (label_dim 0): drop --labels")
        return None
    if args.labels:
        bad = sorted({c for c in args.labels if not 0 <= c < label_dim})
        if bad:
            raise SampleError(f"--labels {bad}: this student has classes 0..{label_dim - 1}")
        return torch.tensor(args.labels * (args.num // len(args.labels)), dtype=torch.int64)
    return torch.randint(label_dim, (args.num,), generator=torch.Generator().manual_seed(args.seed))


def generate(G, t_steps, s_steps, num, labels, seed, batch_size, device):
    """num images in [−1, 1], (num, C, H, W) on the CPU; latents and renoising noise from one seeded generator."""
    gen = torch.Generator(device).manual_seed(seed)
    shape = (G.img_channels, G.img_resolution, G.img_resolution)
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        latents = torch.randn((n, *shape), generator=gen, device=device)
        y = None if labels is None else labels[start:start + n].to(device)
        with torch.no_grad():
            out.append(jump_sample(G, latents * t_steps[0], t_steps, s_steps, y, gen).cpu())
    return torch.cat(out)


def to_uint8(images):
    """[−1, 1] (N, C, H, W) -> uint8 (N, H, W, C), 8-bit levels as the evaluation rounds them."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write(out, images, labels):
    kind = output_kind(out)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png":
        save_grid(images, out, scale=max(1, 32 // images.shape[-1]))
    elif kind == "npz":
        np.savez(out, images=to_uint8(images), labels=np.full(len(images), -1) if labels is None else labels.numpy())
    else:
        for i, pixels in enumerate(to_uint8(images)):
            folder = out if labels is None else out / str(int(labels[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(folder / f"{i:06d}.png")


def load(args):
    """(G, info) from --checkpoint or --export; info["grid"] is the run's grid."""
    if args.export:
        return load_export(args.export, args.device)
    return load_checkpoint_student(args.checkpoint, 0.999 if args.ema_rate is None else args.ema_rate, args.device)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_args(args)
        G, info = load(args)
        t_steps, s_steps, setting = schedule(args, info)
        labels = class_labels(args, G.label_dim)
        images = generate(G, t_steps, s_steps, args.num, labels, args.seed, args.batch_size, args.device)
        write(args.out, images, labels)
    except (SampleError, ExportError, FileNotFoundError, OSError) as e:
        return fail(e, 2)
    print(f"wrote {args.num} images ({setting}, step {info['step']}, EMA {info['ema_rate']:g}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
