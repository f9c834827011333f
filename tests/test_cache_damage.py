"""A damaged cache, through the real commands: each damage is named where it is met, with the repair command, and
`generate` (with --repair where asked) heals the cache without rewriting a shard that verifies.

One cache of 4 shards is generated once; each test damages a copy of it on purpose, runs `jobs.generate_trajectories`
or `jobs.train` on the session's Ray cluster, and checks the exit status, the one error line and the bytes on disk.
"""

import json
import re
import shutil
import sys

import numpy as np
import pytest
import ray

import jobs.generate_trajectories as cli
import jobs.train
import pipeline.cache.generate
import pipeline.cache.shards
from ctm.digits import fit_digits_teacher
from ctm.teachers.gmm import GaussianMixtureTeacher
from pipeline.cache import open_cache
from pipeline.cache.manifest import with_entry
from pipeline.cache.shards import write_shard

RECORDS, R = 40, 10
REPAIR = "rewrite it with `python -m jobs.generate_trajectories generate --repair --config ...`"


def arguments(root, teacher_path, *more):
    sets = [f"cache.root={root}", f"teacher.path={teacher_path}", f"cache.num_records={RECORDS}",
            f"cache.records_per_shard={R}", "student.architecture=tiny", "student.init_steps=10", "train.distance=l2",
            "train.batch_size=8", *more]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def made(ray_cluster, tmp_path_factory):
    """(root, teacher path, key): a cache of RECORDS records in shards of R, generated once."""
    base = tmp_path_factory.mktemp("damage")
    teacher_path = base / "teacher.npz"
    fit_digits_teacher(n_components=3).save(teacher_path)
    assert cli.main(arguments(base / "cache", teacher_path)) == 0
    key, = [p.name for p in (base / "cache").iterdir()]
    return base / "cache", teacher_path, key


@pytest.fixture
def cache(made, tmp_path):
    """(argv maker, cache folder, manifest) of a fresh copy of the cache."""
    root, teacher_path, key = made
    shutil.copytree(root / key, tmp_path / "cache" / key)
    folder = tmp_path / "cache" / key
    return (lambda *more: arguments(tmp_path / "cache", teacher_path, *more)), folder, manifest(folder)


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def files(folder):
    """{path: (bytes, mtime)} of every file under shards/."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted((folder / "shards").rglob("*")) if p.is_file()}


def same_records(entries, reference):
    """The same shards holding the same bytes: checksums.json, hashed into the manifest, lists every object's sha256."""
    return [(e["shard"], e["start"], e["stop"], e["checksums_sha256"]) for e in entries] == \
           [(e["shard"], e["start"], e["stop"], e["checksums_sha256"]) for e in reference]


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    return err[-1]


def garble(path):
    """The same number of bytes, none of them the original ones."""
    path.write_bytes(bytes(b ^ 0x5A for b in path.read_bytes()))


def test_a_damaged_manifest_is_rebuilt_from_the_shards_and_a_lost_one_costs_no_shard(cache, capsys):
    argv, folder, before = cache
    shards = files(folder)
    (folder / "manifest.json").write_bytes((folder / "manifest.json").read_bytes()[:100])  # cut short
    for command in (["verify"], ["generate"]):
        assert cli.main([*command, *argv()]) == 2
        line = error_line(capsys)
        assert line.startswith(f"error: DamagedManifestError: {folder}/manifest.json is damaged (not valid JSON); "
                               "rebuild it from the shards that verify with `python -m jobs.generate_trajectories "
                               "generate --repair --config ...`"), line
    assert files(folder) == shards

    assert cli.main(["generate", "--repair", *argv()]) == 0
    assert same_records(manifest(folder)["shards"], before["shards"]) and files(folder) == shards

    (folder / "manifest.json").unlink()
    garble(folder / before["shards"][2]["path"] / "index/c/0")  # shard 2 no longer verifies: solved again
    assert cli.main(["generate", *argv()]) == 0
    out = capsys.readouterr().out
    assert "adopted 3 shards that verify (30 records, 10 per shard)" in out, out
    assert "30 records in 3 complete shards; 1 shards (10 records) to generate" in out
    after = manifest(folder)["shards"]
    assert same_records(after, before["shards"])  # shard 2 rewritten to the same bytes
    kept = {p: v for p, v in shards.items() if not str(p).startswith(before["shards"][2]["path"])}
    assert {p: v for p, v in files(folder).items() if p in kept} == kept  # no other shard touched
    assert cli.main(["verify", *argv()]) == 0


def test_generate_names_damaged_shards_and_repair_rewrites_them_nan_states_included(cache, capsys, monkeypatch):
    argv, folder, before = cache
    garble(folder / before["shards"][1]["path"] / "states/zarr.json")  # same size: only a checksum sees it
    assert cli.main(["generate", *argv()]) == 2
    assert error_line(capsys) == (f"error: DamagedShardError: shard 1 (records 10..19, {before['shards'][1]['path']}) "
                                  f"is damaged: object states/zarr.json fails its sha256 checksum; {REPAIR}")

    # shard 3 holds a NaN state, written with its checksums by a writer that did not refuse it (as before this guard)
    store = open_cache(folder).store
    records = open_cache(folder).read_shard(before["shards"][3])
    n = records["start"][4]
    records["states"][4, n + 1, 0, 3, 3] = np.nan  # one pixel: a state all NaN would not be stored at all
    records["states"] = records["states"].astype(np.float16)
    monkeypatch.setattr(pipeline.cache.shards, "_nonfinite", lambda *a: None)
    entry = write_shard(store, 3, 30, 40, records, key=before["key"])
    monkeypatch.undo()
    (folder / "manifest.json").write_text(json.dumps(with_entry(manifest(folder), entry)))
    assert cli.main(["verify", *argv()]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED shard 3 (records 30..39, {entry['path']}): state {n + 1} of record 34 holds NaN or Inf" in out

    assert cli.main(["generate", "--repair", *argv()]) == 0
    out = capsys.readouterr().out
    assert "shard 1 is damaged (object states/zarr.json fails its sha256 checksum): it will be rewritten" in out
    assert f"shard 3 is damaged (state {n + 1} of record 34 holds NaN or Inf): it will be rewritten" in out
    assert same_records(manifest(folder)["shards"], before["shards"])
    assert cli.main(["verify", *argv()]) == 0


class NaNAtSigmaMax(GaussianMixtureTeacher):
    """The mixture with NaN out of its step from σ_max: the records that start at n = 0 get NaN states."""

    def denoise(self, x, sigma, class_labels=None):
        out = super().denoise(x, sigma, class_labels)
        return out * float("nan") if float(sigma) == 80.0 else out


def test_the_writer_refuses_nan_states_and_names_the_record(ray_cluster, made, tmp_path, capsys, monkeypatch):
    _, teacher_path, _ = made
    teacher = GaussianMixtureTeacher.load(teacher_path)
    teacher.__class__ = NaNAtSigmaMax
    monkeypatch.setattr(pipeline.cache.generate, "build_teacher", lambda cfg, device="cpu": teacher)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors unpickle this module's class
    try:
        assert cli.main(arguments(tmp_path, teacher_path, "cache.num_actors=1")) == 2
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    line = error_line(capsys)
    match = re.fullmatch(r"error: NonFiniteStatesError: record (\d+) holds NaN or Inf in its state 1 on the grid "
                         r"\(the teacher's Heun solve from n = 0\); check the teacher's parameters \(teacher.path\) "
                         r"for NaN or Inf. Nothing of shard (\d) \(records (\d+)\.\.(\d+)\) was written", line)
    assert match, line
    record, shard = int(match[1]), int(match[2])
    assert record // R == shard and (int(match[3]), int(match[4])) == (shard * R, shard * R + R - 1)
    folder, = [p for p in tmp_path.iterdir() if (p / "manifest.json").exists()]
    assert shard not in [e["shard"] for e in manifest(folder)["shards"]]
    assert not list((folder / "shards").glob(f"*{shard:06d}-*"))


def test_training_refuses_damaged_metadata_before_it_starts(cache, tmp_path, capsys):
    argv, folder, before = cache
    garble(folder / before["shards"][1]["path"] / "states/zarr.json")
    assert jobs.train.main(argv(f"train.storage_path={tmp_path / 'runs'}")) == 2
    assert error_line(capsys) == (f"error: DamagedShardError: shard 1 (records 10..19, {before['shards'][1]['path']}) "
                                  f"is damaged: object states/zarr.json fails its sha256 checksum; {REPAIR}")
    assert not (tmp_path / "runs").exists()


def test_a_damaged_chunk_ends_training_at_once_naming_the_shard(cache, tmp_path, capsys):
    argv, folder, before = cache
    x0 = folder / before["shards"][2]["path"] / "x0/c/0/0/0/0"
    data = bytearray(x0.read_bytes())
    data[5] ^= 0x01  # inside the first stored chunk: record 20's image, read by every epoch
    x0.write_bytes(bytes(data))
    workers = len(train_workers())
    assert jobs.train.main(argv(f"train.storage_path={tmp_path / 'runs'}", "train.steps=4",
                                "train.max_failures=2")) == 2
    assert error_line(capsys) == (f"error: DamagedShardError: shard 2 (records 20..29, {before['shards'][2]['path']}) "
                                  f"is damaged: x0 of record 20 fails its crc32c; {REPAIR}")
    assert len(train_workers()) == workers + 1  # one attempt: no retry within train.max_failures
    assert x0.read_bytes() == bytes(data)


def train_workers():
    """Ray Train worker actors this cluster has started (Ray keeps dead actors in its table)."""
    return [a for a in ray._private.state.actors().values() if a["ActorClassName"].endswith("RayTrainWorker")]
