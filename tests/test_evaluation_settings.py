import math

import pytest
import torch

from ctm.schedule import karras_grid
from pipeline.config import load_config
from pipeline.evaluation.settings import Setting, gamma_settings, sample_batches, two_step_settings

GRID = load_config().grid.grid()


def point_mass_flow(x, t, s, class_labels=None):
    """The exact flow map when the data is a point mass at 0: D = 0, so x_s = (s/t)·x_t."""
    return x * (s / t)


def test_gamma_zero_lands_on_the_next_time_and_gamma_one_on_sigma_min():
    t, s = Setting(2, 0.0).times(GRID)
    assert t[0] == 80 and math.isclose(t[1], 2.5152, rel_tol=1e-3) and t[2] == 0.002  # 80 → 2.515 → 0.002
    assert s == t[1:]
    t, s = Setting(8, 0.0).times(GRID)
    assert s == t[1:]  # exactly, though √1·(t − σ_min) + σ_min rounds above t at some t
    _, s = Setting(4, 1.0).times(GRID)
    assert all(math.isclose(v, 0.002) for v in s)


def test_two_step_times_are_grid_points():
    grid = karras_grid(GRID.N).tolist()
    t, s = Setting(2, None, 14, 7).times(GRID)
    assert t == [grid[0], grid[7], grid[-1]] and s == [grid[14], grid[-1]]
    assert Setting(2, None, 14, 7).label == "2-step i1=14 i2=7"
    with pytest.raises(ValueError, match="i2 <= i1"):
        Setting(2, None, 3, 7).times(GRID)


@pytest.mark.parametrize("kwargs", [dict(nfe=0, gamma=0.0), dict(nfe=2, gamma=1.5), dict(nfe=3, gamma=None, i1=4, i2=2),
                                    dict(nfe=2, gamma=0.5, i1=4, i2=2), dict(nfe=2, gamma=None)])
def test_impossible_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Setting(**kwargs)


def test_setting_lists():
    assert gamma_settings([1, 2], [0, 1]) == [Setting(1, 0.0), Setting(1, 1.0), Setting(2, 0.0), Setting(2, 1.0)]
    assert two_step_settings([[9, 5]]) == [Setting(2, None, 9, 5)]
    with pytest.raises(ValueError, match="pairs"):
        two_step_settings([[9]])


def test_gamma_zero_samples_are_exact_at_every_nfe_and_share_latents():
    draws = {n: torch.cat(list(sample_batches(point_mass_flow, Setting(n, 0.0), GRID, 250, 100, 3, (1, 8, 8))))
             for n in (1, 2, 5)}
    assert draws[1].shape == (250, 1, 8, 8)
    latents = torch.cat([b / 0.002 for b in draws[1].split(100)])
    torch.testing.assert_close(draws[2], draws[1])
    torch.testing.assert_close(draws[5], draws[1])
    assert 0.9 < latents.std() < 1.1  # x = 80·z mapped to σ_min: 0.002·z


def test_renoising_and_seeds_change_samples():
    def draw(setting, seed):
        return torch.cat(list(sample_batches(point_mass_flow, setting, GRID, 64, 32, seed, (1, 8, 8))))
    assert not torch.allclose(draw(Setting(2, 1.0), 0), draw(Setting(2, 0.0), 0))
    assert not torch.allclose(draw(Setting(1, 0.0), 0), draw(Setting(1, 0.0), 1))
    torch.testing.assert_close(draw(Setting(2, 1.0), 0), draw(Setting(2, 1.0), 0))


def test_a_paused_sample_stream_leaves_grad_on_for_its_caller():
    first, second = (sample_batches(point_mass_flow, Setting(1, 0.0), GRID, 64, 32, 0, (1, 8, 8)) for _ in range(2))
    next(first)  # clean-fid pulls the batches it needs and leaves each stream paused
    assert torch.is_grad_enabled()
    next(second)
    del first, second
    assert torch.is_grad_enabled()  # a training step after an in-process evaluation still gets gradients
