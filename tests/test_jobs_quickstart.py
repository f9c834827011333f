import contextlib
import json
from pathlib import Path

import pytest

import jobs.quickstart
from jobs.quickstart import main


def reduced(tmp_path):
    return [f"cache.root={tmp_path / 'cache'}", "cache.num_records=192", "cache.records_per_shard=96",
            "cache.num_actors=1", f"train.storage_path={tmp_path / 'train'}", "train.steps=12",
            "train.batch_size=16", "train.checkpoint_every=6", "train.gan_start=6", "train.log_every=6",
            "eval.num_samples=200", "eval.nfe=[1,2]", "eval.gammas=[0.0]"]


def run(tmp_path, *extra):
    argv = ["--out", str(tmp_path / "report")]
    for kv in reduced(tmp_path):
        argv += ["--set", kv]
    return main(argv + list(extra))


@contextlib.contextmanager
def no_ray_start(local_cpus=None):
    """A stage's lazy cluster whose start fails the test."""
    yield lambda: pytest.fail("Ray was started for a stage with nothing to do")


def test_quickstart_runs_every_stage_and_reuses_the_cache_and_the_results(ray_cluster, tmp_path, capsys, monkeypatch):
    assert run(tmp_path) == 0
    report = tmp_path / "report"
    results = json.loads((report / "results.json").read_text())
    assert {r["setting"]["nfe"] for r in results["results"]} == {1, 2} and results["teacher"]["fid"] > 0
    assert (report / "fid_vs_nfe.png").stat().st_size > 0 and (report / "config.yaml").exists()
    manifest = next((tmp_path / "cache").glob("*/manifest.json"))
    shards = sorted((manifest.parent / "shards").iterdir())
    stamps = [(p.name, p.stat().st_mtime_ns) for p in shards]
    capsys.readouterr()
    monkeypatch.setattr(jobs.quickstart, "ray_cluster", no_ray_start)
    assert run(tmp_path) == 0  # second run: the cache is reused, training is already finished, the results reused
    assert [(p.name, p.stat().st_mtime_ns) for p in sorted((manifest.parent / "shards").iterdir())] == stamps
    out = capsys.readouterr().out
    scored = len(results["results"]) + 1  # every setting and the teacher
    assert "report:" in out and f"reused {scored} results from {report / 'scored.npz'}" in out
    assert "the run is finished at step 12 (checkpoint_0000012); nothing to train" in out
    assert "scoring" not in out and json.loads((report / "results.json").read_text())["results"] == results["results"]


def test_dry_run_checks_paths_without_running(tmp_path, capsys):
    assert run(tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "teacher: gmm" in out and "nothing ran" in out and not (tmp_path / "cache").exists()
    assert main(["--dry-run", "--config", str(Path(__file__).parents[1] / "jobs/configs/cifar10_uncond.yaml")]) == 2
    assert "edm-cifar10-32x32-uncond-vp.pkl" in capsys.readouterr().err
