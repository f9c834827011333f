"""One trial of a loss-weight sweep: a Tune function trainable that starts its Ray Train run once, for all of
train.steps, and reports the FID at each milestone (sweep.report_every steps apart, and the last step) to Tune.

Train V2 refuses `Tuner(TorchTrainer)`, so a trial is a small driver. Its run checkpoints at least at every milestone
(trial_config). On the Train controller, MilestoneReports hands each milestone's checkpoint to the trial through a Ray
queue and waits; the trial scores it with the shared evaluation actors at the sampling setting (sweep.nfe,
sweep.gamma) and reports the FID to Tune, where ASHA keeps or stops the trial (a stopped trial's actor ends, and its
Train run with it), then lets training go on. With sweep.schedule_trials = k > 0 it is scored at k schedules instead
(that setting and k − 1 random draws of the schedule search's space at sweep.nfe, the same draws for every trial), and
the best FID goes to Tune. The Tune checkpoint is a pointer (trial.json) to the Train checkpoint, so no weights are
copied; a restored trial continues its Train run from the run's newest checkpoint, first reporting the milestones
that the run passed after the trial's last report.
"""

import json
import math
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.fs
import ray
from ray import tune
from ray.train import Checkpoint, UserCallback
from ray.util.queue import Queue

from pipeline.checkpoint import checkpoint_dir_step
from pipeline.config import load_config
from pipeline.evaluation import Setting
from pipeline.evaluation.models import load_checkpoint_model
from pipeline.evaluation.report import public
from pipeline.schedule_search.space import random_schedules
from pipeline.train import run_training
from pipeline.train.rundir import RunDir

TRIAL_FILE = "trial.json"


def milestones(steps, every):
    """Steps at which a trial reports: every `every` steps, and at the last step."""
    return sorted({*range(every, steps, every), steps})


def plain(value):
    """Tune's draws may be numpy scalars; the config takes Python ones."""
    return value.item() if isinstance(value, np.generic) else value


def trial_config(base, params, train_root, trial_id):
    """The trial's Config: the sweep's config with the drawn values, its own Train run <train_root>/<trial id>, and a
    checkpoint at every milestone (train.checkpoint_every becomes its greatest common divisor with sweep.report_every)."""
    overrides = [(key, plain(value)) for key, value in params.items()]
    cfg = load_config(base=base, overrides=overrides + [("train.storage_path", train_root),
                                                        ("train.run_name", trial_id)])
    every = math.gcd(cfg.train.checkpoint_every, cfg.sweep.report_every)
    return load_config(base=cfg.to_dict(), overrides=[("train.checkpoint_every", every)])


class TrialEnded(Exception):
    """Raised on the Train controller when the trial ended at a milestone (ASHA stopped it, or scoring failed): the
    run stops there (Train V2 never retries an error of the controller)."""


class MilestoneReports(UserCallback):
    """On the Train controller: each reported checkpoint at one of `steps` goes to the trial (`checkpoints` queue),
    and training waits until the trial has reported its FID to Tune (`scored` queue: True goes on, False ends)."""

    def __init__(self, steps, checkpoints, scored):
        self.steps, self.checkpoints, self.scored = set(steps), checkpoints, scored

    def after_report(self, run_context, metrics, checkpoint):
        step = metrics[0]["step"]
        if checkpoint is not None and step in self.steps:
            self.checkpoints.put((metrics[0], checkpoint))
            if not self.scored.get():
                raise TrialEnded(f"the trial ended at its milestone {step}; its Train run stops there")


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


def report_milestone(cfg, pool, step, checkpoint, train_seconds):
    """Score the Train checkpoint of milestone `step` and report it to Tune with a pointer to it (trial.json)."""
    s = cfg.sweep
    settings = random_schedules(s.nfe, s.gamma, s.schedule_trials, [s.seed, step], cfg.grid) \
        if s.schedule_trials else [Setting(s.nfe, s.gamma)]
    started = time.perf_counter()
    evaluations = score(pool, checkpoint, settings, cfg.eval.ema_rate)
    evaluation = min(evaluations, key=lambda r: r["fid"])
    metrics = {"fid": evaluation["fid"], "step": evaluation["model"]["step"], "checkpoint_path": checkpoint.path,
               "train_seconds": train_seconds, "eval_seconds": round(time.perf_counter() - started, 3)}
    if s.schedule_trials:
        metrics.update(fid_fixed=evaluations[0]["fid"],
                       schedule_seconds=round(sum(r["seconds"] for r in evaluations[1:]), 3))
        print(schedule_note(tune.get_context().get_trial_id(), evaluations), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, TRIAL_FILE).write_text(json.dumps({**metrics, "evaluation": evaluation}, default=str))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def passed_milestones(cfg, steps):
    """The run's registered checkpoints at `steps` (milestones the run passed after the trial's last report), as
    (step, ray.train.Checkpoint), oldest first."""
    run = RunDir(cfg.train.storage_path, cfg.train.run_name, cfg.train.storage_options)
    filesystem = run.ray_storage_filesystem()
    return [(checkpoint_dir_step(name), Checkpoint(run.full(name), filesystem)) for name in run.registered()
            if checkpoint_dir_step(name) in steps]


def ended(trainer, timeout=120):
    """Wait for the trial's Ray Train run to end before the trial does: Tune ends a trial's actor at once after its
    last report, and a Train controller that dies with it leaves its workers' placement group (their CPUs) held for the
    rest of the sweep, so later trials wait for CPUs forever. Hence the last milestone is reported after the run ends,
    and a trial stopped by ASHA waits for its run to stop."""
    trainer.join(timeout)


def run_trial(params, base, pool, train_root, teacher=None):
    """The trainable: params are the drawn {dotted key: value}; base the sweep's Config.to_dict(); teacher the
    digits mixture the driver fitted (None when teacher.path names one)."""
    os.chdir(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()))  # Tune starts a trial in its own folder
    cfg = trial_config(pin_teacher(base, teacher), params, train_root, tune.get_context().get_trial_id())
    pointer = tune.get_checkpoint()
    done = read_pointer(pointer)["step"] if pointer else 0
    steps = [m for m in milestones(cfg.train.steps, cfg.sweep.report_every) if m > done]
    for step, checkpoint in passed_milestones(cfg, steps):
        report_milestone(cfg, pool, step, checkpoint, None)
        steps.remove(step)
    checkpoints, scored = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
    outcome = {}

    def train():  # Ray Train's driver, beside this thread (which Tune's report must run in)
        try:
            outcome["result"] = run_training(cfg, callbacks=[MilestoneReports(steps, checkpoints, scored)])
        except BaseException as e:
            outcome["error"] = e
        finally:
            checkpoints.put(None)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    last = None
    try:
        while (item := checkpoints.get()) is not None:
            metrics, checkpoint = item
            if metrics["step"] == cfg.train.steps:  # reported once the run has ended (below)
                last = item
            else:
                report_milestone(cfg, pool, metrics["step"], checkpoint, metrics.get("train_seconds"))
            scored.put(True)
    except BaseException:  # Tune's report exits this thread when ASHA stops the trial
        scored.put(False)
        ended(trainer)
        raise
    ended(trainer)
    if "error" in outcome:
        raise outcome["error"]
    if last is not None:
        metrics, checkpoint = last
        report_milestone(cfg, pool, metrics["step"], checkpoint, metrics.get("train_seconds"))
