import copy

import pytest
import torch

from ctm.distances import l2
from ctm.losses import CTMLoss, DSMLoss, g_gan_loss
from ctm.schedule import karras_grid
from ctm.solver import heun_trajectory
from ctm.training import ema_update, generator_objective, heun_segment
from test_losses import ToyG


def test_heun_segment_matches_full_trajectories_per_sample(gmm2d):
    grid = karras_grid(18)
    x_T = torch.randn(6, 2, dtype=torch.float64) * 80
    states = heun_trajectory(gmm2d.denoise, x_T, grid)
    n = torch.tensor([0, 3, 5, 10, 16, 2])
    k = torch.tensor([1, 4, 12, 7, 1, 15])
    x_t = states[n, torch.arange(6)]
    x_u = heun_segment(gmm2d.denoise, x_t, grid, n, k)
    torch.testing.assert_close(x_u, states[n + k, torch.arange(6)], rtol=1e-12, atol=1e-12)


def test_ema_update_closed_form():
    source = torch.nn.Linear(3, 2)
    target = copy.deepcopy(source)
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    ema_update(target, source, 0.9)
    for p_t, p0, p in zip(target.parameters(), before, source.parameters()):
        torch.testing.assert_close(p_t, 0.9 * p0 + 0.1 * p)


@pytest.mark.parametrize("gan", [False, True])
def test_generator_objective_has_the_gradient_of_the_plain_sum(gan):
    """The stand-in L (θ⁻ back-propagated once per term) has the gradient, in θ, of L_CTM + λ_DSM·L_DSM + λ_GAN·L_G
    computed the plain way, with the λ's as VQGAN's ratio of W_L-gradient norms; θ⁻ and D get no gradient."""
    torch.manual_seed(0)
    G, D = ToyG().double(), torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1)).double()
    G_target = copy.deepcopy(G).requires_grad_(False)
    with torch.no_grad():
        for p in G_target.parameters():
            p.mul_(0.9)  # θ⁻ ≠ θ
    x_t, x_u, x0, noise = (torch.randn(8, 4, dtype=torch.float64) * c for c in (3, 2, 1, 1))
    t, u, s = torch.full((8,), 3.0), torch.full((8,), 2.0), torch.linspace(0.1, 1.0, 8)
    sigma = torch.linspace(0.05, 5.0, 8, dtype=torch.float64)
    W = G.net[-1].weight
    loss, _, stats = generator_objective(G, G_target, CTMLoss(l2), DSMLoss(), x_t, t, x_u, u, s, x0, sigma, noise, W,
                                         D=D if gan else None)
    got = torch.autograd.grad(loss, list(G.parameters()))
    L_ctm = CTMLoss(l2)(G, G_target, x_t, t, x_u, u, s)[0].mean()
    L_dsm = DSMLoss()(G.g, x0, sigma, noise).mean()
    norm = lambda f: torch.autograd.grad(f, W, retain_graph=True)[0].norm()
    lam_dsm = (norm(L_ctm) / (norm(L_dsm) + 1e-4)).clamp(0, 1e4).detach()
    plain = L_ctm + lam_dsm * L_dsm
    if gan:
        x_est = G_target(G(x_t, t, s), s, 0.002)
        L_g = g_gan_loss(D(x_est))
        lam_gan = (norm(L_ctm) / (norm(L_g) + 1e-4)).clamp(0.01, 10).detach()
        plain = plain + lam_gan * L_g
        assert stats["lambda_gan"] == pytest.approx(lam_gan.item(), rel=1e-12)
    assert stats["lambda_dsm"] == pytest.approx(lam_dsm.item(), rel=1e-12)
    for a, b in zip(got, torch.autograd.grad(plain, list(G.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert all(p.grad is None for p in [*G_target.parameters(), *D.parameters()])
