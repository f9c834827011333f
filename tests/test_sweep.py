"""Tune sweeps of the training config: search-space checks, trial configs, and one shared three-trial sweep that is
interrupted by an injected trial failure, then restored, then judged; each trial starts Ray Train once."""

import json
import math
import os
import signal

import numpy as np
import pytest
import yaml
from ray import tune

import faults
from jobs.sweep import main as sweep_main
from pipeline.checkpoint import load_student
from pipeline.config import EMBEDDED_DEFAULT, ConfigError, load_config
from pipeline.evaluation import EvaluatorPool
from pipeline.sweep import check_search_space, milestones, param_space, run_sweep, trial_config
from pipeline.sweep.space import num_trials

SPACE = {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}
SECOND = "_00001"  # the end of the second trial's id (Tune numbers its trials in order)


def sweep_config(root, *overrides):
    """Three tiny trials, one at a time, each trained 2 steps and scored after each (ASHA sees 2 reports); the
    `sweep` fixture makes the second die at its first step, with no Train or Tune retries."""
    return load_config(overrides=[
        "student.architecture=tiny", "student.init_steps=10", "train.distance=l2", "train.batch_size=8", "train.ema_rates=[0.9]",
        "train.steps=2", "train.checkpoint_every=100", "train.log_every=1", "train.max_failures=0",
        f"cache.root={root / 'cache'}", f"eval.out={root / 'eval'}", "cache.num_records=32", "cache.records_per_shard=32",
        "eval.num_samples=100", "eval.batch_size=100", "eval.ema_rate=0.9",
        f"sweep.storage_path={root}", "sweep.name=s", "sweep.report_every=1", "sweep.max_concurrent_trials=1",
        "sweep.num_samples=3", "sweep.max_failures=0", ("sweep.search_space", SPACE), *overrides])


def test_search_space_becomes_tune_domains(tmp_path):
    cfg = load_config(overrides=[("sweep.search_space", {
        "train.lambda_dsm": {"loguniform": [0.1, 10]}, "train.lr": {"choice": [1e-4, 4e-4]},
        "train.gan_start": {"grid_search": [100, 200]}, "train.seed": {"randint": [0, 3]},
        "train.target_ema": {"uniform": [0.9, 0.99]}})])
    space = param_space(cfg)
    assert isinstance(space["train.lambda_dsm"], tune.search.sample.Float)
    assert (space["train.lambda_dsm"].lower, space["train.lambda_dsm"].upper) == (0.1, 10)
    assert space["train.lr"].categories == [1e-4, 4e-4] and space["train.gan_start"] == {"grid_search": [100, 200]}
    assert isinstance(space["train.seed"], tune.search.sample.Integer) and space["train.seed"].upper == 3
    assert num_trials(cfg) == 2 * cfg.sweep.num_samples


@pytest.mark.parametrize("space, message", [
    ({"train.lamda_dsm": {"choice": [1, 2]}}, "unknown config key 'train.lamda_dsm'"),
    ({"train.lr": {"normal": [0, 1]}}, "entry 'train.lr': a spec is one of"),
    ({"train.lr": {"loguniform": [0, 1]}}, "loguniform needs low > 0"),
    ({"train.lr": {"uniform": [-1, 1]}}, "learning rates must be positive"),
    ({"train.gan_start": {"uniform": [100, 200]}}, "'train.gan_start' must be int"),
    ({"train.distance": {"choice": ["l2", "l3"]}}, "'l3'"),
    ({"grid.N": {"choice": [12, 18]}}, "only train.* and student.* keys"),
    ({"train.steps": {"choice": [10, 20]}}, "set by the sweep itself"),
    ({}, "'sweep.search_space' is empty"),
])
def test_bad_search_spaces_are_refused_naming_the_key(space, message):
    cfg = load_config(overrides=[("sweep.search_space", space)])
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        check_search_space(cfg)


def test_a_trial_runs_all_its_steps_with_a_checkpoint_at_every_milestone(tmp_path):
    assert milestones(5, 2) == [2, 4, 5] and milestones(4, 2) == [2, 4] and milestones(3, 10) == [3]
    base = load_config(overrides=["train.steps=50", "train.checkpoint_every=15", "sweep.report_every=10"]).to_dict()
    cfg = trial_config(base, {"train.lr": np.float64(2e-4), "train.seed": np.int64(7)}, str(tmp_path), "abc_00001")
    assert (cfg.train.lr, cfg.train.seed, cfg.train.run_name, cfg.train.storage_path) == \
        (2e-4, 7, "abc_00001", str(tmp_path)) and type(cfg.train.seed) is int
    assert (cfg.train.steps, cfg.train.checkpoint_every) == (50, 5)  # gcd(15, 10)


def test_the_job_refuses_bad_input_before_anything_runs(tmp_path, capsys):
    assert sweep_main(["--set", "sweep.search_space={train.nope: {choice: [1]}}"]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err
    assert sweep_main(["--set", "sweep.search_space={train.lr: {choice: [1e-4]}}", "--set", "sweep.grace_period=9",
                       "--set", "train.steps=4", "--set", "sweep.report_every=2"]) == 2
    assert "exceeds the 2 reports" in capsys.readouterr().err
    assert sweep_main(["--set", "sweep.search_space={train.lr: {choice: [1e-4]}}", "--set", "eval.ema_rate=0.5"]) == 2
    assert "config key 'eval.ema_rate'" in capsys.readouterr().err


class InterruptAtFirstError(tune.Callback):
    """Stop the sweep the way Ctrl+C does (Tune saves its state and fit() returns) when a trial fails."""

    def on_trial_error(self, iteration, trials, trial, **info):
        os.kill(os.getpid(), signal.SIGUSR1)


def finished_trial_files(exp, trial_id):
    """What a finished trial wrote: its Train run (bytes and mtimes), its reports and Tune checkpoints (bytes: Tune
    rewrites its own logs on restore)."""
    trial = exp / f"trial_{trial_id}"
    run = {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in (exp / "train" / trial_id).rglob("*") if p.is_file()}
    tune_files = {str(p): p.read_bytes() for p in [trial / "result.json", *trial.glob("checkpoint_*/*")]}
    return run, tune_files


def train_controllers():
    """Ray Train controllers this cluster has started (one per TorchTrainer.fit), dead or alive."""
    import ray._private.state
    return sum("TrainController" in a["ActorClassName"] for a in ray._private.state.actors().values())


def held_placement_groups():
    """Bundles of the placement groups that still hold resources on this cluster."""
    from ray.util import placement_group_table
    return [pg["bundles"] for pg in placement_group_table().values() if pg["state"] != "REMOVED"]


@pytest.fixture(scope="module")
def sweep(ray_cluster, tmp_path_factory):
    """The shared sweep: run until the injected failure (the second trial's rank 0 dies at step 0) interrupts it,
    then restored to the end."""
    root = tmp_path_factory.mktemp("sweep")
    cfg = sweep_config(root)
    exp, quiet, pool, controllers = root / "s", lambda *a: None, EvaluatorPool(cfg), train_controllers()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            faults.kill_rank0(monkeypatch, 0, when=lambda run_cfg: run_cfg.train.run_name.endswith(SECOND))
            first = run_sweep(cfg, callbacks=[InterruptAtFirstError()], pool=pool, log=quiet)
            state = {"cfg": cfg, "exp": exp, "first": first, "best_saved_early": (exp / "best.json").exists(),
                     "before": finished_trial_files(exp, first["trials"][0]["trial_id"])}
            state["second"] = run_sweep(cfg, restore=True, pool=pool, log=quiet)
            state["train_starts"] = train_controllers() - controllers
            state["held"] = held_placement_groups()
    finally:
        pool.shutdown()
    return state


def test_an_injected_trial_failure_leaves_the_other_trials_intact(sweep):
    exp, first = sweep["exp"], sweep["first"]
    t0, t1, *unstarted = first["trials"]  # Tune draws the third trial only once a slot is free
    assert [t["status"] for t in first["trials"]] == ["done", "error"] + ["not done"] * len(unstarted)
    assert not first["complete"]
    assert t1["trial_id"].endswith(SECOND) and "WorkerGroupError" in t1["error"] and t1["fid"] is None
    assert [p.name for p in (exp / "train" / t1["trial_id"]).glob("*.marker")] == [faults.marker(0)]
    assert t0["step"] == 2 and math.isfinite(t0["fid"]) and t0["checkpoint"].endswith("checkpoint_0000002")
    assert sorted(p.name for p in (exp / "train" / t0["trial_id"]).glob("checkpoint_0*")) == \
        ["checkpoint_0000001", "checkpoint_0000002"]
    assert first["best"] is None and not sweep["best_saved_early"]


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep):
    exp, first, second = sweep["exp"], sweep["first"], sweep["second"]
    assert second["complete"] and len(second["trials"]) == 3
    assert [t["trial_id"] for t in second["trials"][:2]] == [t["trial_id"] for t in first["trials"][:2]]
    t0, t1, t2 = second["trials"]
    assert finished_trial_files(exp, t0["trial_id"]) == sweep["before"]  # not rerun: nothing it wrote changed
    results = (exp / f"trial_{t0['trial_id']}" / "result.json").read_text().splitlines()
    assert [json.loads(r)["training_iteration"] for r in results] == [1, 2]
    assert t1["status"] == "error" and t2["status"] in ("done", "stopped") and math.isfinite(t2["fid"])


def test_each_trial_starts_ray_train_once_and_reports_every_milestone(sweep):
    exp, second = sweep["exp"], sweep["second"]
    assert sweep["train_starts"] == 3  # three trials, each one TorchTrainer.fit for all its milestones
    t0 = second["trials"][0]
    reports = [json.loads(r) for r in (exp / f"trial_{t0['trial_id']}" / "result.json").read_text().splitlines()]
    assert [(r["step"], r["training_iteration"]) for r in reports] == [(1, 1), (2, 2)]
    assert all(math.isfinite(r["fid"]) and r["train_seconds"] > 0 and r["eval_seconds"] > 0 for r in reports)
    assert [r["checkpoint_path"].rsplit("/", 1)[1] for r in reports] == ["checkpoint_0000001", "checkpoint_0000002"]


def test_ended_trials_leave_no_placement_group_behind(sweep):
    """Every trial's Train run ends before its trial (this cluster has no dashboard, so Train's placement-group cleaner
    could not free the workers' CPUs of a controller that died with its trial: a fourth trial then waited forever)."""
    assert sweep["held"] == []


def test_the_sweep_reports_fid_per_trial_and_saves_the_best(sweep):
    cfg, exp, second = sweep["cfg"], sweep["exp"], sweep["second"]
    t0, _, t2 = second["trials"]
    assert t0["params"]["train.lr"] != t2["params"]["train.lr"]  # seeded random draws, one per trial
    best = min((t0, t2), key=lambda t: t["fid"])
    assert second["best"] == best
    record = json.loads((exp / "best.json").read_text())
    assert record["best"]["trial_id"] == best["trial_id"] and record["best"]["fid"] == best["fid"]
    assert [t["status"] for t in record["trials"]] == [t["status"] for t in second["trials"]]
    evaluation = record["best"]["evaluation"]
    assert evaluation["fid"] == best["fid"] and evaluation["num_samples"] == 100
    assert evaluation["features"]["name"] == "digits-mlp-64" and evaluation["setting"]["nfe"] == 1
    best_cfg = load_config(exp / "best_config.yaml")
    assert best_cfg.train.lr == best["params"]["train.lr"] and best_cfg.train.run_name == best["trial_id"]
    G, run_cfg = load_student(best["checkpoint"], ema_rate=0.9)
    assert run_cfg.train.lr == best_cfg.train.lr and not G.training
    assert yaml.safe_load((exp / "config.yaml").read_text()) == yaml.safe_load(cfg.dump())
    caches = sorted(p.name for p in (exp.parent / "cache").iterdir())
    assert len(caches) == 2 and "teacher-start" in caches  # one trajectory cache, generated once, read by all
    assert len(list((exp.parent / "cache" / "teacher-start").iterdir())) == 1  # and one student start


def test_restore_refuses_another_config_and_a_missing_sweep(sweep, tmp_path, capsys):
    exp = sweep["exp"]
    with pytest.raises(ConfigError, match="train.lr differ"):
        run_sweep(load_config(exp / "config.yaml", ["train.lr=1e-3"]), restore=True)
    assert sweep_main(["--restore", "--config", str(EMBEDDED_DEFAULT), "--set", f"sweep.storage_path={tmp_path}",
                       "--set", f"cache.root={tmp_path / 'cache'}", "--set",
                       "sweep.search_space={train.lr: {choice: [1e-4]}}"]) == 2
    assert "nothing to restore" in capsys.readouterr().err
