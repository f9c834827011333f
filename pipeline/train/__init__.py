"""CTM training on Ray Train: cached (trajectory cache) or online (teacher inside the step) teacher mode.

    result = run_training(cfg)      # Ray initialised; continues the run when its directory has checkpoints
"""

from .loop import train_loop_per_worker
from .state import TrainState, build_state, student_kwargs
from .step import CTMStep
from .trainer import preflight, run_training

__all__ = ["run_training", "preflight", "train_loop_per_worker", "CTMStep", "TrainState", "build_state",
           "student_kwargs"]
