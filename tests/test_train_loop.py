"""The training loop's pieces that run outside a Train session: sample grids, the checkpoint's data position, the
guard that stops a run at its first non-finite step, and what a Train worker imports."""

import subprocess
import sys

import pytest
import torch
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

from ctm.sampling import gamma_sample
from ctm.schedule import Grid
from pipeline.config import load_config
from pipeline.datasets import load_dataset
from pipeline.images import save_grid
from pipeline.teachers import build_teacher
from pipeline.train.data import OnlineBatches
from pipeline.train.loop import data_position, finite_parts, stopped, write_samples
from pipeline.train.rundir import RunDir
from pipeline.train.state import build_state, student_kwargs
from pipeline.train.step import CTMStep, NonFiniteError
from pipeline.train.trainer import StopOnNonRetryable


def test_sample_grids_use_the_config_grid(tmp_path):
    """The checkpoint's sample grids γ-sample on the config's σ_min, σ_max and ρ, not the built-in 0.002, 80, 7."""
    torch.set_num_threads(1)
    cfg = load_config(overrides=["student.architecture=tiny", "train.distance=l2", "train.ema_rates=[0.9]",
                                 "grid.sigma_min=0.01", "grid.sigma_max=40.0", "grid.rho=5.0"])
    teacher = build_teacher(load_config())
    state = build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu")
    write_samples(state, RunDir(str(tmp_path), "r"), 0, torch.device("cpu"), cfg.grid.grid())
    latents = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for nfe in (1, 2):
        with torch.no_grad():
            save_grid(gamma_sample(state.emas[0.9], latents, nfe, 0.0, grid=Grid(18, 0.01, 40.0, 5.0)),
                      tmp_path / "want.png")
            save_grid(gamma_sample(state.emas[0.9], latents, nfe, 0.0), tmp_path / "default.png")
        got = (tmp_path / "r" / "samples" / f"step_0000000_nfe{nfe}.png").read_bytes()
        assert got == (tmp_path / "want.png").read_bytes() != (tmp_path / "default.png").read_bytes()


class Source:
    def __init__(self, position):
        self.position = lambda step: position


def test_data_position_of_one_worker():
    online = {"mode": "online", "epoch": 2, "offset": 8}
    assert data_position(Source(online), 5, 1, torch.device("cpu")) == online
    cached = {"mode": "cached", "rows": 120, "unused": 40}
    assert data_position(Source(cached), 5, 1, torch.device("cpu")) == \
        {"mode": "cached", "workers": [{"rows": 120, "unused": 40}]}


def test_a_non_finite_step_stops_before_its_update():
    """lr = 1e30: step 0 is finite and throws the weights far out, step 1's loss is NaN. Step 1 raises NonFiniteError
    naming the step and its loss terms, before anything of it is applied (weights, optimiser, EMAs unchanged); a state
    holding a NaN is refused as a checkpoint; the driver's callback turns the worker's error into a stop."""
    torch.set_num_threads(1)
    cfg = load_config(overrides=["student.architecture=tiny", "student.init_from_teacher=false", "train.distance=l2",
                                 "train.batch_size=8", "train.ema_rates=[0.9]", "train.lr=1e30",
                                 "train.lr_schedule=constant"])
    teacher, grid = build_teacher(cfg), Grid(18)
    images, labels, _ = load_dataset(cfg.data)
    state = build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu")
    source, step = OnlineBatches(images, labels, cfg, grid), CTMStep(cfg, grid, teacher)
    step(state, source(0))
    state.step = 1
    before = {k: v.clone() for k, v in finite_parts(state)["student"].items()}
    opt = {k: v.clone() for k, v in state.opt_G.state_dict()["state"][0].items()}
    with pytest.raises(NonFiniteError, match=r"^step 1: non-finite loss \(loss_ctm nan, loss_dsm nan"):
        step(state, source(1))
    assert all(torch.equal(v, before[k]) for k, v in state.G.state_dict().items())
    assert all(torch.equal(v, opt[k]) for k, v in state.opt_G.state_dict()["state"][0].items())
    next(state.emas[0.9].parameters()).data[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite values in \['ema'\] after the update; no checkpoint"):
        finite_parts(state)
    error = stopped(NonFiniteError("step 1: non-finite loss (loss_ctm nan)"), RunDir("/runs", "r"), "checkpoint_0000000")
    assert "the newest good checkpoint is /runs/r/checkpoint_0000000" in str(error)
    wrapped = UserExceptionWithTraceback(error, "Traceback ...")
    with pytest.raises(NonFiniteError, match="checkpoint_0000000"):
        StopOnNonRetryable().after_exception(None, {0: wrapped})
    StopOnNonRetryable().after_exception(None, {0: UserExceptionWithTraceback(OSError("lost"), "")})  # retried


def test_a_train_worker_does_not_import_torchvision():
    """Importing the loop, the teachers and the step leaves torchvision (and torch._dynamo, which it pulls in) out:
    seconds of imports in every Train worker that builds no torchvision network (docs/benchmarks.md, sweep overhead)."""
    code = ("import sys, pipeline.train.loop, pipeline.teachers, pipeline.train.step; "
            "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
