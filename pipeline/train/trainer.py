"""A training run on Ray Train: refuse bad input before any step, then a TorchTrainer with the config's workers,
storage, checkpoint retention and failure budget.

Resuming: Train V2 keeps `checkpoint_manager_snapshot.json` in <storage_path>/<run_name>; a new `fit()` with the same
RunConfig(name, storage_path) loads it and hands its newest checkpoint to `ray.train.get_checkpoint()`, so rerunning
the same command continues the run. Restarts within train.max_failures do the same inside one `fit()`.
"""

import copy

import ray
import ray.data
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from pipeline.cache import DamagedShardError, format_report, open_cache
from pipeline.checkpoint import checkpoint_file
from pipeline.config import ConfigError
from pipeline.datasets import check_dataset
from pipeline.resources import pool_request
from pipeline.teachers import build_teacher, teacher_image_shape
from pipeline.train.data import CacheEpochs
from pipeline.train.loop import train_loop_per_worker
from pipeline.train.rundir import RunDir
from pipeline.train.state import student_kwargs
from pipeline.train.teacher_start import needs_regression, teacher_start


def check_cache(cfg):
    """The config's cache, refused when built for another config (CacheMismatchError), damaged or unusable."""
    cache = open_cache(cfg.cache.root, cfg)
    report = cache.verify(full=False)
    if report["damaged"]:
        raise DamagedShardError(format_report(cache, report))
    if cache.num_records < cfg.train.batch_size:
        raise ConfigError(f"config key 'train.batch_size': the global batch {cfg.train.batch_size} is larger than the "
                          f"cache's {cache.num_records} records; generate more (cache.num_records) or lower it")
    if cache.mode == "noise" and (cfg.train.lambda_dsm != 0 or cfg.train.gan_start is not None):
        raise ConfigError("config key 'cache.mode': a noise-mode cache has no real images for DSM or the GAN's real "
                          "branch; set train.lambda_dsm=0 and train.gan_start=null, or use a data-mode cache")
    return cache


def preflight(cfg, log=print):
    """Everything that can be refused before a worker starts. Returns (train_loop_config, datasets)."""
    teacher = build_teacher(cfg)
    kwargs = student_kwargs(cfg, teacher)
    if kwargs["label_dim"] and not cfg.data.use_labels:
        raise ConfigError(f"config key 'data.use_labels': the student is class-conditional ({kwargs['label_dim']} "
                          "labels, like its teacher); set data.use_labels=true")
    num_records, datasets = None, {}
    if cfg.train.teacher_mode == "online":
        shape = tuple(check_dataset(cfg.data)["image_shape"])
        if shape != teacher_image_shape(teacher):
            raise ConfigError(f"config key 'data.name': images of {cfg.data.name} are {shape}, the teacher's "
                              f"{teacher_image_shape(teacher)}")
    else:
        cache = check_cache(cfg)
        num_records, datasets = cache.num_records, {"train": CacheEpochs(cfg, cache)}
    if cfg.train.init_checkpoint and "://" not in cfg.train.init_checkpoint:
        checkpoint_file(cfg.train.init_checkpoint)
    start = teacher_start(cfg, teacher, kwargs, log) if needs_regression(cfg, teacher) else None
    return {"cfg": cfg.to_dict(), "student_kwargs": kwargs, "num_records": num_records, "teacher_start": start}, datasets


def build_trainer(cfg, loop_config, datasets):
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
                             failure_config=FailureConfig(max_failures=t.max_failures)),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=ordered),
    )


def run_training(cfg, log=print):
    """Train (or continue) the run <train.storage_path>/<train.run_name>; returns Ray Train's Result.

    Raises before any step for bad input; ray.train.TrainingFailedError when workers failed more than
    train.max_failures times.
    """
    loop_config, datasets = preflight(cfg, log)
    run = RunDir(cfg.train.storage_path, cfg.train.run_name, cfg.train.storage_options)
    done = run.checkpoint_steps()
    log(f"[train] run directory {run.url}" + (f" (continuing; newest checkpoint at step {done[-1]})" if done else ""))
    run.write_text("config.yaml", cfg.dump())
    return build_trainer(cfg, loop_config, datasets).fit()
