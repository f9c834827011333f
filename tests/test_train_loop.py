"""The training loop's pieces that run outside a Train session: sample grids and the checkpoint's data position."""

import torch

from ctm.sampling import gamma_sample
from pipeline.config import load_config
from pipeline.images import save_grid
from pipeline.teachers import build_teacher
from pipeline.train.loop import data_position, write_samples
from pipeline.train.rundir import RunDir
from pipeline.train.state import build_state, student_kwargs


def test_sample_grids_use_the_config_grid(tmp_path):
    """The checkpoint's sample grids γ-sample on the config's σ_min, σ_max and ρ, not the built-in 0.002, 80, 7."""
    torch.set_num_threads(1)
    cfg = load_config(overrides=["student.architecture=tiny", "train.distance=l2", "train.ema_rates=[0.9]",
                                 "grid.sigma_min=0.01", "grid.sigma_max=40.0", "grid.rho=5.0"])
    teacher = build_teacher(load_config())
    state = build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu")
    write_samples(state, RunDir(str(tmp_path), "r"), 0, torch.device("cpu"), cfg.grid)
    latents = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for nfe in (1, 2):
        with torch.no_grad():
            save_grid(gamma_sample(state.emas[0.9], latents, nfe, 0.0, sigma_min=0.01, sigma_max=40.0, rho=5.0),
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
