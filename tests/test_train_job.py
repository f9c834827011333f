"""`python -m jobs.train`: bad input stops with a clear message and exit status 2 before any worker starts."""

import pytest

from jobs.train import main
from pipeline.cache import CacheNotFoundError
from pipeline.config import load_config
from pipeline.preflight import preflight
from pipeline.train.trainer import loop_inputs


def test_a_batch_that_does_not_divide_is_refused(capsys):
    assert main(["--set", "train.batch_size=10", "--set", "train.num_workers=3"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "3 workers" in err
    assert main(["--set", "train.batch_size=8", "--set", "train.micro_batch=3"]) == 2
    assert "train.micro_batch" in capsys.readouterr().err


def test_a_missing_teacher_file_is_refused(ray_cluster, tmp_path, capsys):
    missing = tmp_path / "teacher.pkl"
    args = ["--set", "train.teacher_mode=online", "--set", "teacher.kind=edm", "--set", f"teacher.path={missing}",
            "--set", f"train.storage_path={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "teacher.path" in err and str(missing) in err
    assert not (tmp_path / "ctm").exists()


def test_a_missing_cache_is_refused(teacher_path, tmp_path):
    cfg = load_config(overrides=["student.architecture=tiny", "student.init_steps=10", f"cache.root={tmp_path}", "train.distance=l2",
                                 f"teacher.path={teacher_path}"])
    with pytest.raises(CacheNotFoundError, match="generate_trajectories"):
        preflight(cfg, {"train"})


def test_the_tiny_student_mirrors_the_teacher_and_teacher_architecture_needs_an_edm_teacher(teacher_path, tmp_path):
    common = ["train.teacher_mode=online", "train.distance=l2", f"teacher.path={teacher_path}",
              f"cache.root={tmp_path}"]  # the student start is cached there
    with pytest.raises(ValueError, match="student.architecture=tiny"):
        preflight(load_config(overrides=common + ["student.architecture=teacher"]), {"train"})
    cfg = load_config(overrides=common + ["student.architecture=tiny", "student.init_steps=10", "student.dropout=0.1"])
    loop_config, datasets = loop_inputs(cfg, preflight(cfg, {"train"}), log=lambda *a: None)
    kwargs = loop_config["student_kwargs"]
    assert (kwargs["img_channels"], kwargs["img_resolution"], kwargs["label_dim"], kwargs["dropout"]) == (1, 8, 0, 0.1)
    assert datasets == {} and loop_config["num_records"] is None
