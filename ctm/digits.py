"""The embedded default's data: scikit-learn's 1,797 8×8 digits, scaled to [−1, 1], its mixture teacher, and the
.npz files that the digits networks trained by the project ship their weights in."""

from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .teachers.gmm import GaussianMixtureTeacher


def load_digits_images():
    """(images (1797, 1, 8, 8) float32 in [−1, 1], labels (1797,) int64); pixel values 0..16 map to −1..1."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    return images, digits.target.astype(np.int64)


def fit_digits_teacher(n_components=10, reg_covar=1e-3, seed=0):
    """The default teacher: a full-covariance mixture fitted to the digits (~10 components draw digits;
    docs/method.md, "The embedded default's teacher and features").

    Fitted on one BLAS thread: EM's rounding (and so the teacher's digest, part of every cache key) would otherwise
    depend on how many threads the process that fits it has, e.g. a Ray worker against the driver.
    """
    images, _ = load_digits_images()
    with threadpool_limits(1):
        return GaussianMixtureTeacher.fit(images, n_components=n_components, reg_covar=reg_covar, seed=seed)


def save_weights(net, path):
    """`net`'s state dict as an .npz of its tensors (the shipped weights of a digits network)."""
    np.savez(path, **{k: v.numpy() for k, v in net.state_dict().items()})


def load_weights(net, path, rebuild):
    """`net` with the weights of the .npz `path`; FileNotFoundError naming `rebuild`, the command that remakes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild it with `{rebuild}`")
    with np.load(path) as f:
        net.load_state_dict({k: torch.from_numpy(f[k]) for k in f.files})
    return net
