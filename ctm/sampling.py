"""CTM sampling: γ-sampling (paper Alg. 2, docs/method.md §4) and its general jump-and-renoise form."""

import math

import torch

from .schedule import Grid


def jump_sample(G, x_T, t_steps, s_steps, class_labels=None, generator=None):
    """x̃ = G(x_{t_n}, t_n, s_n), then renoise to t_{n+1} ≥ s_n: x_{t_{n+1}} = x̃ + √(t_{n+1}² − s_n²)·ε.

    x_T is already at noise level t_steps[0]; the last jump lands at s_steps[-1] with no noise after it.
    """
    if len(s_steps) != len(t_steps) - 1 or any(s > t for s, t in zip(s_steps, t_steps[1:])):
        raise ValueError(f"need one s per jump with s_n <= t_(n+1); got t={list(t_steps)}, s={list(s_steps)}")
    x = x_T
    for n, (t, s) in enumerate(zip(t_steps[:-1], s_steps)):
        x = G(x, float(t), float(s), class_labels)
        if n < len(s_steps) - 1:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(max(float(t_steps[n + 1]) ** 2 - float(s) ** 2, 0.0)) * eps
    return x.clamp(-1, 1)


def gamma_steps(nfe, gamma, grid=Grid()):
    """The γ-sampler's times on `grid`'s σ range and ρ: a ρ-ramp of nfe+1 points, and the landings
    s_n = √(1−γ²)(t_{n+1} − σ_min) + σ_min (`gamma_landings`)."""
    if nfe < 1 or not 0 <= gamma <= 1:
        raise ValueError(f"need nfe >= 1 and 0 <= gamma <= 1, got nfe={nfe}, gamma={gamma}")
    t_steps = grid.sampling_times(nfe).tolist()
    return t_steps, gamma_landings(t_steps, gamma)


def gamma_sample(G, latents, nfe, gamma, class_labels=None, generator=None, grid=Grid()):
    """γ = 0: deterministic long jumps (the `exact` sampler); γ = 1: the CM multistep sampler. latents ~ N(0, I)."""
    t_steps, s_steps = gamma_steps(nfe, gamma, grid)
    return jump_sample(G, latents * t_steps[0], t_steps, s_steps, class_labels, generator)


def two_step_times(grid, i1, i2):
    """The 2-step `gamma` variant's times on `grid`: jump σ_max → t_{i1}, renoise to t_{i2} (i2 <= i1), jump to σ_min.
    Returns (t_steps, s_steps)."""
    if not 0 < i2 <= i1 < grid.N - 1:
        raise ValueError(f"need 0 < i2 <= i1 < N-1 = {grid.N - 1} on the {grid.N}-point grid, got i1={i1}, i2={i2}")
    t = grid.t.tolist()
    return [t[0], t[i2], t[-1]], [t[i1], t[-1]]


def two_step_sample(G, latents, grid, i1, i2, class_labels=None, generator=None):
    """The 2-step `gamma` variant on `grid` (a `Grid`); see `two_step_times`."""
    t_steps, s_steps = two_step_times(grid, i1, i2)
    return jump_sample(G, latents * t_steps[0], t_steps, s_steps, class_labels, generator)


def gamma_landings(t_steps, gamma):
    """The γ-law's landing times for given jump times t_0 > … > t_N = σ_min: s_n = √(1−γ²)(t_{n+1} − σ_min) + σ_min,
    and s_{N−1} = σ_min (docs/method.md §4, the official sample_util)."""
    sigma_min = float(t_steps[-1])
    if not 0 <= gamma <= 1 or len(t_steps) < 2 or any(b > a for a, b in zip(t_steps, t_steps[1:])):
        raise ValueError(f"need 0 <= gamma <= 1 and at least 2 non-increasing jump times; got gamma={gamma}, "
                         f"t={list(t_steps)}")
    s_steps = [min(math.sqrt(1 - gamma ** 2) * (float(t) - sigma_min) + sigma_min, float(t)) for t in t_steps[1:]]
    s_steps[-1] = sigma_min
    return s_steps


def gamma_sample_at(G, latents, t_steps, gamma, class_labels=None, generator=None):
    """γ-sampling (paper Alg. 2) along explicit jump times t_0 > t_1 > … > t_N = σ_min: x_{t_0} = t_0·latents; per
    step x̃ = G(x_{t_n}, t_n, s_n), then x_{t_{n+1}} = x̃ + √(t_{n+1}² − s_n²)·ε. gamma_sample is this on the ρ-ramp."""
    return jump_sample(G, latents * float(t_steps[0]), list(t_steps), gamma_landings(t_steps, gamma), class_labels,
                       generator)
