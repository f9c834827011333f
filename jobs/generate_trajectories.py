"""The trajectory-cache stage: generate (create, resume, extend), verify or describe the cache a config names.

    python -m jobs.generate_trajectories --config jobs/configs/digits.yaml [--set cache.num_records=8192 ...]
    python -m jobs.generate_trajectories verify --config jobs/configs/digits.yaml     # or: verify --cache DIR_OR_URL
    python -m jobs.generate_trajectories describe --config jobs/configs/digits.yaml   # or: describe --cache DIR_OR_URL
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m jobs.generate_trajectories --config ...

Rerunning `generate` after a crash finishes the cache; a larger cache.num_records extends it; `generate` refuses a
cache whose shards fail the quick check, and `generate --repair` rewrites shards that fail the full check and rebuilds
a damaged manifest from the shards that verify; a complete cache is found so without starting Ray. Exit status:
0 done, 1 verify found problems, 2 error (one line on stderr).
"""

import sys
import traceback

from jobs.common import fail, input_errors, ray_cluster, root_cause, stage_parser
from pipeline.cache import CacheError, format_report, generate_cache, open_cache
from pipeline.config import load_config
from pipeline.preflight import preflight


def parse_args(argv=None):
    p = stage_parser(__doc__, "cache.num_records=8192")
    p.add_argument("command", nargs="?", default="generate", choices=["generate", "verify", "describe"])
    p.add_argument("--cache", help="verify/describe: a cache folder or URL, instead of the one the config names")
    p.add_argument("--repair", action="store_true", help="generate: rewrite shards that fail verification and rebuild "
                                                         "a damaged manifest from the shards that verify")
    p.add_argument("--quick", action="store_true", help="verify: object lists, sizes and the checksums of the small "
                                                        "objects (metadata, 1-D arrays) only")
    return p.parse_args(argv)


def run(args):
    cfg = load_config(args.config, args.set)
    if args.command == "generate":
        inputs = preflight(cfg, {"generate"})
        print(cfg.dump(), flush=True)
        cache = inputs.cache if inputs.cache_ready and not args.repair else None
        if cache is None:
            with ray_cluster(args.local_cpus) as start:
                start()
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


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except Exception as e:
        if not isinstance(root_cause(e), input_errors()):
            traceback.print_exc()
        if isinstance(root_cause(e), CacheError):  # its own line only: Ray Data appends retry advice to a task's error
            return fail(f"{type(root_cause(e)).__name__}: {str(root_cause(e)).splitlines()[0]}", 2)
        return fail(e, 2)


if __name__ == "__main__":
    sys.exit(main())
