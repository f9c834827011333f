import math

import torch

from ctm.likelihood import bits_per_dim, log_likelihood


def test_pf_ode_likelihood_matches_exact_log_density(gmm2d):
    x = gmm2d.sample(4, torch.Generator().manual_seed(0)).double()
    exact = gmm2d.log_prob(x, 0.002)
    exact_prior = lambda x_T: gmm2d.log_prob(x_T, 80.0)
    got = log_likelihood(gmm2d.denoise, x, exact=True, rtol=1e-8, atol=1e-8, log_prior=exact_prior)
    torch.testing.assert_close(got, exact, atol=1e-4, rtol=0)
    # the default N(0, 80² I) prior differs from p_80 by a few thousandths of a nat
    torch.testing.assert_close(log_likelihood(gmm2d.denoise, x), exact, atol=1e-2, rtol=0)


def test_hutchinson_is_unbiased(gmm2d):
    x = gmm2d.sample(2, torch.Generator().manual_seed(1)).double().repeat(64, 1)
    est = log_likelihood(gmm2d.denoise, x, exact=False, generator=torch.Generator().manual_seed(2))
    exact = gmm2d.log_prob(x[:2], 0.002)
    torch.testing.assert_close(est.reshape(64, 2).mean(0), exact, atol=0.15, rtol=0)


def test_bits_per_dim_offset():
    assert bits_per_dim(torch.tensor(0.0), 10) == 7.0
    assert math.isclose(float(bits_per_dim(torch.tensor(-10 * math.log(2)), 10)), 8.0)
