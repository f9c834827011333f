"""Training checkpoints: one directory holding `checkpoint.pt`, written by rank 0 and made durable by
`ray.train.report(..., checkpoint=Checkpoint.from_directory(dir))`, which registers it only once fully persisted.

`checkpoint.pt` is a `torch.save` dict: "step", "config" (cfg.to_dict()), "student_kwargs" (CTMPrecond init_kwargs),
"student", "target", "ema" ({str(rate): state_dict}), "discriminator" (or None), "opt_G", "opt_D" (or None), "rng",
"data" (the data position). Every value is a tensor or plain data, so it loads with `weights_only=True`.
"""

import os
import tempfile
from pathlib import Path

import torch

from ctm.student import CTMPrecond
from pipeline.config import load_config

CHECKPOINT_FILE = "checkpoint.pt"
PARTS = ("step", "config", "student_kwargs", "student", "target", "ema", "discriminator", "opt_G", "opt_D", "rng",
         "data")


def save_checkpoint(directory, **parts):
    """Write `parts` to directory/checkpoint.pt through a temporary file and a rename (never a half-written file)."""
    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise ValueError(f"a checkpoint needs every part {PARTS}; missing {missing}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        torch.save(parts, f)
    os.replace(tmp, directory / CHECKPOINT_FILE)
    return directory / CHECKPOINT_FILE


def checkpoint_file(path):
    """The checkpoint.pt of a checkpoint directory (or the file itself)."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}: expected a checkpoint directory holding "
                                f"{CHECKPOINT_FILE} (e.g. <storage_path>/<run_name>/checkpoint_0001000) or the "
                                "file itself")
    return file


def load_checkpoint(path, map_location="cpu"):
    """The parts dict of a checkpoint directory or checkpoint.pt file."""
    file = checkpoint_file(path)
    try:
        parts = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{file} is not a readable training checkpoint ({e}); it may be truncated or damaged: "
                         "use an older checkpoint of the run") from None
    missing = [p for p in PARTS if p not in parts] if isinstance(parts, dict) else list(PARTS)
    if missing:
        raise ValueError(f"{file} is not a training checkpoint of this project: it lacks {missing}")
    return parts


def load_student(path, ema_rate=0.999, device="cpu"):
    """(CTMPrecond holding the EMA weights at `ema_rate` (0: the online weights θ), in eval mode on `device`, Config
    of the run)."""
    parts = load_checkpoint(path)
    rates = sorted(parts["ema"])
    if ema_rate != 0 and str(ema_rate) not in parts["ema"]:
        raise KeyError(f"{checkpoint_file(path)} holds EMAs at rates {rates}, not {ema_rate}: pass one of these, or 0 "
                       "for the online weights (train.ema_rates sets which are kept)")
    G = CTMPrecond(**parts["student_kwargs"])
    G.load_state_dict(parts["student"] if ema_rate == 0 else parts["ema"][str(ema_rate)])
    return G.to(device).eval().requires_grad_(False), load_config(base=parts["config"])
