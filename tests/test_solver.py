import numpy as np
import torch
from scipy.integrate import solve_ivp

from ctm.schedule import karras_grid
from ctm.solver import edm_sampler, heun, heun_step, heun_trajectory


def reference_solve(teacher, x, t_from, t_to):
    """A fine adaptive solve of dx/dt = (x − D(x, t))/t in log time τ = ln t, dx/dτ = x − D(x, e^τ): smooth down
    to σ_min, so it takes fewer steps than in t; it agrees with a 1e-12 solve in t to 1e-10 (Heun's errors: ≥ 4e-4)."""
    def rhs(tau, y):
        y = torch.from_numpy(y).reshape(x.shape)
        return (y - teacher.denoise(y, float(np.exp(tau)))).flatten().numpy()
    sol = solve_ivp(rhs, (np.log(t_from), np.log(t_to)), x.flatten().numpy(), rtol=1e-10, atol=1e-10,
                    method="DOP853")
    return torch.from_numpy(sol.y[:, -1]).reshape(x.shape)


def test_heun_converges_at_second_order(gmm2d):
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80
    exact = reference_solve(gmm2d, x_T, 80.0, 0.002)
    errors = [(heun_trajectory(gmm2d.denoise, x_T, karras_grid(N))[-1] - exact).abs().max().item()
              for N in (40, 80, 160)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert errors[-1] < 1e-3 and all(1.8 < p < 2.3 for p in orders), (errors, orders)


def test_trajectory_holds_every_state_and_restarts_exactly(gmm2d):
    t = karras_grid(18)
    x = torch.randn(4, 2, dtype=torch.float64) * 80
    states = heun_trajectory(gmm2d.denoise, x, t)
    assert states.shape == (18, 4, 2) and torch.equal(states[0], x)
    # a segment restarted from state n reproduces the later states bit for bit (what the cache relies on)
    n = 7
    assert torch.equal(heun_trajectory(gmm2d.denoise, states[n], t[n:]), states[n:])
    assert torch.equal(heun_step(gmm2d.denoise, states[3], float(t[3]), float(t[4])), states[4])


def test_edm_sampler_counts_and_final_step(gmm2d):
    calls = []

    def denoise(x, sigma, class_labels=None):
        calls.append(sigma)
        return gmm2d.denoise(x, sigma)

    t = karras_grid(18)
    latents = torch.randn(3, 2, dtype=torch.float64)
    out = edm_sampler(denoise, latents, t)
    assert len(calls) == 35  # 17 Heun steps + one Euler step to σ = 0
    last = heun_trajectory(gmm2d.denoise, latents * 80, t)[-1]
    torch.testing.assert_close(out, gmm2d.denoise(last, 0.002))


def test_heun_step_takes_per_sample_times_as_floats_do(gmm2d):
    t = karras_grid(18)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 20
    i = torch.tensor([2, 5, 11])
    batched = heun_step(gmm2d.denoise, x, t[i], t[i + 1])
    for row, j in enumerate(i.tolist()):
        assert torch.equal(batched[row], heun_step(gmm2d.denoise, x[row:row + 1], float(t[j]), float(t[j + 1]))[0])
    assert torch.equal(heun(gmm2d.denoise, x, t), heun_trajectory(gmm2d.denoise, x, t)[-1])
