"""The exported student: one safetensors file holding a checkpoint's EMA weights and what rebuilds and samples it.

The tensors are the `ctm.student.CTMPrecond` state dict at the chosen EMA rate (0: the online weights θ), exactly as
the checkpoint holds them. The metadata (safetensors' string map, each value JSON) holds:
  ctm_export_version  1
  student_kwargs      CTMPrecond(**student_kwargs) rebuilds the network
  ema_rate            the EMA rate the weights are (0: online weights)
  grid                {"N", "sigma_min", "sigma_max", "rho"} of the run: the σ range and N-point grid its samplers use
  step                the training step of the checkpoint
  dataset             the run's data.name
  checkpoint          <run_name>/<checkpoint directory> it came from, and checkpoint_sha256 the sha256 of its file

Checkpoints are read memory-mapped, so only the chosen weights are ever read from disk: never the discriminator, the
optimiser moments or the other EMAs (a 300M-parameter run's checkpoint is many times its student).
"""

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from ctm.student import CTMPrecond
from pipeline.checkpoint import checkpoint_file, checkpoint_sha256, load_checkpoint, read_schedules, student_state
from pipeline.config import GridConfig
from pipeline.storage import atomic_file

VERSION = 1
GRID_KEYS = ("N", "sigma_min", "sigma_max", "rho")


class ExportError(ValueError):
    """A checkpoint, EMA rate, export file or output path that cannot be used; the message says what to do."""


def build_student(student_kwargs, state, device="cpu"):
    """CTMPrecond holding `state`, in eval mode on `device`: built on the meta device and given the tensors themselves,
    so no random initialisation is ever allocated."""
    with torch.device("meta"):
        G = CTMPrecond(**student_kwargs)
    G.load_state_dict(state, assign=True)
    return G.to(device).eval().requires_grad_(False)


def read_student(checkpoint, ema_rate=0.999):
    """(state dict at `ema_rate`, info) of a training checkpoint, memory-mapped once its bytes match its digest (as
    pipeline.checkpoint.load_checkpoint checks); info as an export's metadata."""
    file = checkpoint_file(checkpoint)
    try:
        parts = load_checkpoint(file, mmap=True)
    except ValueError as e:
        raise ExportError(str(e)) from None
    try:
        state = student_state(parts, ema_rate, file)
    except KeyError as e:
        raise ExportError(e.args[0].replace("pass one of", "pass --ema-rate one of")) from None
    config = parts["config"]
    grid = GridConfig(**{k: v for k, v in config.get("grid", {}).items() if k in GRID_KEYS})
    info = {"ctm_export_version": VERSION, "student_kwargs": parts["student_kwargs"], "ema_rate": ema_rate,
            "grid": {k: getattr(grid, k) for k in GRID_KEYS}, "step": int(parts["step"]),
            "dataset": config.get("data", {}).get("name"), "checkpoint": run_checkpoint_name(file, "/")}
    return state, info


def load_checkpoint_student(checkpoint, ema_rate=0.999, device="cpu"):
    """(CTMPrecond at `ema_rate`, info) from a training checkpoint; nothing else of the checkpoint is built or read."""
    state, info = read_student(checkpoint, ema_rate)
    return build_student(info["student_kwargs"], state, device), info


def run_checkpoint_name(file, sep):
    """<run_name><sep><checkpoint directory> of a checkpoint.pt."""
    directory = file.resolve().parent
    return f"{directory.parent.name}{sep}{directory.name}"


def default_export_name(checkpoint, ema_rate):
    """<run_name>_<checkpoint directory>_ema<rate>.safetensors, e.g. digits_checkpoint_0000800_ema0.999.safetensors."""
    return f"{run_checkpoint_name(checkpoint_file(checkpoint), '_')}_ema{ema_rate:g}.safetensors"


def export_student(checkpoint, ema_rate=0.999, out=None):
    """Write the checkpoint's student at `ema_rate` to `out` (a file; a folder, existing or ending in /, gets the
    default name; None: the default name in the working directory) through a temporary file and a rename; returns
    (path written, info)."""
    state, info = read_student(checkpoint, ema_rate)
    folder = out is None or str(out).endswith(("/", os.sep)) or Path(out).is_dir()
    out = Path(out or ".") / default_export_name(checkpoint, ema_rate) if folder else Path(out)
    info["checkpoint_sha256"] = checkpoint_sha256(checkpoint_file(checkpoint))
    info["schedules"] = {str(nfe): entry for nfe, entry in read_schedules(checkpoint).items()
                         if float(entry["ema_rate"]) == float(ema_rate)}  # searched for these weights
    data = save({k: v.contiguous() for k, v in state.items()}, metadata={k: json.dumps(v) for k, v in info.items()})
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot write {out} ({e.strerror}): pass --out a path in a writable folder") from None
    with atomic_file(out) as f:
        f.write(data)
    return out, info


def read_export_info(path):
    """The metadata of an export, JSON-decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported student at {path}: make one with python -m jobs.export --checkpoint DIR")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:
        raise ExportError(f"{path} is not a safetensors file ({e}); it may be truncated: export it again") from None
    if "ctm_export_version" not in metadata:
        raise ExportError(f"{path} is a safetensors file but not a CTM student export (no ctm_export_version in its "
                          "metadata): make one with python -m jobs.export --checkpoint DIR")
    info = {k: json.loads(v) for k, v in metadata.items()}
    if info["ctm_export_version"] != VERSION:
        raise ExportError(f"{path} is export version {info['ctm_export_version']}; this code reads version {VERSION}")
    return info


def load_export(path, device="cpu"):
    """(CTMPrecond in eval mode on `device`, info) from an exported student."""
    info = read_export_info(path)
    with safe_open(path, framework="pt", device=str(device)) as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    return build_student(info["student_kwargs"], state, device), info
