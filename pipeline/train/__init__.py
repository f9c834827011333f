"""CTM training on Ray Train: cached (trajectory cache) or online (teacher inside the step) teacher mode.

    result = run_training(cfg)      # continues the run when its directory has checkpoints; a finished run starts no
                                    # Ray Train (Ray initialised, or start_ray given)
"""

from .loop import train_loop_per_worker
from .state import TrainState, build_state, student_kwargs
from .step import CTMStep
from .trainer import run_training

__all__ = ["run_training", "train_loop_per_worker", "CTMStep", "TrainState", "build_state",
           "student_kwargs"]
