"""The teacher's probability-flow ODE solvers: dx/dt = (x − D(x, t)) / t (EDM eq. 3 with σ(t) = t)."""

import torch


def heun_step(denoise, x, t_cur, t_next, class_labels=None):
    """One Heun step from t_cur to t_next > 0: Euler predictor, trapezoid corrector (2 NFE; EDM Alg. 1)."""
    d_cur = (x - denoise(x, t_cur, class_labels)) / t_cur
    x_euler = x + (t_next - t_cur) * d_cur
    d_next = (x_euler - denoise(x_euler, t_next, class_labels)) / t_next
    return x + (t_next - t_cur) * 0.5 * (d_cur + d_next)


def heun_trajectory(denoise, x, t_steps, class_labels=None):
    """Every Heun state along t_steps (all > 0, as the CTM grid ending at σ_min): returns (len(t_steps), *x.shape)."""
    states = [x]
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        states.append(heun_step(denoise, states[-1], float(t_cur), float(t_next), class_labels))
    return torch.stack(states)


def edm_sampler(denoise, latents, t_steps, class_labels=None):
    """EDM's deterministic sampler: Heun on t_steps, then one Euler step to σ = 0 (18 steps = 35 NFE)."""
    x = latents * float(t_steps[0])
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        x = heun_step(denoise, x, float(t_cur), float(t_next), class_labels)
    return denoise(x, float(t_steps[-1]), class_labels)  # Euler to 0: x + (0 − t)(x − D)/t = D
