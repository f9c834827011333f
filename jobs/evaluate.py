"""Score checkpoints with FID (clean-fid) at every NFE × γ (and 2-step) setting on Ray evaluation actors.

    python -m jobs.evaluate --config FILE --checkpoint DIR [--checkpoint DIR ...] [--teacher] [--set eval.nfe=[1,2]]
    python -m jobs.evaluate --config FILE --checkpoint DIR [--checkpoint DIR ...] --sweep

The first writes <eval.out>/report.md, results.json, fid_vs_nfe.png and sample grids; --teacher adds the teacher's
own FID at its full Heun trajectory. --sweep runs the sampling-schedule sweep (eval.sweep_nfe × eval.sweep_gammas and
eval.sweep_two_step) on finished checkpoints into <eval.out>/sweep/: sampling settings never start training.
"""

import sys
from pathlib import Path

from jobs.common import fail, ray_cluster, stage_parser
from pipeline.checkpoint import checkpoint_file
from pipeline.config import ConfigError, load_config
from pipeline.datasets import check_dataset
from pipeline.evaluation import (EvaluatorPool, gamma_settings, run_gamma_sweep, sweep_settings, two_step_settings,
                                 write_report, write_sweep_report)
from pipeline.evaluation.features import check_features


def parse_args(argv=None):
    p = stage_parser(__doc__, "eval.nfe=[1,2]")
    p.add_argument("--checkpoint", action="append", default=[], help="checkpoint directory or checkpoint.pt; repeat")
    p.add_argument("--sweep", action="store_true", help="sweep sampling schedules (eval.sweep_*) instead")
    p.add_argument("--teacher", action="store_true", help="also score the teacher's own Heun samples")
    return p.parse_args(argv)


def evaluate(cfg, checkpoints, sweep=False):
    """Run the evaluation (or sweep) on a pool of actors; returns the report's path."""
    out = Path(cfg.eval.out) / ("sweep" if sweep else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.dump())
    pool = EvaluatorPool(cfg)
    try:
        if sweep:
            return write_sweep_report(run_gamma_sweep(pool, checkpoints, sweep_settings(cfg.eval)), out, cfg.to_dict())
        settings = gamma_settings(cfg.eval.nfe, cfg.eval.gammas) + two_step_settings(cfg.eval.two_step)
        evaluation = pool.evaluate(checkpoints, settings, teacher=cfg.eval.teacher_fid, likelihood=cfg.eval.likelihood)
        return write_report(evaluation, out, cfg.to_dict())
    finally:
        pool.shutdown()


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.set + (["eval.teacher_fid=true"] if args.teacher else []))
        if not args.checkpoint and (args.sweep or not cfg.eval.teacher_fid):
            raise ConfigError("nothing to evaluate: pass --checkpoint DIR (or --teacher for the teacher alone)")
        checkpoints = [str(checkpoint_file(c).parent) for c in args.checkpoint]
        check_features(cfg)
        check_dataset(cfg.data)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return fail(e, 2)
    print(cfg.dump(), flush=True)
    with ray_cluster(args.local_cpus) as ray:
        try:
            report = evaluate(cfg, checkpoints, args.sweep)
        except (ray.exceptions.RayError, FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError) as e:
            return fail(e, 1)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
