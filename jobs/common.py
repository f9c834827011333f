"""What every stage's entry point shares: the config arguments, the Ray cluster it runs on, one-line errors."""

import argparse
import contextlib
import os
import socket
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


def start_local_ray(num_cpus, **kwargs):
    """ray.init of a new private local cluster that every process of it addresses explicitly, even while another
    Ray cluster runs on this machine. Its GCS port is chosen first and RAY_ADDRESS names it before the cluster
    starts, so the raylet's workers (Train's controller and placement-group cleaner among them) inherit it instead
    of searching the machine for "the" cluster. Returns the environment to restore after ray.shutdown()."""
    import ray
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
    try:
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    except BaseException:
        restore_env(saved)
        raise
    return saved


def restore_env(saved):
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def ray_cluster(local_cpus=None):
    """The Ray cluster a stage runs on, started lazily: yields `start`, which on its first call joins the caller's
    cluster if this process already runs Ray, or starts a private local one with `local_cpus` logical CPUs
    (start_local_ray), or connects to whatever `ray.init()` finds (RAY_ADDRESS under `ray job submit`, a `ray start`
    head on this machine, or a new local cluster), and returns the ray module. A stage calls it only once it has
    work, so rerunning finished work starts no Ray. Ray is shut down afterwards only if it was started here."""
    import ray
    started, saved = [], {}

    def start():
        if not ray.is_initialized():
            if local_cpus:
                saved.update(start_local_ray(local_cpus, include_dashboard=True, dashboard_host="127.0.0.1"))
            else:
                ray.init()
            started.append(True)
        return ray

    try:
        yield start
    finally:
        if started:
            ray.shutdown()
            restore_env(saved)


def input_errors():
    """The exception types that mean bad input: the stage exits 2 with one line and no traceback. ConfigError,
    TeacherError, DatasetError and InputError (several at once) are ValueErrors; CacheError is a missing, mismatched
    or damaged trajectory cache. Each stage checks its inputs with these before Ray starts."""
    from pipeline.cache import CacheError
    return (ValueError, FileNotFoundError, CacheError)


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
