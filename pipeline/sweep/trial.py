"""One trial of a loss-weight sweep: a Tune function trainable that drives Ray Train runs of its config.

Train V2 refuses `Tuner(TorchTrainer)`, so a trial is a small driver. It trains in chunks, up to each milestone
(sweep.report_every steps apart), with `run_training` under one run name and storage, so each chunk resumes the
run from its newest checkpoint (written at every chunk's last step). The shared evaluation actors score that
checkpoint at the sampling setting (sweep.nfe, sweep.gamma), and the FID goes to Tune, where ASHA keeps or stops
the trial. With sweep.schedule_trials = k > 0 it is scored at k schedules instead (that setting and k − 1 random
draws of the schedule search's space at sweep.nfe, the same draws for every trial), and the best FID goes to Tune.
The Tune checkpoint is a pointer (trial.json) to the Train checkpoint, so no weights are copied and a restored trial
continues at its next milestone.
"""

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.fs
import ray
from ray import tune

from pipeline.config import load_config
from pipeline.evaluation import Setting
from pipeline.evaluation.models import load_checkpoint_model
from pipeline.evaluation.report import public
from pipeline.schedule_search.space import random_schedules
from pipeline.train import run_training

TRIAL_FILE = "trial.json"


def milestones(steps, every):
    """Steps at which a trial reports: every `every` steps, and at the last step."""
    return sorted({*range(every, steps, every), steps})


def plain(value):
    """Tune's draws may be numpy scalars; the config takes Python ones."""
    return value.item() if isinstance(value, np.generic) else value


def trial_config(base, params, train_root, trial_id):
    """The trial's Config: the sweep's config with the drawn values, and its own Train run <train_root>/<trial id>."""
    overrides = [(key, plain(value)) for key, value in params.items()]
    return load_config(base=base, overrides=overrides + [("train.storage_path", train_root),
                                                         ("train.run_name", trial_id)])


def chunk_config(cfg, start, stop):
    """`cfg` trained up to step `stop` (a cosine learning rate still decays over the whole run); the test-only fault (train.fail_at_step) armed only in the chunk holding it."""
    fail = cfg.train.fail_at_step
    armed = fail if fail is not None and start <= fail < stop else None
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=stop, fail_at_step=armed,
                                                              lr_decay_steps=cfg.train.lr_decay_steps or cfg.train.steps))


def read_pointer(checkpoint):
    with checkpoint.as_directory() as d:
        return json.loads(Path(d, TRIAL_FILE).read_text())


def score(pool, checkpoint, settings, ema_rate):
    """The evaluations of a Train checkpoint at `settings`, spread over the pool's actors. A checkpoint on local (or
    shared) disk is read by the actors; one in object storage is loaded here and its weights sent along once."""
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        source = checkpoint.path
    else:
        with checkpoint.as_directory() as d:
            model = load_checkpoint_model(d, ema_rate)
        model.info["checkpoint"] = checkpoint.path
        source = ray.put(model)
    return [public(r) for batch in ray.get([pool.submit(source, [s]) for s in settings]) for r in batch]


def schedule_note(trial_id, evaluations):
    """The line a trial prints when it scores several schedules: the best against the fixed setting, and the cost."""
    best, fixed = min(evaluations, key=lambda r: r["fid"]), evaluations[0]
    extra = sum(r["seconds"] for r in evaluations[1:])
    return (f"[schedule search] trial {trial_id} step {fixed['model']['step']}: FID {best['fid']:.4g} at "
            f"{best['setting']['label']} (fixed {fixed['setting']['label']}: {fixed['fid']:.4g}); {len(evaluations) - 1} "
            f"extra schedules cost {extra:.1f} s of evaluation (the fixed one {fixed['seconds']:.1f} s)")


def pin_teacher(base, teacher):
    """base with teacher.path set to a file of the driver's fitted mixture. A mixture fitted here could differ in its
    last bits (BLAS thread counts change the fit), hence in its digest, and the trajectory cache would refuse it."""
    if teacher is None:
        return base
    file = Path(tune.get_context().get_trial_dir()) / "teacher.npz"
    teacher.save(file)
    return {**base, "teacher": {**base["teacher"], "path": str(file)}}


def run_trial(params, base, pool, train_root, teacher=None):
    """The trainable: params are the drawn {dotted key: value}; base the sweep's Config.to_dict(); teacher the
    digits mixture the driver fitted (None when teacher.path names one)."""
    os.chdir(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()))  # Tune starts a trial in its own folder
    cfg = trial_config(pin_teacher(base, teacher), params, train_root, tune.get_context().get_trial_id())
    checkpoint = tune.get_checkpoint()
    done = read_pointer(checkpoint)["step"] if checkpoint else 0
    s = cfg.sweep
    for stop in [m for m in milestones(cfg.train.steps, s.report_every) if m > done]:
        settings = random_schedules(s.nfe, s.gamma, s.schedule_trials, [s.seed, stop], cfg.grid) \
            if s.schedule_trials else [Setting(s.nfe, s.gamma)]
        started = time.perf_counter()
        result = run_training(chunk_config(cfg, done, stop))
        trained = time.perf_counter()
        evaluations = score(pool, result.checkpoint, settings, cfg.eval.ema_rate)
        evaluation = min(evaluations, key=lambda r: r["fid"])
        metrics = {"fid": evaluation["fid"], "step": evaluation["model"]["step"],
                   "checkpoint_path": result.checkpoint.path, "train_seconds": round(trained - started, 3),
                   "eval_seconds": round(time.perf_counter() - trained, 3)}
        if s.schedule_trials:
            metrics.update(fid_fixed=evaluations[0]["fid"],
                           schedule_seconds=round(sum(r["seconds"] for r in evaluations[1:]), 3))
            print(schedule_note(tune.get_context().get_trial_id(), evaluations), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, TRIAL_FILE).write_text(json.dumps({**metrics, "evaluation": evaluation}, default=str))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        done = stop
