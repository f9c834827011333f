"""Fault injection for tests (the `kill_rank0` fixture of conftest.py): rank 0's Ray Train worker process exits
(os._exit(1), as a killed process does) once, as it is about to take a given step. A marker file
`killed_at_step_<step>.marker` in the run directory keeps the restarted worker from exiting again.

The driver hands Ray Train its training function (pipeline.train.trainer.train_loop_per_worker, looked up when the
trainer is built); kill_rank0 swaps in one that, in the worker, wraps the loop's step object
(pipeline.train.loop.CTMStep) and then runs the real loop. A sweep's trials build their trainers in their own
processes, so it swaps the sweep's trainable (pipeline.sweep.tuner.run_trial) too. Workers cannot import tests/:
this module travels to them by value (cloudpickle).
"""

import os
import sys

import ray.cloudpickle
import ray.train

from pipeline.sweep import trial as trial_module
from pipeline.sweep import tuner as tuner_module
from pipeline.train import loop as loop_module
from pipeline.train import trainer as trainer_module
from pipeline.train.rundir import RunDir

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def marker(step):
    return f"killed_at_step_{step}.marker"


def dying_step(make_step, step, when):
    """A CTMStep factory whose steps end rank 0's process once, before step `step`, in a run whose Config `when`
    accepts (every run when None)."""
    def make(cfg, *args, **kwargs):
        take = make_step(cfg, *args, **kwargs)
        run = RunDir(cfg.train.storage_path, cfg.train.run_name, cfg.train.storage_options)
        dies = ray.train.get_context().get_world_rank() == 0 and (when is None or when(cfg))

        def take_or_die(state, batch):
            if dies and state.step == step and not run.exists(marker(step)):
                run.write_text(marker(step), "")
                os._exit(1)
            return take(state, batch)
        return take_or_die
    return make


def swapped(module, name, replacement, call, *args, **kwargs):
    """call(*args, **kwargs) with module.<name> set to replacement(module.<name>) meanwhile (in this process)."""
    real = getattr(module, name)
    setattr(module, name, replacement(real))
    try:
        return call(*args, **kwargs)
    finally:
        setattr(module, name, real)


def dying_loop(step, when):
    """The training function: the real loop, its steps from dying_step (in this worker process)."""
    def train_loop_per_worker(config):
        return swapped(loop_module, "CTMStep", lambda real: dying_step(real, step, when),
                       loop_module.train_loop_per_worker, config)
    return train_loop_per_worker


def dying_trial(step, when):
    """The sweep's trainable: the real trial, its Train runs started with dying_loop (in this trial's process)."""
    def run_trial(params, *args, **kwargs):
        return swapped(trainer_module, "train_loop_per_worker", lambda real: dying_loop(step, when),
                       trial_module.run_trial, params, *args, **kwargs)
    return run_trial


def kill_rank0(monkeypatch, step, when=None):
    """Until `monkeypatch` is undone, every Ray Train run that this process starts, directly or in a sweep's trial,
    loses rank 0's process once before step `step`; `when(cfg)` on the run's Config picks the runs (default: all).
    A later call replaces the earlier one."""
    monkeypatch.setattr(trainer_module, "train_loop_per_worker", dying_loop(step, when))
    monkeypatch.setattr(tuner_module, "run_trial", dying_trial(step, when))
