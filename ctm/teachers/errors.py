"""What a teacher file is refused for: each message names the file and the array or tensor at fault."""

import torch


class TeacherError(ValueError):
    """A teacher file that cannot be a teacher: unreadable, of another kind, or holding non-finite values."""


def check_finite(named, where, what="tensor"):
    """Raise TeacherError naming the first of `named` ({name: tensor or array}) that holds NaN or Inf: a teacher with
    them gives NaN trajectories without an error of its own."""
    for name, value in named.items():
        value = torch.as_tensor(value)
        if not (value.is_floating_point() or value.is_complex()):
            continue
        bad = int(value.numel() - torch.isfinite(value).sum())
        if bad:
            raise TeacherError(f"{where}: {what} '{name}' holds {bad} of {value.numel()} values that are NaN or Inf; "
                               "the file is damaged or was saved from a run that diverged")
