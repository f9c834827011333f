"""ASHA still stops a trial now that a trial is one Ray Train run: the stopped trial's run ends at the milestone
where it was stopped, and every trial started Ray Train once."""

import json

from pipeline.config import load_config
from pipeline.sweep import run_sweep


def train_controllers():
    """Ray Train controllers this cluster has started (one per TorchTrainer.fit), dead or alive."""
    import ray._private.state
    return sum("TrainController" in a["ActorClassName"] for a in ray._private.state.actors().values())


def test_asha_stops_the_worse_trial_and_its_train_run_ends_there(ray_cluster, tmp_path):
    """Two trials one after the other, 2 steps scored after each: the second (a learning rate that barely moves the
    student from its start, FID about 43 against 23) has a worse FID at the first milestone than the first had, so
    ASHA stops it there."""
    cfg = load_config(overrides=[
        "student.architecture=tiny", "student.init_steps=10", "train.distance=l2", "train.batch_size=8",
        "train.ema_rates=[0.9]", "train.steps=2", "train.log_every=1", "train.max_failures=0",
        f"cache.root={tmp_path / 'cache'}", f"eval.out={tmp_path / 'eval'}", "cache.num_records=32",
        "cache.records_per_shard=32", "eval.num_samples=100", "eval.batch_size=100", "eval.ema_rate=0",
        f"sweep.storage_path={tmp_path}", "sweep.name=a", "sweep.report_every=1", "sweep.max_concurrent_trials=1",
        "sweep.num_samples=1", "sweep.max_failures=0", "sweep.grace_period=1", "sweep.reduction_factor=2",
        ("sweep.search_space", {"train.lr": {"grid_search": [0.5, 1e-4]}})])
    before = train_controllers()
    outcome = run_sweep(cfg, log=lambda *a: None)
    assert train_controllers() - before == 2
    bad, good = sorted(outcome["trials"], key=lambda t: t["params"]["train.lr"])
    assert (good["status"], good["step"], bad["status"], bad["step"]) == ("done", 2, "stopped", 1)
    assert bad["fid"] > good["fid"] and outcome["best"]["trial_id"] == good["trial_id"]
    train = tmp_path / "a" / "train"
    assert sorted(p.name for p in (train / bad["trial_id"]).glob("checkpoint_0*")) == ["checkpoint_0000001"]
    assert sorted(p.name for p in (train / good["trial_id"]).glob("checkpoint_0*")) == \
        ["checkpoint_0000001", "checkpoint_0000002"]
    reports = (tmp_path / "a" / f"trial_{bad['trial_id']}" / "result.json").read_text().splitlines()
    assert [json.loads(r)["training_iteration"] for r in reports] == [1]
