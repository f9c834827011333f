"""The CTM time grid and the laws that draw (n, k, s) and the DSM noise level (docs/method.md §0, §3).

`Grid` carries the grid's settings and every draw made on it; the pipeline builds one from the config
(`GridConfig.grid()`) and passes it to training, the cache, sampling and evaluation.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

SIGMA_MIN, SIGMA_MAX, RHO, SIGMA_DATA = 0.002, 80.0, 7.0, 0.5


def karras_grid(N, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """t_0 = sigma_max > ... > t_{N-1} = sigma_min, float64 (EDM eq. 5 without the final 0)."""
    if N < 2:
        raise ValueError(f"the grid needs N >= 2 points, got N={N}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    i = torch.arange(N, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (N - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t[0], t[-1] = sigma_max, sigma_min  # exact endpoints despite rounding
    return t


def _check_NK(N, K):
    if not 1 <= K <= N - 1:
        raise ValueError(f"need 1 <= K <= N-1 (K is the largest number of teacher steps), got N={N}, K={K}")


def k_probs(K):
    """P(k) ∝ k on {1..K} (heun_step_strategy='weighted'); entry k-1 is P(k)."""
    k = torch.arange(1, K + 1, dtype=torch.float64)
    return k / k.sum()


def joint_nk(N, K):
    """P(n, k) of the official law: k ∝ k, then n ~ U{0..N-1-k}. Matrix indexed [n, k], k = 0 unused."""
    _check_NK(N, K)
    P = torch.zeros(N, K + 1, dtype=torch.float64)
    for k, pk in zip(range(1, K + 1), k_probs(K).tolist()):
        P[: N - k, k] = pk / (N - k)
    return P


def marginal_n(N, K):
    """P(n): the start index the cache draws at generation time."""
    return joint_nk(N, K).sum(dim=1)


def conditional_k(N, K):
    """P(k | n), rows indexed by n (row N-1 has no valid k and stays zero)."""
    P = joint_nk(N, K)
    Pn = P.sum(dim=1, keepdim=True)
    return torch.where(Pn > 0, P / Pn.clamp_min(1e-300), torch.zeros_like(P))


def joint_nkj(N, K):
    """P(n, k, j) with j the grid index of s, uniform on {n+k..N-1}. Tensor indexed [n, k, j]."""
    P = joint_nk(N, K)
    Q = torch.zeros(N, K + 1, N, dtype=torch.float64)
    for n in range(N):
        for k in range(1, K + 1):
            if P[n, k] > 0:
                Q[n, k, n + k:] = P[n, k] / (N - n - k)
    return Q


def sample_k(K, generator=None):
    """The k of one optimiser step, shared by all its micro-batches and workers: P(k) ∝ k on {1..K}."""
    return int(torch.multinomial(k_probs(K), 1, generator=generator)) + 1


def sample_n_given_k(batch, N, k, generator=None):
    """n ~ U{0..N−1−k} per sample, for the step's k (the official loop's draw)."""
    return torch.randint(0, N - k, (batch,), generator=generator)


def sample_official(batch, N, K, generator=None):
    """The official draw: one k per optimiser step, then per-sample n and s index j. Returns (k, n, j)."""
    _check_NK(N, K)
    k = sample_k(K, generator)
    n = sample_n_given_k(batch, N, k, generator)
    return k, n, sample_s_index(n, torch.full_like(n, k), N, generator)


def sample_n(batch, N, K, generator=None):
    """n from its marginal under the official law (what the trajectory cache stores)."""
    return torch.multinomial(marginal_n(N, K), batch, replacement=True, generator=generator)


def sample_k_given_n(n, N, K, generator=None):
    """Per-sample k from P(k | n), so that (n, k) follows the official joint law."""
    if (n >= N - 1).any() or (n < 0).any():
        raise ValueError(f"start indices must lie in 0..N-2 for N={N}, got {n.min().item()}..{n.max().item()}")
    return torch.multinomial(conditional_k(N, K)[n].float(), 1, generator=generator).squeeze(1)


def _inverse_cdf(probs, u):
    """Per row of `probs` (rows of a discrete law on 0..m), the value whose CDF interval holds u."""
    cdf = np.cumsum(probs, axis=1)
    last = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)  # largest value with mass: u never passes it
    return np.minimum((u[:, None] >= cdf).sum(axis=1), last)


def n_from_uniform(u, N, K):
    """n from its marginal under the official law at uniforms u (numpy), by the inverse CDF."""
    probs = marginal_n(N, K).numpy()[None].repeat(len(u), axis=0)
    return _inverse_cdf(probs, u).astype(np.int64)


def k_from_uniform(n, u, N, K):
    """k from P(k | n) at uniforms u (numpy), by the inverse CDF, so that (n, k) follows the official joint law."""
    n = np.asarray(n, dtype=np.int64)
    if (n < 0).any() or (n > N - 2).any():
        raise ValueError(f"start indices must lie in 0..N-2 = {N - 2}, got {n.min()}..{n.max()}")
    return _inverse_cdf(conditional_k(N, K).numpy()[n], u).astype(np.int64)


def sample_s_index(n, k, N, generator=None):
    """j ~ U{n+k..N-1}: s = t_j is at or below u = t_{n+k}, down to sigma_min (s = u allowed)."""
    lo = n + k
    r = torch.rand(n.shape, generator=generator, dtype=torch.float64)
    return lo + torch.floor(r * (N - lo)).long()


def sample_dsm_sigma(batch, generator=None, P_mean=-1.2, P_std=1.2, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                     rho=RHO, diffusion_mult=0.7):
    """DSM noise levels of one micro-batch, split exactly in half as the official code does (docs/method.md §3): rows
    [0, batch//2) lognormal(P_mean, P_std), the rest ρ-ramp uniform over its first `diffusion_mult` (σ_max down)."""
    half = batch // 2
    lognormal = torch.exp(P_mean + P_std * torch.randn(half, generator=generator, dtype=torch.float64))
    r = diffusion_mult * torch.rand(batch - half, generator=generator, dtype=torch.float64)
    ramp = (sigma_max ** (1 / rho) + r * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([lognormal, ramp])


def dsm_sigma_cdf(sigma, lognormal_share=0.5, P_mean=-1.2, P_std=1.2, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                  rho=RHO, diffusion_mult=0.7):
    """Closed-form CDF of a σ of `sample_dsm_sigma`: of a random row of a batch of B rows with lognormal_share =
    (B // 2) / B; 1 gives the lognormal rows', 0 the ramp rows' (for tests and documentation)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    lognormal = 0.5 * (1 + torch.erf((sigma.log() - P_mean) / (P_std * math.sqrt(2))))
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    r = (a - sigma.clamp_min(1e-300) ** (1 / rho)) / (a - b)  # ramp position of sigma
    ramp = 1 - (r / diffusion_mult).clamp(0, 1)
    return lognormal_share * lognormal + (1 - lognormal_share) * ramp


@dataclass(frozen=True)
class Grid:
    """The CTM grid t_0 = σ_max > … > t_{N−1} = σ_min (EDM's ρ-ramp) with K, the largest number of teacher steps k,
    and the draws made on it: (n, k, s) of the CTM objective, the DSM σ, the γ-sampler's jump times."""
    N: int = 18
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = RHO
    K: int | None = None  # None: N − 1

    def __post_init__(self):
        if self.K is None:
            object.__setattr__(self, "K", self.N - 1)
        karras_grid(self.N, self.sigma_min, self.sigma_max, self.rho)  # the same checks as every grid
        _check_NK(self.N, self.K)

    @property
    def t(self):
        """The N grid times, float64 (a new tensor per call)."""
        return karras_grid(self.N, self.sigma_min, self.sigma_max, self.rho)

    def sampling_times(self, nfe):
        """The γ-sampler's nfe + 1 jump times: the ρ-ramp from σ_max to σ_min, float64."""
        return karras_grid(nfe + 1, self.sigma_min, self.sigma_max, self.rho)

    def to_dict(self):
        return {"N": self.N, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho, "K": self.K}

    def sample_official(self, batch, generator=None):
        return sample_official(batch, self.N, self.K, generator)

    def sample_k(self, generator=None):
        return sample_k(self.K, generator)

    def sample_n_given_k(self, batch, k, generator=None):
        return sample_n_given_k(batch, self.N, k, generator)

    def sample_s_index(self, n, k, generator=None):
        return sample_s_index(n, k, self.N, generator)

    def sample_n(self, batch, generator=None):
        return sample_n(batch, self.N, self.K, generator)

    def n_from_uniform(self, u):
        return n_from_uniform(u, self.N, self.K)

    def k_from_uniform(self, n, u):
        return k_from_uniform(n, u, self.N, self.K)

    def dsm_sigma(self, batch, generator=None):
        """DSM noise levels of a micro-batch on this grid's σ range and ρ (`sample_dsm_sigma`)."""
        return sample_dsm_sigma(batch, generator, sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho)
