"""CTM, DSM and GAN losses and the adaptive loss weights, as the official code computes them (docs/method.md §3)."""

import torch

from .schedule import SIGMA_DATA, SIGMA_MIN


class CTMLoss:
    """d(G_θ⁻(G_θ(x_t, t, s), s, σ_min), G_θ⁻(G_sg(θ)(x_u, u, s), s, σ_min)) per sample (paper eq. 8).

    The inner call keeps its graph; the EMA target θ⁻ maps both to σ_min with gradient flowing through its input
    only; the target's inner jump uses the online weights under no_grad (`ctm_target_inner_type='model_sg'`).
    Returns (d, x_est, x_jump) with x_jump = G_θ(x_t, t, s), where every gradient of the loss enters θ.
    """

    def __init__(self, distance, sigma_min=SIGMA_MIN):
        self.distance, self.sigma_min = distance, sigma_min

    def __call__(self, G, G_target, x_t, t, x_u, u, s, class_labels=None):
        x_jump = G(x_t, t, s, class_labels)
        x_est = G_target(x_jump, s, self.sigma_min, class_labels)
        with torch.no_grad():
            x_tgt = G_target(G(x_u, u, s, class_labels), s, self.sigma_min, class_labels)
        return self.distance(x_est, x_tgt), x_est, x_jump


class DSMLoss:
    """λ(σ)·‖g_θ(x0 + σz, σ, σ) − x0‖², pixel mean per sample, λ(σ) = (σ² + σ_d²)/(σσ_d)² (EDM eq. 8)."""

    def __init__(self, sigma_data=SIGMA_DATA):
        self.sigma_data = sigma_data

    def __call__(self, g, x0, sigma, noise, class_labels=None):
        sigma = sigma.to(x0.dtype).reshape(-1, *[1] * (x0.ndim - 1))
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        denoised = g(x0 + sigma * noise, sigma.flatten(), sigma.flatten(), class_labels)
        return (weight * (denoised - x0) ** 2).flatten(1).mean(1)


def d_hinge_loss(logits_real, logits_fake):
    """Discriminator hinge loss: E[max(0, 1 − D(x0))] + E[max(0, 1 + D(x_est))]."""
    return torch.relu(1 - logits_real).mean() + torch.relu(1 + logits_fake).mean()


def g_gan_loss(logits_fake):
    """Generator term: −E[D(x_est)]."""
    return -logits_fake.mean()


def adaptive_weight(loss, other, last_layer, lo, hi, eps=1e-4):
    """λ = ‖∇_{W_L} loss‖ / (‖∇_{W_L} other‖ + eps), clamped to [lo, hi] and detached (VQGAN, Esser et al. eq. 7)."""
    grad_loss, = torch.autograd.grad(loss, last_layer, retain_graph=True)
    grad_other, = torch.autograd.grad(other, last_layer, retain_graph=True)
    return (grad_loss.norm() / (grad_other.norm() + eps)).clamp(lo, hi).detach()


def lambda_dsm(loss_ctm, loss_dsm, last_layer):
    """λ_DSM, clamp [0, 1e4]."""
    return adaptive_weight(loss_ctm, loss_dsm, last_layer, 0.0, 1e4)


def lambda_gan(loss_ctm, loss_g, last_layer):
    """λ_GAN, clip [0.01, 10]."""
    return adaptive_weight(loss_ctm, loss_g, last_layer, 0.01, 10.0)
