import copy

import torch

from ctm.schedule import karras_grid
from ctm.solver import heun_trajectory
from ctm.training import ema_update, heun_segment


def test_heun_segment_matches_full_trajectories_per_sample(gmm2d):
    grid = karras_grid(18)
    x_T = torch.randn(6, 2, dtype=torch.float64) * 80
    states = heun_trajectory(gmm2d.denoise, x_T, grid)
    n = torch.tensor([0, 3, 5, 10, 16, 2])
    k = torch.tensor([1, 4, 12, 7, 1, 15])
    x_t = states[n, torch.arange(6)]
    x_u = heun_segment(gmm2d.denoise, x_t, grid, n, k)
    torch.testing.assert_close(x_u, states[n + k, torch.arange(6)], rtol=1e-12, atol=1e-12)


def test_ema_update_closed_form():
    source = torch.nn.Linear(3, 2)
    target = copy.deepcopy(source)
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    ema_update(target, source, 0.9)
    for p_t, p0, p in zip(target.parameters(), before, source.parameters()):
        torch.testing.assert_close(p_t, 0.9 * p0 + 0.1 * p)
