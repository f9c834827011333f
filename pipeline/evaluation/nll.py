"""NLL in bits/dim of a CTM student through the PF-ODE, the score from g(x, σ, σ) (docs/method.md §6), Hutchinson
traces."""

import dataclasses

import numpy as np
import torch

from ctm.likelihood import bits_per_dim, log_likelihood
from pipeline.datasets import dataset_identity, open_dataset


def likelihood_images(cfg):
    """eval.likelihood_samples images (a fixed random subset) of eval.likelihood_path, or of data.path when unset."""
    held_out = cfg.eval.likelihood_path is not None
    data_cfg = dataclasses.replace(cfg.data, path=cfg.eval.likelihood_path, max_images=None) if held_out else cfg.data
    source = open_dataset(data_cfg)  # only the kept images are read
    keep = np.sort(np.random.default_rng(cfg.eval.seed).permutation(len(source))[:cfg.eval.likelihood_samples])
    info = {"images": len(keep), "digest": dataset_identity(data_cfg, source)["digest"][:16],
            "source": "eval.likelihood_path (held out)" if held_out else "data.path (the training images, not held out)"}
    return torch.from_numpy(source[keep]), torch.from_numpy(source.labels[keep]), info


def student_nll(model, images, labels, grid, seed=0):
    """Mean and standard error of the NLL (bits/dim) of `images` under the student's PF-ODE."""
    G = model.G
    if not hasattr(G, "g"):
        raise TypeError(f"NLL needs a CTM student, whose g(x, σ, σ) is its denoiser; {model.info} has none")
    labels = labels if model.label_dim else None

    def denoise(x, sigma):  # the divergence differentiates through it, so no torch.no_grad here
        return G.g(x, sigma, sigma, labels)

    generator = torch.Generator().manual_seed(seed)
    log_p = log_likelihood(denoise, images, grid.sigma_min, grid.sigma_max, exact=False, generator=generator)
    bpd = bits_per_dim(log_p, images[0].numel())
    return {"nll_bpd": float(bpd.mean()), "stderr": float(bpd.std() / len(bpd) ** 0.5),
            "estimator": "PF-ODE (RK45, rtol 1e-5) with a Hutchinson-Rademacher trace; 256-level dequantisation offset"}
