"""The teacher's probability-flow ODE solvers: dx/dt = (x − D(x, t)) / t (EDM eq. 3 with σ(t) = t).

`heun_step` is the one Heun step; every other solve here (and the CTM segment solver, `ctm.training.heun_segment`) is
made of it.
"""

import torch


def _per_sample(t, x):
    """A time as a factor of x: a float as it is, a (B,) tensor broadcast over x's other dimensions."""
    return t.reshape(-1, *[1] * (x.ndim - 1)) if torch.is_tensor(t) else t


def heun_step(denoise, x, t_cur, t_next, class_labels=None):
    """One Heun step from t_cur to t_next > 0: Euler predictor, trapezoid corrector (2 NFE; EDM Alg. 1). The times are
    floats, or (B,) tensors of per-sample times in x's dtype."""
    d_cur = (x - denoise(x, t_cur, class_labels)) / _per_sample(t_cur, x)
    x_euler = x + _per_sample(t_next - t_cur, x) * d_cur
    d_next = (x_euler - denoise(x_euler, t_next, class_labels)) / _per_sample(t_next, x)
    return x + _per_sample(t_next - t_cur, x) * 0.5 * (d_cur + d_next)


def heun(denoise, x, t_steps, class_labels=None):
    """The Heun state at t_steps[-1] from x at t_steps[0] (all > 0): len(t_steps) − 1 steps."""
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        x = heun_step(denoise, x, float(t_cur), float(t_next), class_labels)
    return x


def heun_trajectory(denoise, x, t_steps, class_labels=None):
    """Every Heun state along t_steps (all > 0, as the CTM grid ending at σ_min): returns (len(t_steps), *x.shape)."""
    states = [x]
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        states.append(heun_step(denoise, states[-1], float(t_cur), float(t_next), class_labels))
    return torch.stack(states)


def heun_from_starts(denoise, x_start, n, t_steps, class_labels=None):
    """Heun states of each sample from its own start index n down t_steps: (B, N, ...), NaN before n.

    Step i → i+1 runs on the samples with n ≤ i only, so a sample's states never depend on the others.
    """
    B, N = len(x_start), len(t_steps)
    states = x_start.new_full((B, N, *x_start.shape[1:]), float("nan"))
    states[torch.arange(B, device=x_start.device), n] = x_start
    for i in range(N - 1):
        act = (n <= i).nonzero().squeeze(1)
        if len(act):
            labels = None if class_labels is None else class_labels[act]
            states[act, i + 1] = heun_step(denoise, states[act, i], float(t_steps[i]), float(t_steps[i + 1]), labels)
    return states


def edm_sampler(denoise, latents, t_steps, class_labels=None):
    """EDM's deterministic sampler: Heun on t_steps, then one Euler step to σ = 0 (18 steps = 35 NFE)."""
    x = heun(denoise, latents * float(t_steps[0]), t_steps, class_labels)
    return denoise(x, float(t_steps[-1]), class_labels)  # Euler to 0: x + (0 − t)(x − D)/t = D
