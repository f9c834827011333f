"""Does the GAN stage lower FID at NFE 1? A paired ablation at equal steps on the embedded digits default.

    python -m benchmarks.gan_ablation --seeds 0 1 2 3 --warmups 0 100 --set train.diffaug=translation train.lr_d=1e-2
    python -m benchmarks.gan_ablation --seeds 0 --steps 800 --gan-start 400               # digits.yaml's D as it is

Per training seed, one run of the shipped `CTMStep` in this process (online teacher, the teacher start, the cosine
learning rate over --steps) trains CTM + DSM up to --gan-start. There the whole state is copied, and the branches run
on to --steps on the same batches: the control with CTM + DSM alone, and one GAN branch per --warmups W with a fresh
discriminator from --gan-start (odd steps update D, even steps G, as the official loop; so it takes half as many G
steps), G's loss taking the GAN term from step --gan-start + W (train.gan_warmup; the official W is 0). W = --steps −
--gan-start is the stage's schedule without the GAN term: G on even steps only, D trained but never used. That is the
official two-stage recipe at equal steps: a CTM + DSM stage, then a GAN stage with a fresh D (digits.yaml's `pixels`
D unless --set changes it). A seed other than 0 regresses its own teacher start first (about 4 minutes); a seed then
takes about 6 minutes for its CTM + DSM stage and 2 for each branch.

Each branch's EMAs and online weights are scored with the evaluation's own digits features (the shipped MLP, not the
discriminator's) at NFE 1 and 2 (γ = 0) on the same --draws draws of latents, against the real digits. Printed: the
mean FID of each, and the paired difference GAN − control with its standard error over the draws (it measures the
evaluation's noise; only the seeds show the training's), then the mean difference over the seeds. Writes --out (JSON).
"""

import argparse
import copy
import json
import time

import numpy as np
import torch

from ctm.sampling import gamma_sample
from pipeline.config import EMBEDDED_DEFAULT, load_config
from pipeline.datasets import open_dataset
from pipeline.evaluation.features import digits_features
from pipeline.evaluation.fid import build_reference, cleanfid_features, fid, image_batches
from pipeline.teachers import build_teacher
from pipeline.train.data import OnlineBatches
from pipeline.train.state import build_state, student_kwargs, unwrap
from pipeline.train.step import CTMStep
from pipeline.train.teacher_start import load_teacher_start, teacher_start

NFES = (1, 2)


def scorer(cfg, draws):
    """weights G -> {"nfe1": [FID per draw], ...}: the evaluation's own features and reference statistics, on
    eval.num_samples latents per draw."""
    features, n, batch = digits_features(), cfg.eval.num_samples, cfg.eval.batch_size
    reference = build_reference(cfg, features)
    shape = open_dataset(cfg.data)[np.arange(1)].shape[1:]
    grid = cfg.grid.grid()

    def score(G):
        out = {f"nfe{nfe}": [] for nfe in NFES}
        for draw in range(draws):
            latents = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1000 + draw))
            with torch.no_grad():
                for nfe in NFES:
                    x = gamma_sample(G, latents, nfe, 0.0, grid=grid).clamp(-1, 1)
                    out[f"nfe{nfe}"].append(fid(cleanfid_features(image_batches(x, batch), n, features, batch),
                                                reference))
        return out
    return score


def train(step, state, batches, until, name, log_every=200):
    start = time.perf_counter()
    while state.step < until:
        stats = step(state, batches(state.step))
        state.step += 1
        if state.step % log_every == 0:
            print(f"  {name} step {state.step} ({time.perf_counter() - start:.0f} s) "
                  + " ".join(f"{k} {v:.4g}" for k, v in stats.items()), flush=True)


def weights_of(state):
    """{name: network} of what is scored: each EMA and the online weights."""
    return {**{f"ema {rate}": ema for rate, ema in state.emas.items()}, "online": unwrap(state.G)}


def ablation_config(seed, steps, gan_start, overrides=()):
    return load_config(EMBEDDED_DEFAULT, ["train.teacher_mode=online", f"train.steps={steps}",
                                          f"train.gan_start={gan_start}", f"train.seed={seed}", *overrides])


def branch_name(warmup):
    return "GAN" if warmup == 0 else f"GAN, warm-up {warmup}"


def run_branches(cfg, warmups=(0,), log_every=200):
    """{"control": state, "GAN": state, "GAN, warm-up W": state, ...} at cfg.train.steps, parted at cfg.train.gan_start
    from one CTM + DSM run: one GAN branch per train.gan_warmup in `warmups`."""
    teacher, grid, t = build_teacher(cfg), cfg.grid.grid(), cfg.train
    kwargs = student_kwargs(cfg, teacher)
    state = build_state(cfg, kwargs, teacher, "cpu", load_teacher_start(teacher_start(cfg, teacher, kwargs, print)))
    src = open_dataset(cfg.data)
    batches = OnlineBatches(src, src.labels, cfg, grid)
    step = CTMStep(cfg, grid, teacher, torch.device("cpu"))
    train(step, state, batches, t.gan_start, f"seed {t.seed}, CTM + DSM", log_every)
    branches = {}
    for name, gan_start, warmup in (("control", None, 0), *((branch_name(w), t.gan_start, w) for w in warmups)):
        branches[name] = copy.deepcopy(state)  # D is fresh in all: no D step runs before gan_start
        step.gan_start, step.gan_warmup = gan_start, warmup
        train(step, branches[name], batches, t.steps, f"seed {t.seed}, {name}", log_every)
    return branches


def run_seed(seed, args, score):
    branches = run_branches(ablation_config(seed, args.steps, args.gan_start, args.set), args.warmups)
    return {name: {weights: score(G.eval()) for weights, G in weights_of(state).items()}
            for name, state in branches.items()}


def report(results):
    """Per seed: control -> each GAN branch and the paired difference ± its standard error over draws; then the mean
    difference over seeds ± its standard error."""
    over_seeds = {}
    for seed, branches in results.items():
        print(f"seed {seed}")
        control = branches["control"]
        for name, gan_branch in branches.items():
            if name == "control":
                continue
            for weights, gan in gan_branch.items():
                cells = []
                for key in gan:
                    d = np.subtract(gan[key], control[weights][key])
                    over_seeds.setdefault((name, weights, key), []).append(d.mean())
                    cells.append(f"{key} {np.mean(control[weights][key]):.3f} -> {np.mean(gan[key]):.3f} "
                                 f"({d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f})")
                print(f"  {name:16}  {weights:10}  " + "   ".join(cells))
    if len(results) > 1:
        print(f"GAN − control over {len(results)} seeds: mean ± standard error over seeds (lowest, highest)")
        for (name, weights, key), ds in over_seeds.items():
            print(f"  {name:16}  {weights:10}  {key} {np.mean(ds):+.3f} ± {np.std(ds, ddof=1) / np.sqrt(len(ds)):.3f} "
                  f"({min(ds):+.3f}, {max(ds):+.3f})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (train.seed)")
    p.add_argument("--steps", type=int, default=1600, help="train.steps of both branches")
    p.add_argument("--gan-start", type=int, default=1200, help="where the branches part (train.gan_start)")
    p.add_argument("--warmups", type=int, nargs="+", default=[0],
                   help="one GAN branch per D warm-up (train.gan_warmup: steps before G's loss takes the GAN term)")
    p.add_argument("--draws", type=int, default=5, help="draws of eval.num_samples latents per score (at least 2)")
    p.add_argument("--set", nargs="*", default=[], help="more config overrides for both branches, KEY=VALUE")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the FIDs per draw here (JSON)")
    args = p.parse_args(argv)
    if not 0 < args.gan_start < args.steps:
        p.error(f"--gan-start must lie inside the run (0 < {args.gan_start} < --steps {args.steps})")
    if any(not 0 <= w <= args.steps - args.gan_start for w in args.warmups):
        p.error(f"--warmups must lie inside the GAN stage (0 <= W <= --steps − --gan-start = "
                f"{args.steps - args.gan_start}), got {args.warmups}")
    if args.draws < 2:
        p.error(f"--draws must be at least 2 (the paired difference's standard error), got {args.draws}")
    torch.set_num_threads(args.threads)
    score = scorer(load_config(EMBEDDED_DEFAULT), args.draws)
    print(f"GAN from step {args.gan_start} of {args.steps} against CTM + DSM alone; FID on "
          f"{args.draws} draws, control -> GAN (paired difference ± its standard error over draws)")
    results = {seed: run_seed(seed, args, score) for seed in args.seeds}
    report(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
