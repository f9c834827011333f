import hashlib
import json
import sys

import pytest

from ctm.networks import tiny_songunet_kwargs
from ctm.student import build_ctm_student
from jobs.evaluate import main
from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_config

SMALL = ["eval.num_samples=100", "eval.batch_size=100"]


@pytest.fixture
def checkpoint(tmp_path):
    G = build_ctm_student(**tiny_songunet_kwargs(8, 1))
    state = G.state_dict()
    return save_checkpoint(tmp_path / "ckpt", step=11, config=load_config().to_dict(), student_kwargs=G.init_kwargs,
                           student=state, target=state, ema={"0.999": state}, discriminator=None, opt_G=None,
                           opt_D=None, rng={}, data={}).parent


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def overrides(*items):
    return [arg for item in items for arg in ("--set", item)]


def test_evaluate_writes_table_plot_grids_and_the_teacher(ray_cluster, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--checkpoint", str(checkpoint), "--teacher",
                 *overrides(*SMALL, "eval.nfe=[1,2]", "eval.two_step=[[9,5]]", f"eval.out={out}")])
    assert code == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "| NFE | γ = 0 | γ = 1 |" in report and "| 9 | 5 |" in report and "Real against real" in report
    assert "digits-mlp-64" in report and "teacher Heun, N=18" in report
    document = json.loads((out / "results.json").read_text())
    assert len(document["results"]) == 5 and document["teacher"]["setting"]["nfe"] == 34
    assert all("preview" not in r and r["model"]["step"] == 11 for r in document["results"])
    for name in ("fid_vs_nfe.png", "samples_nfe1_gamma0.png", "samples_two_step_i1_9_i2_5.png", "teacher_heun.png",
                 "config.yaml"):
        assert (out / name).stat().st_size > 0, name


def test_schedule_sweep_on_a_saved_checkpoint_starts_no_training(ray_cluster, checkpoint, tmp_path):
    before, modules = digest(checkpoint), set(sys.modules)
    out = tmp_path / "out"
    code = main(["--checkpoint", str(checkpoint), "--schedule-sweep",
                 *overrides(*SMALL, "eval.schedule_nfe=[1,2]", "eval.schedule_gammas=[0,1]",
                            "eval.schedule_two_step=[[9,5]]", f"eval.out={out}")])
    assert code == 0
    new_modules = set(sys.modules) - modules
    assert not any(m.startswith(("pipeline.train", "ray.train", "ray.tune")) for m in new_modules)
    assert digest(checkpoint) == before  # nothing written beside the checkpoint
    results = json.loads((out / "schedule_sweep" / "schedule_sweep.json").read_text())["results"]
    assert len(results) == 5 and {r["model"]["step"] for r in results} == {11}
    sweep = (out / "schedule_sweep" / "schedule_sweep.md").read_text()
    assert "Best setting per NFE" in sweep and "- NFE 2:" in sweep
    assert list((out / "schedule_sweep").glob("schedule_sweep_*.png"))


@pytest.fixture
def actor_calls(monkeypatch):
    """Every pool started and every result asked of the evaluation actors, as (method, ...) tuples."""
    import pipeline.evaluation.reuse as reuse
    calls = []

    class CountingPool(reuse.EvaluatorPool):
        def __init__(self, cfg):
            calls.append(("pool",))
            super().__init__(cfg)

        def submit(self, source, settings, actor=None):
            calls.append(("submit", *(s.label for s in settings)))
            return super().submit(source, settings, actor)

        def submit_teacher(self):
            calls.append(("submit_teacher",))
            return super().submit_teacher()

    monkeypatch.setattr(reuse, "EvaluatorPool", CountingPool)
    return calls


def test_a_second_evaluation_reuses_the_results_and_a_changed_setting_is_scored(ray_cluster, checkpoint, tmp_path,
                                                                               actor_calls, capsys):
    out = tmp_path / "out"
    args = ["--checkpoint", str(checkpoint), "--teacher",
            *overrides(*SMALL, "eval.nfe=[1]", "eval.gammas=[0]", f"eval.out={out}")]
    assert main(args) == 0
    assert sorted(actor_calls) == [("pool",), ("submit", "NFE 1 γ=0"), ("submit_teacher",)]
    first = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    actor_calls.clear()
    assert main(args) == 0  # nothing changed: no actor is started or asked
    assert actor_calls == [] and f"reused 2 results from {out / 'scored.npz'}" in capsys.readouterr().out
    second = json.loads((out / "results.json").read_text())
    assert (second["results"], second["teacher"]) == (first["results"], first["teacher"])
    assert (out / "samples_nfe1_gamma0.png").stat().st_size > 0 and (out / "teacher_heun.png").stat().st_size > 0
    assert main([*args, "--set", "eval.nfe=[1,2]"]) == 0  # one new setting: only it is scored
    assert actor_calls == [("pool",), ("submit", "NFE 2 γ=0")] and "reused 2 results" in capsys.readouterr().out
    actor_calls.clear()
    assert main([*args, "--force"]) == 0
    assert sorted(actor_calls) == [("pool",), ("submit", "NFE 1 γ=0"), ("submit_teacher",)]


def test_errors_exit_non_zero_with_a_message(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err
    assert main(["--teacher", "--set", "eval.features=inception", "--set", f"eval.inception_path={tmp_path}"]) == 2
    assert "inception-2015-12-05.pt" in capsys.readouterr().err
    assert main([]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path), "--set", "eval.nfe=[0]"]) == 2
    assert "eval.nfe" in capsys.readouterr().err
