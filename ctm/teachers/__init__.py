"""Teachers: anything with `denoise(x, sigma, class_labels=None)` returning D(x, σ) ≈ E[x0 | x_σ = x]."""

from typing import Protocol

import torch

from .edm import load_edm, weights_digest
from .gmm import GaussianMixtureTeacher


class Teacher(Protocol):
    def denoise(self, x, sigma, class_labels=None): ...


class EDMTeacher:
    """A frozen EDM network used as a teacher; `fast=True` runs it in bf16 autocast with channels_last on CUDA."""

    def __init__(self, net, fast=False):
        self.net = net.eval().requires_grad_(False)
        self.fast = fast and next(net.parameters()).is_cuda
        if self.fast:
            self.net = self.net.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def denoise(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        if not self.fast:
            return self.net(x, sigma, class_labels)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return self.net(x.contiguous(memory_format=torch.channels_last), sigma, class_labels).float()

    def digest(self):
        return weights_digest(self.net)


__all__ = ["Teacher", "EDMTeacher", "GaussianMixtureTeacher", "load_edm", "weights_digest"]
