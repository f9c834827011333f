import time
from pathlib import Path

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


@pytest.fixture(scope="session")
def teacher_path(tmp_path_factory):
    """The digits mixture teacher (10 components), fitted once and saved: workers and actors load it instantly."""
    from ctm.digits import fit_digits_teacher
    path = tmp_path_factory.mktemp("teacher") / "digits.npz"
    fit_digits_teacher().save(path)
    return path


def pytest_collection_modifyitems(items):
    """Tests on a Ray cluster are marked `ray` and `slow` (`pytest -m "not slow"` runs the method alone); tests that
    start their own Ray head node run last, after the shared cluster is shut down."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()) or item.get_closest_marker("own_ray_cluster"):
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("own_ray_cluster") is not None)


CHECKOUT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", ".pytest_cache", "__pycache__", ".devpack"}


def pytest_configure(config):
    import os
    import tempfile
    # dataset and teacher digests are remembered per machine (pipeline/memo.py): tests keep theirs to themselves
    os.environ["CTM_DIGEST_CACHE"] = tempfile.mkdtemp(prefix="ctm-digests-")
    config.addinivalue_line("markers", "own_ray_cluster: starts its own Ray head node; runs last, alone")
    config.addinivalue_line("markers", "ray: runs on a Ray cluster (set for every test that uses one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (every Ray test, and those marked)")
    config._checkout_before = (time.time(), {p.name for p in CHECKOUT.iterdir()})


def written_into_checkout(since, top_level):
    """Run outputs that tests left in the checkout: new top-level entries, and files under runs/ written since."""
    new = sorted(p.name for p in CHECKOUT.iterdir() if p.name not in top_level and p.name not in SKIP
                 and not p.name.endswith(".egg-info"))
    runs = CHECKOUT / "runs"
    written = [str(p.relative_to(CHECKOUT)) for p in runs.rglob("*") if p.is_file() and p.stat().st_mtime >= since] \
        if runs.is_dir() else []
    return new + sorted(written)


def pytest_sessionfinish(session, exitstatus):
    """Tests write under pytest's tmp_path, never into the checkout (a default like eval.out=runs/eval is relative
    to the working directory): the session fails if they did."""
    since, top_level = session.config._checkout_before
    leaked = written_into_checkout(since, top_level)
    if leaked:
        print(f"\ntests wrote into the checkout {CHECKOUT.name}/: {leaked[:10]}", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


@pytest.fixture
def kill_rank0(monkeypatch):
    """kill_rank0(step, when=None): in this test's Ray Train runs, rank 0's process exits once before step `step`
    (only in runs whose Config `when` accepts); a marker file killed_at_step_<step>.marker in the run directory stops
    repeats. How: tests/faults.py."""
    import faults
    return lambda step, when=None: faults.kill_rank0(monkeypatch, step, when)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
