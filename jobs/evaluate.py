"""Score checkpoints with FID (clean-fid) at every NFE × γ (and 2-step) setting on Ray evaluation actors.

    python -m jobs.evaluate --config FILE --checkpoint DIR [--checkpoint DIR ...] [--teacher] [--set eval.nfe=[1,2]]
    python -m jobs.evaluate --config FILE --checkpoint DIR [--checkpoint DIR ...] --schedule-sweep
    python -m jobs.evaluate --config FILE --checkpoint DIR [--checkpoint DIR ...] --schedule best   # or best:2

The first writes <eval.out>/report.md, results.json, fid_vs_nfe.png and sample grids; --teacher adds the teacher's
own FID at its full Heun trajectory. --schedule-sweep scores the fixed grid eval.schedule_nfe × eval.schedule_gammas
(and eval.schedule_two_step) into <eval.out>/schedule_sweep/. --schedule best scores each checkpoint at the best
schedule per NFE that a schedule search (jobs.sweep_schedule, Ray Tune) wrote to its schedules.json (best:2: NFE 2
only). Neither starts training.

Every result is kept in <eval.out>/scored.npz under a key of what it was measured with (the checkpoint's digest, the
setting, the sample count and seed, the features and the reference's sources); a rerun takes the results whose key
is there and scores only the rest (Ray starts only when something is left to score). --force scores everything
again.
"""

import sys
from pathlib import Path

import ray

from jobs.common import fail, input_errors, ray_cluster, stage_parser
from pipeline.checkpoint import checkpoint_file
from pipeline.config import ConfigError, load_config
from pipeline.evaluation import (gamma_settings, schedule_sweep_settings, score_with_reuse, two_step_settings,
                                 write_report, write_schedule_sweep_report)
from pipeline.evaluation.schedules import best_settings, parse_schedule_option
from pipeline.preflight import preflight


def parse_args(argv=None):
    p = stage_parser(__doc__, "eval.nfe=[1,2]")
    p.add_argument("--checkpoint", action="append", default=[], help="checkpoint directory or checkpoint.pt; repeat")
    p.add_argument("--teacher", action="store_true", help="also score the teacher's own Heun samples")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--schedule-sweep", action="store_true",
                       help="score the fixed grid eval.schedule_nfe × eval.schedule_gammas (+ eval.schedule_two_step) "
                            "instead of eval.nfe × eval.gammas")
    which.add_argument("--schedule", metavar="best[:N]",
                       help="score the best schedules a schedule search (jobs.sweep_schedule) wrote to the "
                            "checkpoint's schedules.json: 'best' every NFE there, 'best:2' NFE 2 only")
    p.add_argument("--force", action="store_true",
                   help="score every result again instead of reusing those in <eval.out>/scored.npz")
    return p.parse_args(argv)


def evaluate(cfg, checkpoints, schedule_sweep=False, schedules=None, force=False, start_ray=None):
    """Run the evaluation (or the schedule sweep), reusing stored results; returns the report's path. schedules:
    {checkpoint: its Settings} to score instead of eval.nfe × eval.gammas. start_ray: called before the first result
    is scored (a job's lazy cluster)."""
    out = Path(cfg.eval.out) / ("schedule_sweep" if schedule_sweep else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.dump())
    e = cfg.eval
    fixed = schedule_sweep_settings(e) if schedule_sweep else \
        gamma_settings(e.nfe, e.gammas) + two_step_settings(e.two_step)
    settings = schedules or {c: fixed for c in checkpoints}
    if schedule_sweep:
        evaluation = score_with_reuse(cfg, checkpoints, settings, force=force, start_ray=start_ray)
        return write_schedule_sweep_report(evaluation["results"], out, cfg.to_dict())
    evaluation = score_with_reuse(cfg, checkpoints, settings, teacher=e.teacher_fid, likelihood=e.likelihood,
                                  force=force, start_ray=start_ray)
    return write_report(evaluation, out, cfg.to_dict())


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.set + (["eval.teacher_fid=true"] if args.teacher else []))
        if not args.checkpoint and (args.schedule_sweep or not cfg.eval.teacher_fid):
            raise ConfigError("nothing to evaluate: pass --checkpoint DIR (or --teacher for the teacher alone)")
        preflight(cfg, {"evaluate"}, args.checkpoint)  # each checkpoint read, every file there: before Ray starts
        checkpoints = [str(checkpoint_file(c).parent) for c in args.checkpoint]
        nfes = parse_schedule_option(args.schedule) if args.schedule else None
        schedules = {c: best_settings(c, nfes) for c in checkpoints} if args.schedule else None
    except input_errors() as e:
        return fail(e, 2)
    print(cfg.dump(), flush=True)
    with ray_cluster(args.local_cpus) as start:
        try:
            report = evaluate(cfg, checkpoints, args.schedule_sweep, schedules, args.force, start)
        except (ray.exceptions.RayError, FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError) as e:
            return fail(e, 1)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
