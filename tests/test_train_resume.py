"""Resuming never loses work and never trains on something wrong: a damaged newest checkpoint is moved aside and the
run continues from the newest one that verifies; Ray Train's snapshot is the one source of truth for where the run
is; a non-finite step stops the run; relative paths resolve on the driver; a resumed run ends bit-identical to the
same run left alone."""

import json
import shutil
import struct
import zipfile

import pytest
import ray
import torch
from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState

import jobs.train
from pipeline.cache import generate_cache
from pipeline.checkpoint import CHECKPOINT_FILE, PARTS, DamagedCheckpointError, load_checkpoint, save_checkpoint
from pipeline.config import load_config
from pipeline.train import run_training
from pipeline.train.rundir import SNAPSHOT, RunDir
from pipeline.train.trainer import absolute_paths, resume_point

COMMON = ["student.architecture=tiny", "student.init_from_teacher=false", "train.distance=l2", "train.batch_size=8",
          "train.micro_batch=4", "train.ema_rates=[0.9]", "train.num_to_keep=10", "train.checkpoint_every=2",
          "train.log_every=1"]


def online(tmp_path, teacher_path, *overrides):
    return load_config(overrides=[f"teacher.path={teacher_path}", "train.teacher_mode=online",
                                  f"train.storage_path={tmp_path}", *COMMON, *overrides])


def flip_a_weight_byte(file):
    """Flip one bit in the middle of checkpoint.pt's largest tensor record; returns the damaged bytes."""
    with zipfile.ZipFile(file) as archive:
        record = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(file.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[record.header_offset + 26:record.header_offset + 30])
    data[record.header_offset + 30 + name_len + extra_len + record.file_size // 2] ^= 0x04
    file.write_bytes(bytes(data))
    return bytes(data)


def differences(a, b, name=""):
    """Names of the tensors of two checkpoints' parts that are not bit-identical, and of plain values that differ."""
    if isinstance(a, torch.Tensor):
        return [] if torch.equal(a, b) else [name]
    if isinstance(a, dict):
        return [d for k in a for d in differences(a[k], b[k], f"{name}.{k}")] if a.keys() == b.keys() else [name]
    if isinstance(a, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{name}[{i}]")]
    return [] if a == b else [name]


def same_state(a, b):
    """What differs between two checkpoints' parts, their configs aside: [] when every tensor is bit-identical and
    the step, data position and seed are equal."""
    return differences(*({k: v for k, v in parts.items() if k != "config"} for parts in (a, b)))


def stats_steps(run):
    return [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()]


def fake_run(tmp_path, steps):
    """A run directory with checkpoints at `steps` (every part a small tensor or plain data) and the snapshot Ray Train
    writes after registering them in order."""
    run = tmp_path / "r"
    for step in steps:
        save_checkpoint(run / f"checkpoint_{step:07d}", **{p: torch.full((256,), float(step)) for p in PARTS})
    results = [{"version": 0, "checkpoint_dir_name": f"checkpoint_{s:07d}", "metrics": {"step": s}} for s in steps]
    snapshot = _CheckpointManagerState(checkpoint_results=results, checkpoint_report_indices=list(range(len(steps))),
                                       latest_checkpoint_result=results[-1], pending_training_results=[],
                                       pending_validation_specs=[], current_report_index=len(steps),
                                       validated_checkpoint_dir_names=[], timed_out_validation_checkpoint_dir_names=[],
                                       failed_validation_checkpoint_dir_names=[])
    (run / SNAPSHOT).write_text(snapshot.model_dump_json())
    return RunDir(str(tmp_path), "r"), run


def test_resume_point_sets_damaged_checkpoints_aside_and_repairs_the_snapshot(tmp_path):
    """Newest first: checkpoint 6 truncated, 4's folder gone (a kill after it was moved aside), 2 intact. 6 is moved
    aside with one line, both leave Ray's snapshot (which Ray can still read), 2 becomes the latest; nothing is
    deleted. With no intact checkpoint left, nothing changes and the error names each."""
    run, path = fake_run(tmp_path, [2, 4, 6])
    file = path / "checkpoint_0000006" / CHECKPOINT_FILE
    damaged = file.read_bytes()[:-100]
    file.write_bytes(damaged)
    shutil.rmtree(path / "checkpoint_0000004")
    lines = []
    assert resume_point(run, lines.append) == "checkpoint_0000002"
    assert lines[0].startswith("[train] checkpoint_0000006 is damaged (checkpoint.pt has sha256 ")
    assert lines[0].endswith("moved aside to damaged_checkpoint_0000006; resuming from checkpoint_0000002")
    assert lines[1] == ("[train] checkpoint_0000004 is damaged (its folder is missing); dropped; resuming from "
                        "checkpoint_0000002")
    assert (path / "damaged_checkpoint_0000006" / CHECKPOINT_FILE).read_bytes() == damaged
    snapshot = _CheckpointManagerState.model_validate(json.loads((path / SNAPSHOT).read_text()))
    assert [r.checkpoint_dir_name for r in snapshot.checkpoint_results] == ["checkpoint_0000002"]
    assert snapshot.latest_checkpoint_result.checkpoint_dir_name == "checkpoint_0000002"
    assert run.registered() == ["checkpoint_0000002"] and resume_point(run, lines.append) == "checkpoint_0000002"

    (path / "checkpoint_0000002" / CHECKPOINT_FILE).write_bytes(b"garbage")
    before = (path / SNAPSHOT).read_text()
    with pytest.raises(DamagedCheckpointError, match=r"no checkpoint of the run .*r verifies: checkpoint_0000002: "):
        resume_point(run)
    assert (path / SNAPSHOT).read_text() == before and (path / "checkpoint_0000002").is_dir()
    assert resume_point(RunDir(str(tmp_path), "fresh")) is None


def test_local_paths_are_resolved_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(load_config(overrides=[
        "train.storage_path=runs", "cache.root=s3://bucket/cache", "teacher.path=t.npz", "train.init_checkpoint=c/d",
        "train.distance=lpips", "train.lpips_vgg_path=vgg.pth", "train.discriminator_weights={deit: w/deit.pt}"]))
    assert (cfg.train.storage_path, cfg.cache.root, cfg.teacher.path, cfg.train.init_checkpoint) == \
        (str(tmp_path / "runs"), "s3://bucket/cache", str(tmp_path / "t.npz"), str(tmp_path / "c/d"))
    assert cfg.train.lpips_vgg_path == str(tmp_path / "vgg.pth") and cfg.train.lpips_lin_path is None
    assert cfg.train.discriminator_weights == {"deit": str(tmp_path / "w/deit.pt")} and cfg.data.path is None


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_that_verifies(ray_cluster, teacher_path, tmp_path,
                                                                            monkeypatch):
    """A flipped byte in a weight of the newest checkpoint (6): the rerun says so in one line, moves it aside
    untouched, resumes from 4, and computes checkpoint 6 again bit-identical to the one before the damage. The run uses
    relative paths (train.storage_path=runs, teacher.path=teacher.npz, from tmp_path): stats.jsonl (one line a step,
    continued by the rerun) and the sample grids are in the run directory, nothing lands elsewhere."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(teacher_path, tmp_path / "teacher.npz")
    cfg = lambda steps: online(tmp_path, teacher_path, "teacher.path=teacher.npz", "train.storage_path=runs",
                               "train.run_name=fb", f"train.steps={steps}")
    run = tmp_path / "runs" / "fb"
    run_training(cfg(6), log=lambda *a: None)
    assert stats_steps(run) == [1, 2, 3, 4, 5, 6]
    before = load_checkpoint(run / "checkpoint_0000006")
    damaged = flip_a_weight_byte(run / "checkpoint_0000006" / CHECKPOINT_FILE)
    lines = []
    result = run_training(cfg(8), log=lines.append)
    damage = [line for line in lines if " is damaged " in line]
    assert len(damage) == 1 and damage[0].startswith("[train] checkpoint_0000006 is damaged (checkpoint.pt has sha256")
    assert damage[0].endswith("moved aside to damaged_checkpoint_0000006; resuming from checkpoint_0000004")
    assert f"[train] run directory {run} (continuing from checkpoint_0000004, step 4)" in lines
    assert (run / "damaged_checkpoint_0000006" / CHECKPOINT_FILE).read_bytes() == damaged
    assert sorted(p.name for p in run.glob("checkpoint_0*")) == [f"checkpoint_000000{s}" for s in (2, 4, 6, 8)]
    assert stats_steps(run) == list(range(1, 9))
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"step_000000{s}_nfe{n}.png" for s in (2, 4, 6, 8)
                                                                     for n in (1, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "teacher.npz"]
    assert same_state(before, load_checkpoint(run / "checkpoint_0000006")) == []
    assert result.checkpoint.path.endswith("checkpoint_0000008")


def train_workers():
    """Ray Train worker actors this cluster has started (Ray keeps dead actors in its table)."""
    return [a for a in ray._private.state.actors().values() if a["ActorClassName"].endswith("RayTrainWorker")]


def test_a_non_finite_loss_stops_the_run_at_once(ray_cluster, teacher_path, tmp_path, capsys):
    """At lr 1e30, step 0 throws the weights out (checkpoint 1 still holds finite numbers) and step 1's loss is NaN:
    exit 2 with one line naming the step, its loss terms and the newest good checkpoint, after one attempt (no retry
    of train.max_failures=3), and no checkpoint after 1."""
    sets = [f"teacher.path={teacher_path}", "train.teacher_mode=online", f"train.storage_path={tmp_path}", *COMMON,
            "train.steps=4", "train.checkpoint_every=1", "train.run_name=nan", "train.lr=1e30", "train.max_failures=3"]
    workers = len(train_workers())
    assert jobs.train.main([a for s in sets for a in ("--set", s)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: NonFiniteError: step 1: non-finite loss (loss_ctm nan, loss_dsm nan")
    assert f"the newest good checkpoint is {tmp_path / 'nan' / 'checkpoint_0000001'}." in error
    assert len(train_workers()) == workers + 1
    assert [p.name for p in (tmp_path / "nan").glob("checkpoint_0*")] == ["checkpoint_0000001"]


def test_a_run_resumed_past_an_unregistered_checkpoint_ends_bit_identical(ray_cluster, teacher_path, tmp_path,
                                                                          kill_rank0):
    """Cached mode, 8 steps. A kill between persisting checkpoint 6 and Ray registering it leaves the folder on disk
    while the snapshot ends at 4. The rerun says it continues from 4 (the snapshot, as the workers do), builds the
    data stream from 4's position; its worker dies again at step 6 and Ray Train restarts it from the new checkpoint
    6. The run ends with every tensor and the data position of the run left alone."""
    sets = [f"teacher.path={teacher_path}", f"cache.root={tmp_path / 'cache'}", "cache.num_records=256",
            "cache.records_per_shard=256", f"train.storage_path={tmp_path}", *COMMON, "train.steps=8"]
    cached = lambda *o: load_config(overrides=[*sets, *o])
    generate_cache(cached(), log=lambda *a: None)
    straight = run_training(cached("train.run_name=straight"), log=lambda *a: None)
    shutil.copytree(tmp_path / "straight", tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "checkpoint_0000008")
    snapshot = json.loads((tmp_path / "killed" / SNAPSHOT).read_text())
    snapshot["checkpoint_results"] = snapshot["checkpoint_results"][:2]
    snapshot["checkpoint_report_indices"] = snapshot["checkpoint_report_indices"][:2]
    snapshot["latest_checkpoint_result"] = snapshot["checkpoint_results"][-1]
    (tmp_path / "killed" / SNAPSHOT).write_text(json.dumps(snapshot))
    assert RunDir(str(tmp_path), "killed").registered() == ["checkpoint_0000002", "checkpoint_0000004"]
    epoch = {s: load_checkpoint(tmp_path / "killed" / f"checkpoint_000000{s}")["data"]["workers"][0]["rows"] // 256
             for s in (4, 6)}
    assert epoch[4] < epoch[6]  # 6's position lies in a later cache epoch: a stream started there lacks 4's rows
    lines = []
    kill_rank0(6)
    resumed = run_training(cached("train.run_name=killed", "train.max_failures=1"), log=lines.append)
    assert (tmp_path / "killed" / "killed_at_step_6.marker").exists()
    assert f"[train] run directory {tmp_path / 'killed'} (continuing from checkpoint_0000004, step 4)" in lines
    assert resumed.checkpoint.path.endswith("checkpoint_0000008")
    assert same_state(load_checkpoint(straight.checkpoint.path), load_checkpoint(resumed.checkpoint.path)) == []
