import json

import numpy as np
import torch

from benchmarks.eval_speed import main as eval_speed
from pipeline.config import load_config
from pipeline.evaluation.schedule_sweep import best_per_nfe, write_schedule_sweep_report
from pipeline.evaluation.report import fid_table, write_report
from pipeline.evaluation.settings import Setting

GRID = load_config().grid.grid()
MEASURED = {"features": {"name": "digits-mlp-64", "digest": "d", "description": "test"},
            "reference": {"dataset": "digits", "count": 1797, "source": "computed"},
            "real_vs_real": {"fd": 0.5, "n": 100, "against": 1697, "how": "split"}, "num_samples": 100}


def result(setting, fid, checkpoint="run/ckpt"):
    return {"model": {"checkpoint": checkpoint, "step": 5, "ema_rate": 0.999}, "setting": setting.to_dict(GRID),
            "fid": fid, "preview": np.zeros((4, 1, 8, 8), np.float16), **MEASURED}


RESULTS = [result(Setting(1, 0.0), 9.0), result(Setting(1, 1.0), 9.5), result(Setting(2, 0.0), 4.0),
           result(Setting(2, 1.0), 3.0), result(Setting(2, None, 9, 5), 2.5)]


def test_table_has_one_row_per_nfe_and_one_column_per_gamma():
    lines = fid_table(RESULTS)
    assert lines[:4] == ["| NFE | γ = 0 | γ = 1 |", "|---|---|---|", "| 1 | 9 | 9.5 |", "| 2 | 4 | 3 |"]
    assert lines[-1].startswith("| 9 | 5 | 1.923 | 12.91 | 2.5 |")


def test_best_setting_per_nfe_includes_two_step_settings():
    best = best_per_nfe(RESULTS)
    assert best[1]["fid"] == 9.0 and best[2]["setting"]["label"] == "2-step i1=9 i2=5"


def test_reports_say_what_was_measured(tmp_path):
    write_report({"results": RESULTS, "teacher": None, "likelihood": []}, tmp_path, {"eval": {}})
    report = (tmp_path / "report.md").read_text()
    assert "digits-mlp-64" in report and "FD 0.5 (100 against 1697" in report and "ckpt step 5 EMA 0.999" in report
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["results"][0]["setting"]["t_steps"] == [80.0, 0.002] and "preview" not in document["results"][0]
    two_models = RESULTS + [result(Setting(1, 0.0), 1.0, checkpoint="run/other")]
    write_schedule_sweep_report(two_models, tmp_path / "schedule_sweep")
    sweep = (tmp_path / "schedule_sweep" / "schedule_sweep.md").read_text()
    assert sweep.count("Best setting per NFE") == 2 and "- NFE 2: 2-step i1=9 i2=5, FID 2.5" in sweep
    assert len(list((tmp_path / "schedule_sweep").glob("schedule_sweep_*.png"))) == 2


def test_eval_speed_benchmark_runs(capsys):
    threads = torch.get_num_threads()
    try:
        eval_speed(["--num", "20", "--batch", "10", "--nfe", "1", "2", "--repeats", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "seconds per 1,000 samples" in out and "NFE 2, γ=0" in out and "(FID " in out
