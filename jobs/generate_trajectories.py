"""The trajectory-cache stage: generate (create, resume, extend), verify or describe the cache a config names.

    python -m jobs.generate_trajectories --config jobs/configs/digits.yaml [--set cache.num_records=8192 ...]
    python -m jobs.generate_trajectories verify --config jobs/configs/digits.yaml     # or: verify --cache DIR_OR_URL
    python -m jobs.generate_trajectories describe --config jobs/configs/digits.yaml   # or: describe --cache DIR_OR_URL
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m jobs.generate_trajectories --config ...

Rerunning `generate` after a crash finishes the cache; a larger cache.num_records extends it; `generate --repair`
rewrites shards that fail verification. Exit status: 0 done, 1 verify found problems, 2 error (one line on stderr).
"""

import argparse
import sys
import traceback

from pipeline.cache import CacheError, format_report, generate_cache, open_cache
from pipeline.config import ConfigError, load_config
from pipeline.datasets import DatasetError

EXPECTED = (ConfigError, CacheError, DatasetError, FileNotFoundError, ValueError)  # user errors: no traceback


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="generate", choices=["generate", "verify", "describe"])
    p.add_argument("--config", help="YAML config, e.g. jobs/configs/digits.yaml (the embedded default run); keys it omits take the official defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--cache", help="verify/describe: a cache folder or URL, instead of the one the config names")
    p.add_argument("--repair", action="store_true", help="generate: rewrite shards that fail verification")
    p.add_argument("--quick", action="store_true", help="verify: object lists and sizes only, no checksums")
    p.add_argument("--local-cpus", type=int, help="generate: start a private local Ray with this many logical CPUs "
                                                  "instead of connecting to a running cluster")
    return p.parse_args(argv)


def init_ray(local_cpus):
    import ray
    if ray.is_initialized():  # called in-process by a program that already runs Ray
        return
    if local_cpus:
        ray.init(address="local", num_cpus=local_cpus, include_dashboard=False)
    else:
        ray.init()  # connects to RAY_ADDRESS (set by `ray job submit`) or a `ray start` head, else starts locally


def run(args):
    cfg = load_config(args.config, args.set)
    if args.command == "generate":
        print(cfg.dump(), flush=True)
        init_ray(args.local_cpus)
        cache = generate_cache(cfg, repair=args.repair)
        print(cache.describe())
        print(f"cache: {cache.url}")
        return 0
    cache = open_cache(args.cache, storage_options=cfg.cache.storage_options) if args.cache \
        else open_cache(cfg.cache.root, cfg)
    if args.command == "describe":
        print(cache.describe())
        return 0
    report = cache.verify(full=not args.quick)
    print(format_report(cache, report))
    return 0 if report["ok"] else 1


def root_cause(error):
    """The user's exception inside Ray's wrappers (RayTaskError and friends keep it as `.cause`)."""
    while getattr(error, "cause", None) is not None and error.cause is not error:
        error = error.cause
    return error


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except Exception as e:
        cause = root_cause(e)
        if not isinstance(cause, EXPECTED):
            traceback.print_exc()
        message = " ".join(str(cause).split())
        print(f"error: {type(cause).__name__}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
