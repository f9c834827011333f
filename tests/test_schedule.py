import math

import numpy as np
import pytest
import torch
from scipy import stats

from ctm.schedule import (conditional_k, dsm_sigma_cdf, joint_nk, joint_nkj, k_probs, karras_grid, marginal_n,
                          sample_dsm_sigma, sample_k, sample_k_given_n, sample_n, sample_official)


def test_karras_grid_matches_closed_form():
    t = karras_grid(18)
    assert t[0] == 80.0 and t[-1] == 0.002 and (t[1:] < t[:-1]).all()
    i = 5
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert math.isclose(float(t[i]), expected, rel_tol=1e-14)
    assert len(karras_grid(40)) == 40
    assert math.isclose(float(karras_grid(3)[1]), 2.5156, abs_tol=1e-3)  # the NFE-2 midpoint


def test_grid_rejects_bad_bounds():
    with pytest.raises(ValueError, match="sigma_min"):
        karras_grid(18, sigma_min=80, sigma_max=1)


def test_joint_law_closed_form():
    N, K = 18, 17
    P = joint_nk(N, K)
    assert math.isclose(float(P.sum()), 1.0, rel_tol=1e-14)
    # P(n=0, k) = (k / (K(K+1)/2)) / (N-k) and zero where n + k > N - 1
    assert math.isclose(float(P[0, 3]), 3 / 153 / 15, rel_tol=1e-14)
    assert float(P[1, 17]) == 0.0 and float(P[0, 17]) > 0
    Q = joint_nkj(N, K)
    assert torch.allclose(Q.sum(2), P, rtol=1e-13, atol=0)


def test_marginal_times_conditional_is_the_joint():
    for N, K in [(18, 17), (40, 39), (40, 20), (6, 3)]:
        P = joint_nk(N, K)
        rebuilt = marginal_n(N, K)[:, None] * conditional_k(N, K)
        assert torch.allclose(rebuilt, P, rtol=1e-14, atol=0)
        assert torch.allclose(conditional_k(N, K)[:-1].sum(1), torch.ones(N - 1, dtype=torch.float64))


def chi2_pvalue(counts, probs):
    keep = probs > 0
    assert counts[~keep].sum() == 0, "drew an impossible value"
    return stats.chisquare(counts[keep], probs[keep] * counts.sum()).pvalue


def test_official_sampler_frequencies_chi_square():
    N, K, draws = 8, 5, 30000
    g = torch.Generator().manual_seed(1)
    counts = np.zeros((N, K + 1, N))
    for _ in range(draws):
        k, n, j = sample_official(1, N, K, g)
        counts[int(n), k, int(j)] += 1
    assert chi2_pvalue(counts.ravel(), joint_nkj(N, K).numpy().ravel()) > 1e-3


def test_cache_factorisation_reproduces_the_official_law():
    N, K, draws = 18, 17, 200000
    g = torch.Generator().manual_seed(2)
    n = sample_n(draws, N, K, g)
    k = sample_k_given_n(n, N, K, g)
    counts = np.zeros((N, K + 1))
    np.add.at(counts, (n.numpy(), k.numpy()), 1)
    assert chi2_pvalue(counts.ravel(), joint_nk(N, K).numpy().ravel()) > 1e-3
    # and k alone follows P(k) ∝ k
    assert chi2_pvalue(counts.sum(0)[1:], k_probs(K).numpy()) > 1e-3


def test_sampler_is_sensitive_to_a_wrong_law():
    N, K = 18, 17
    n = torch.randint(0, N - 1, (200000,), generator=torch.Generator().manual_seed(3))  # uniform n: not the law
    counts = np.bincount(n.numpy(), minlength=N)
    assert chi2_pvalue(counts, marginal_n(N, K).numpy()) < 1e-6


def test_dsm_sigma_splits_every_micro_batch_exactly_in_half():
    """Rows [0, B//2) are lognormal(−1.2, 1.2) and the rest ρ-ramp uniform on [0.318, 80], in every batch (odd B too):
    a coin per sample would put ramp values in the first half and lognormal ones (most below 0.318) in the second."""
    g = torch.Generator().manual_seed(4)
    batches = [sample_dsm_sigma(7, g) for _ in range(20000)]
    first = torch.cat([b[:3] for b in batches]).numpy()
    rest = torch.cat([b[3:] for b in batches]).numpy()
    ramp_lo = (80 ** (1 / 7) + 0.7 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert math.isclose(ramp_lo, 0.318, abs_tol=1e-3)
    assert rest.min() >= ramp_lo and rest.max() <= 80.0
    cdf = lambda share: lambda s: dsm_sigma_cdf(torch.from_numpy(np.asarray(s)), lognormal_share=share).numpy()
    assert stats.kstest(first, cdf(1.0)).pvalue > 1e-3
    assert stats.kstest(rest, cdf(0.0)).pvalue > 1e-3
    assert stats.kstest(np.concatenate([first, rest]), cdf(3 / 7)).pvalue > 1e-3
    assert stats.kstest(first, cdf(0.5)).pvalue < 1e-6  # the test tells the halves apart
    assert (first < ramp_lo).mean() == pytest.approx(stats.norm.cdf((math.log(ramp_lo) + 1.2) / 1.2), abs=0.01)
    assert math.isclose(float(dsm_sigma_cdf(80.0)), 0.5 + 0.5 * stats.norm.cdf((math.log(80) + 1.2) / 1.2), rel_tol=1e-9)


def test_dsm_sigma_ramp_follows_the_grid():
    """A non-default grid moves the ramp half: ρ-uniform over the first 70% of its own σ_max → σ_min ramp."""
    sigma = sample_dsm_sigma(1000, torch.Generator().manual_seed(5), sigma_min=0.01, sigma_max=20.0, rho=3.0)
    lo = (20 ** (1 / 3) + 0.7 * (0.01 ** (1 / 3) - 20 ** (1 / 3))) ** 3
    assert sigma[500:].min() >= lo and sigma[500:].max() <= 20.0
    cdf = lambda s: dsm_sigma_cdf(torch.from_numpy(np.asarray(s)), 0.0, sigma_min=0.01, sigma_max=20.0, rho=3.0).numpy()
    assert stats.kstest(sigma[500:].numpy(), cdf).pvalue > 1e-3


def test_one_k_per_step_follows_p_k():
    g = torch.Generator().manual_seed(6)
    counts = np.bincount([sample_k(17, g) for _ in range(20000)], minlength=18)
    assert counts[0] == 0 and chi2_pvalue(counts[1:], k_probs(17).numpy()) > 1e-3


def test_the_grid_draws_the_official_law_of_its_N_and_K():
    from ctm.schedule import Grid, k_from_uniform, n_from_uniform
    grid = Grid(10, K=4)
    k, n, j = grid.sample_official(64, torch.Generator().manual_seed(5))
    k_, n_, j_ = sample_official(64, 10, 4, torch.Generator().manual_seed(5))
    assert k == k_ and torch.equal(n, n_) and torch.equal(j, j_)
    assert 1 <= k <= 4 and (n <= 9 - k).all() and (j >= n + k).all() and (j <= 9).all()
    u = np.array([0.0, 0.5, 1 - 2 ** -53])  # the inverse CDFs at the ends land on the first and last values with mass
    n = n_from_uniform(u, 10, 4)
    assert n[0] == 0 and n[-1] == 8 and (k_from_uniform(n, u, 10, 4) <= 9 - n).all()
    assert k_from_uniform(np.array([0]), np.array([1 - 2 ** -53]), 10, 4)[0] == 4
