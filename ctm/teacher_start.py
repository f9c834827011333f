"""A student that starts as its teacher when the teacher has no network to copy (the Gaussian-mixture teacher).

The official code copies every teacher weight into the student (docs/method.md §1), so g_θ(x, t, s) starts as the
teacher's denoiser D_φ(x, t) for every s, and G_θ(x, t, s) = (s/t)·x + (1 − s/t)·g_θ as the teacher's Euler (DDIM)
step from t to s. A mixture teacher has an exact denoiser but no weights: regressing g_θ onto it gives the same start.
"""

import math

import torch

from .schedule import SIGMA_DATA


class TeacherRegressionLoss:
    """λ(σ)·‖g_θ(x0 + σz, σ, s) − D_φ(x0 + σz, σ)‖², pixel mean per sample, λ(σ) = (σ² + σ_d²)/(σσ_d)² (EDM eq. 8).

    s is drawn uniformly in [σ_min, σ], so the s-path learns to leave the denoiser unchanged wherever CTM will ask.
    """

    def __init__(self, denoise, sigma_data=SIGMA_DATA):
        self.denoise, self.sigma_data = denoise, sigma_data

    def __call__(self, g, x0, sigma, noise, s, class_labels=None):
        sigma_ = sigma.to(x0.dtype).reshape(-1, *[1] * (x0.ndim - 1))
        x = x0 + sigma_ * noise
        with torch.no_grad():
            target = self.denoise(x.double(), sigma.double(), class_labels).to(x0.dtype)
        weight = (sigma_ ** 2 + self.sigma_data ** 2) / (sigma_ * self.sigma_data) ** 2
        return (weight * (g(x, sigma, s, class_labels) - target) ** 2).flatten(1).mean(1)


def regress_onto_teacher(G, denoise, images, steps, batch_size, lr, generator, grid, labels=None, log=None):
    """Fit g_θ of the CTMPrecond `G` to the teacher's denoiser on x0 + σz, x0 from `images` (float32 (M, C, H, W) in
    [-1, 1], or anything a numpy index array reads rows of), σ from the DSM law on `grid` (a `ctm.schedule.Grid`;
    docs/method.md §3), for `steps` RAdam steps with a cosine learning-rate decay to 0. Returns the last loss."""
    loss_fn = TeacherRegressionLoss(denoise, G.sigma_data)
    opt = torch.optim.RAdam(G.parameters(), lr=lr)
    G.train()
    loss = torch.tensor(float("nan"))
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * i / steps))
        index = torch.randint(len(images), (batch_size,), generator=generator)
        x0 = torch.as_tensor(images[index.numpy()])
        sigma = grid.dsm_sigma(batch_size, generator).float()
        noise = torch.randn(x0.shape, generator=generator)
        s = grid.sigma_min + (sigma - grid.sigma_min) * torch.rand(batch_size, generator=generator)
        loss = loss_fn(G.g, x0, sigma, noise, s, None if labels is None else labels[index]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log is not None and (i + 1) % max(steps // 4, 1) == 0:
            log(f"teacher start: step {i + 1}/{steps}  loss {loss.item():.4g}")
    return loss.item()
