import numpy as np
import pytest
import torch

from ctm.teachers.gmm import GaussianMixtureTeacher


def make_gmm(D, K=3, seed=0, spread=0.6, scale=0.15):
    """A well-conditioned random mixture on D dimensions (means in [−spread, spread], covariances ~scale²)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(K, 3.0))
    means = rng.uniform(-spread, spread, (K, D))
    A = rng.normal(size=(K, D, D)) * scale / np.sqrt(D)
    covariances = A @ A.transpose(0, 2, 1) + (scale / 2) ** 2 * np.eye(D)
    return GaussianMixtureTeacher(weights, means, covariances, (D,))


@pytest.fixture
def gmm2d():
    return make_gmm(2)


def pytest_collection_modifyitems(items):
    """Tests that start their own Ray head node run last, after the shared cluster is shut down."""
    items.sort(key=lambda item: item.get_closest_marker("own_ray_cluster") is not None)


def pytest_configure(config):
    config.addinivalue_line("markers", "own_ray_cluster: starts its own Ray head node; runs last, alone")


@pytest.fixture(scope="session")
def ray_cluster():
    """One private local Ray cluster for every test that needs it (starting Ray costs seconds on 2 cores), addressed
    explicitly so that another Ray cluster on the machine changes nothing."""
    import os
    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from jobs.common import restore_env, start_local_ray
    saved = start_local_ray(8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    restore_env(saved)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
