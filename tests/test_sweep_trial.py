"""A sweep trial's parts that need no Ray: the controller callback that hands milestones over and ends the run when
the trial ends, and the milestones a restored trial reports before its Train run continues."""

import json
import queue

import pytest

from pipeline.config import load_config
from pipeline.sweep.trial import MilestoneReports, TrialEnded, passed_milestones, trial_config
from pipeline.train.rundir import SNAPSHOT


def test_the_callback_hands_over_milestone_checkpoints_only_and_ends_the_run_when_told():
    checkpoints, scored = queue.Queue(), queue.Queue()
    callback = MilestoneReports([2, 4], checkpoints, scored)
    callback.after_report(None, [{"step": 1}], "checkpoint 1")  # a checkpoint, not a milestone
    callback.after_report(None, [{"step": 2}], None)  # a log step's report, no checkpoint
    assert checkpoints.empty()
    scored.put(True)
    callback.after_report(None, [{"step": 2, "loss_ctm": 0.5}, {"step": 2}], "checkpoint 2")
    assert checkpoints.get_nowait() == ({"step": 2, "loss_ctm": 0.5}, "checkpoint 2") and scored.empty()
    scored.put(False)  # ASHA stopped the trial
    with pytest.raises(TrialEnded, match="milestone 4"):
        callback.after_report(None, [{"step": 4}], "checkpoint 4")


def test_a_restored_trial_first_reports_the_milestones_its_run_passed(tmp_path):
    base = load_config(overrides=["train.steps=8", "sweep.report_every=2", "train.checkpoint_every=3"]).to_dict()
    cfg = trial_config(base, {}, str(tmp_path), "t")
    assert cfg.train.checkpoint_every == 1  # gcd(3, 2): a checkpoint at every milestone
    run = tmp_path / "t"
    run.mkdir()
    names = [f"checkpoint_{s:07d}" for s in (3, 4, 5, 6)]  # num_to_keep dropped 1 and 2
    (run / SNAPSHOT).write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": n} for n in names],
                                            "checkpoint_report_indices": [0, 1, 2, 3]}))
    passed = passed_milestones(cfg, [4, 6, 8])  # the trial's last report was milestone 2
    assert [(step, c.path) for step, c in passed] == [(4, str(run / names[1])), (6, str(run / names[3]))]
