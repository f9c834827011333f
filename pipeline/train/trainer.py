"""A training run on Ray Train: refuse bad input before any step (pipeline.preflight), then a TorchTrainer with the
config's workers, storage, checkpoint retention and failure budget.

Resuming: Train V2 keeps `checkpoint_manager_snapshot.json` in <storage_path>/<run_name>; a new `fit()` with the same
RunConfig(name, storage_path) loads it and hands its newest checkpoint to `ray.train.get_checkpoint()`, so rerunning
the same command continues the run. Restarts within train.max_failures do the same inside one `fit()`. Before
`fit()`, the driver checks the registered checkpoints newest first against their digests and takes every damaged one
out of the snapshot (its folder moved aside), so Ray, the data stream and the workers all resume from the newest
checkpoint that verifies. A run whose newest verified checkpoint is at train.steps, with this config, is finished:
its Result is read from the run directory and Ray Train does not start.
"""

import copy
import json
import os

import ray
import ray.data
from ray.train import (Checkpoint, CheckpointConfig, DataConfig, FailureConfig, Result, RunConfig, ScalingConfig,
                       UserCallback)
from ray.train.torch import TorchConfig, TorchTrainer
import yaml

from pipeline.cache import DamagedShardError
from pipeline.checkpoint import CHECKPOINT_FILE, DamagedCheckpointError, checkpoint_dir_step, verify_checkpoint
from pipeline.config import ConfigError, load_config
from pipeline.resources import pool_request
from pipeline.train.data import CacheEpochs
from pipeline.train.loop import train_loop_per_worker
from pipeline.train.rundir import SNAPSHOT, RunDir
from pipeline.train.step import NonFiniteError
from pipeline.train.teacher_start import needs_regression, teacher_start

LOCAL_PATHS = ("teacher.path", "data.path", "cache.root", "train.storage_path", "train.init_checkpoint",
               "train.lpips_vgg_path", "train.lpips_lin_path")  # and every train.discriminator_weights value
NON_RETRYABLE = (NonFiniteError, DamagedCheckpointError, DamagedShardError)  # a retry meets them again


def absolute_paths(cfg):
    """cfg with every local path that workers open made absolute on the driver (URLs stay as they are): Ray Train V2
    runs each worker in a working directory of its own, where a relative path names other files."""
    tree = cfg.to_dict()
    absolute = lambda p: p if p is None or "://" in p else os.path.abspath(os.path.expanduser(p))
    for key in LOCAL_PATHS:
        section, name = key.split(".")
        tree[section][name] = absolute(tree[section][name])
    tree["train"]["discriminator_weights"] = {k: absolute(v) for k, v in tree["train"]["discriminator_weights"].items()}
    return load_config(base=tree)


def carried(error):
    """The NON_RETRYABLE error inside Ray Train's and Ray Data's wrappers of a worker's exception (`_base_exc`,
    `cause`, `worker_failures`, `controller_failure`, `__cause__`), or None. A DamagedShardError comes with its own
    line only (Ray Data appends lines of retry advice to the message of an error its read task raised)."""
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e) is DamagedShardError:
            return DamagedShardError(str(e).split("\n", 1)[0])
        if type(e) in NON_RETRYABLE:
            return e
        stack += [getattr(e, name, None) for name in ("__context__", "__cause__", "_base_exc", "controller_failure",
                                                      "cause")]
        stack += list(getattr(e, "worker_failures", {}).values())
    return None


class StopOnNonRetryable(UserCallback):
    """RunConfig(callbacks=[StopOnNonRetryable()]): a worker error that a retry would meet again (a non-finite step,
    a damaged checkpoint, a damaged shard) stops the run without spending train.max_failures. Train V2's failure policy retries every
    worker error, but one that a callback raises on the controller becomes a ControllerError, which it never retries."""

    def after_exception(self, run_context, worker_exceptions):
        for error in worker_exceptions.values():
            cause = carried(error)
            if cause is not None:
                raise cause


def resume_point(run, log=print):
    """The name of the registered checkpoint the run resumes from (None: a fresh run).

    The registered checkpoints are verified newest first (digest, or CRC-32s for one written before digests); each
    damaged one is moved aside (damaged_<name>, never deleted) and dropped from Ray Train's snapshot, with one line
    saying so. DamagedCheckpointError, changing nothing, when none verifies.
    """
    damaged = []
    for name in reversed(run.registered()):
        problem = verify_checkpoint(run.full(f"{name}/{CHECKPOINT_FILE}"), run.fs) if run.exists(name) else \
            "its folder is missing"
        if problem is None:
            break
        damaged.append((name, problem))
    else:
        if damaged:
            raise DamagedCheckpointError(
                f"no checkpoint of the run {run.url} verifies: " + "; ".join(f"{n}: {p}" for n, p in damaged) +
                "; nothing was changed. Start a new run (another train.run_name), or remove the run directory's "
                "checkpoint_manager_snapshot.json to train this one again from step 0")
        return None
    # folders are moved before the snapshot is rewritten: after a kill in between, the next start finds them missing
    for bad, problem in damaged:
        done = f"moved aside to {run.move_aside(bad)}" if run.exists(bad) else "dropped"
        log(f"[train] {bad} is damaged ({problem}); {done}; resuming from {name}")
    run.unregister([bad for bad, _ in damaged])
    return name


def same_config(run, cfg):
    """Whether the run's config.yaml, read as this code reads configs (keys it omits take their defaults), is `cfg`: a
    run written before a config key was added is still the same run."""
    try:
        return load_config(base=yaml.safe_load(run.read_text("config.yaml") or "")).to_dict() == cfg.to_dict()
    except (ConfigError, yaml.YAMLError, TypeError, ValueError):
        return False


def finished(cfg, run, newest):
    """Ray Train's Result of the run when it is finished: its newest verified checkpoint `newest` is at train.steps
    and its config.yaml is this config (Ray Train would find nothing to do); None otherwise."""
    if newest is None or checkpoint_dir_step(newest) != cfg.train.steps or not same_config(run, cfg):
        return None
    reported = {r["checkpoint_dir_name"]: r for r in json.loads(run.read_text(SNAPSHOT))["checkpoint_results"]}
    filesystem = run.ray_storage_filesystem()
    return Result(metrics=reported[newest]["metrics"], checkpoint=Checkpoint(run.full(newest), filesystem), error=None,
                  path=run.full(), _storage_filesystem=filesystem)


def loop_inputs(cfg, inputs, log=print):
    """(train_loop_config, datasets) of a run from its preflight's Inputs; the student's start is regressed (once,
    then cached) for a mixture teacher."""
    teacher, kwargs, cache = inputs.teacher, inputs.student_kwargs, inputs.cache
    start = teacher_start(cfg, teacher, kwargs, log) if needs_regression(cfg, teacher) else None
    num_records, datasets = (None, {}) if cache is None else (cache.num_records, {"train": CacheEpochs(cfg, cache)})
    loop_config = {"cfg": cfg.to_dict(), "student_kwargs": kwargs, "num_records": num_records, "teacher_start": start}
    return loop_config, datasets


def build_trainer(cfg, loop_config, datasets, callbacks=()):
    t = cfg.train
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    resources = {"CPU": t.cpus_per_worker}
    if use_gpu:
        resources.update({"GPU": t.gpus_per_worker, **pool_request("train", t.gpus_per_worker)})
    storage_path, filesystem = RunDir(t.storage_path, t.run_name, t.storage_options).ray_storage()
    ordered = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    ordered.preserve_order = True  # the same rows in the same order after a restart, so skipping resumes the data
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=t.run_name, storage_path=storage_path, storage_filesystem=filesystem,
                             checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             callbacks=[StopOnNonRetryable(), *callbacks]),
        datasets=datasets,
        # one worker reads the whole stream itself: a split would start a coordinator actor (seconds on 2 cores) to
        # hand every row to the only reader
        dataset_config=DataConfig(datasets_to_split="all" if t.num_workers > 1 else [], execution_options=ordered),
    )


def run_training(cfg, log=print, callbacks=(), inputs=None, start_ray=None):
    """Train (or continue) the run <train.storage_path>/<train.run_name>; returns Ray Train's Result, whose
    `checkpoint` is the run's newest. callbacks: more Train UserCallbacks for the controller (a sweep trial's
    milestone reports). inputs: the preflight's Inputs of this config, when the caller ran it (else it runs here).
    start_ray: called before Ray Train starts (a job's lazy cluster); a finished run starts neither.

    Relative local paths are resolved here, against the driver's working directory. Raises before any step for bad
    input; DamagedCheckpointError when no registered checkpoint of the run verifies; NonFiniteError when a step's loss
    or gradient was not finite; ray.train.TrainingFailedError when workers failed more than train.max_failures times.
    """
    from pipeline.preflight import preflight  # it imports pipeline.train's modules
    cfg = absolute_paths(cfg)
    inputs = inputs or preflight(cfg, {"train"})
    run = RunDir(cfg.train.storage_path, cfg.train.run_name, cfg.train.storage_options)
    resumed = resume_point(run, log)
    result = finished(cfg, run, resumed)
    if result is not None:
        log(f"[train] run directory {run.url}: the run is finished at step {cfg.train.steps} ({resumed}); nothing "
            "to train")
        return result
    log(f"[train] run directory {run.url}" +
        (f" (continuing from {resumed}, step {checkpoint_dir_step(resumed)})" if resumed else ""))
    loop_config, datasets = loop_inputs(cfg, inputs, log)
    run.write_text("config.yaml", cfg.dump())
    if start_ray is not None:
        start_ray()
    try:
        return build_trainer(cfg, loop_config, datasets, callbacks).fit()
    except ray.train.TrainingFailedError as e:
        cause = carried(e)
        if cause is not None:
            raise cause from None
        raise
