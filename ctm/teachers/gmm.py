"""A Gaussian-mixture teacher: its denoiser E[x0 | x_σ] is exact, so its PF-ODE has a ground truth."""

import hashlib
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .errors import TeacherError, check_finite

ARRAYS = ("weights", "means", "covariances", "image_shape")  # what `save` writes
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)  # what np.load raises for damaged bytes


class GaussianMixtureTeacher:
    """p(x0) = Σ_k w_k N(μ_k, Σ_k) on flattened images; x_σ = x0 + σz has p_σ = Σ_k w_k N(μ_k, Σ_k + σ²I).
    Its denoiser is exact, so its ODE is solved in float64; it has no network to copy."""

    kind = "gmm"
    compute_dtype = torch.float64
    network_kwargs = None

    def __init__(self, weights, means, covariances, image_shape):
        weights, means, covariances = (torch.as_tensor(np.asarray(a), dtype=torch.float64)
                                       for a in (weights, means, covariances))
        check_finite({"weights": weights, "means": means, "covariances": covariances}, "the mixture", "array")
        if means.ndim != 2:
            raise ValueError(f"mixture means must be (K, D), got shape {tuple(means.shape)}")
        K, D = means.shape
        if weights.shape != (K,) or covariances.shape != (K, D, D):
            raise ValueError(f"mixture arrays disagree: weights {tuple(weights.shape)}, means {tuple(means.shape)}, "
                             f"covariances {tuple(covariances.shape)}; expected (K,), (K, D), (K, D, D)")
        self.image_shape = tuple(int(d) for d in image_shape)
        if math.prod(self.image_shape) != D:
            raise ValueError(f"image_shape {self.image_shape} holds {math.prod(self.image_shape)} values, means have D={D}")
        if (weights < 0).any() or abs(float(weights.sum()) - 1) > 1e-6:
            raise ValueError("mixture weights must be non-negative and sum to 1")
        self.weights, self.means, self.covariances = weights / weights.sum(), means, covariances
        try:
            self.eigvals, self.eigvecs = torch.linalg.eigh(covariances)  # Σ_k = U diag(λ) Uᵀ
        except torch.linalg.LinAlgError as e:
            raise ValueError(f"covariances could not be diagonalised ({e})") from None
        if (self.eigvals <= 0).any():
            raise ValueError("covariances must be positive definite")
        self.device = torch.device("cpu")

    # ---- construction, files -------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, data, n_components=10, reg_covar=1e-3, seed=0, image_shape=None):
        """Fit with scikit-learn's EM (full covariances) to data shaped (M, *image_shape)."""
        from sklearn.mixture import GaussianMixture
        data = np.asarray(data, dtype=np.float64)
        image_shape = image_shape or data.shape[1:]
        gm = GaussianMixture(n_components, covariance_type="full", reg_covar=reg_covar, random_state=seed)
        gm.fit(data.reshape(len(data), -1))
        return cls(gm.weights_, gm.means_, gm.covariances_, image_shape)

    def save(self, path):
        np.savez(path, weights=self.weights.numpy(), means=self.means.numpy(),
                 covariances=self.covariances.numpy(), image_shape=np.array(self.image_shape))

    @classmethod
    def load(cls, path):
        """The mixture `save` wrote to `path`; TeacherError names the file and the array at fault."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no Gaussian-mixture teacher file at {path}")
        try:
            npz = np.load(path, allow_pickle=False)
        except UNREADABLE as e:
            raise TeacherError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}); expected a Gaussian-mixture "
                               "teacher as GaussianMixtureTeacher.save writes it") from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise TeacherError(f"{path} holds a single array, not an .npz of {', '.join(ARRAYS)}")
        with npz:
            missing = [k for k in ARRAYS if k not in npz.files]
            if missing:
                raise TeacherError(f"{path} is not a Gaussian-mixture teacher: it lacks the array"
                                   f"{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} (it holds "
                                   f"{sorted(npz.files)}); expected {', '.join(ARRAYS)}")
            arrays = {}
            for k in ARRAYS:
                try:
                    arrays[k] = npz[k]
                except UNREADABLE as e:
                    raise TeacherError(f"{path}: the array '{k}' cannot be read ({type(e).__name__}: {e}); the file "
                                       "is damaged") from None
        check_finite(arrays, str(path), "array")
        try:
            return cls(arrays["weights"], arrays["means"], arrays["covariances"], arrays["image_shape"])
        except ValueError as e:
            raise TeacherError(f"{path}: {e}") from None

    def to(self, device):
        for name in ("weights", "means", "covariances", "eigvals", "eigvecs"):
            setattr(self, name, getattr(self, name).to(device))
        self.device = torch.device(device)
        return self

    def digest(self):
        """sha256 over the mixture's arrays: the teacher's identity for caches."""
        h = hashlib.sha256()
        for a in (self.weights, self.means, self.covariances):
            h.update(a.cpu().numpy().tobytes())
        h.update(repr(self.image_shape).encode())
        return h.hexdigest()

    def identity(self):
        return {"kind": self.kind, "digest": self.digest(), "image_shape": list(self.image_shape), "label_dim": 0}

    @property
    def dim(self):
        return self.means.shape[1]

    # ---- the exact posterior -------------------------------------------------------------------------------------
    def _components(self, x, sigma):
        """Flattened x (B, D), σ (B,) -> per-component log-densities (B, K), projections and variances."""
        diff = x[:, None, :] - self.means[None]                                  # (B, K, D)
        proj = torch.einsum("bkd,kde->bke", diff, self.eigvecs)                   # coordinates in Σ_k's eigenbasis
        var = self.eigvals[None] + sigma[:, None, None] ** 2                      # eigenvalues of Σ_k + σ²I
        log_normal = -0.5 * ((proj ** 2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return log_normal + self.weights.log()[None], proj, var

    def _flatten(self, x, sigma):
        x64 = x.reshape(x.shape[0], -1).to(self.device, torch.float64)
        if x64.shape[1] != self.dim:
            raise ValueError(f"teacher expects images of shape {self.image_shape}, got {tuple(x.shape[1:])}")
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=self.device).reshape(-1).expand(x.shape[0])
        return x64, sigma

    def log_prob(self, x, sigma):
        """Exact log p_σ(x), shape (B,)."""
        x64, sigma = self._flatten(x, sigma)
        logits, _, _ = self._components(x64, sigma)
        return torch.logsumexp(logits, dim=1)

    def denoise(self, x, sigma, class_labels=None):
        """D(x, σ) = E[x0 | x_σ = x] = Σ_k r_k(x) (μ_k + Σ_k (Σ_k + σ²I)⁻¹ (x − μ_k))."""
        x64, sigma = self._flatten(x, sigma)
        logits, proj, var = self._components(x64, sigma)
        r = torch.softmax(logits, dim=1)                                          # responsibilities (B, K)
        shrunk = proj * (self.eigvals[None] / var)                                # Σ_k (Σ_k+σ²I)⁻¹ in the eigenbasis
        posterior = self.means[None] + torch.einsum("bke,kde->bkd", shrunk, self.eigvecs)
        return (r[:, :, None] * posterior).sum(1).reshape(x.shape).to(x.device, x.dtype)

    def score(self, x, sigma):
        """∇ log p_σ(x) = (D(x, σ) − x) / σ² (Tweedie)."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, *[1] * (x.ndim - 1))
        return (self.denoise(x, sigma.flatten()) - x) / sigma ** 2

    def flow_map(self, x, t, s, rtol=1e-9, atol=1e-9):
        """The exact PF-ODE map x_t ↦ x_s (per-sample t, s), by one tight adaptive solve in τ ∈ [0, 1].

        With σ(τ) = t + τ(s − t): dx/dτ = (s − t)·(x − D(x, σ))/σ, so all samples share one solve.
        """
        x64 = x.detach().reshape(x.shape[0], -1).double().cpu()
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0]).clone()
        s = torch.as_tensor(s, dtype=torch.float64).reshape(-1).expand(x.shape[0]).clone()

        def rhs(tau, state):
            x_tau = torch.from_numpy(state).reshape(x64.shape)
            sigma = t + tau * (s - t)
            d = (x_tau - self.denoise(x_tau, sigma).cpu()) / sigma[:, None]
            return ((s - t)[:, None] * d).flatten().numpy()

        sol = solve_ivp(rhs, (0.0, 1.0), x64.flatten().numpy(), rtol=rtol, atol=atol, method="DOP853")
        if not sol.success:
            raise RuntimeError(f"the flow-map solve failed: {sol.message}")
        return torch.from_numpy(sol.y[:, -1]).reshape(x.shape).to(x.device, x.dtype)

    def sample(self, n, generator=None):
        """n exact samples of x0, shaped (n, *image_shape), float32."""
        comp = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        L = self.eigvecs.cpu() * self.eigvals.cpu().sqrt()[:, None, :]           # U diag(√λ)
        x = self.means.cpu()[comp] + torch.einsum("bde,be->bd", L[comp], z)
        return x.reshape(n, *self.image_shape).float()
