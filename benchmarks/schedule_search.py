"""Is a model-based schedule search worth it? TPE against a grid and random search of the same trial budget, and
against γ = 0 on the default ρ-ramp, on a trained checkpoint of the embedded digits default.

    python -m benchmarks.schedule_search --checkpoint runs/train/digits/checkpoint_0000800    # about 10 minutes

Each searcher runs `run_schedule_search` (a Ray Tune experiment, <out>/<searcher>_seed<s>/) at --nfe with --trials
trials, TPE and random search once per seed of --seeds (the grid once), on one shared pool of evaluation actors, so every FID is the evaluation's own (eval.num_samples samples from the
eval.seed latents against the real digits, the shipped digits features). A search picks its best on those latents,
so the best setting of each searcher and the default are scored again from other latents (eval.seed + 1): the
held-out column is the fair comparison. The best schedule goes to schedules.json beside the checkpoint, as after any
search. Writes <out>/schedule_search.json and prints the table.
"""

import argparse
import json
import time
from pathlib import Path

from jobs.common import ray_cluster
from pipeline.config import EMBEDDED_DEFAULT, load_config
from pipeline.evaluation import EvaluatorPool, Setting
from pipeline.schedule_search import run_schedule_search

SEARCHERS = ("optuna", "grid", "random")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a trained digits checkpoint (jobs.train on digits.yaml)")
    p.add_argument("--config", default=str(EMBEDDED_DEFAULT))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--nfe", type=int, default=2)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--searchers", nargs="+", default=list(SEARCHERS), choices=SEARCHERS)
    p.add_argument("--seeds", type=int, default=3, help="searcher seeds of TPE and random search")
    p.add_argument("--out", default="runs/bench/schedule_search")
    p.add_argument("--local-cpus", type=int, default=8)
    return p.parse_args(argv)


def setting_of(result):
    s = result["setting"]
    return Setting(s["nfe"], s["gamma"], sigmas=s.get("sigmas"))


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    cfg = load_config(args.config, ["eval.num_actors=2", f"eval.out={out / 'eval'}", *args.set])
    held_out_cfg = load_config(base=cfg.to_dict(), overrides=[("eval.seed", cfg.eval.seed + 1)])
    rows = {}
    with ray_cluster(args.local_cpus) as start:
        ray = start()
        pool = EvaluatorPool(cfg)
        try:
            default, = ray.get(pool.submit(args.checkpoint, [Setting(args.nfe, 0.0)]))
            rows["default (γ = 0, ρ-ramp)"] = {"trials": 1, "best": default, "seconds": default["seconds"]}
            for searcher in args.searchers:
                for seed in range(1 if searcher == "grid" else args.seeds):
                    start = time.perf_counter()
                    outcome = run_schedule_search(cfg, args.checkpoint, args.nfe, searcher, args.trials, seed,
                                                  storage_path=out, name=f"{searcher}_seed{seed}", pool=pool,
                                                  log=lambda *a: None)
                    fids = [t["fid"] for t in outcome["trials"]]
                    rows[searcher if searcher == "grid" else f"{searcher} seed {seed}"] = {
                        "trials": len(fids), "best": outcome["best"], "seconds": time.perf_counter() - start,
                        "best_at_trial": fids.index(min(fids)) + 1}
        finally:
            pool.shutdown()
        held_out = EvaluatorPool(held_out_cfg, num_actors=1)
        try:
            scored = ray.get(held_out.submit(args.checkpoint, [setting_of(r["best"]) for r in rows.values()]))
        finally:
            held_out.shutdown()
    for row, again in zip(rows.values(), scored):
        row["held_out_fid"] = again["fid"]
    real = default["real_vs_real"]["fd"]
    print(f"NFE {args.nfe}, {cfg.eval.num_samples} samples, {default['features']['name']} features, "
          f"{default['model']['checkpoint']} (EMA {default['model']['ema_rate']}); real against real FD {real:.4g}")
    print(f"{'method':<26}{'trials':>7}{'best FID':>10}{'held-out':>10}{'found at':>10}{'seconds':>9}  setting")
    for name, r in rows.items():
        print(f"{name:<26}{r['trials']:>7}{r['best']['fid']:>10.4g}{r['held_out_fid']:>10.4g}"
              f"{r.get('best_at_trial', 1):>10}{r['seconds']:>9.1f}  {r['best']['setting']['label']}")
    out.mkdir(parents=True, exist_ok=True)
    document = {"nfe": args.nfe, "trials": args.trials, "num_samples": cfg.eval.num_samples,
                "real_vs_real": real, "checkpoint": default["model"],
                "rows": {name: {"trials": r["trials"], "fid": r["best"]["fid"], "held_out_fid": r["held_out_fid"],
                                "best_at_trial": r.get("best_at_trial", 1), "seconds": round(r["seconds"], 1),
                                "setting": r["best"]["setting"]} for name, r in rows.items()}}
    (out / "schedule_search.json").write_text(json.dumps(document, indent=2, default=str))
    print(f"wrote {out / 'schedule_search.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
