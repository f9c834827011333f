"""Who listens to a training run's metrics: Ray Train (ray.train.report), TensorBoard, and, when asked, MLflow and
Weights & Biases through Ray's own integrations (ray.air.integrations.mlflow / wandb, set up in the rank-0 worker as
Train V2 functions do).

Every train.log_every steps rank 0 hands one record to `Listeners.log`: the step, the latest G and D step's losses
and λ's (λ_DSM, λ_GAN as used), the learning rates, images/s and steps/s. TensorBoard event files go to
<run>/tensorboard/ (train.tensorboard, on by default; written locally and copied at each checkpoint for a run
directory behind a URL); a resumed run opens a new event file whose first event purges the steps that the killed
run logged past its checkpoint, so TensorBoard shows one line. MLflow (train.mlflow: {tracking_uri, experiment}) and
W&B (train.wandb: {project, mode: offline by default}) are off by default: nothing leaves the machine unless asked.
"""

import importlib.util
import os
import shutil
import tempfile

TAGS = {"lr": "lr/G", "lr_d": "lr/D", "images_per_s": "throughput/images_per_s",
        "steps_per_s": "throughput/steps_per_s"}


def tag(key):
    """TensorBoard tag of a metric: loss_ctm -> loss/ctm, lambda_dsm -> lambda/dsm, lr_d -> lr/D, ..."""
    for group in ("loss", "lambda"):
        if key.startswith(group + "_"):
            return f"{group}/{key[len(group) + 1:]}"
    return TAGS.get(key, f"train/{key}")


def require(package):
    """ImportError naming the extra on a worker without the package that train.<package> needs (the driver's config
    check names it before anything runs; a cluster node may lack what the driver has)."""
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"config key 'train.{package}' is set, but {package} is not installed on this node: "
                          f"pip install 'ctm-ray[{package}]' (or set train.{package}=null)")


class TensorBoard:
    """Rank 0's event files in <run>/tensorboard/; for a run behind a URL, written to a local folder and copied over
    at each flush (as far as tensorboardX's writer thread has written them) and in full at the end."""

    def __init__(self, run, start_step):
        from tensorboardX import SummaryWriter
        self.run, self.remote = run, not run.local
        self.dir = tempfile.mkdtemp(prefix="ctm-tensorboard-") if self.remote else run.full("tensorboard")
        # a resumed run purges the steps past its checkpoint that the killed run had logged (TensorBoard hides them)
        self.writer = SummaryWriter(self.dir, purge_step=start_step + 1 if start_step else None, flush_secs=30,
                                    filename_suffix=f".{os.getpid()}.from{start_step}")  # a new file per (re)start

    def log(self, step, metrics):
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(key), value, step)

    def flush(self):
        self.writer.flush()
        self.copy()

    def copy(self):
        if self.remote:
            for name in os.listdir(self.dir):
                self.run.put(os.path.join(self.dir, name), f"tensorboard/{name}")

    def close(self):
        self.writer.close()  # writes what its thread still holds
        self.copy()
        if self.remote:
            shutil.rmtree(self.dir, ignore_errors=True)


class MLflow:
    """An MLflow run named after the Train run, through ray.air.integrations.mlflow.setup_mlflow."""

    def __init__(self, cfg):
        require("mlflow")
        from ray.air.integrations.mlflow import setup_mlflow
        m = cfg.train.mlflow
        self.mlflow = setup_mlflow(config=cfg.to_dict()["train"], tracking_uri=m["tracking_uri"],
                                   experiment_name=m.get("experiment", "ctm"), run_name=cfg.train.run_name,
                                   create_experiment_if_not_exists=True)

    def log(self, step, metrics):
        self.mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def flush(self):
        pass

    def close(self):
        self.mlflow.end_run()


class WandB:
    """A W&B run with the Train run's name as its id (a resumed run continues it), through
    ray.air.integrations.wandb.setup_wandb; mode offline unless train.wandb.mode says otherwise."""

    def __init__(self, cfg):
        require("wandb")
        from ray.air.integrations.wandb import setup_wandb
        w = {"mode": "offline", **cfg.train.wandb}
        self.run = setup_wandb(config=cfg.to_dict(), trial_id=cfg.train.run_name, trial_name=cfg.train.run_name,
                               rank_zero_only=False, **w)  # called on rank 0 only; Train V2 has no V1 session

    def log(self, step, metrics):
        self.run.log({tag(k): v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))},
                     step=step)

    def flush(self):
        pass

    def close(self):
        self.run.finish()


class Listeners:
    """Rank 0's listeners: those the config turns on, each opened once per (re)started worker."""

    def __init__(self, run, cfg, start_step):
        t = cfg.train
        self.all = [TensorBoard(run, start_step)] if t.tensorboard else []
        self.all += [MLflow(cfg)] if t.mlflow else []
        self.all += [WandB(cfg)] if t.wandb else []

    def log(self, step, metrics):
        for listener in self.all:
            listener.log(step, metrics)

    def flush(self):
        for listener in self.all:
            listener.flush()

    def close(self):
        for listener in self.all:
            listener.close()


def quiet_report_logs():
    """Ray Train 2.60 logs every ray.train.report on the worker at INFO, a line of several hundred characters with
    all the metrics, under a logger named by its file (so RunConfig's LoggingConfig does not reach it). Rank 0 prints
    the run's own progress line at each log step instead, and stats.jsonl and TensorBoard keep every metric."""
    import logging
    from ray.train.v2._internal.execution import context
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def report_due(device, world_size):
    """Whether every rank's previous ray.train.report has been taken by the controller (agreed over ranks).

    Train V2's controller takes one report per worker each time it polls (every 2 s, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)
    and a worker's next report waits for that: a report at each log step of a fast run would hold training. A log
    step whose predecessor is still queued is left out of Ray Train's metrics (TensorBoard and stats.jsonl keep it).
    """
    import torch
    import torch.distributed as dist
    from ray.train.v2._internal.execution.context import get_train_context
    busy = torch.tensor([float(get_train_context().get_result_queue().full())], device=device)
    if world_size > 1:
        dist.all_reduce(busy, op=dist.ReduceOp.MAX)
    return not busy.item()
