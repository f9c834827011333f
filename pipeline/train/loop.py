"""The training loop each Ray Train worker runs: build or restore the state, take steps, log, checkpoint.

Every train.log_every steps rank 0 prints a progress line, adds a line to stats.jsonl in the run directory and
hands the step's metrics (losses, λ's, learning rates, images/s, steps/s) to its listeners (TensorBoard, and MLflow /
W&B when asked: pipeline/train/metrics.py); every rank calls ray.train.report with them (it is a barrier; only rank
0's metrics are kept), unless the controller has not yet taken the previous report (metrics.report_due). At each
checkpoint rank 0 writes sample grids of the first EMA (train.ema_rates[0]) at NFE 1 and 2 (γ = 0, on the config's
grid), and every rank reports; only rank 0 passes the checkpoint directory, with every worker's data position in it.

A non-finite loss or gradient stops the run (NonFiniteError, which Ray Train does not retry: the driver's
StopOnNonRetryable), naming the step, its loss terms and the newest checkpoint; a state that is not finite is never
written as a checkpoint.
"""

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ctm.sampling import gamma_sample
from pipeline.checkpoint import checkpoint_dir_name, load_checkpoint, save_checkpoint
from pipeline.config import load_config
from pipeline.datasets import open_dataset
from pipeline.images import save_grid
from pipeline.teachers import build_teacher
from pipeline.train.data import (DATA_FILE, CachedBatches, OnlineBatches, cached_position, stream_epoch,
                                 worker_positions)
from pipeline.train.metrics import Listeners, quiet_report_logs, report_due
from pipeline.train.rundir import RunDir
from pipeline.train.state import build_state, load_weights, nonfinite_parts, resume, state_parts
from pipeline.train.step import CTMStep, NonFiniteError, is_discriminator_step
from pipeline.train.teacher_start import load_teacher_start

SAMPLE_GRID = 64


def say(line):
    """One line to the worker's stdout, which Ray forwards to the driver (Train V2's patched print would send it
    there twice: to stdout and through its logger)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def needs_teacher(cfg, restoring):
    """Online mode solves the teacher in every step; a fresh 'teacher'-architecture student copies its weights."""
    fresh_copy = cfg.student.architecture == "teacher" and cfg.student.init_from_teacher and not restoring
    return cfg.train.teacher_mode == "online" or fresh_copy


def read_checkpoint(path, device):
    """A checkpoint's parts from a local directory / checkpoint.pt, or a URL that Ray Train can download."""
    if "://" not in str(path):
        return load_checkpoint(path, map_location=device)
    with ray.train.Checkpoint(str(path).removesuffix("/checkpoint.pt")).as_directory() as d:
        return load_checkpoint(d, map_location=device)


def restore(state, cfg, device):
    """Resume from Ray Train's latest checkpoint of this run, or take the weights of train.init_checkpoint (θ⁻ as
    train.init_target says). Returns (what was done, the data position to continue from: None unless resumed)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            parts = load_checkpoint(d, map_location=device)
        resume(state, parts)
        return f"resumed at step {state.step} from {checkpoint.path}", parts["data"]
    t = cfg.train
    if t.init_checkpoint:
        load_weights(state, read_checkpoint(t.init_checkpoint, device), t.init_target)
        return (f"student and EMAs from {t.init_checkpoint}, θ⁻ from its {t.init_target.replace('_', ' ')} "
                "(fresh D and optimisers, step 0)"), None
    return "fresh start", None


def peak_memory_mb(device):
    """Peak resident memory of this worker process, and peak CUDA memory allocated (0 on the CPU), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else 0.0
    return round(rss, 1), round(cuda, 1)


class TrainClock:
    """Seconds this worker has trained (steps, checkpoints, samples) since its first batch arrived, leaving out the
    time spent waiting in ray.train.report for the controller (which a sweep's milestone evaluation holds)."""

    def __init__(self):
        self.seconds, self.since = 0.0, time.perf_counter()

    def stamp(self, metrics):
        self.seconds += time.perf_counter() - self.since
        return {**metrics, "train_seconds": round(self.seconds, 3)}

    def resume(self):
        self.since = time.perf_counter()


def log_step(step, t):
    return step % t.log_every == 0 or step == t.steps


class ProgressLog:
    """Rank 0's progress lines and stats.jsonl (rewritten at each checkpoint; lines past a resumed step dropped)."""

    def __init__(self, run, cfg, start_step):
        self.run, self.cfg = run, cfg
        old = run.read_text("stats.jsonl") or ""
        self.lines = [line for line in old.splitlines() if line and json.loads(line)["step"] <= start_step]
        self.window_start, self.window_steps, self.busy = time.perf_counter(), 0, 0.0

    def pause(self, seconds):
        """Time spent checkpointing and sampling, left out of samples/s."""
        self.busy += seconds

    def step(self, step, stats, lr, lr_d, device):
        """Count a step; at a log step, a line with stats (the latest G and D step's losses and λ's), and the step's
        metrics returned (else None)."""
        self.window_steps += 1
        if not log_step(step, self.cfg.train):
            return None
        elapsed = time.perf_counter() - self.window_start - self.busy
        rss, cuda = peak_memory_mb(device)
        record = {"step": step, "time": round(time.time(), 3),
                  "samples_per_s": round(self.window_steps * self.cfg.train.batch_size / max(elapsed, 1e-9), 2),
                  **{k: round(v, 6) for k, v in stats.items()}, "lr": lr, "lr_d": lr_d,
                  "peak_rss_mb": rss, "peak_cuda_mb": cuda}
        self.lines.append(json.dumps(record))
        shown = "  ".join(f"{k} {v:.4g}" for k, v in stats.items())
        say(f"step {step}/{self.cfg.train.steps}  {record['samples_per_s']:.1f} samples/s  {shown}  lr {lr:.3g}")
        metrics = {"step": step, **{k: round(v, 6) for k, v in stats.items()}, "lr": lr, "lr_d": lr_d,
                   "images_per_s": record["samples_per_s"],
                   "steps_per_s": round(self.window_steps / max(elapsed, 1e-9), 3)}
        self.window_start, self.window_steps, self.busy = time.perf_counter(), 0, 0.0
        return metrics

    def flush(self):
        self.run.write_text("stats.jsonl", "".join(line + "\n" for line in self.lines))


def write_samples(state, run, label_dim, device, grid):
    """PNG grids of the first EMA's samples at NFE 1 and 2 (γ = 0, fixed latents, the ρ-ramp of the run's `grid`)
    into <run>/samples/."""
    ema = next(iter(state.emas.values()))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(SAMPLE_GRID, ema.img_channels, ema.img_resolution, ema.img_resolution, generator=g)
    labels = torch.arange(SAMPLE_GRID, device=device) % label_dim if label_dim else None
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for nfe in (1, 2):
            local = os.path.join(tmp, f"nfe{nfe}.png")
            save_grid(gamma_sample(ema, latents.to(device), nfe, 0.0, labels, grid=grid), local)
            run.put(local, f"samples/step_{state.step:07d}_nfe{nfe}.png")


def data_position(source, step, world_size, device):
    """The run's data position, called on every rank: online, the step's; cached, every worker's (gathered)."""
    position = source.position(step)
    if position["mode"] == "online":
        return position
    mine = torch.tensor([position["rows"], position["unused"]], device=device)
    workers = [torch.zeros_like(mine) for _ in range(world_size)]
    if world_size > 1:
        dist.all_gather(workers, mine)
    else:
        workers = [mine]
    return {"mode": "cached", "workers": [{"rows": int(w[0]), "unused": int(w[1])} for w in workers]}


def finite_parts(state):
    """The state's checkpoint parts; NonFiniteError when any holds a NaN or an infinity (every rank holds the same
    state, so every rank stops here together)."""
    parts = state_parts(state)
    bad = nonfinite_parts(parts)
    if bad:
        raise NonFiniteError(f"step {state.step}: non-finite values in {bad} after the update; no checkpoint written")
    return parts


def report(state, parts, cfg, source, metrics, rank, world_size, device):
    """ray.train.report on every rank; rank 0 hands over the checkpoint directory (checkpoint.pt, and the data
    position again in data.json for the driver) and waits until Ray Train has registered it in the run's snapshot
    (else a worker dying right after would lose it: the controller collects reports by polling)."""
    data = data_position(source, state.step, world_size, device)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_checkpoint(tmp, **parts, config=cfg.to_dict(), data=data,
                            rng={"train_seed": cfg.train.seed, "step": state.step})
            Path(tmp, DATA_FILE).write_text(json.dumps(data))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(state.step))
    if rank == 0:
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def stopped(error, run, newest):
    """The NonFiniteError that ends the run: the step's own message, the newest checkpoint and what to do."""
    where = f"{run.url}/{newest}" if newest else "none (the run has no checkpoint yet)"
    return NonFiniteError(f"{error}. Nothing of this step was applied or saved; the newest good checkpoint is {where}. "
                          "A retry computes the same step again: change what made the run diverge (train.lr, "
                          "train.lr_d, ...) and rerun to continue from that checkpoint")


def train_loop_per_worker(config):
    """config: {"cfg": Config.to_dict(), "student_kwargs": CTMPrecond kwargs, "num_records": cache size or None,
    "teacher_start": URL of the mixture teacher's student start or None}."""
    cfg = load_config(base=config["cfg"])
    t = cfg.train
    quiet_report_logs()
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    run = RunDir(t.storage_path, t.run_name, t.storage_options)
    grid = cfg.grid.grid()
    restoring = ray.train.get_checkpoint() is not None or t.init_checkpoint is not None
    teacher = build_teacher(cfg, device) if needs_teacher(cfg, restoring) else None
    kwargs = config["student_kwargs"]
    start = None
    if config.get("teacher_start") and not restoring:
        start = load_teacher_start(config["teacher_start"], cfg.cache.storage_options)
    state = build_state(cfg, kwargs, teacher, device, start)
    how, data = restore(state, cfg, device)
    state.G = ray.train.torch.prepare_model(state.G)
    if state.D is not None:
        state.D = ray.train.torch.prepare_model(state.D)
    if t.teacher_mode == "online":
        src = open_dataset(cfg.data)
        source = OnlineBatches(src, src.labels, cfg, grid, rank, world_size)
    else:
        M, share = config["num_records"], t.batch_size // world_size
        data = cached_position(data)
        position = worker_positions(data, world_size)[rank] if data else None
        source = CachedBatches(ray.train.get_dataset_shard("train"), share, grid, t.seed, t.queue_steps,
                               position, stream_epoch(data, M, world_size) * (M // world_size),
                               getattr(torch, cfg.cache.dtype))
    step_fn = CTMStep(cfg, grid, teacher, device, rank, world_size)
    log = ProgressLog(run, cfg, state.step) if rank == 0 else None
    listeners = Listeners(run, cfg, state.step) if rank == 0 else None
    if rank == 0:
        say(f"[train] {how}; {world_size} worker(s) on {device}; run directory {run.url}")
    stats, clock = {}, None
    newest = checkpoint_dir_name(state.step) if ray.train.get_checkpoint() is not None else None  # newest good one
    try:
        while state.step < t.steps:
            d_step = is_discriminator_step(state.step, t.gan_start)
            batch = source(state.step)
            clock = clock or TrainClock()  # from the first batch on: starting the data stream is start-up
            stats.update(step_fn(state, batch))
            state.step += 1
            lr, lr_d = state.opt_G.param_groups[0]["lr"], state.opt_D.param_groups[0]["lr"] if state.opt_D else 0.0
            logged = log.step(state.step, stats, lr, lr_d, device) if rank == 0 else None
            if logged:
                listeners.log(state.step, logged)
            metrics = {"step": state.step, "kind": "D" if d_step else "G", **stats, "lr": lr, "lr_d": lr_d,
                       **(logged or {})}
            if state.step % t.checkpoint_every == 0 or state.step == t.steps:
                started = time.perf_counter()
                parts = finite_parts(state)
                if rank == 0:
                    write_samples(state, run, kwargs["label_dim"], device, grid)
                    log.flush()
                    listeners.flush()
                report(state, parts, cfg, source, clock.stamp(metrics), rank, world_size, device)
                clock.resume()
                newest = checkpoint_dir_name(state.step)
                if rank == 0:
                    log.pause(time.perf_counter() - started)
            elif log_step(state.step, t) and report_due(device, world_size):
                ray.train.report(clock.stamp(metrics))
                clock.resume()
    except NonFiniteError as e:
        raise stopped(e, run, newest) from None
    finally:
        if rank == 0:
            listeners.close()
