"""Every stage on one config (the embedded digits default unless --config is given), on a Ray cluster.

    python -m jobs.quickstart [--config FILE] [--set key=value ...] [--out runs/quickstart] [--dry-run]

Fits or loads the teacher, builds (or reuses) the trajectory cache with Ray Data, trains CTM + DSM + GAN with Ray
Train, evaluates the newest checkpoint with the evaluation actors, and writes a report directory: the FID table
(Markdown and JSON), the FID-against-NFE plot, sample grids, the config used and the time each stage took. Run twice,
the second run reuses the cache and continues (or finds finished) the training run.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from pipeline.config import EMBEDDED_DEFAULT, ConfigError, load_config

STAGE_ERRORS = (ConfigError, FileNotFoundError, ValueError, RuntimeError)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: the embedded digits default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override; repeat")
    p.add_argument("--out", default="runs/quickstart", help="report directory")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve the config and check every path and shape the stages need, then stop")
    p.add_argument("--local-cpus", type=int, default=8,
                   help="logical CPUs of the local Ray cluster started when none is running (2 cores need > 2)")
    return p.parse_args(argv)


def init_ray(local_cpus):
    """Connect to a running cluster (RAY_ADDRESS, as under `ray job submit`), else start a local one."""
    import os

    import ray
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(num_cpus=local_cpus, include_dashboard=False)


def run_stages(cfg, out):
    """generate → train → evaluate; returns {stage: seconds} and the evaluation report path."""
    from pipeline.cache import generate_cache
    from pipeline.train import run_training
    from jobs.evaluate import evaluate

    seconds = {}
    started = time.time()
    cache = generate_cache(cfg)
    seconds["generate"] = round(time.time() - started, 1)
    print(f"[quickstart] cache: {cache.url} ({cache.num_records} records)", flush=True)

    started = time.time()
    result = run_training(cfg)
    seconds["train"] = round(time.time() - started, 1)
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint; see the run directory's logs")
    checkpoint = result.checkpoint.path
    print(f"[quickstart] newest checkpoint: {checkpoint}", flush=True)

    started = time.time()
    cfg.eval.out = str(out)
    cfg.eval.teacher_fid = True
    report = evaluate(cfg, [checkpoint])
    seconds["evaluate"] = round(time.time() - started, 1)
    return seconds, Path(report), checkpoint


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config or EMBEDDED_DEFAULT, args.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(cfg.dump(), flush=True)
    if args.dry_run:
        from pipeline.dryrun import dry_run
        try:
            print("\n".join(dry_run(cfg)))
        except (*STAGE_ERRORS, KeyError) as e:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        print("dry run: every path and shape checked; nothing ran")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import ray
    owns_ray = not ray.is_initialized()
    if owns_ray:
        init_ray(args.local_cpus)
    started = time.time()
    try:
        seconds, report, checkpoint = run_stages(cfg, out)
    except (ray.exceptions.RayError, *STAGE_ERRORS) as e:
        cause = getattr(e, "cause", None) or e
        print(f"error: {type(cause).__name__}: {' '.join(str(cause).split())}", file=sys.stderr)
        return 1
    finally:
        if owns_ray:
            ray.shutdown()
    seconds["total"] = round(time.time() - started, 1)
    (out / "timings.json").write_text(json.dumps({"seconds": seconds, "checkpoint": checkpoint}, indent=2))
    print(report.read_text())
    print(f"[quickstart] stage seconds: {seconds}")
    print(f"[quickstart] report: {report} (with results.json, fid_vs_nfe.png, sample grids, config.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
