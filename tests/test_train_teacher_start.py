import torch

from pipeline.config import EMBEDDED_DEFAULT, load_config
from pipeline.datasets import load_dataset
from pipeline.teachers import build_teacher
from pipeline.train import teacher_start as ts
from pipeline.train.state import build_state, student_kwargs


def config(tmp_path, *extra):
    return load_config(EMBEDDED_DEFAULT, [f"cache.root={tmp_path / 'cache'}", "student.init_steps=4",
                                          "student.init_batch_size=8", *extra])


def test_the_start_is_regressed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "SHIPPED", tmp_path / "shipped")
    cfg = config(tmp_path)
    teacher = build_teacher(cfg)
    kwargs = student_kwargs(cfg, teacher)
    lines = []
    url = ts.teacher_start(cfg, teacher, kwargs, log=lines.append)
    assert any("regressing" in line for line in lines)
    stamp = (tmp_path / "cache" / "teacher-start").stat().st_mtime_ns, torch.load(url, weights_only=True)
    lines.clear()
    assert ts.teacher_start(cfg, teacher, kwargs, log=lines.append) == url and "(cached)" in lines[0]
    state = build_state(cfg, kwargs, teacher, "cpu", ts.load_teacher_start(url))
    for module in (state.G, state.G_target, *state.emas.values()):
        for key, value in module.state_dict().items():
            assert torch.equal(value, stamp[1][key]), key
    other = ts.teacher_start(config(tmp_path, "train.seed=1"), teacher, kwargs, log=lines.append)
    assert other != url  # the key holds everything that changes the weights


def test_a_shipped_start_is_copied_into_the_cache_without_regressing(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "SHIPPED", tmp_path / "shipped")
    cfg = config(tmp_path)
    teacher = build_teacher(cfg)
    kwargs = student_kwargs(cfg, teacher)
    key = ts.teacher_start_key(cfg, teacher, kwargs, load_dataset(cfg.data)[2])
    (tmp_path / "shipped").mkdir()
    weights = {k: torch.full_like(v, 0.5) for k, v in ts.CTMPrecond(**kwargs).state_dict().items()}
    torch.save(weights, tmp_path / "shipped" / f"{key}.pt")
    monkeypatch.setattr(ts, "regress_onto_teacher", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    lines = []
    url = ts.teacher_start(cfg, teacher, kwargs, log=lines.append)
    loaded = ts.load_teacher_start(url)
    assert "shipped" in lines[0] and all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_the_embedded_default_start_ships_with_the_project():
    """The default's key must match the shipped file, or every first quickstart pays the regression."""
    cfg = load_config(EMBEDDED_DEFAULT)
    teacher = build_teacher(cfg)
    key = ts.teacher_start_key(cfg, teacher, student_kwargs(cfg, teacher), load_dataset(cfg.data)[2])
    assert (ts.SHIPPED / f"{key}.pt").is_file(), f"run `python -m jobs.teacher_start --ship` ({key})"
