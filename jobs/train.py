"""Train a CTM student on Ray Train (CTM + DSM, then the GAN stage from train.gan_start).

    python -m jobs.train --config jobs/configs/digits.yaml --set train.steps=2000 --set train.num_workers=2 \
        --local-cpus 8
    ray job submit --working-dir . -- python -m jobs.train --config ... --set train.storage_path=s3://bucket/runs

Runs on the cluster `ray.init()` finds (RAY_ADDRESS under `ray job submit`, else a local one). Rerunning the same
command continues the run from its newest checkpoint. Exit status: 0 done, 2 bad input (nothing ran), 1 training
failed beyond train.max_failures.
"""

import argparse
import sys

import ray
import ray.train

from pipeline.cache import CacheError
from pipeline.config import ConfigError, load_config
from pipeline.datasets import DatasetError
from pipeline.train import run_training


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config, e.g. jobs/configs/digits.yaml (the embedded default run); keys it omits take the official defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-4")
    p.add_argument("--local-cpus", type=int, help="start a private local Ray with this many logical CPUs instead of "
                                                  "connecting to a running cluster (e.g. 8 on a 2-core laptop)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(cfg.dump(), flush=True)
    if not ray.is_initialized():
        if args.local_cpus:
            ray.init(address="local", num_cpus=args.local_cpus, include_dashboard=False)
        else:
            ray.init()  # RAY_ADDRESS under `ray job submit`, a `ray start` head, else a new local cluster
    try:
        result = run_training(cfg)
    except (ConfigError, CacheError, DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ray.train.TrainingFailedError as e:
        print(f"error: training failed (more than train.max_failures={cfg.train.max_failures} failures): {e}\n"
              f"rerun the same command to continue from the newest checkpoint", file=sys.stderr)
        return 1
    newest = result.checkpoint.path if result.checkpoint else "none"
    print(f"done: step {cfg.train.steps}; run directory {result.path}; newest checkpoint {newest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
