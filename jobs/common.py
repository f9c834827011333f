"""What every stage's entry point shares: the config arguments, the Ray cluster it runs on, one-line errors."""

import argparse
import contextlib
import sys


CONFIG_HELP = ("YAML config, e.g. jobs/configs/digits.yaml (the embedded default run); keys it omits take the "
               "official defaults")
LOCAL_CPUS_HELP = ("start a private local Ray cluster with this many logical CPUs instead of connecting to a running "
                   "one (more than the cores: 8 on a 2-core laptop)")


def stage_parser(doc, set_example="train.lr=1e-4", config_help=CONFIG_HELP, local_cpus=None,
                 local_cpus_help=LOCAL_CPUS_HELP):
    """--config FILE, repeated --set KEY=VALUE and --local-cpus N; the stage adds its own arguments."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=config_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config key, e.g. {set_example}; repeat")
    p.add_argument("--local-cpus", type=int, default=local_cpus, help=local_cpus_help)
    return p


@contextlib.contextmanager
def ray_cluster(local_cpus=None):
    """The Ray cluster a stage runs on: the caller's if this process already runs Ray; a private local one with
    `local_cpus` logical CPUs; else whatever `ray.init()` finds (RAY_ADDRESS under `ray job submit`, a `ray start`
    head on this machine, or a new local cluster). Ray is shut down afterwards only if it was started here."""
    import ray
    if ray.is_initialized():
        yield ray
        return
    if local_cpus:
        ray.init(address="local", num_cpus=local_cpus, include_dashboard=True, dashboard_host="127.0.0.1")
    else:
        ray.init()
    try:
        yield ray
    finally:
        ray.shutdown()


def root_cause(error):
    """The user's exception inside Ray's wrappers (RayTaskError and friends keep it as `.cause`)."""
    while getattr(error, "cause", None) is not None and error.cause is not error:
        error = error.cause
    return error


def fail(error, status):
    """Print `error: Type: message` on one line of stderr and return the exit status."""
    if isinstance(error, str):
        print(f"error: {error}", file=sys.stderr)
    else:
        cause = root_cause(error)
        print(f"error: {type(cause).__name__}: {' '.join(str(cause).split())}", file=sys.stderr)
    return status
