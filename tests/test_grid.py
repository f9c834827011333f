"""The grid object: one `GridConfig.grid()` reaches every consumer. A config with another σ_max and ρ (and K) is seen
by the training draws, the DSM σ, the cache's records, the sampling times, the checkpoint samples and the
evaluator's teacher Heun."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from ctm.schedule import Grid, karras_grid, sample_dsm_sigma
from ctm.seeding import TRAIN_DATA, TRAIN_STEP, generator_for
from jobs.sample import parse_args, schedule
from pipeline.cache.generate import record_spec
from pipeline.cache.manifest import key_fields
from pipeline.cache.records import make_records
from pipeline.config import load_config
from pipeline.datasets import open_dataset
from pipeline.evaluation.models import teacher_heun_batches
from pipeline.evaluation.settings import Setting
from pipeline.teachers import build_teacher
from pipeline.train.data import OnlineBatches, step_k
from pipeline.train.loop import write_samples
from pipeline.train.state import build_state, student_kwargs
from pipeline.train.step import CTMStep

SIGMA_MAX, RHO = 40.0, 5.0


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides=["student.architecture=tiny", "train.distance=l2", "train.teacher_mode=online",
                                  "train.batch_size=4", f"grid.sigma_max={SIGMA_MAX}", f"grid.rho={RHO}", "grid.K=6"])


@pytest.fixture(scope="module")
def expected():
    return karras_grid(18, 0.002, SIGMA_MAX, RHO)


class Recorder:
    """A denoiser or student that records the times it is called at and returns zeros."""

    img_channels, img_resolution = 1, 8

    def __init__(self):
        self.times = []

    def __call__(self, x, t, *rest):
        self.times.append(t)
        return torch.zeros_like(x)

    def denoise(self, x, t, class_labels=None):
        return self(x, t)


def test_grid_resolves_K_and_checks_its_settings():
    assert Grid(18).K == 17 and Grid(18, K=6).K == 6 and load_config().grid.grid() == Grid()
    assert torch.equal(Grid(12, 0.01, 40.0, 5.0).t, karras_grid(12, 0.01, 40.0, 5.0))
    assert Grid(12, 0.01, 40.0, 5.0).to_dict() == {"N": 12, "sigma_min": 0.01, "sigma_max": 40.0, "rho": 5.0, "K": 11}
    with pytest.raises(ValueError, match="K"):
        Grid(8, K=8)
    with pytest.raises(ValueError, match="sigma_min"):
        Grid(8, sigma_min=90.0)


def test_training_draws_and_the_dsm_sigma_follow_the_config(cfg, expected):
    grid = cfg.grid.grid()
    teacher, source = build_teacher(cfg), open_dataset(cfg.data)
    batch = OnlineBatches(source, source.labels, cfg, grid)(0)
    k = step_k(cfg.train.seed, 0, grid)
    assert 1 <= k <= 6 and (batch["k"] == k).all() and {step_k(0, s, grid) for s in range(200)} == set(range(1, 7))
    g = generator_for(cfg.train.seed, 0, 0, TRAIN_DATA)  # digits draw no flips: n, then z
    n = torch.randint(0, 18 - k, (4,), generator=g)
    z = torch.randn(batch["x0"].shape, generator=g)
    assert torch.equal(batch["n"], n)
    assert torch.equal(batch["x_t"], batch["x0"] + expected[n].float()[:, None, None, None] * z)
    step, seen = CTMStep(cfg, grid, teacher), {}
    dsm, ctm = step.dsm_loss, step.ctm_loss

    def dsm_loss(g_, x0, sigma, noise, labels=None):
        seen["sigma"] = sigma
        return dsm(g_, x0, sigma, noise, labels)

    def ctm_loss(G, G_target, x_t, t, x_u, u, s, labels=None):
        seen["tus"] = t, u, s
        return ctm(G, G_target, x_t, t, x_u, u, s, labels)

    step.dsm_loss, step.ctm_loss = dsm_loss, ctm_loss
    step(build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu"), {**batch, "x_u": batch["x_t"]})
    t, u, s = seen["tus"]
    assert torch.equal(t, expected[batch["n"]].float()) and torch.equal(u, expected[batch["n"] + k].float())
    gen = generator_for(cfg.train.seed, 0, 0, TRAIN_STEP)
    j = grid.sample_s_index(batch["n"], batch["k"], gen)  # the step draws s first, then the DSM σ
    assert torch.equal(s, expected[j].float())
    torch.testing.assert_close(seen["sigma"], sample_dsm_sigma(4, gen, sigma_max=SIGMA_MAX, rho=RHO).float(),
                               rtol=0, atol=0)


def test_the_cache_solves_and_keys_on_the_config_grid(cfg, expected):
    noise = copy.deepcopy(cfg)
    noise.cache.mode = "noise"  # records from n = 0: the whole trajectory
    fields = key_fields(noise, build_teacher(cfg).identity(), None)
    assert fields["grid"] == {"N": 18, "sigma_min": 0.002, "sigma_max": SIGMA_MAX, "rho": RHO, "K": 6}
    spec = record_spec(noise, fields)
    teacher = Recorder()
    records = make_records(spec, teacher, None, None, [0], 1)
    assert teacher.times[:2] == [SIGMA_MAX, float(expected[1])]  # Heun's first step: t_0 = σ_max, then t_1
    assert len(teacher.times) == 2 * 17 and teacher.times[-1] == 0.002
    z = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(int(records["seed"][0])))
    assert torch.equal(torch.from_numpy(records["states"][0, 0]), (SIGMA_MAX * z.double()).half())


def test_sampling_times_follow_the_config(cfg):
    grid = cfg.grid.grid()
    t, s = Setting(2, 0.0).times(grid)
    mid = ((SIGMA_MAX ** (1 / RHO) + 0.002 ** (1 / RHO)) / 2) ** RHO
    assert t[0] == SIGMA_MAX and math.isclose(t[1], mid, rel_tol=1e-14) and s == [t[1], 0.002]
    info = {"grid": {k: getattr(cfg.grid, k) for k in ("N", "sigma_min", "sigma_max", "rho")}}
    t_job, s_job, _ = schedule(parse_args(["--checkpoint", "c", "--nfe", "2", "--out", "x.png"]), info)
    assert (t_job, s_job) == (t, s)


def test_checkpoint_samples_and_the_teacher_heun_follow_the_config(cfg, expected, tmp_path):
    grid, ema = cfg.grid.grid(), Recorder()
    run = SimpleNamespace(put=lambda local, rel: None)
    write_samples(SimpleNamespace(emas={0.9: ema}, step=0), run, 0, torch.device("cpu"), grid)
    mid = ((SIGMA_MAX ** (1 / RHO) + 0.002 ** (1 / RHO)) / 2) ** RHO
    assert ema.times[0] == SIGMA_MAX and math.isclose(ema.times[2], mid, rel_tol=1e-14)  # NFE 1, then NFE 2
    teacher = Recorder()
    list(teacher_heun_batches(teacher, grid, 2, 2, 0, (1, 8, 8)))
    assert teacher.times == [t for a, b in zip(expected[:-1].tolist(), expected[1:].tolist()) for t in (a, b)]
