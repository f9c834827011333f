"""What a training run reports and who listens (pipeline/train/metrics.py): TensorBoard event files with a purge on
resume, MLflow / W&B off by default and refused by name when asked for but not installed, and a run on Ray Train that
reports every log step with its losses, λ's, learning rates and throughput."""

import json
import os
import struct
import sys

import pytest
from ray.train import UserCallback

from pipeline.config import ConfigError, load_config
from pipeline.train import run_training
from pipeline.train.metrics import Listeners, TensorBoard, tag
from pipeline.train.rundir import RunDir


def read_events(folder):
    """Every event of the TFRecord files in `folder`, oldest file first: [(file, Event)]."""
    from tensorboardX.proto.event_pb2 import Event
    events = []
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data, at = file.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            events.append((file.name, Event.FromString(data[at + 12:at + 12 + length])))
            at += 12 + length + 4  # length, its CRC, the record, its CRC
    return events


def scalars(folder):
    """{tag: [(step, value)]} of the scalar summaries in `folder`."""
    out = {}
    for _, e in read_events(folder):
        for v in e.summary.value:
            out.setdefault(v.tag, []).append((e.step, round(v.simple_value, 5)))
    return out


def test_tags_group_losses_lambdas_learning_rates_and_throughput():
    assert [tag(k) for k in ("loss_ctm", "loss_d", "lambda_gan", "lr", "lr_d", "images_per_s", "peak_rss_mb")] == \
        ["loss/ctm", "loss/d", "lambda/gan", "lr/G", "lr/D", "throughput/images_per_s", "train/peak_rss_mb"]


def test_a_resumed_run_writes_a_new_event_file_that_purges_the_steps_past_its_checkpoint(tmp_path):
    run = RunDir(str(tmp_path), "r")
    first = TensorBoard(run, 0)
    for step in (1, 2, 3):
        first.log(step, {"step": step, "loss_ctm": step / 10, "kind": "G"})
    first.close()
    second = TensorBoard(run, 2)  # killed after step 3, resumed from the checkpoint at step 2
    second.log(3, {"step": 3, "loss_ctm": 0.33})
    second.close()
    events = read_events(tmp_path / "r" / "tensorboard")
    assert len({file for file, _ in events}) == 2
    starts = [(file, e.step) for file, e in events if e.HasField("session_log")]
    assert starts == [(events[-1][0], 3)]  # TensorBoard drops the first file's steps >= 3 at this event
    assert scalars(tmp_path / "r" / "tensorboard") == {"loss/ctm": [(1, 0.1), (2, 0.2), (3, 0.3), (3, 0.33)]}


def test_a_run_directory_behind_a_url_gets_its_event_files_copied(tmp_path):
    run = RunDir("memory://metrics-test", "r")
    board = TensorBoard(run, 0)
    board.log(1, {"step": 1, "lr": 1e-3})
    board.flush()  # at a checkpoint: the file as far as tensorboardX's writer thread has written it
    names = run.fs.ls(run.full("tensorboard"), detail=False)
    assert len(names) == 1 and ".from0" in names[0]
    board.close()  # at the end: everything
    local = tmp_path / "copy"
    local.mkdir()
    run.fs.get(names[0], str(local / names[0].rsplit("/", 1)[1]))
    assert scalars(local) == {"lr/G": [(1, 0.001)]} and not os.path.exists(board.dir)


def test_mlflow_and_wandb_are_off_by_default_and_never_imported(tmp_path, monkeypatch):
    for name in ("mlflow", "wandb", "ray.air.integrations.mlflow", "ray.air.integrations.wandb"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of any of them raises ImportError
    cfg = load_config(overrides=["train.tensorboard=false"])
    assert (cfg.train.mlflow, cfg.train.wandb) == (None, None)
    listeners = Listeners(RunDir(str(tmp_path), "r"), cfg, 0)
    listeners.log(1, {"step": 1, "loss_ctm": 0.5})
    listeners.close()
    assert listeners.all == [] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("key, value", [("mlflow", "{tracking_uri: file:///tmp/mlruns, experiment: ctm}"),
                                        ("wandb", "{project: ctm, mode: offline}")])
def test_a_tracker_asked_for_but_not_installed_is_refused_naming_its_extra(key, value):
    with pytest.raises(ConfigError, match=rf"'train.{key}': is set, but {key} is not installed: "
                                          rf"pip install 'ctm-ray\[{key}\]'"):
        load_config(overrides=[f"train.{key}={value}"])


def test_tracker_settings_are_checked():
    with pytest.raises(ConfigError, match="'train.mlflow': needs its tracking_uri"):
        load_config(overrides=["train.mlflow={experiment: ctm}"])
    with pytest.raises(ConfigError, match=r"'train.wandb': takes \['entity', 'group', 'mode', 'project'\]"):
        load_config(overrides=["train.wandb={api_key: x}"])


def record_reports(file):
    """A callback writing every report the controller receives as a JSON line to `file` (the controller is another
    process; a class made here travels by value)."""
    class RecordReports(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(file, "a") as f:
                f.write(json.dumps({**metrics[0], "checkpoint": checkpoint is not None}) + "\n")
    return RecordReports()


def test_a_run_reports_every_log_step_to_ray_train_and_tensorboard(ray_cluster, teacher_path, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.05")  # the controller takes a report every 50 ms
    cfg = load_config(overrides=[
        f"teacher.path={teacher_path}", "student.architecture=tiny", "student.init_from_teacher=false",
        "train.distance=l2", "train.teacher_mode=online", "train.batch_size=8", "train.ema_rates=[0.9]",
        f"train.storage_path={tmp_path}", "train.run_name=m", "train.steps=6", "train.log_every=2",
        "train.checkpoint_every=3", "train.lr_schedule=cosine", "train.lambda_dsm=0.5"])
    result = run_training(cfg, log=lambda *a: None, callbacks=[record_reports(str(tmp_path / "reports.jsonl"))])
    reports = [json.loads(line) for line in (tmp_path / "reports.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in reports]
    assert steps == [2, 3, 4, 6]  # every log step (each finds the previous report taken) and every checkpoint
    assert [r["step"] for r in reports if r["checkpoint"]] == [3, 6]
    logged = [r for r in reports if r["step"] % 2 == 0]
    for r in logged:
        assert {"loss_ctm", "loss_dsm", "lambda_dsm", "lr", "lr_d", "images_per_s", "steps_per_s"} <= set(r)
        assert r["lambda_dsm"] == 0.5 and r["images_per_s"] > 0 and r["steps_per_s"] > 0
    lrs = [r["lr"] for r in reports]
    assert lrs == sorted(lrs, reverse=True) and 0 < lrs[-1] < lrs[0] < 4e-4  # the cosine, as each step used it
    assert result.metrics["step"] == 6 and result.metrics["train_seconds"] > 0
    stats = [json.loads(line) for line in (tmp_path / "m" / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [2, 4, 6]  # stats.jsonl as before: every log step
    board = scalars(tmp_path / "m" / "tensorboard")
    assert {"loss/ctm", "loss/dsm", "lambda/dsm", "lr/G", "lr/D", "throughput/images_per_s",
            "throughput/steps_per_s"} <= set(board)
    assert [s for s, _ in board["loss/ctm"]] == [2, 4, 6]
    assert [v for _, v in board["loss/ctm"]] == [round(s["loss_ctm"], 5) for s in stats]
    assert [v for _, v in board["lambda/dsm"]] == [0.5] * 3
