"""A finished run is found on the driver: rerunning it starts neither Ray nor Ray Train and returns its newest
checkpoint; a run with steps left, another config or a damaged newest checkpoint trains. What the preflight built is
not built again."""

import contextlib

import pytest

import jobs.train
import pipeline.preflight
import pipeline.train.trainer as trainer
from pipeline.checkpoint import CHECKPOINT_FILE
from pipeline.config import load_config
from pipeline.preflight import preflight
from pipeline.train import run_training
from pipeline.train.trainer import absolute_paths
from test_train_resume import COMMON, fake_run


class TrainerStarted(Exception):
    pass


@pytest.fixture
def finished_run(tmp_path, teacher_path, monkeypatch):
    """(config maker, run folder) of a run finished at step 4 (checkpoints 2 and 4), with Ray Train refused."""
    def refuse(*args, **kwargs):
        raise TrainerStarted
    monkeypatch.setattr(trainer, "build_trainer", refuse)
    overrides = [f"teacher.path={teacher_path}", "train.teacher_mode=online", f"train.storage_path={tmp_path}", *COMMON,
                 "train.run_name=r", "train.steps=4", f"cache.root={tmp_path / 'cache'}"]
    config = lambda *more: load_config(overrides=[*overrides, *more])
    _, path = fake_run(tmp_path, [2, 4])
    (path / "config.yaml").write_text(absolute_paths(config()).dump())
    return config, path, overrides


@pytest.fixture
def teacher_builds(monkeypatch):
    """The teachers the preflight builds, counted."""
    built, build = [], pipeline.preflight.build_teacher
    monkeypatch.setattr(pipeline.preflight, "build_teacher", lambda cfg: built.append(cfg) or build(cfg))
    return built


@contextlib.contextmanager
def no_ray_start(local_cpus=None):
    yield lambda: pytest.fail("Ray was started for a finished run")


def test_a_finished_run_returns_its_newest_checkpoint_without_ray(finished_run):
    config, path, _ = finished_run
    lines, started = [], []
    result = run_training(config(), log=lines.append, start_ray=lambda: started.append(True))
    assert result.checkpoint.path == str(path / "checkpoint_0000004") and result.path == str(path)
    assert result.metrics == {"step": 4} and result.error is None and not started
    assert lines == [f"[train] run directory {path}: the run is finished at step 4 (checkpoint_0000004); nothing to "
                     "train"]


def test_a_run_written_before_a_key_existed_is_still_finished(finished_run):
    """config.yaml without the keys added since (they take their defaults) is the same config."""
    config, path, _ = finished_run
    text = (path / "config.yaml").read_text()
    (path / "config.yaml").write_text("\n".join(line for line in text.splitlines() if "tensorboard" not in line))
    assert run_training(config(), log=lambda *a: None).checkpoint.path == str(path / "checkpoint_0000004")


@pytest.mark.parametrize("change", ["train.steps=6", "train.lr=3e-4"])
def test_a_run_with_steps_left_or_another_config_starts_ray_train(finished_run, change):
    config, _, _ = finished_run
    started = []
    with pytest.raises(TrainerStarted):
        run_training(config(change), log=lambda *a: None, start_ray=lambda: started.append(True))
    assert started == [True]


def test_a_damaged_last_checkpoint_is_trained_again(finished_run):
    config, path, _ = finished_run
    (path / "checkpoint_0000004" / CHECKPOINT_FILE).write_bytes(b"garbage")
    lines = []
    with pytest.raises(TrainerStarted):
        run_training(config(), log=lines.append)
    assert lines[-1] == f"[train] run directory {path} (continuing from checkpoint_0000002, step 2)"


def test_the_train_job_on_a_finished_run_builds_the_teacher_once_and_starts_no_ray(finished_run, teacher_builds,
                                                                                  monkeypatch, capsys):
    _, path, overrides = finished_run
    monkeypatch.setattr(jobs.train, "ray_cluster", no_ray_start)
    assert jobs.train.main([a for kv in overrides for a in ("--set", kv)]) == 0
    assert capsys.readouterr().out.endswith(f"done: step 4; run directory {path}; newest checkpoint "
                                            f"{path / 'checkpoint_0000004'}\n")
    assert len(teacher_builds) == 1


def test_a_run_given_its_preflight_builds_nothing_again(finished_run, teacher_builds):
    config, _, _ = finished_run
    inputs = preflight(config("train.steps=6"), {"train"})
    with pytest.raises(TrainerStarted):
        run_training(config("train.steps=6"), log=lambda *a: None, inputs=inputs)
    assert len(teacher_builds) == 1
