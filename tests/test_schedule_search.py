"""Schedule searches: the space of γ and intermediate times, schedules.json, one Optuna search on a tiny checkpoint
that is interrupted after its first trials, restored to the end, and round-tripped into jobs.evaluate and jobs.sample,
and the short schedule search inside a loss-weight sweep's trial."""

import json
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest
from ray import tune

from ctm.networks import tiny_songunet_kwargs
from ctm.sampling import gamma_steps
from ctm.schedule import karras_grid
from ctm.student import build_ctm_student
from jobs.evaluate import main as evaluate_main
from jobs.sample import main as sample_main
from jobs.sweep_schedule import main as search_main
from pipeline.checkpoint import save_checkpoint
from pipeline.config import ConfigError, load_config
from pipeline.evaluation import EvaluatorPool, Setting
from pipeline.evaluation.schedules import (best_schedule, best_settings, parse_schedule_option, read_schedules,
                                           schedule_entry, write_schedule)
from pipeline.schedule_search import default_params, grid_values, run_schedule_search, schedule_setting
from pipeline.schedule_search.space import gamma_from_landing, grid_counts, num_trials, random_schedules
from pipeline.sweep.trial import schedule_note, score

GRID = load_config().grid.grid()
TRIALS = 4


def small(out, actors=2):
    return ["eval.num_samples=100", "eval.batch_size=100", f"eval.num_actors={actors}", f"eval.out={out}"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    G = build_ctm_student(**tiny_songunet_kwargs(8, 1))
    state = G.state_dict()
    return save_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_0000003", step=3,
                           config=load_config().to_dict(), student_kwargs=G.init_kwargs, student=state, target=state,
                           ema={"0.999": state}, discriminator=None, opt_G=None, opt_D=None, rng={}, data={}).parent


def test_the_default_point_is_the_rho_ramp_at_gamma_zero_and_any_point_gives_monotone_times():
    for nfe in (2, 3, 5):
        t_steps, s_steps = schedule_setting(default_params(nfe), nfe, GRID).times(GRID)
        expected_t, expected_s = gamma_steps(nfe, 0.0)
        assert t_steps == pytest.approx(expected_t, rel=1e-12) and s_steps == pytest.approx(expected_s, rel=1e-12)
    assert schedule_setting(default_params(2), 2, GRID).sigmas == tuple(gamma_steps(2, 0.0)[0][1:-1])
    setting = schedule_setting({"landing": 0.0, "cut_1": 0.9, "cut_2": 0.0, "cut_3": 1.0}, 4, GRID)
    t_steps, s_steps = setting.times(GRID)
    assert t_steps[0] == 80 and t_steps[-1] == 0.002 and all(a >= b for a, b in zip(t_steps, t_steps[1:]))
    assert t_steps[2] == t_steps[1] and t_steps[3] == 0.002 and s_steps == [0.002] * 4  # γ = 1: CM multistep
    with pytest.raises(ValueError, match="non-increasing"):
        Setting(3, 0.0, sigmas=(1.0, 2.0))
    with pytest.raises(ValueError, match="sigma_min, sigma_max"):
        Setting(2, 0.0, sigmas=(90.0,)).times(GRID)


def test_the_landing_is_the_two_step_variants_grid_position():
    grid = karras_grid(GRID.N).tolist()  # digits' 2-step pair i1=15, i2=11: t_1 = t_11, s_0 = t_15
    setting = schedule_setting({"landing": 1 / 3, "cut_1": 11 / 17}, 2, GRID)
    t_steps, s_steps = setting.times(GRID)
    two_step_t, two_step_s = Setting(2, None, 15, 11).times(GRID)
    assert t_steps == pytest.approx(two_step_t, rel=1e-9) and s_steps == pytest.approx(two_step_s, rel=1e-9)
    assert t_steps[1] == pytest.approx(grid[11], rel=1e-9) and 0.999 < setting.gamma < 1
    t_1 = setting.sigmas[0]
    assert [gamma_from_landing(x, t_1, GRID) for x in (0.0, 1.0)] == [1.0, 0.0]
    assert gamma_from_landing(0.5, 0.002, GRID) == 0.0  # t_1 = σ_min: γ changes nothing


def test_the_grid_is_the_largest_even_grid_in_the_budget():
    assert grid_counts(2, 20) == {"landing": 4, "cut_1": 5} and num_trials("grid", 2, 20) == 20
    assert grid_counts(3, 20) == {"landing": 2, "cut_1": 3, "cut_2": 3} and num_trials("grid", 3, 20) == 18
    values = grid_values(2, 20)
    assert values["landing"] == pytest.approx([0, 1 / 3, 2 / 3, 1]) and values["cut_1"] == pytest.approx(
        [0.1, 0.3, 0.5, 0.7, 0.9])  # 0.5: the default ρ-ramp's t_1
    assert num_trials("optuna", 2, 7) == 7


def test_schedules_json_keeps_the_best_entry_measured_alike(checkpoint, tmp_path):
    run = tmp_path / "ckpt"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes((checkpoint / "checkpoint.pt").read_bytes())
    setting = Setting(2, 0.5, sigmas=(1.5,))
    result = {"setting": setting.to_dict(GRID), "fid": 3.0, "model": {"ema_rate": 0.999}, "num_samples": 100,
              "seed": 0, "features": {"name": "digits-mlp-64"}}
    with pytest.raises(FileNotFoundError, match="jobs.sweep_schedule"):
        best_schedule(run, 2)
    write_schedule(run, schedule_entry(result))
    assert write_schedule(run, schedule_entry({**result, "fid": 4.0}))["fid"] == 3.0  # a worse search keeps the best
    assert write_schedule(run, schedule_entry({**result, "fid": 5.0, "num_samples": 200}))["fid"] == 5.0
    entry = read_schedules(run)[2]
    assert entry["sigmas"] == [1.5] and entry["t_steps"] == [80.0, 1.5, 0.002] and entry["ema_rate"] == 0.999
    assert best_settings(run) == best_settings(run, [2]) == [setting]
    with pytest.raises(ValueError, match="NFE \\[2\\], not 4"):
        best_schedule(run, 4)
    assert parse_schedule_option("best") is None and parse_schedule_option("best:2,4") == [2, 4]
    with pytest.raises(ValueError, match="best:2"):
        parse_schedule_option("fastest")


class InterruptAfter(tune.Callback):
    """Stop the search the way Ctrl+C does (Tune saves its state and fit() returns) once `n` trials have finished;
    only once (a restored Tuner keeps its callbacks), marked by the file `once`."""

    def __init__(self, n, once):
        self.n, self.once, self.done = n, once, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done == self.n and not self.once.exists():
            self.once.touch()
            os.kill(os.getpid(), signal.SIGUSR1)


def trial_files(path, trials):
    """What the trials wrote: their reports and Tune checkpoints (evaluation records)."""
    return {str(p.relative_to(path)): p.read_bytes() for t in trials for p in (path / t).rglob("*")
            if p.is_file() and (p.name == "result.json" or p.parent.name.startswith("checkpoint_"))}


@pytest.fixture(scope="module")
def search(ray_cluster, checkpoint, tmp_path_factory):
    """An Optuna search of 4 trials on two actors, interrupted once 2 trials have finished, then restored; the actors'
    counts, and a direct evaluation of the best setting on the same pool."""
    root = tmp_path_factory.mktemp("search")
    cfg = load_config(overrides=small(root))
    pool, quiet = EvaluatorPool(cfg), lambda *a: None
    try:
        first = run_schedule_search(cfg, checkpoint, 2, "optuna", TRIALS, callbacks=[InterruptAfter(2, root / "once")],
                                    pool=pool, log=quiet)
        done = [t["trial"] for t in first["trials"] if t["status"] == "done"]
        finished = trial_files(Path(first["path"]), done)
        second = run_schedule_search(cfg, checkpoint, 2, "optuna", TRIALS, restore=True, pool=pool, log=quiet)
        counts = ray_cluster.get([a.counts.remote() for a in pool.actors])
        best = second["best"]["setting"]
        direct, = ray_cluster.get(pool.submit(checkpoint, [Setting(2, best["gamma"], sigmas=best["sigmas"])]))
    finally:
        pool.shutdown()
    return {"cfg": cfg, "first": first, "done": done, "finished": finished, "second": second, "counts": counts,
            "direct": direct}


def test_an_interrupted_search_resumes_without_rerunning_finished_trials(search):
    first, second = search["first"], search["second"]
    assert not first["complete"] and first["best"] is None
    done = search["done"]
    assert 2 <= len(done) < TRIALS and all(f"{t}/checkpoint_000000/evaluation.json" in search["finished"] for t in done)
    assert second["complete"] and len(second["trials"]) == TRIALS
    assert all(t["status"] == "done" and math.isfinite(t["fid"]) for t in second["trials"])
    assert trial_files(Path(second["path"]), done) == search["finished"]  # not rerun: nothing they wrote changed
    first_trial = second["trials"][0]
    assert first_trial["gamma"] == 0.0 and first_trial["sigmas"] == list(gamma_steps(2, 0.0)[0][1:-1])


def test_trials_share_the_actors_which_load_the_model_once(search):
    counts = search["counts"]
    assert [c["loads"] for c in counts] == [1, 1]  # both actors scored, each read the checkpoint once
    assert TRIALS <= sum(c["scored"] for c in counts) <= TRIALS + 2  # + the trials in flight at the interruption


def test_the_best_fid_is_a_direct_evaluation_and_is_written_beside_the_checkpoint(search, checkpoint):
    best, second = search["second"]["best"], search["second"]
    assert best["fid"] == min(t["fid"] for t in second["trials"]) == search["direct"]["fid"]
    entry = read_schedules(checkpoint)[2]
    assert entry == second["schedule"] and entry["fid"] == best["fid"]
    assert (entry["gamma"], entry["sigmas"]) == (best["setting"]["gamma"], list(best["setting"]["sigmas"]))
    assert (entry["num_samples"], entry["ema_rate"], entry["features"]["name"]) == (100, 0.999, "digits-mlp-64")
    assert entry["search"]["searcher"] == "optuna" and entry["search"]["trials"] == TRIALS
    record = json.loads((Path(second["path"]) / "best.json").read_text())
    assert record["best"]["fid"] == best["fid"] and len(record["trials"]) == TRIALS


def test_the_written_schedule_round_trips_into_jobs_evaluate(search, checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(checkpoint), "--schedule", "best:2",
                          *[a for item in small(out, actors=1) for a in ("--set", item)]]) == 0
    result, = json.loads((out / "results.json").read_text())["results"]
    entry = read_schedules(checkpoint)[2]
    assert result["fid"] == entry["fid"] and result["setting"]["sigmas"] == entry["sigmas"]
    assert "searched schedule NFE" in (out / "report.md").read_text()
    assert sample_main(["--checkpoint", str(checkpoint), "--schedule", "best", "--nfe", "2", "--num", "4",
                        "--out", str(tmp_path / "samples.npz")]) == 0
    assert f"searched schedule NFE 2 γ={entry['gamma']:.4g}" in capsys.readouterr().out
    assert evaluate_main(["--checkpoint", str(checkpoint), "--schedule", "best:3", "--set", f"eval.out={out}"]) == 2
    assert "not 3" in capsys.readouterr().err


def test_the_job_refuses_bad_input_and_another_search_in_the_same_folder(search, checkpoint, tmp_path, capsys):
    assert search_main(["--checkpoint", str(checkpoint), "--nfe", "1"]) == 2
    assert "NFE 1 has no schedule" in capsys.readouterr().err
    assert search_main(["--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err
    assert search_main(["--checkpoint", str(checkpoint), "--trials", "0"]) == 2
    cfg, path = search["cfg"], Path(search["second"]["path"])
    with pytest.raises(ConfigError, match="trials differ"):
        run_schedule_search(cfg, checkpoint, 2, "optuna", TRIALS + 1, storage_path=path.parent, name=path.name)
    with pytest.raises(ConfigError, match="nothing to restore"):
        run_schedule_search(cfg, checkpoint, 2, "grid", 4, storage_path=tmp_path, restore=True)


def test_a_loss_weight_trial_scores_the_fixed_setting_and_the_same_random_schedules(ray_cluster):
    settings = random_schedules(2, 0.0, 4, [0, 200], GRID)
    assert settings[0] == Setting(2, 0.0) and len(settings) == 4 and all(s.sigmas for s in settings[1:])
    assert settings == random_schedules(2, 0.0, 4, [0, 200], GRID) != random_schedules(2, 0.0, 4, [0, 400], GRID)

    class Pool:  # stands in for EvaluatorPool: FID = γ + t_1 of the setting, 2 s each
        def submit(self, source, settings):
            return ray_cluster.put([{"fid": s.gamma + s.times(GRID)[0][1], "setting": s.to_dict(GRID), "seconds": 2.0,
                                     "model": {"step": 200}, "source": source} for s in settings])

    checkpoint = SimpleNamespace(filesystem=pyarrow.fs.LocalFileSystem(), path="/ckpt")
    evaluations = score(Pool(), checkpoint, settings, 0.999)
    assert [r["setting"]["label"] for r in evaluations] == [s.label for s in settings]
    assert {r["source"] for r in evaluations} == {"/ckpt"}
    note = schedule_note("t1", evaluations)
    best = min(evaluations, key=lambda r: r["fid"])
    assert f"FID {best['fid']:.4g} at {best['setting']['label']}" in note and "3 extra schedules cost 6.0 s" in note
