"""One CTM training step's pieces, as the official loop composes them (docs/method.md §3): the G objective, the D
objective and the EMA updates. The data, the teacher segment x_u and the draws come from the caller."""

import torch

from .losses import d_hinge_loss, g_gan_loss, lambda_dsm, lambda_gan
from .solver import heun_step


def heun_segment(denoise, x_t, grid, n, k, class_labels=None):
    """x_u = Heun^k(x_t) along the grid times `grid` from index n to n+k, per sample (n, k: (B,) long; 2 NFE per
    step): every sample steps at once with its own times, and stands still once it has taken its k steps."""
    x = x_t
    grid = grid.to(x_t.device, torch.float64)
    for i in range(int(k.max())):
        idx = (n + i).clamp(max=len(grid) - 2)
        stepped = heun_step(denoise, x, grid[idx].to(x.dtype), grid[idx + 1].to(x.dtype), class_labels)
        x = torch.where((i < k).reshape(-1, *[1] * (x_t.ndim - 1)), stepped, x)
    return x


def generator_objective(G, G_target, ctm_loss, dsm_loss, x_t, t, x_u, u, s, x0, sigma_dsm, noise_dsm,
                        last_layer, D=None, weight_dsm=None, weight_gan=None, class_labels=None):
    """L = L_CTM + λ_DSM·L_DSM (+ λ_GAN·L_G when a discriminator is given). λ's adaptive unless fixed values are given.

    L_CTM and L_G reach θ only through the inner jump x_jump = G_θ(x_t, t, s) (θ⁻ and D are not trained here), so
    their gradients at x_jump are taken once each, through θ⁻, and L is returned as a stand-in with the same gradient:
    ⟨x_jump, ∂(L_CTM + λ_GAN·L_G)/∂x_jump⟩ + λ_DSM·L_DSM. Neither the λ's nor the update back-propagate through θ⁻
    again. Returns (L, x_est, stats) with stats of plain floats.
    """
    L_ctm, x_est, x_jump = ctm_loss(G, G_target, x_t, t, x_u, u, s, class_labels)
    L_ctm = L_ctm.mean()
    L_dsm = dsm_loss(G.g, x0, sigma_dsm, noise_dsm, class_labels).mean()
    grad_ctm = at_jump(L_ctm, x_jump)
    ctm_term = through(x_jump, grad_ctm)  # ∇_θ equals ∇_θ L_CTM
    lam_dsm = lambda_dsm(ctm_term, L_dsm, last_layer) if weight_dsm is None else torch.as_tensor(weight_dsm)
    stats = {"loss_ctm": L_ctm.item(), "loss_dsm": L_dsm.item(), "lambda_dsm": float(lam_dsm)}
    if D is not None:
        L_g = g_gan_loss(D(x_est))
        grad_gan = at_jump(L_g, x_jump)
        lam_gan = lambda_gan(ctm_term, through(x_jump, grad_gan), last_layer) if weight_gan is None \
            else torch.as_tensor(weight_gan)
        ctm_term = through(x_jump, grad_ctm + lam_gan * grad_gan)
        stats.update(loss_g=L_g.item(), lambda_gan=float(lam_gan))
    return ctm_term + lam_dsm * L_dsm, x_est, stats


def at_jump(loss, x_jump):
    """∂loss/∂x_jump, the graph kept (the next term back-propagates through the same θ⁻ call)."""
    return torch.autograd.grad(loss, x_jump, retain_graph=True)[0]


def through(x_jump, grad):
    """⟨x_jump, grad⟩: a scalar whose gradient in θ is the one `grad` carries back from x_jump."""
    return (x_jump * grad).sum()


def discriminator_objective(D, x0, x_est):
    """Hinge loss with the real data x0 as the real branch and the student's x_est as the fake one."""
    return d_hinge_loss(D(x0), D(x_est.detach()))


@torch.no_grad()
def ema_update(target, source, mu):
    """θ⁻ ← μ·θ⁻ + (1 − μ)·θ for every parameter; buffers are copied."""
    for p_t, p in zip(target.parameters(), source.parameters()):
        p_t.lerp_(p.detach(), 1 - mu)
    for b_t, b in zip(target.buffers(), source.buffers()):
        b_t.copy_(b)
