"""End-to-end demonstration of `ctm/` on the embedded digits default, in one process without Ray.

Fits the Gaussian-mixture teacher to scikit-learn's digits, trains a tiny CTM student with the teacher's Heun
solve inside the step (the official online mode): CTM + DSM, then the GAN stage on real digits. It measures the
student against the teacher's exact flow map on held-out (x_t, t, s) before and after, and writes sample grids.
The Ray pipeline (trajectory cache, Ray Train, evaluation, sweeps) replaces this script as its stages land.

    python -m jobs.demo_digits [--steps 600] [--out runs/demo_digits]
"""

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from ctm.digits import fit_digits_teacher, load_digits_images
from ctm.discriminator import build_discriminator
from ctm.distances import build_distance
from ctm.losses import CTMLoss, DSMLoss
from ctm.networks import tiny_songunet_kwargs
from ctm.sampling import gamma_sample
from ctm.schedule import karras_grid, sample_dsm_sigma, sample_official
from ctm.solver import heun_trajectory
from ctm.student import build_ctm_student
from ctm.training import discriminator_objective, ema_update, generator_objective, heun_segment
from pipeline.images import save_grid


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo_digits", help="output directory")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps, G and D steps counted together")
    p.add_argument("--gan-start", type=int, default=400, help="step at which the GAN stage starts (G/D alternate)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-4, help="RAdam learning rate of G (official: 4e-4)")
    p.add_argument("--target-ema", type=float, default=0.99,
                   help="μ of the target θ⁻ (official 0.999 over 100K steps; shorter runs need a faster target)")
    p.add_argument("--N", type=int, default=18, help="grid points (official CIFAR-10: 18)")
    p.add_argument("--components", type=int, default=10, help="mixture components of the teacher")
    p.add_argument("--eval-samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def flow_map_error(G, teacher, x0, grid, K, generator):
    """Mean squared error of G(x_t, t, s) against the teacher's exact flow map on (x_t, t, s) drawn by the official law."""
    k, n, j = sample_official(len(x0), len(grid), K, generator)
    t, s = grid[n].float(), grid[j].float()
    x_t = x0 + t[:, None, None, None] * torch.randn(x0.shape, generator=generator)
    exact = teacher.flow_map(x_t, t, s, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        return ((G(x_t, t, s) - exact) ** 2).mean().item()


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    started = time.time()

    images, _ = load_digits_images()
    images = torch.from_numpy(images)
    train, held_out = images[:1500], images[1500:]
    teacher = fit_digits_teacher(n_components=args.components, seed=args.seed)
    teacher.save(out / "teacher.npz")
    grid, K = karras_grid(args.N), args.N - 1

    G = build_ctm_student(**tiny_songunet_kwargs(8, 1))
    G_target = copy.deepcopy(G).requires_grad_(False)
    G_ema = copy.deepcopy(G).requires_grad_(False)
    D = build_discriminator("pixels", img_channels=1, img_resolution=8)
    opt_G = torch.optim.RAdam(G.parameters(), lr=args.lr)
    opt_D = torch.optim.RAdam([p for p in D.parameters() if p.requires_grad], lr=2e-3, betas=(0.5, 0.9))
    ctm_loss, dsm_loss = CTMLoss(build_distance("l2")), DSMLoss()

    eval_x0 = held_out[torch.randint(len(held_out), (args.eval_samples,), generator=gen)]
    error_before = flow_map_error(G_ema, teacher, eval_x0, grid, K, torch.Generator().manual_seed(1))
    print(f"flow-map MSE before training: {error_before:.4f}", flush=True)

    for step in range(args.steps):
        x0 = train[torch.randint(len(train), (args.batch,), generator=gen)]
        x0 = torch.where(torch.rand(args.batch, 1, 1, 1, generator=gen) < 0.5, x0.flip(-1), x0)  # hflip 0.5
        k, n, j = sample_official(args.batch, args.N, K, gen)
        t, u, s = grid[n].float(), grid[n + k].float(), grid[j].float()
        x_t = x0 + t[:, None, None, None] * torch.randn(x0.shape, generator=gen)
        x_u = heun_segment(teacher.denoise, x_t, grid, n, torch.full_like(n, k))
        gan = step >= args.gan_start
        if gan and step % 2 == 1:  # odd steps update D only (g_learning_period = 2)
            with torch.no_grad():
                x_est = G_target(G(x_t, t, s), s, 0.002)
            loss_d = discriminator_objective(D, x0, x_est)
            opt_D.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_D.step()
            continue
        sigma = sample_dsm_sigma(args.batch, gen).float()
        loss, _, stats = generator_objective(G, G_target, ctm_loss, dsm_loss, x_t, t, x_u, u, s, x0, sigma,
                                             torch.randn(x0.shape, generator=gen), G.last_layer_weight(),
                                             D=D if gan else None)
        opt_G.zero_grad(set_to_none=True)
        loss.backward()
        opt_G.step()
        ema_update(G_target, G, args.target_ema)
        ema_update(G_ema, G, 0.999 if step > 2000 else 0.99)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  " + "  ".join(f"{key} {v:.4g}" for key, v in stats.items()), flush=True)

    error_after = flow_map_error(G_ema, teacher, eval_x0, grid, K, torch.Generator().manual_seed(1))
    latents = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    G_ema.eval()
    with torch.no_grad():
        for nfe in (1, 2):
            save_grid(gamma_sample(G_ema, latents, nfe, 0.0), out / f"samples_nfe{nfe}.png")
        save_grid(heun_trajectory(teacher.denoise, latents * 80, grid)[-1].clamp(-1, 1), out / "teacher_heun.png")
    metrics = {"flow_map_mse_before": error_before, "flow_map_mse_after": error_after, "steps": args.steps,
               "seconds": round(time.time() - started, 1), "args": vars(args)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"flow-map MSE after training: {error_after:.4f} (before {error_before:.4f})")
    print(f"wrote {out}/: metrics.json, samples_nfe1.png, samples_nfe2.png, teacher_heun.png, teacher.npz")


if __name__ == "__main__":
    main()
