"""Cached-mode training on a real trajectory cache: it agrees with online mode, runs on Ray Train, and bad caches
are refused before any step."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from ctm.digits import fit_digits_teacher
from ctm.schedule import Grid
from pipeline.cache import CacheMismatchError, DamagedShardError, cache_dataset, generate_cache, open_cache
from pipeline.checkpoint import load_student
from pipeline.config import load_config
from pipeline.teachers import build_teacher
from pipeline.preflight import preflight
from pipeline.train import run_training
from pipeline.train.state import build_state, student_kwargs
from pipeline.train.step import CTMStep

GRID = Grid(18)


def config(root, *overrides):
    """Caches under root/caches; root/teacher.npz holds the digits mixture teacher (fitted once, loaded instantly)."""
    return load_config(overrides=[f"teacher.path={root / 'teacher.npz'}", f"cache.root={root / 'caches'}",
                                  "cache.num_records=64", "cache.records_per_shard=32", "student.architecture=tiny", "student.init_steps=10",
                                  "train.distance=l2", "train.batch_size=8", *overrides])


@pytest.fixture(scope="module")
def caches(ray_cluster, tmp_path_factory):
    """{dtype: (root, cache)}: 64 digits records in two shards, stored as float32 and as float16."""
    root = tmp_path_factory.mktemp("train_cached")
    fit_digits_teacher().save(root / "teacher.npz")
    return {dtype: (root, generate_cache(config(root, f"cache.dtype={dtype}"), log=lambda *a: None))
            for dtype in ("float32", "float16")}


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-6), ("float16", 1e-3)])
def test_cached_step_equals_online_step(caches, dtype, rtol):
    """For the same rows (x0, z through the stored x_t, n, k) and the same s, σ and noise draws, the step with the
    cached x_u and the step solving x_u with the teacher give the same losses, λ and gradients: to float32 rounding
    (the cache solves in float64) or within float16 rounding of the stored states."""
    root, cache = caches[dtype]
    cfg = config(root, f"cache.dtype={dtype}")
    rows = {k: torch.tensor(v) for k, v in cache_dataset(cache, epoch=0).take_batch(8).items()}
    assert (rows["k"] >= 1).all() and len(set(rows["n"].tolist())) > 1
    teacher = build_teacher(cfg)
    results = []
    for batch in (rows, {k: v for k, v in rows.items() if k != "x_u"}):
        state = build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu")
        stats = CTMStep(cfg, GRID, teacher)(state, batch)
        results.append((stats, {n: p.grad.clone() for n, p in state.G.named_parameters()}))
    (cached, g_cached), (online, g_online) = results
    for key in ("loss_ctm", "loss_dsm", "lambda_dsm"):
        assert cached[key] == pytest.approx(online[key], rel=rtol)
    flat = lambda g: torch.cat([v.flatten() for v in g.values()])
    err = (flat(g_cached) - flat(g_online)).norm() / flat(g_online).norm()
    assert err < rtol, err


def test_cached_run_on_ray_train(caches, tmp_path):
    """A short cached-mode run on one Train worker that holds every CPU the cluster has free (as digits.yaml's worker
    holds both of a 2-core machine; the cache reads reserve none, else they would wait forever): checkpoints,
    stats.jsonl, sample grids, load_student."""
    import ray
    root, _ = caches["float16"]
    cfg = config(root, "train.steps=6", "train.checkpoint_every=3", "train.log_every=3", "train.ema_rates=[0.9]",
                 f"train.storage_path={tmp_path}", "train.run_name=cached",
                 f"train.cpus_per_worker={ray.available_resources()['CPU']}")
    result = run_training(cfg, log=lambda *a: None)
    run = tmp_path / "cached"
    assert result.checkpoint.path.endswith("checkpoint_0000006")
    assert sorted(p.name for p in run.glob("checkpoint_0*")) == ["checkpoint_0000003", "checkpoint_0000006"]
    lines = (run / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3, 6]
    grids = {f"step_000000{s}_nfe{n}.png" for s in (3, 6) for n in (1, 2)}
    assert {p.name for p in (run / "samples").iterdir()} == grids
    G, run_cfg = load_student(result.checkpoint.path, ema_rate=0.9)
    assert run_cfg.train.teacher_mode == "cached" and not G.training
    with torch.no_grad():
        assert G(torch.randn(2, 1, 8, 8), 80.0, 0.002).shape == (2, 1, 8, 8)


def test_a_cache_for_another_grid_is_refused(caches):
    root, cache = caches["float32"]
    cfg = config(root, f"cache.root={cache.url}", "cache.dtype=float32", "grid.N=12")
    with pytest.raises(CacheMismatchError, match="grid.N"):
        preflight(cfg, {"train"})


def test_a_damaged_shard_is_refused_before_any_step(caches, tmp_path):
    root, cache = caches["float32"]
    copy = tmp_path / "caches"
    shutil.copytree(Path(cache.url), copy / Path(cache.url).name)
    shutil.copy(root / "teacher.npz", tmp_path / "teacher.npz")
    damaged = open_cache(copy, config(tmp_path, "cache.dtype=float32"))
    shard = Path(damaged.url) / damaged.shards[1]["path"]
    victim = max((p for p in shard.rglob("*") if p.is_file() and "states" in str(p)), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(DamagedShardError, match="shard 1"):
        preflight(config(tmp_path, "cache.dtype=float32"), {"train"})
