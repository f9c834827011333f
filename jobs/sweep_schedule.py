"""Search the sampling schedule of a finished checkpoint with Ray Tune: γ and the intermediate jump times at one NFE,
scored by the evaluation actors with the FID of every evaluation. Nothing is trained.

    python -m jobs.sweep_schedule --config FILE --checkpoint DIR [--nfe 2] [--searcher optuna|random|grid]
        [--trials 20] [--restore] [--local-cpus 8]

The experiment lives in Tune's folder <--storage-path, default eval.out/schedule_search>/<--name>; running the same
command again (or with --restore) continues an interrupted search without rerunning finished trials. The best
schedule is written to schedules.json beside the checkpoint, which `jobs.evaluate --schedule best` reads. Exit status:
0 the search ended and its best is saved, 1 it was interrupted (rerun to continue) or every trial failed, 2 bad input.
"""

import sys

from jobs.common import fail, ray_cluster, stage_parser
from pipeline.checkpoint import checkpoint_file
from pipeline.config import ConfigError, load_config
from pipeline.preflight import preflight
from pipeline.schedule_search import SEARCHERS, check_search, run_schedule_search


def parse_args(argv=None):
    p = stage_parser(__doc__, "eval.num_samples=1797")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or its checkpoint.pt")
    p.add_argument("--nfe", type=int, default=2, help="the NFE whose schedule is searched (>= 2)")
    p.add_argument("--searcher", choices=SEARCHERS, default="optuna",
                   help="optuna: TPE through Ray Tune's OptunaSearch; random; grid: the largest even grid in --trials")
    p.add_argument("--trials", type=int, default=20, help="the trial budget")
    p.add_argument("--seed", type=int, default=0, help="seeds the searcher (the latents are eval.seed)")
    p.add_argument("--storage-path", help="the experiments' folder (default: <eval.out>/schedule_search)")
    p.add_argument("--name", help="the experiment's name (default: <run>_<checkpoint>_nfe<N>_<searcher>)")
    p.add_argument("--restore", action="store_true", help="continue the search in <storage-path>/<name>")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        check_search(args.searcher, args.nfe, args.trials)
        preflight(cfg, {"evaluate"}, [args.checkpoint])
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return fail(e, 2)
    with ray_cluster(args.local_cpus) as start:
        ray = start()
        try:
            outcome = run_schedule_search(cfg, args.checkpoint, args.nfe, args.searcher, args.trials, args.seed,
                                          args.storage_path, args.name, args.restore)
        except ConfigError as e:
            return fail(e, 2)
        except (ray.exceptions.RayError, FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            return fail(e, 1)
    print(f"schedule search folder: {outcome['path']}")
    if not outcome["complete"]:
        return fail("the schedule search was interrupted; run the same command again to continue it", 1)
    if outcome["best"] is None:
        return fail("every trial failed; see the errors above and the trial folders", 1)
    best, kept = outcome["best"], outcome["schedule"]
    print(f"best at NFE {args.nfe}: {best['setting']['label']}  FID {best['fid']:.4g} "
          f"({best['num_samples']} samples, {best['features']['name']}, EMA {best['model']['ema_rate']:g})\n"
          f"schedules.json: {checkpoint_file(args.checkpoint).parent / 'schedules.json'} holds NFE {args.nfe} at "
          f"FID {kept['fid']:.4g}" + ("" if kept["fid"] == best["fid"] else " (an earlier, better search)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
