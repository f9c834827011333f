"""Sweep the training config (loss weights, GAN start, learning rate ...) with Ray Tune, ASHA on the FID that the
evaluation actors report every sweep.report_every steps.

    python -m jobs.sweep --config FILE --set 'sweep.search_space={train.lr: {choice: [1e-4, 4e-4]}}' --local-cpus 8
    ray job submit --working-dir . -- python -m jobs.sweep --config FILE [--set k=v ...] [--restore]

Each trial trains its own Ray Train run (<sweep.storage_path>/<sweep.name>/train/<trial id>), all of them reading one
trajectory cache (generated first if missing). Running the same command again continues an interrupted sweep
(Tuner.restore: finished trials are kept, unfinished ones resume from their last report); --restore insists on
that. Exit status: 0 every trial ended and the best is saved (best.json, best_config.yaml), 1 the sweep was
interrupted or no trial succeeded, 2 bad input (nothing ran).
"""

import sys

from jobs.common import fail, input_errors, ray_cluster, stage_parser
from pipeline.config import load_config
from pipeline.preflight import preflight
from pipeline.sweep import check_sweep, run_sweep


def main(argv=None):
    p = stage_parser(__doc__, "sweep.num_samples=8")
    p.add_argument("--restore", action="store_true", help="continue the sweep in <sweep.storage_path>/<sweep.name>")
    args = p.parse_args(argv)
    try:  # the search space and every input the trials read, before Ray starts
        cfg = load_config(args.config, args.set)
        check_sweep(cfg)
        preflight(cfg)
    except input_errors() as e:
        return fail(e, 2)
    print(cfg.dump(), flush=True)
    with ray_cluster(args.local_cpus) as start:
        start()
        try:
            outcome = run_sweep(cfg, restore=args.restore)
        except input_errors() as e:
            return fail(e, 2)
    print(f"sweep folder: {outcome['path']}")
    if not outcome["complete"]:
        return fail("the sweep was interrupted; run the same command again to continue it", 1)
    best = outcome["best"]
    if best is None:
        return fail("every trial failed; see the errors above and the trial folders", 1)
    failed = sum(t["status"] == "error" for t in outcome["trials"])
    print(f"best: trial {best['trial_id']}  FID {best['fid']:.4g} at step {best['step']}  params {best['params']}\n"
          f"best checkpoint: {best['checkpoint']}\n"
          f"saved: {outcome['path']}/best.json, {outcome['path']}/best_config.yaml"
          + (f"\n{failed} trial(s) failed: see best.json" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
