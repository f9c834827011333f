"""Sweep overhead: a sweep's wall time against the sum of its trials' training and evaluation time, now that each
trial starts Ray Train once; beside it, the former design (a new TorchTrainer per milestone chunk) timed on one
trial's config in the same script.

    python -m benchmarks.sweep_overhead                          # 2 trials, 3 milestones of 4 steps: the fixed costs
    python -m benchmarks.sweep_overhead --milestones 4 --steps 200 --no-chunks   # trials as long as digits.yaml's

The trajectory cache, the student start and the evaluation actors are made before the clock starts (a sweep makes
them once, whatever its size). The trials run one at a time and ASHA keeps all of them (grace period = the last
milestone), so the sweep's wall time is the trials' work plus what the design adds: starting trials and Ray Train,
handing checkpoints over, Tune's bookkeeping. Training time is what the workers report as `train_seconds` (steps,
checkpoints and sample grids, not waiting for the controller); evaluation time is each milestone's scoring. The
chunked figure runs `--milestones` separate `run_training` calls up to each milestone under one run name (each
resumes the last), scoring after each, as the former trial did.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from jobs.common import restore_env, start_local_ray
from pipeline.config import EMBEDDED_DEFAULT, load_config
from pipeline.evaluation import EvaluatorPool, Setting
from pipeline.sweep import run_sweep
from pipeline.sweep.trial import milestones, score, trial_config
from pipeline.sweep.tuner import ensure_cache
from pipeline.teachers import build_teacher
from pipeline.train import run_training
from pipeline.train.state import student_kwargs
from pipeline.train.teacher_start import needs_regression, teacher_start

LRS = [4e-4, 2e-4, 1e-4, 8e-4, 3e-4, 6e-4]


def sweep_config(root, args):
    """The embedded default's sweep (digits.yaml: batch 64, its EMAs and evaluation) with milestones × steps per trial,
    one learning rate per trial, trials one at a time, every trial kept to the end."""
    steps = args.milestones * args.steps
    return load_config(EMBEDDED_DEFAULT, overrides=[
        f"train.steps={steps}", f"train.checkpoint_every={args.steps}", f"train.log_every={args.steps}",
        "train.max_failures=0", f"cache.root={args.cache_root or root / 'cache'}", f"eval.out={root / 'eval'}",
        f"sweep.storage_path={root}", "sweep.name=bench", f"sweep.report_every={args.steps}",
        "sweep.max_concurrent_trials=1", "sweep.num_samples=1", "sweep.max_failures=0",
        f"sweep.grace_period={args.milestones}", ("sweep.search_space", {"train.lr": {"grid_search": LRS[:args.trials]}})])


def trial_times(exp, trial_id):
    """(training seconds, evaluation seconds, milestones) of a finished trial, from its Tune results."""
    rows = [json.loads(r) for r in (exp / f"trial_{trial_id}" / "result.json").read_text().splitlines()]
    return rows[-1]["train_seconds"], sum(r["eval_seconds"] for r in rows), len(rows)


def chunked(cfg, pool, root):
    """The former trial: one run_training per milestone chunk; (wall, training, evaluation) seconds."""
    cfg = trial_config(cfg.to_dict(), {"train.lr": LRS[0]}, str(root / "chunked"), "chunked")
    wall, train, evaluation = time.perf_counter(), 0.0, 0.0
    for stop in milestones(cfg.train.steps, cfg.sweep.report_every):
        chunk = load_config(base=cfg.to_dict(), overrides=[("train.steps", stop),
                                                           ("train.lr_decay_steps", cfg.train.steps)])
        result = run_training(chunk, log=lambda *a: None)
        train += result.metrics["train_seconds"]
        started = time.perf_counter()
        score(pool, result.checkpoint, [Setting(cfg.sweep.nfe, cfg.sweep.gamma)], cfg.eval.ema_rate)
        evaluation += time.perf_counter() - started
    return time.perf_counter() - wall, train, evaluation


def line(name, wall, work):
    return f"{name:<34}{wall:>9.1f} s wall  {work:>8.1f} s train+eval  ratio {wall / work:6.2f}  " \
           f"overhead {100 * (wall - work) / work:6.0f}%"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--milestones", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="steps between milestones")
    p.add_argument("--no-chunks", action="store_true", help="leave out the former per-chunk design")
    p.add_argument("--cache-root", help="reuse the trajectory caches under this folder (default: a new one)")
    args = p.parse_args(argv)
    saved = start_local_ray(8, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        root = Path(tmp)
        cfg = sweep_config(root, args)
        ensure_cache(cfg, log=lambda *a: None)
        teacher = build_teacher(cfg)
        if needs_regression(cfg, teacher):
            teacher_start(cfg, teacher, student_kwargs(cfg, teacher), lambda *a: None)
        pool = EvaluatorPool(cfg)
        try:
            started = time.perf_counter()
            outcome = run_sweep(cfg, pool=pool, log=lambda *a: None)
            wall = time.perf_counter() - started
            times = [trial_times(root / "bench", t["trial_id"]) for t in outcome["trials"]]
            train, evaluation = sum(t[0] for t in times), sum(t[1] for t in times)
            print(f"{args.trials} trials x {args.milestones} milestones x {args.steps} steps of the embedded default "
                  f"(batch {cfg.train.batch_size}, FID of {cfg.eval.num_samples} samples per milestone), one trial at a "
                  "time")
            for t, (tr, ev, n) in zip(outcome["trials"], times):
                print(f"  trial {t['trial_id']}: {n} reports, train {tr:.1f} s, eval {ev:.1f} s, status {t['status']}")
            print(line("one Train run per trial (sweep)", wall, train + evaluation))
            print(f"  per trial: {(wall - train - evaluation) / args.trials:.1f} s of overhead")
            if not args.no_chunks:
                c_wall, c_train, c_eval = chunked(cfg, pool, root)
                print(line("a Train run per chunk (one trial)", c_wall, c_train + c_eval))
                print(f"  per chunk: {(c_wall - c_train - c_eval) / args.milestones:.1f} s of overhead")
        finally:
            pool.shutdown()
    import ray
    ray.shutdown()
    restore_env(saved)


if __name__ == "__main__":
    main()
