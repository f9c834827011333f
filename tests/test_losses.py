import copy
import math

import pytest
import torch

from ctm.distances import l2
from ctm.losses import CTMLoss, DSMLoss, adaptive_weight, d_hinge_loss, g_gan_loss, lambda_dsm, lambda_gan


class ToyG(torch.nn.Module):
    """G(x, t, s) = (s/t)·x + (1 − s/t)·g with a tiny g that sees t and s."""

    def __init__(self, D=4):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(D + 2, 16), torch.nn.SiLU(), torch.nn.Linear(16, D))

    def g(self, x, t, s, class_labels=None):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        s = torch.as_tensor(s, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([x, t.log(), s.log()], 1))

    def forward(self, x, t, s, class_labels=None):
        r = torch.as_tensor(s, dtype=x.dtype).reshape(-1, 1) / torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        return r * x + (1 - r) * self.g(x, t, s)


def test_ctm_loss_gradients_flow_only_where_they_must():
    G = ToyG()
    G_target = copy.deepcopy(G).requires_grad_(False)
    x_t, x_u = torch.randn(8, 4) * 3, (torch.randn(8, 4) * 2).requires_grad_(True)
    t, u, s = torch.full((8,), 3.0), torch.full((8,), 2.0), torch.full((8,), 0.5)
    loss, x_est, _ = CTMLoss(l2)(G, G_target, x_t, t, x_u, u, s)
    assert loss.shape == (8,) and (loss > 0).all() and x_est.requires_grad
    loss.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    assert all(p.grad is None for p in G_target.parameters())
    assert x_u.grad is None  # the target side is stop-grad


def test_ctm_loss_gradient_passes_through_the_target_input():
    """The outer EMA map is frozen but differentiable in its input: gradient = J_outerᵀ ∇d."""
    G = ToyG()
    G_target = copy.deepcopy(G).requires_grad_(False)
    with torch.no_grad():
        G_target.net[2].weight.mul_(3.0)  # make the outer map differ from the inner one
    x_t, x_u = torch.randn(1, 4), torch.randn(1, 4)
    loss, _, _ = CTMLoss(l2)(G, G_target, x_t, 2.0, x_u, 1.0, 0.5)
    grads = torch.autograd.grad(loss.sum(), list(G.parameters()))
    inner = G(x_t, 2.0, 0.5)
    with torch.no_grad():
        x_tgt = G_target(G(x_u, 1.0, 0.5), 0.5, 0.002)
    outer = lambda z: G_target(z, 0.5, 0.002)
    _, vjp = torch.autograd.functional.vjp(outer, inner.detach(), 2 * (outer(inner.detach()) - x_tgt) / 4)
    expected = torch.autograd.grad(inner, list(G.parameters()), vjp)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)


def test_ctm_loss_vanishes_for_the_exact_flow_map(gmm2d):
    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, s, y=None):
            return gmm2d.flow_map(x, t, s) + 0 * self.w

    G = Exact()
    x_t = torch.randn(5, 2, dtype=torch.float64) * 10
    t, u, s = 10.0, 3.0, 0.4
    x_u = gmm2d.flow_map(x_t, t, u)
    loss, _, _ = CTMLoss(l2)(G, copy.deepcopy(G), x_t, t, x_u, u, s)
    assert loss.max() < 1e-12
    loss_wrong, _, _ = CTMLoss(l2)(G, copy.deepcopy(G), x_t, t, x_u * 1.1, u, s)
    assert loss_wrong.min() > 1e-6


def test_dsm_loss_weighting_by_hand():
    x0 = torch.randn(3, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    zero_g = lambda x, t, s, y=None: torch.zeros_like(x)
    loss = DSMLoss()(zero_g, x0, sigma, torch.randn(3, 4))
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss, weight * (x0 ** 2).mean(1))
    ideal = lambda x, t, s, y=None: x0  # a denoiser that knows x0 has zero loss
    assert DSMLoss()(ideal, x0, sigma, torch.randn(3, 4)).abs().max() == 0


def test_dsm_sees_the_noisy_input_at_sigma_on_both_paths():
    seen = {}

    def g(x, t, s, y=None):
        seen.update(x=x, t=t, s=s)
        return x

    x0, noise, sigma = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0.5, 2.0])
    DSMLoss()(g, x0, sigma, noise)
    torch.testing.assert_close(seen["x"], x0 + sigma[:, None] * noise)
    assert torch.equal(seen["t"], sigma) and torch.equal(seen["s"], sigma)


def test_hinge_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    assert math.isclose(d_hinge_loss(real, fake).item(), (0 + 0.5 + 2) / 3 + (0 + 1 + 2) / 3, rel_tol=1e-6)
    assert g_gan_loss(fake).item() == pytest.approx(1 / 3)


def test_adaptive_weights_by_hand():
    W = torch.nn.Parameter(torch.ones(2, 2))
    a, b = torch.tensor([[3.0, 0.0], [0.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    loss_ctm, loss_other = (a * W).sum(), (b * W).sum()   # ∇_W = a and b: norms 5 and 1
    assert math.isclose(adaptive_weight(loss_ctm, loss_other, W, 0, 1e4).item(), 5 / (1 + 1e-4), rel_tol=1e-6)
    assert math.isclose(lambda_gan(loss_ctm, loss_other, W).item(), 5 / (1 + 1e-4), rel_tol=1e-6)
    assert lambda_gan(loss_ctm, 100 * loss_other, W).item() == pytest.approx(0.05 / (1 + 1e-6), rel=1e-5)
    assert lambda_gan(loss_ctm, 1e-3 * loss_other, W).item() == pytest.approx(10.0)           # clipped at 10
    assert lambda_gan(1e-6 * loss_ctm, loss_other, W).item() == pytest.approx(0.01)           # clipped at 0.01
    assert lambda_dsm(1e-6 * loss_ctm, 0 * loss_other, W).item() == pytest.approx(5e-6 / 1e-4)
    assert not lambda_dsm(loss_ctm, loss_other, W).requires_grad
