"""Negative log-likelihood through the probability-flow ODE (Song et al. 2021, §D.2), score from g(x, t, t).

d/dt log p_t(x_t) = −∇·f(x_t, t) along dx/dt = f(x, t) = (x − D(x, t)) / t, so
log p_{σ_min}(x) = log N(x_T; 0, T²I) + ∫_{σ_min}^{T} ∇·f(x_t, t) dt, integrated from the data side up to T.
"""

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .schedule import SIGMA_MAX, SIGMA_MIN


def exact_divergence(f, x):
    """∇·f at x for each sample, one backward pass per dimension (for small D)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = f(x).flatten(1)
        div = torch.zeros(x.shape[0], dtype=y.dtype, device=x.device)
        for i in range(y.shape[1]):
            div += torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)[0].flatten(1)[:, i]
    return y.reshape(x.shape).detach(), div.detach()


def hutchinson_divergence(f, x, eps):
    """Unbiased estimate E[εᵀ (∂f/∂x) ε] with a fixed Rademacher ε (Hutchinson 1989)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = f(x)
        vjp, = torch.autograd.grad((y * eps).sum(), x)
    return y.detach(), (vjp * eps).flatten(1).sum(1).detach()


def log_likelihood(denoise, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, exact=None, rtol=1e-5, atol=1e-5,
                   generator=None, log_prior=None):
    """log p_{σ_min}(x) in nats per sample; `denoise(x, σ)` is D (for a CTM student: σ ↦ g(x, σ, σ)).

    `log_prior(x_T)` defaults to N(0, σ_max² I); `exact` (default: D ≤ 64) picks the exact divergence over Hutchinson's.
    """
    shape, D = x.shape, x[0].numel()
    exact = D <= 64 if exact is None else exact
    eps = torch.randint(0, 2, shape, generator=generator).to(x) * 2 - 1

    def f(x_t, t):
        return (x_t - denoise(x_t, t)) / t

    def rhs(t, state):
        x_t = torch.from_numpy(state[:-shape[0]]).reshape(shape).to(x)
        div_fn = exact_divergence if exact else lambda g, z: hutchinson_divergence(g, z, eps)
        dx, div = div_fn(lambda z: f(z, float(t)), x_t)
        return np.concatenate([dx.flatten().double().cpu().numpy(), div.double().cpu().numpy()])

    state0 = np.concatenate([x.detach().double().cpu().flatten().numpy(), np.zeros(shape[0])])
    sol = solve_ivp(rhs, (sigma_min, sigma_max), state0, rtol=rtol, atol=atol, method="RK45")
    if not sol.success:
        raise RuntimeError(f"the probability-flow ODE solve failed: {sol.message}")
    x_T = torch.from_numpy(sol.y[:-shape[0], -1]).reshape(shape)
    delta = torch.from_numpy(sol.y[-shape[0]:, -1])
    if log_prior is None:
        return gaussian_log_prior(x_T, sigma_max) + delta
    return log_prior(x_T).double().cpu() + delta


def gaussian_log_prior(x_T, sigma_max):
    """log N(x_T; 0, σ_max² I) per sample."""
    D = x_T[0].numel()
    return -0.5 * (x_T.flatten(1) ** 2).sum(1) / sigma_max ** 2 - D * math.log(sigma_max * math.sqrt(2 * math.pi))


def bits_per_dim(log_p, dim, bins=256):
    """NLL in bits/dim of [−1, 1] data quantised to `bins` levels: −log p/(D ln 2) + log2(bins/2) (the 7-bpd offset)."""
    return -log_p / (dim * math.log(2)) + math.log2(bins / 2)
