"""The generation CLI: killed with SIGKILL at random moments and rerun, it finishes without rewriting complete shards,
with the bytes of a run left alone.

The killed run is a separate driver connected to the session's Ray cluster, as under `ray job submit`; the rerun
calls the same CLI in this process.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from ctm.digits import fit_digits_teacher
from jobs.generate_trajectories import main

REPO = Path(__file__).resolve().parents[1]
RECORDS, R = 200, 10


def arguments(root, teacher_path):
    # batch_size=1 keeps the teacher busy for seconds, long enough to kill the run between commits
    return ["--set", f"cache.root={root}", "--set", f"teacher.path={teacher_path}", "--set", "teacher.components=3",
            "--set", f"cache.num_records={RECORDS}", "--set", f"cache.records_per_shard={R}",
            "--set", "cache.batch_size=1"]


def environment(ray_cluster):
    return {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(REPO)}


def committed(root):
    manifests = list(Path(root).glob("*/manifest.json"))
    if not manifests:
        return None, []
    try:
        return manifests[0].parent, json.loads(manifests[0].read_text())["shards"]
    except (json.JSONDecodeError, FileNotFoundError):
        return None, []  # replaced between listing and reading


def shard_bytes(folder, entry):
    """{path inside the shard: bytes} of every object of one shard."""
    base = folder / entry["path"]
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def files(folder, entries):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for e in entries for p in sorted((folder / e["path"]).rglob("*")) if p.is_file()}


@pytest.fixture
def teacher_path(tmp_path):
    path = tmp_path / "teacher.npz"
    fit_digits_teacher(n_components=3).save(path)
    return path


def test_kills_at_random_moments_then_a_rerun_give_the_bytes_of_an_uninterrupted_run(ray_cluster, tmp_path,
                                                                                      teacher_path, capsys):
    """Three runs killed with SIGKILL at random moments after one of their commits (inside a solve, a shard write or
    a manifest replace), then a rerun: every record present once, no committed shard rewritten, and every shard
    byte for byte that of a run left alone."""
    rng = random.Random(0)
    root = tmp_path / "cache"
    cli = [sys.executable, "-m", "jobs.generate_trajectories", *arguments(root, teacher_path)]
    before = {}
    for _ in range(3):
        seen = len(committed(root)[1])
        proc = subprocess.Popen(cli, cwd=REPO, env=environment(ray_cluster), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None and len(committed(root)[1]) <= seen:
                time.sleep(0.01)
            moment = time.time() + rng.uniform(0, 0.3)  # a random moment after the commit, unless the end comes near
            while time.time() < moment and len(committed(root)[1]) < RECORDS // R - 2:
                time.sleep(0.01)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        folder, entries = committed(root)
        assert seen < len(entries) < RECORDS // R, "each run must be killed after a commit and before the end"
        assert {p: v for p, v in files(folder, entries).items() if p in before} == before  # nothing rewritten
        before = files(folder, entries)

    fast = ["--set", f"cache.batch_size={R}"]  # the batch size changes no byte
    assert main([*arguments(root, teacher_path), *fast]) == 0
    out = capsys.readouterr().out
    assert "teacher:\n  kind: gmm" in out and out.strip().endswith(f"cache: {folder}")  # the config, then the cache

    _, after = committed(root)
    assert [(e["start"], e["stop"]) for e in after] == [(s, s + R) for s in range(0, RECORDS, R)]
    assert {e["path"] for e in entries} <= {e["path"] for e in after}
    assert files(folder, entries) == before  # same bytes, same mtimes: no complete shard was rewritten
    index = np.concatenate([zarr.open_group(folder / e["path"], mode="r")["index"][:] for e in after])
    assert np.array_equal(index, np.arange(RECORDS))  # no duplicate, no gap
    assert sorted(p.name for p in (folder / "shards").iterdir()) == sorted(e["path"][7:] for e in after)
    assert main([*arguments(tmp_path / "straight", teacher_path), *fast]) == 0
    straight_folder, straight = committed(tmp_path / "straight")
    assert [shard_bytes(folder, e) for e in after] == [shard_bytes(straight_folder, e) for e in straight]

    assert main(["verify", "--cache", str(folder)]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    assert main(["describe", "--cache", str(folder)]) == 0
    assert f"records   {RECORDS} in {RECORDS // R} shards of {R}" in capsys.readouterr().out
    (folder / after[7]["path"] / "start/c/0").write_bytes(b"\0" * 8)  # cut short
    assert main(["verify", "--cache", str(folder), "--quick"]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED shard 7 (records {7 * R}..{8 * R - 1}" in out and out.strip().endswith("NOT OK")


def test_errors_are_one_line_with_a_nonzero_exit(tmp_path, capsys):
    assert main(["verify", "--set", "grid.N=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ConfigError: config key 'grid.N'") and err.count("\n") == 1
    assert main(["describe", "--cache", str(tmp_path)]) == 2
    assert "error: CacheNotFoundError: no manifest.json at" in capsys.readouterr().err
