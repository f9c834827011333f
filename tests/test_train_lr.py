import math

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.sweep.trial import trial_config
from pipeline.train.step import learning_rate


def test_cosine_decays_to_zero_at_the_last_step_and_constant_is_the_official_default():
    cfg = load_config(overrides=["train.steps=100", "train.lr=1e-3"])
    assert cfg.train.lr_schedule == "constant" and {learning_rate(s, cfg.train) for s in (0, 50, 100)} == {1e-3}
    t = load_config(overrides=["train.steps=100", "train.lr=1e-3", "train.lr_schedule=cosine"]).train
    assert learning_rate(0, t) == 1e-3 and learning_rate(100, t) == pytest.approx(0, abs=1e-18)
    assert learning_rate(25, t) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        load_config(overrides=["train.lr_schedule=linear"])


def test_a_sweep_trial_trains_one_run_over_the_whole_cosine(tmp_path):
    base = load_config(overrides=["train.steps=100", "train.lr_schedule=cosine"]).to_dict()
    trial = trial_config(base, {}, str(tmp_path), "t").train  # one Train run per trial, all of train.steps
    assert (trial.steps, trial.lr_decay_steps) == (100, None) and learning_rate(40, trial) > 0
    assert learning_rate(100, trial) == pytest.approx(0, abs=1e-18)
