"""Every stage on one config (the embedded digits default unless --config is given), on a Ray cluster.

    python -m jobs.quickstart [--config FILE] [--set key=value ...] [--out runs/quickstart] [--dry-run]

Fits or loads the teacher, builds (or reuses) the trajectory cache with Ray Data, trains CTM + DSM + GAN with Ray
Train, evaluates the newest checkpoint with the evaluation actors, and writes a report directory: the FID table
(Markdown and JSON), the FID-against-NFE plot, sample grids, the config used and the time each stage took. Run twice,
the second run reuses the cache, continues (or finds finished) the training run, and reuses the evaluation results of
an unchanged checkpoint and settings (kept in <out>/scored.npz; `jobs.evaluate --force` scores them again); Ray starts
only for a stage with work, so a rerun of finished work starts none.
"""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import ray

from jobs.common import fail, input_errors, ray_cluster, stage_parser
from pipeline.config import EMBEDDED_DEFAULT, load_config
from pipeline.preflight import preflight


def parse_args(argv=None):
    p = stage_parser(__doc__, "train.steps=1000", "YAML config (default: the embedded digits default)", local_cpus=8,
                     local_cpus_help="logical CPUs of the local Ray cluster it starts unless RAY_ADDRESS names one "
                                     "(as under `ray job submit`); 2 cores need more than 2")
    p.add_argument("--out", default="runs/quickstart", help="report directory")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve the config and check every path and shape the stages need, then stop")
    return p.parse_args(argv)


def run_stages(cfg, out, inputs, start_ray):
    """generate → train → evaluate on the preflight's `inputs`, each starting Ray (start_ray) only for work; returns
    {stage: seconds}, the evaluation report path and the checkpoint."""
    from pipeline.cache import generate_cache
    from pipeline.train import run_training
    from jobs.evaluate import evaluate

    seconds = {}
    started = time.time()
    if inputs.cache_ready:
        cache = inputs.cache
    else:
        start_ray()
        cache = generate_cache(cfg)
    seconds["generate"] = round(time.time() - started, 1)
    print(f"[quickstart] cache: {cache.url} ({cache.num_records} records)", flush=True)

    started = time.time()
    result = run_training(cfg, inputs=dataclasses.replace(inputs, cache=cache), start_ray=start_ray)
    seconds["train"] = round(time.time() - started, 1)
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint; see the run directory's logs")
    checkpoint = result.checkpoint.path
    print(f"[quickstart] newest checkpoint: {checkpoint}", flush=True)

    started = time.time()
    cfg.eval.out = str(out)
    cfg.eval.teacher_fid = True
    report = evaluate(cfg, [checkpoint], start_ray=start_ray)
    seconds["evaluate"] = round(time.time() - started, 1)
    return seconds, Path(report), checkpoint


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    try:  # every stage's inputs, before Ray starts and before anything is written
        cfg = load_config(args.config or EMBEDDED_DEFAULT, args.set)
        inputs = preflight(cfg)
    except input_errors() as e:
        return fail(e, 2)
    checked = round(time.time() - started, 1)
    print(cfg.dump(), flush=True)
    if args.dry_run:
        print("\n".join(inputs.lines))
        print("dry run: every path and shape checked; nothing ran")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # under `ray job submit` (RAY_ADDRESS set) the submitted-to cluster, else a local one with --local-cpus
    with ray_cluster(None if os.environ.get("RAY_ADDRESS") else args.local_cpus) as start:
        try:
            seconds, report, checkpoint = run_stages(cfg, out, inputs, start)
            seconds = {"preflight": checked, **seconds}
        except input_errors() as e:  # found only as the stages read it (an image past the first, a cache shard)
            return fail(e, 2)
        except (ray.exceptions.RayError, RuntimeError) as e:
            return fail(e, 1)
    seconds["total"] = round(time.time() - started, 1)
    (out / "timings.json").write_text(json.dumps({"seconds": seconds, "checkpoint": checkpoint}, indent=2))
    print(report.read_text())
    print(f"[quickstart] stage seconds: {seconds}")
    print(f"[quickstart] report: {report} (with results.json, fid_vs_nfe.png, sample grids, config.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
