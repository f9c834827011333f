"""The search space of a schedule search at a given NFE: γ and the intermediate jump times of γ-sampling.

A trial's parameters are `landing` and `cut_1 … cut_{NFE−1}`, each in [0, 1], on the ρ-scale of the time grid
(σ^{1/ρ}, EDM eq. 5):
- Cut k places t_k that fraction of the way from t_{k−1} to σ_min: u_k = u_{k−1} + cut_k·(1 − u_{k−1}), u_0 = 0,
  t_k = (σ_max^{1/ρ} + u_k·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ. Any cuts give non-increasing times, and
  cut_k = 1/(NFE − k + 1) gives the default ρ-ramp of `gamma_steps`.
- Landing places the first jump's landing time s_0 that fraction of the way from σ_min up to t_1, and γ is the one
  whose law s_0 = √(1−γ²)(t_1 − σ_min) + σ_min lands there (landing 1: γ = 0; landing 0: γ = 1). The later jumps
  follow the γ-law. Uniform γ would put nearly every draw where the official code's 2-step settings are not: the
  ImageNet pair i1=36, i2=20 is γ = 0.99999 but landing 0.16, and digits' i1=15, i2=11 is landing 1/3. At NFE 2
  every 2-step (i1, i2) pair is a point of this space: t_1 = t_{i2}, s_0 = t_{i1}.
"""

import math

import numpy as np

from pipeline.config import ConfigError
from pipeline.evaluation.settings import Setting

SEARCHERS = ("optuna", "random", "grid")


def param_names(nfe):
    return ["landing"] + [f"cut_{k}" for k in range(1, nfe)]


def check_nfe(nfe):
    if nfe < 2:
        raise ConfigError(f"NFE {nfe} has no schedule to search (one jump from sigma_max to sigma_min, no γ): "
                          "pass --nfe 2 or more")


def sigmas_from_cuts(cuts, grid_cfg):
    """The intermediate times t_1 ≥ … ≥ t_{NFE−1} that the cuts place on the ρ-ramp ."""
    r_max, r_min = grid_cfg.sigma_max ** (1 / grid_cfg.rho), grid_cfg.sigma_min ** (1 / grid_cfg.rho)
    u, sigmas = 0.0, []
    for cut in cuts:
        u += float(cut) * (1 - u)
        t = (r_max + u * (r_min - r_max)) ** grid_cfg.rho
        sigmas.append(grid_cfg.sigma_max if u == 0 else grid_cfg.sigma_min if u == 1 else t)  # exact ends
    return sigmas


def gamma_from_landing(landing, t_1, grid_cfg):
    """The γ whose first jump lands at s_0 = (σ_min^{1/ρ} + landing·(t_1^{1/ρ} − σ_min^{1/ρ}))^ρ."""
    landing = float(landing)
    if t_1 <= grid_cfg.sigma_min:  # every γ lands at σ_min
        return 0.0
    if landing in (0.0, 1.0):  # exact ends: γ = 1 and γ = 0
        return 1.0 - landing
    r_min, r_1 = grid_cfg.sigma_min ** (1 / grid_cfg.rho), t_1 ** (1 / grid_cfg.rho)
    s_0 = (r_min + landing * (r_1 - r_min)) ** grid_cfg.rho
    fraction = min(max((s_0 - grid_cfg.sigma_min) / (t_1 - grid_cfg.sigma_min), 0.0), 1.0)
    return math.sqrt(1 - fraction ** 2)


def schedule_setting(params, nfe, grid_cfg):
    """The evaluation Setting of a trial's parameters {landing, cut_1, …}."""
    sigmas = sigmas_from_cuts([params[f"cut_{k}"] for k in range(1, nfe)], grid_cfg)
    return Setting(nfe, gamma_from_landing(params["landing"], sigmas[0], grid_cfg), sigmas=tuple(sigmas))


def default_params(nfe):
    """γ = 0 along the default ρ-ramp (gamma_steps' times): the setting a search tries first."""
    return {"landing": 1.0, **{f"cut_{k}": 1 / (nfe - k + 1) for k in range(1, nfe)}}


def grid_counts(nfe, trials):
    """Points per parameter of the largest grid with at most `trials` points, as even as possible (extra points go to
    the cuts first)."""
    m = max(1, math.floor(trials ** (1 / nfe) + 1e-9))  # NFE parameters: the landing and NFE − 1 cuts
    counts = {name: m for name in param_names(nfe)}
    for name in param_names(nfe)[1:] + ["landing"]:
        if math.prod(counts.values()) // counts[name] * (counts[name] + 1) <= trials:
            counts[name] += 1
    return counts


def grid_values(nfe, trials):
    """{name: values}: the landing from 0 to 1 in equal steps (both ends: γ = 1, the CM multistep sampler, and γ = 0,
    the exact one), each cut at the midpoints of equal cells (so an odd count holds the default ρ-ramp)."""
    counts = grid_counts(nfe, trials)
    values = {"landing": np.linspace(0, 1, counts["landing"]).tolist() if counts["landing"] > 1 else [1.0]}
    for name in param_names(nfe)[1:]:
        values[name] = ((np.arange(counts[name]) + 0.5) / counts[name]).tolist()
    return values


def num_trials(searcher, nfe, trials):
    """Trials a search makes: the budget, or the size of the grid that fits in it."""
    return math.prod(grid_counts(nfe, trials).values()) if searcher == "grid" else trials


def random_params(rng, nfe):
    """One uniform draw of the space."""
    return {name: float(rng.uniform(0, 1)) for name in param_names(nfe)}


def random_schedules(nfe, gamma, count, seed, grid_cfg):
    """A short random schedule search's settings: (nfe, gamma) on the ρ-ramp, then count − 1 uniform draws of the space
    (the same draws for every `seed`, so the trials of a loss-weight sweep are compared on the same schedules)."""
    rng = np.random.default_rng(seed)
    return [Setting(nfe, float(gamma))] + [schedule_setting(random_params(rng, nfe), nfe, grid_cfg)
                                           for _ in range(count - 1)]
