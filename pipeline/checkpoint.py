"""Training checkpoints: one directory holding `checkpoint.pt` and its digest `checkpoint.sha256`, written by rank 0
and made durable by `ray.train.report(..., checkpoint=Checkpoint.from_directory(dir))`, which registers it only once
fully persisted.

`checkpoint.pt` is a `torch.save` dict: "step", "config" (cfg.to_dict()), "student_kwargs" (CTMPrecond init_kwargs),
"student", "target", "ema" ({str(rate): state_dict}), "discriminator" (or None), "opt_G", "opt_D" (or None), "rng",
"data" (the data position). Every value is a tensor or plain data, so it loads with `weights_only=True`.

`checkpoint.sha256` holds the sha256 of checkpoint.pt in `sha256sum` format (`sha256sum -c checkpoint.sha256` checks
it by hand); it is written before the directory is handed to Ray and checked at every load, so a flipped byte is
refused instead of trained on. A checkpoint without one (written before checkpoints carried a digest) loads with a
warning once the CRC-32s of its zip records pass.
"""

import hashlib
import json
import posixpath
import re
import warnings
import zipfile
from pathlib import Path

import torch
from fsspec.implementations.local import LocalFileSystem

from ctm.student import CTMPrecond
from pipeline.config import load_config
from pipeline.storage import atomic_file

CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")  # checkpoint_<step, 7 digits>/ in the run directory
CHECKPOINT_FILE = "checkpoint.pt"
DIGEST_FILE = "checkpoint.sha256"
SCHEDULES_FILE = "schedules.json"  # the best searched sampling schedule per NFE (pipeline/evaluation/schedules.py)
PARTS = ("step", "config", "student_kwargs", "student", "target", "ema", "discriminator", "opt_G", "opt_D", "rng",
         "data")


def checkpoint_dir_name(step):
    return f"checkpoint_{step:07d}"


def checkpoint_dir_step(name):
    """The step of a checkpoint folder's name (checkpoint_0000600 → 600)."""
    return int(CHECKPOINT_DIR.match(name).group(1))


class DamagedCheckpointError(ValueError):
    """A checkpoint.pt that does not match its digest, or cannot be read: a retry reads the same bytes."""


def sha256(fileobj):
    """Hex sha256 of an open binary file, read in blocks (a checkpoint may be larger than memory)."""
    return hashlib.file_digest(fileobj, "sha256").hexdigest()


def checkpoint_sha256(file):
    """sha256 of a verified checkpoint.pt: the digest recorded beside it, or computed for one written before digests."""
    recorded = file.parent / DIGEST_FILE
    if recorded.is_file():
        return recorded.read_text().split()[0]
    with open(file, "rb") as f:
        return sha256(f)


def save_checkpoint(directory, **parts):
    """Write `parts` to directory/checkpoint.pt through a temporary file and a rename (never a half-written file),
    its digest beside it first (a kill in between leaves a digest that refuses the old or missing file)."""
    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise ValueError(f"a checkpoint needs every part {PARTS}; missing {missing}")
    directory = Path(directory)
    with atomic_file(directory / CHECKPOINT_FILE) as f:
        torch.save(parts, f)
        f.flush()
        with open(f.name, "rb") as written, atomic_file(directory / DIGEST_FILE, "w") as digest:
            digest.write(f"{sha256(written)}  {CHECKPOINT_FILE}\n")
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


def checkpoint_problem(file, fs=None):
    """What is wrong with checkpoint.pt `file` (a path on the fsspec filesystem `fs`, local by default), or None when
    it matches the digest beside it. "no digest" for a checkpoint written before digests (see `legacy_problem`)."""
    fs = fs or LocalFileSystem()
    file = str(file)
    digest_file = posixpath.join(posixpath.dirname(file), DIGEST_FILE)
    if not fs.exists(file):
        return f"{CHECKPOINT_FILE} is missing"
    if not fs.exists(digest_file):
        return "no digest"
    recorded = fs.cat_file(digest_file)[:200].decode(errors="replace").split()
    if not recorded or len(recorded[0]) != 64:
        return f"{DIGEST_FILE} is unreadable"
    with fs.open(file, "rb") as f:
        actual = sha256(f)
    if actual != recorded[0]:
        return f"{CHECKPOINT_FILE} has sha256 {actual[:12]}…, not the {recorded[0][:12]}… recorded in {DIGEST_FILE}"
    return None


def legacy_problem(file, fs=None):
    """What is wrong with a checkpoint.pt that has no digest, or None: the CRC-32 of every record of its zip archive
    (torch.save stores them; torch.load does not check them)."""
    fs = fs or LocalFileSystem()
    try:
        with fs.open(str(file), "rb") as f, zipfile.ZipFile(f) as archive:
            bad = archive.testzip()
    except Exception as e:  # whatever stops a zip reader: a truncated or garbled archive
        return f"{CHECKPOINT_FILE} is not a readable archive ({type(e).__name__}: {e})"
    return None if bad is None else f"{CHECKPOINT_FILE}'s record {bad} fails its CRC-32"


def verify_checkpoint(file, fs=None):
    """None when checkpoint.pt `file` matches its digest (or, written before digests, passes its CRC-32 checks); else
    what is wrong with it."""
    problem = checkpoint_problem(file, fs)
    return legacy_problem(file, fs) if problem == "no digest" else problem


def schedules_path(checkpoint):
    return checkpoint_file(checkpoint).parent / SCHEDULES_FILE


def read_schedules(checkpoint):
    """{NFE (int): entry} of the schedules.json beside a checkpoint; {} when no schedule search has written one."""
    path = schedules_path(checkpoint)
    if not path.is_file():
        return {}
    return {int(nfe): entry for nfe, entry in json.loads(path.read_text()).items()}


def load_checkpoint(path, map_location="cpu", mmap=False):
    """The parts dict of a checkpoint directory or checkpoint.pt file; DamagedCheckpointError when its bytes are not
    those written (a checkpoint without a digest is checked by its CRC-32s and loaded with a warning). mmap=True maps
    the tensors from the file, so only those used are read."""
    file = checkpoint_file(path)
    problem = checkpoint_problem(file)
    legacy = problem == "no digest"
    if legacy:
        problem = legacy_problem(file)
    if problem is not None:
        raise DamagedCheckpointError(f"{file} is damaged: {problem}; use an older checkpoint of the run (rerunning "
                                     "the run's command resumes from the newest checkpoint that verifies)")
    if legacy:
        warnings.warn(f"{file} has no {DIGEST_FILE} beside it (written before checkpoints carried a digest): checked "
                      "by its CRC-32s only", stacklevel=2)
    try:
        parts = torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        raise DamagedCheckpointError(f"{file} is not a readable training checkpoint ({e}); it may be truncated or "
                                     "damaged: use an older checkpoint of the run") from None
    missing = [p for p in PARTS if p not in parts] if isinstance(parts, dict) else list(PARTS)
    if missing:
        raise ValueError(f"{file} is not a training checkpoint of this project: it lacks {missing}")
    return parts


def read_step(path):
    """The training step a checkpoint was written at (memory-mapped read: no tensor is loaded)."""
    return int(torch.load(checkpoint_file(path), map_location="cpu", mmap=True, weights_only=True)["step"])


def student_state(parts, ema_rate, file):
    """The student's state dict at `ema_rate` (0: the online weights θ) of a checkpoint's parts; KeyError naming the
    rates `file` holds when it lacks that EMA."""
    if ema_rate != 0 and str(ema_rate) not in parts["ema"]:
        raise KeyError(f"{file} holds EMAs at rates {sorted(parts['ema'])}, not {ema_rate}: pass one of these, or 0 for "
                       "the online weights (train.ema_rates sets which a run keeps)")
    return parts["student"] if ema_rate == 0 else parts["ema"][str(ema_rate)]


def load_student(path, ema_rate=0.999, device="cpu"):
    """(CTMPrecond holding the EMA weights at `ema_rate` (0: the online weights θ), in eval mode on `device`, Config
    of the run)."""
    parts = load_checkpoint(path)
    state = student_state(parts, ema_rate, checkpoint_file(path))
    G = CTMPrecond(**parts["student_kwargs"])
    G.load_state_dict(state)
    return G.to(device).eval().requires_grad_(False), load_config(base=parts["config"])
