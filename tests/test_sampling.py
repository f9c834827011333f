import math

import pytest
import torch

from ctm.sampling import gamma_landings, gamma_sample, gamma_sample_at, gamma_steps, jump_sample, two_step_sample
from ctm.schedule import Grid


def test_gamma_steps():
    t, s = gamma_steps(2, 0.0)
    assert math.isclose(t[1], 2.5156, abs_tol=1e-3) and s == [t[1], 0.002] and t[0] == 80 and t[-1] == 0.002
    t, s = gamma_steps(4, 1.0)
    assert s == [0.002] * 4
    t, s = gamma_steps(3, 0.5)
    assert math.isclose(s[0], math.sqrt(0.75) * (t[1] - 0.002) + 0.002) and s[-1] == 0.002
    with pytest.raises(ValueError):
        gamma_steps(0, 0.0)


def test_gamma_zero_lands_where_the_teacher_ode_lands(gmm2d):
    G = lambda x, t, s, y=None: gmm2d.flow_map(x, t, s)
    latents = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = gmm2d.flow_map(latents * 80, 80.0, 0.002).clamp(-1, 1)
    for nfe in (1, 2, 4):
        torch.testing.assert_close(gamma_sample(G, latents, nfe, 0.0), target, atol=1e-6, rtol=0)


def test_gamma_one_renoises_and_two_step_variant(gmm2d):
    calls = []

    def G(x, t, s, y=None):
        calls.append((t, s))
        return gmm2d.flow_map(x, t, s)

    latents = torch.randn(4, 2, dtype=torch.float64)
    out1 = gamma_sample(G, latents, 3, 1.0, generator=torch.Generator().manual_seed(0))
    out2 = gamma_sample(G, latents, 3, 1.0, generator=torch.Generator().manual_seed(1))
    assert [s for _, s in calls] == [0.002] * 6 and not torch.allclose(out1, out2)
    calls.clear()
    t = Grid(40).t
    two_step_sample(G, latents, Grid(40), i1=36, i2=20)
    assert calls == [(80.0, float(t[36])), (float(t[20]), 0.002)]
    assert math.isclose(float(t[36]), 0.0108, abs_tol=2e-4) and math.isclose(float(t[20]), 2.24, abs_tol=0.01)
    with pytest.raises(ValueError):
        jump_sample(G, latents, [80.0, 1.0, 0.002], [2.0, 0.002])  # s above the next t


def test_gamma_zero_lands_exactly_on_the_next_time():
    for nfe in range(1, 40):
        t, s = gamma_steps(nfe, 0.0)
        assert all(s_n <= t_n for s_n, t_n in zip(s, t[1:])) and s[:-1] == t[1:-1]


@pytest.mark.parametrize("nfe, gamma", [(1, 0.0), (2, 0.0), (2, 0.3), (3, 0.7), (4, 1.0)])
def test_gamma_sample_at_the_default_times_is_gamma_sample(gmm2d, nfe, gamma):
    G = lambda x, t, s, y=None: gmm2d.flow_map(x, t, s)
    latents = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t_steps, s_steps = gamma_steps(nfe, gamma)
    assert gamma_landings(t_steps, gamma) == s_steps
    expected = gamma_sample(G, latents, nfe, gamma, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(gamma_sample_at(G, latents, t_steps, gamma, generator=torch.Generator().manual_seed(3)),
                               expected, atol=0, rtol=0)


def test_gamma_sample_at_explicit_times_jumps_as_the_law_says():
    calls = []

    def G(x, t, s, y=None):
        calls.append((t, s))
        return x

    gamma_sample_at(G, torch.zeros(2, 3), [80.0, 1.0, 0.1, 0.002], 0.6, generator=torch.Generator().manual_seed(0))
    assert [t for t, _ in calls] == [80.0, 1.0, 0.1] and calls[-1][1] == 0.002
    assert math.isclose(calls[0][1], 0.8 * (1.0 - 0.002) + 0.002) and math.isclose(calls[1][1], 0.8 * 0.098 + 0.002)
    with pytest.raises(ValueError, match="non-increasing"):
        gamma_landings([80.0, 0.1, 1.0, 0.002], 0.0)
    with pytest.raises(ValueError, match="gamma"):
        gamma_landings([80.0, 0.002], 1.5)


def test_gamma_steps_follow_the_grid_they_are_given():
    grid = Grid(12, 0.004, 40.0, 5.0)
    t, s = gamma_steps(2, 0.0, grid)
    assert t[0] == 40.0 and t[-1] == 0.004 and s == [t[1], 0.004]
    assert math.isclose(t[1], ((40 ** 0.2 + 0.004 ** 0.2) / 2) ** 5, rel_tol=1e-14)  # the ρ-ramp's midpoint, ρ = 5
