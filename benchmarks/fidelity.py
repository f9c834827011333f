"""Does the pipeline distil? The one-step student against its teacher on the embedded digits default.

    python -m benchmarks.fidelity                                   # every variant (about 50 minutes on 2 cores)
    python -m benchmarks.fidelity --variants default gan --every 200 --out runs/bench/fidelity
    python -m benchmarks.fidelity --variants ctm_600 ctm_600+ctm_200 ctm_600+gan_200 --weights eval
    python -m benchmarks.fidelity --stage1 DIR --add gan_tc train.init_checkpoint={stage1} train.steps=200 \\
        train.gan_start=0 train.diffaug=translation,cutout          # a variant of your own

Each variant is the embedded default (jobs/configs/digits.yaml) with a few keys changed, run through the real stages
on a private local Ray cluster: the trajectory cache (one per cache size, reused by every variant of that size,
under --cache-root), then `run_training` with a
checkpoint every --every steps. Every checkpoint is scored with the evaluation's own FID (the shipped digits
features, eval.num_samples samples against the real digits) at NFE 1, 2 and 4 (γ = 0), for the online weights and
each EMA of train.ema_rates, beside its flow-map error against the mixture teacher's exact PF-ODE map: the mean
squared error over (x_t, t, s) drawn by the official law, and over the one-step jump σ_max → σ_min from pure noise.
The teacher's own Heun FID (2(N−1) NFE, same latents) and the real-against-real FD at the same count are the floor.

Writes <out>/fidelity.json and <out>/fidelity.png (FID at NFE 1 against steps, per variant, with the teacher).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from jobs.common import ray_cluster
from pipeline.config import EMBEDDED_DEFAULT, load_config
from pipeline.evaluation import Setting
from pipeline.evaluation.actors import Evaluator
from pipeline.evaluation.models import load_checkpoint_model
from pipeline.datasets import load_dataset
from pipeline.teachers import build_teacher
from pipeline.checkpoint import checkpoint_dir_name

VARIANTS = {
    "default": [],
    "gan": ["train.gan_start=400"],
    "online": ["train.teacher_mode=online"],
    "cache_1k": ["cache.num_records=1024"],
    "cache_16k": ["cache.num_records=16384"],
    "cache_64k": ["cache.num_records=65536", "cache.records_per_shard=2048"],
    "gan_0": ["train.gan_start=0"],
    # the official staging at equal steps: CTM for 600 steps, then a second run from its last checkpoint (--stage1)
    # with a fresh D and a fresh cosine; the control continues the same way without the GAN
    "ctm_600": ["train.steps=600"],
    "ctm_600+gan_200": ["train.init_checkpoint={stage1}", "train.steps=200", "train.gan_start=0"],
    "ctm_600+ctm_200": ["train.init_checkpoint={stage1}", "train.steps=200"],
}
NFES = (1, 2, 4)
FLOW_SAMPLES = 512


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=[], help=f"of {list(VARIANTS)} (default: all unless --add)")
    p.add_argument("--add", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                   help="one more variant: a name and its overrides, e.g. --add gan_noaug train.gan_start=0 "
                   "train.diffaug=\'\' (repeatable; runs after --variants)")
    p.add_argument("--every", type=int, default=200, help="steps between scored checkpoints")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    p.add_argument("--out", default="runs/bench/fidelity")
    p.add_argument("--local-cpus", type=int, default=8)
    p.add_argument("--stage1", help="checkpoint the second-stage variants start from (default: the ctm_600 variant's "
                   f"last, <out>/train/ctm_600/{checkpoint_dir_name(600)})")
    p.add_argument("--cache-root", help="where the caches are made or reused, one per size (default: <out>/caches)")
    p.add_argument("--weights", choices=["all", "eval"], default="all",
                   help="score the online weights and every EMA, or only eval.ema_rate's (faster)")
    args = p.parse_args(argv)
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}: pick from {list(VARIANTS)}, or define one with --add NAME KEY=VALUE")
    args.overrides = {name: VARIANTS[name] for name in args.variants or ([] if args.add else VARIANTS)}
    args.overrides.update({name: overrides for name, *overrides in args.add})
    return args


class FlowMapError:
    """Mean squared error of G against the teacher's exact flow map, on fixed draws solved once."""

    def __init__(self, cfg, teacher, images, seed=0):
        g = torch.Generator().manual_seed(seed)
        grid = cfg.grid.grid()
        k, n, j = grid.sample_official(FLOW_SAMPLES, g)
        x0 = images[torch.randint(len(images), (FLOW_SAMPLES,), generator=g)]
        self.t, self.s = grid.t[n].float(), grid.t[j].float()
        self.x_t = x0 + self.t[:, None, None, None] * torch.randn(x0.shape, generator=g)
        self.exact = teacher.flow_map(self.x_t, self.t, self.s, rtol=1e-7, atol=1e-7)
        self.x_T = cfg.grid.sigma_max * torch.randn(x0.shape, generator=g)
        self.sigma_max, self.sigma_min = cfg.grid.sigma_max, cfg.grid.sigma_min
        self.exact_T = teacher.flow_map(self.x_T, self.sigma_max, self.sigma_min, rtol=1e-7, atol=1e-7)

    @torch.no_grad()
    def __call__(self, G):
        law = ((G(self.x_t, self.t, self.s) - self.exact) ** 2).mean().item()
        one_step = ((G(self.x_T, self.sigma_max, self.sigma_min) - self.exact_T) ** 2).mean().item()
        return {"flow_map_mse": round(law, 6), "one_step_mse": round(one_step, 6)}


def checkpoints(run_dir):
    return sorted(p for p in Path(run_dir).glob("checkpoint_*") if (p / "checkpoint.pt").is_file())


def score_run(cfg, evaluator, flow, run_dir, log, rates):
    """Every checkpoint of the run at NFE 1, 2, 4 for each of `rates` (0: the online weights; else an EMA)."""
    settings = [Setting(nfe, 0.0) for nfe in NFES]
    rows, scored = [], evaluator.cfg.eval.ema_rate
    for path in checkpoints(run_dir):
        for rate in rates:
            evaluator.cfg.eval.ema_rate = rate
            results = evaluator.score(str(path), settings)
            row = {"step": results[0]["model"]["step"], "weights": "online" if rate == 0 else f"EMA {rate}",
                   **{f"fid_nfe{r['setting']['nfe']}": round(r["fid"], 4) for r in results},
                   **flow(load_checkpoint_model(path, rate).G)}
            rows.append(row)
            log(f"  step {row['step']:5d}  {row['weights']:>10}  " + "  ".join(
                f"NFE {n} {row[f'fid_nfe{n}']:.3f}" for n in NFES) +
                f"  flow-map MSE {row['flow_map_mse']:.4f}  one-step MSE {row['one_step_mse']:.4f}")
    evaluator.cfg.eval.ema_rate = scored
    return rows


def run_variant(name, base_overrides, args, evaluator, flow, log):
    from pipeline.cache import generate_cache
    from pipeline.train import run_training
    out = Path(args.out).resolve()
    stage1 = args.stage1 or out / "train" / "ctm_600" / checkpoint_dir_name(600)
    overrides = [*base_overrides, *(o.replace("{stage1}", str(stage1)) for o in args.overrides[name]),
                 f"train.storage_path={out / 'train'}", f"train.run_name={name}",
                 f"train.checkpoint_every={args.every}", "train.num_to_keep=100"]
    records = load_config(EMBEDDED_DEFAULT, overrides).cache.num_records  # variants of equal size share a cache
    cfg = load_config(EMBEDDED_DEFAULT, [*overrides, f"cache.root={Path(args.cache_root or out / 'caches') / str(records)}"])
    started = time.perf_counter()
    if cfg.train.teacher_mode == "cached":
        generate_cache(cfg, log=lambda *a: None)
    generated = time.perf_counter()
    run_training(cfg, log=lambda *a: None)
    trained = time.perf_counter()
    log(f"{name}: cache {generated - started:.0f} s, training {trained - generated:.0f} s "
        f"({cfg.train.steps} steps, {cfg.cache.num_records} records, mode {cfg.train.teacher_mode})")
    return {"overrides": args.overrides[name], "cache_seconds": round(generated - started, 1),
            "train_seconds": round(trained - generated, 1), "num_records": cfg.cache.num_records,
            "rows": score_run(cfg, evaluator, flow, out / "train" / name, log,
                              (0.0, *cfg.train.ema_rates) if args.weights == "all" else (cfg.eval.ema_rate,))}


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    weights = f"EMA {report['eval_ema_rate']}"
    for name, variant in report["variants"].items():
        rows = [r for r in variant["rows"] if r["weights"] == weights]
        ax.plot([r["step"] for r in rows], [r["fid_nfe1"] for r in rows], marker="o", label=f"{name}, NFE 1")
    ax.axhline(report["teacher_fid"], color="k", ls="--", label=f"teacher Heun ({report['teacher_nfe']} NFE)")
    ax.axhline(report["real_vs_real"], color="grey", ls=":", label="real against real")
    ax.set(xlabel="training step (G and D steps)", ylabel="FID (digits features)", yscale="log",
           title=f"one-step student against its teacher ({weights})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    cfg = load_config(EMBEDDED_DEFAULT, [*args.set, f"eval.out={out / 'eval'}"])
    log = lambda line: print(line, flush=True)  # noqa: E731
    evaluator = Evaluator(cfg)
    teacher = evaluator.score_teacher()
    rvr = evaluator.reference().real_vs_real
    log(f"teacher Heun FID {teacher['fid']:.3f} ({teacher['setting']['nfe']} NFE); real against real "
        f"{rvr['fd']:.3f} ({rvr['n']} vs {rvr['against']})")
    images = torch.as_tensor(load_dataset(cfg.data)[0])
    flow = FlowMapError(cfg, build_teacher(cfg), images)
    report = {"teacher_fid": teacher["fid"], "teacher_nfe": teacher["setting"]["nfe"], "real_vs_real": rvr["fd"],
              "num_samples": cfg.eval.num_samples, "features": teacher["features"]["name"],
              "eval_ema_rate": cfg.eval.ema_rate, "config": str(EMBEDDED_DEFAULT.name), "overrides": args.set,
              "variants": {}}
    with ray_cluster(args.local_cpus) as start:
        start()  # the variants' training needs Ray even when their caches exist
        for name in args.overrides:
            report["variants"][name] = run_variant(name, args.set, args, evaluator, flow, log)
            (out / "fidelity.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "fidelity.png")
    log(f"\nFID at NFE 1 / 2 (γ = 0), {report['eval_ema_rate']} EMA, last step; teacher {report['teacher_fid']:.3f}, "
        f"real against real {report['real_vs_real']:.3f}")
    for name, variant in report["variants"].items():
        last = [r for r in variant["rows"] if r["weights"] == f"EMA {report['eval_ema_rate']}"][-1]
        log(f"  {name:>10}: {last['fid_nfe1']:.3f} / {last['fid_nfe2']:.3f}  "
            f"({last['fid_nfe1'] / report['teacher_fid']:.2f}x / {last['fid_nfe2'] / report['teacher_fid']:.2f}x the "
            f"teacher)  train {variant['train_seconds']:.0f} s")
    log(f"wrote {out / 'fidelity.json'} and {out / 'fidelity.png'}")


if __name__ == "__main__":
    main()
