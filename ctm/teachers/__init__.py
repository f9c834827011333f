"""Teachers: anything with `denoise(x, sigma, class_labels=None)` returning D(x, σ) ≈ E[x0 | x_σ = x]."""

from typing import Protocol

import torch

from ..networks import fast_inference
from .adm import ADM_PRESETS, load_adm
from .edm import RefusedPickleError, load_edm, weights_digest
from .errors import TeacherError, check_finite
from .gmm import GaussianMixtureTeacher


class Teacher(Protocol):
    compute_dtype: torch.dtype      # the precision its ODE is solved in (cache writer and online steps alike)
    network_kwargs: dict | None     # the constructor arguments of its network (None: no network to copy)

    def denoise(self, x, sigma, class_labels=None): ...

    def identity(self) -> dict: ...  # kind, weights digest, image shape and label count: what a cache key records


class EDMTeacher:
    """A frozen EDM-preconditioned network as a teacher: an NVlabs EDM pickle (`load_edm`) or an OpenAI ADM state dict
    (`load_adm`), named by `kind` ("edm" or "adm"). `fast=True` (CUDA only): bf16 autocast, channels_last and
    torch.compile."""

    compute_dtype = torch.float32

    def __init__(self, net, fast=False, kind="edm"):
        self.kind = kind
        self.net = net.eval().requires_grad_(False)
        self.fast = fast and next(net.parameters()).is_cuda
        self.forward = self.net
        if self.fast:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.forward = torch.compile(self.net)

    def denoise(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        if not self.fast:
            with torch.no_grad():
                return self.forward(x, sigma, class_labels)
        with fast_inference("cuda", torch.bfloat16):
            return self.forward(x.contiguous(memory_format=torch.channels_last), sigma, class_labels).float()

    def digest(self):
        return weights_digest(self.net)

    @property
    def network_kwargs(self):
        return dict(self.net.init_kwargs)

    def identity(self):
        return {"kind": self.kind, "digest": self.digest(), "label_dim": self.net.label_dim,
                "image_shape": [self.net.img_channels, self.net.img_resolution, self.net.img_resolution]}


COMPUTE_DTYPES = {"gmm": GaussianMixtureTeacher.compute_dtype, "edm": EDMTeacher.compute_dtype,
                  "adm": EDMTeacher.compute_dtype}  # by the kind a teacher's identity names


__all__ = ["ADM_PRESETS", "COMPUTE_DTYPES", "Teacher", "EDMTeacher", "GaussianMixtureTeacher", "RefusedPickleError", "TeacherError",
           "check_finite", "load_adm", "load_edm", "weights_digest"]
