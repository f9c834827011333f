"""Ray Tune schedule searches: γ and the intermediate times of γ-sampling of a finished checkpoint, per NFE.

    outcome = run_schedule_search(cfg, checkpoint, nfe=2, searcher="optuna", trials=20)   # Ray initialised
"""

from .search import check_search, run_schedule_search
from .space import SEARCHERS, default_params, grid_values, schedule_setting

__all__ = ["run_schedule_search", "check_search", "SEARCHERS", "default_params", "grid_values", "schedule_setting"]
