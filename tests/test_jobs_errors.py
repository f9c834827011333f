"""Every stage refuses bad input before Ray starts and before anything is written: exit status 2 and one line on
stderr that names the key or the file and what to do."""

import contextlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.data

import jobs.evaluate
import jobs.generate_trajectories
import jobs.quickstart
import jobs.sweep
import jobs.teacher_start
import jobs.train
from conftest import make_gmm
from ctm.networks import tiny_songunet_kwargs
from ctm.student import build_ctm_student
from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_config

DIGITS = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "digits.yaml"
RAY_JOBS = (jobs.train, jobs.evaluate, jobs.quickstart, jobs.sweep, jobs.generate_trajectories)


@pytest.fixture
def no_ray(monkeypatch):
    """Entering a stage's Ray cluster fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for input that must be refused before it")
    for job in RAY_JOBS:
        monkeypatch.setattr(job, "ray_cluster", refuse)
    running = ray.is_initialized()  # the session's shared cluster, when an earlier test started it
    yield
    assert ray.is_initialized() == running


def refused(capsys, main, *argv):
    """stderr of a stage that must exit 2 with one line."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def tree(root):
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def mixture(path, nan_in=None):
    """An 8x8 mixture teacher .npz (the digits' shape), with one NaN in the array `nan_in`."""
    teacher = make_gmm(64, K=2, seed=3)
    arrays = {k: getattr(teacher, k).numpy().copy() for k in ("weights", "means", "covariances")}
    if nan_in:
        arrays[nan_in].flat[0] = np.nan
    np.savez(path, **arrays, image_shape=np.array([1, 8, 8]))
    return path


def finished_run(root):
    """What a finished tiny run leaves on disk: the run's config and checkpoints, the cache's manifest and shards."""
    files = {"train/ctm/config.yaml": load_config(DIGITS).dump(), "train/ctm/checkpoint_0000800/checkpoint.pt": "w",
             "cache/ab12/manifest.json": '{"config": {"train": {"batch_size": 64}}}',
             "cache/ab12/shard-0/zarr.json": "{}"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return [f"train.storage_path={root / 'train'}", f"cache.root={root / 'cache'}"]


class RunsCode:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.slow
def test_a_negative_batch_on_a_finished_run_is_refused_by_the_real_command_and_writes_nothing(tmp_path):
    where = finished_run(tmp_path)
    before = tree(tmp_path)
    done = subprocess.run([sys.executable, "-m", "jobs.train", "--config", str(DIGITS),
                           *sets("train.batch_size=-64", *where)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(DIGITS.parents[2])}, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: ConfigError: config key 'train.batch_size': must be an integer >= 1, got -64\n"
    assert tree(tmp_path) == before


@pytest.mark.parametrize("override, key", [("train.batch_size=-64", "train.batch_size"), ("grid.rho=0", "grid.rho"),
                                           ("grid.sigma_max=.inf", "grid.sigma_max"), ("train.lr=.inf", "train.lr"),
                                           ("eval.nfe=[1, 2", "eval.nfe=[1, 2")])
def test_quickstart_refuses_bad_set_values_before_ray_and_writes_nothing(no_ray, tmp_path, capsys, override, key):
    where = finished_run(tmp_path)
    before = tree(tmp_path)
    err = refused(capsys, jobs.quickstart.main, *sets(override, *where), "--out", tmp_path / "report")
    assert key in err and tree(tmp_path) == before


@pytest.mark.parametrize("job", [jobs.train, jobs.evaluate, jobs.quickstart, jobs.sweep, jobs.generate_trajectories,
                                 jobs.teacher_start])
def test_every_stage_names_the_line_of_a_broken_config_file(no_ray, tmp_path, capsys, job):
    (tmp_path / "broken.yaml").write_text("train:\n  steps: 10\n   lr: 1e-4\n")
    err = refused(capsys, job.main, "--config", tmp_path / "broken.yaml", "--checkpoint", tmp_path) \
        if job is jobs.evaluate else refused(capsys, job.main, "--config", tmp_path / "broken.yaml")
    assert f"{tmp_path / 'broken.yaml'} is not valid YAML at line 3, column 6: mapping values" in err


def test_train_refuses_a_code_running_edm_pickle_in_online_mode(no_ray, tmp_path, capsys):
    (tmp_path / "edm.pkl").write_bytes(pickle.dumps({"ema": RunsCode(os.system, f"touch {tmp_path / 'ran'}")}))
    err = refused(capsys, jobs.train.main, *sets("teacher.kind=edm", f"teacher.path={tmp_path / 'edm.pkl'}",
                                                 "train.teacher_mode=online", "train.distance=l2",
                                                 f"train.storage_path={tmp_path / 'runs'}"))
    assert err.startswith(f"error: RefusedPickleError: teacher.path: {tmp_path / 'edm.pkl'}: refused global")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content", ["code", "truncated"])
def test_train_refuses_an_unreadable_init_checkpoint_before_ray(no_ray, tmp_path, capsys, content):
    checkpoint = tmp_path / "other" / "checkpoint_0000100"
    checkpoint.mkdir(parents=True)
    payload = RunsCode(os.system, f"touch {tmp_path / 'ran'}")
    (checkpoint / "checkpoint.pt").write_bytes(pickle.dumps(payload) if content == "code" else b"PK\x03\x04")
    err = refused(capsys, jobs.train.main, "--config", DIGITS, "--from-checkpoint", checkpoint,
                  *sets(f"teacher.path={mixture(tmp_path / 'teacher.npz')}", "train.teacher_mode=online",
                        f"train.storage_path={tmp_path / 'runs'}"))
    assert f"train.init_checkpoint: {checkpoint / 'checkpoint.pt'}" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "runs").exists()


def test_train_names_every_missing_file_at_once(no_ray, tmp_path, capsys):
    err = refused(capsys, jobs.train.main, "--config", DIGITS,
                  *sets(f"teacher.path={mixture(tmp_path / 'teacher.npz')}", "train.teacher_mode=online",
                        "train.distance=lpips", f"train.lpips_vgg_path={tmp_path / 'vgg16-397923af.pth'}",
                        f"train.init_checkpoint={tmp_path / 'nowhere'}"))
    assert err.startswith("error: InputError: 3 inputs cannot be used: (1) FileNotFoundError: train.lpips_vgg_path: ")
    assert "(2) FileNotFoundError: train.lpips_lin_path is not set" in err
    assert f"(3) FileNotFoundError: train.init_checkpoint: no training checkpoint at {tmp_path / 'nowhere'}" in err


@pytest.mark.parametrize("job", [jobs.train, jobs.teacher_start])
def test_a_mixture_teacher_with_nan_is_refused_before_any_work(no_ray, tmp_path, capsys, job):
    path = mixture(tmp_path / "teacher.npz", nan_in="covariances")
    err = refused(capsys, job.main, "--config", DIGITS,
                  *sets(f"teacher.path={path}", f"cache.root={tmp_path / 'cache'}", "student.init_steps=2"))
    assert err.startswith(f"error: TeacherError: teacher.path: {path}: array 'covariances' holds 1 of 8192 values")
    assert not (tmp_path / "cache").exists()


def test_generation_does_not_run_for_a_nan_teacher(tmp_path, capsys, monkeypatch):
    """generate's checks run inside its stage (pipeline.cache): the teacher is refused before a record is solved."""
    monkeypatch.setattr(jobs.generate_trajectories, "ray_cluster", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(ray.data, "from_items", lambda *a, **k: pytest.fail("generation ran"))
    path = mixture(tmp_path / "teacher.npz", nan_in="means")
    err = refused(capsys, jobs.generate_trajectories.main,
                  *sets(f"teacher.path={path}", f"cache.root={tmp_path / 'cache'}"))
    assert f"teacher.path: {path}: array 'means' holds 1 of 128 values that are NaN or Inf" in err
    assert not (tmp_path / "cache").exists()


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint of the tiny digits student holding only the EMA at 0.9."""
    G = build_ctm_student(**tiny_songunet_kwargs(8, 1))
    state = G.state_dict()
    return save_checkpoint(tmp_path / "ckpt", step=11, config=load_config(DIGITS).to_dict(),
                           student_kwargs=G.init_kwargs, student=state, target=state, ema={"0.9": state},
                           discriminator=None, opt_G=None, opt_D=None, rng={}, data={}).parent


def test_evaluate_refuses_an_unusable_checkpoint_before_ray(no_ray, tmp_path, capsys, checkpoint):
    err = refused(capsys, jobs.evaluate.main, "--config", DIGITS, "--checkpoint", checkpoint,
                  *sets(f"eval.out={tmp_path / 'eval'}"))
    assert err.startswith("error: ConfigError: config key 'eval.ema_rate': ") and "['0.9']" in err
    (checkpoint / "checkpoint.pt").write_bytes(b"truncated")
    err = refused(capsys, jobs.evaluate.main, "--config", DIGITS, "--checkpoint", checkpoint,
                  *sets(f"eval.out={tmp_path / 'eval'}"))
    assert str(checkpoint / "checkpoint.pt") in err and not (tmp_path / "eval").exists()


def test_a_sweep_refuses_impossible_configs_before_ray(no_ray, capsys):
    space = "sweep.search_space={train.lr: {choice: [1.0e-4, 4.0e-4]}}"
    err = refused(capsys, jobs.sweep.main, *sets(space, "student.architecture=teacher"))
    assert "config keys 'student.architecture' and 'teacher.kind'" in err and "--config jobs/configs/digits.yaml" in err
    err = refused(capsys, jobs.sweep.main, *sets(space))  # the official defaults: LPIPS, whose files are not given
    assert "train.lpips_vgg_path is not set" in err and "train.lpips_lin_path is not set" in err
