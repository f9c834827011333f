"""Ray Tune sweeps of the training config with ASHA on the FID of the evaluation actors.

    outcome = run_sweep(cfg)     # Ray initialised; continues the sweep when its folder holds one
"""

from .space import check_search_space, param_space
from .summary import best_trial, trial_summary
from .trial import milestones, run_trial, trial_config
from .tuner import check_sweep, ensure_cache, run_sweep

__all__ = ["run_sweep", "check_sweep", "check_search_space", "param_space", "milestones", "run_trial", "trial_config",
           "ensure_cache", "best_trial", "trial_summary"]
