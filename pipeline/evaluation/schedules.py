"""The best sampling schedule per NFE of a checkpoint: `schedules.json` beside its checkpoint.pt.

    {"2": {"nfe": 2, "gamma": 0.998, "sigmas": [0.593], "fid": 0.51, "ema_rate": 0.95, "features": {...},
           "num_samples": 1797, "seed": 0, "t_steps": [...], "s_steps": [...], "search": {...}}}

A schedule search (`python -m jobs.sweep_schedule`) writes it; `jobs.evaluate --schedule best` and `jobs.sample
--schedule best` read it. `sigmas` are the intermediate jump times t_1 > … > t_{NFE−1} of γ-sampling between σ_max and
σ_min (ctm.sampling.gamma_sample_at).
"""

import json

from pipeline.checkpoint import SCHEDULES_FILE, checkpoint_file, read_schedules, schedules_path
from pipeline.storage import atomic_file

from .settings import Setting

COMPARABLE = ("ema_rate", "features", "num_samples", "seed", "repeats")  # FIDs measured alike compare; others do not


def schedule_entry(result, search=None):
    """The schedules.json entry of an evaluation result of a searched schedule (a Setting with sigmas)."""
    s = result["setting"]
    return {"nfe": s["nfe"], "gamma": s["gamma"], "sigmas": list(s["sigmas"]), "fid": result["fid"],
            "ema_rate": result["model"]["ema_rate"], "features": result["features"],
            "num_samples": result["num_samples"], "seed": result.get("seed"), "repeats": result.get("repeats", 1),
            "t_steps": list(s["t_steps"]), "s_steps": list(s["s_steps"]), "search": search or {}}


def write_schedule(checkpoint, entry):
    """Record `entry` as the checkpoint's best schedule at its NFE. An entry measured alike (COMPARABLE) with a lower
    FID is kept; one measured otherwise is replaced. Returns the entry now on file."""
    schedules = read_schedules(checkpoint)
    old = schedules.get(entry["nfe"])
    if old is None or old["fid"] > entry["fid"] or any(old.get(k) != entry.get(k) for k in COMPARABLE):
        schedules[entry["nfe"]] = entry
    with atomic_file(schedules_path(checkpoint), "w") as f:
        json.dump({str(n): schedules[n] for n in sorted(schedules)}, f, indent=2, default=str)
    return schedules[entry["nfe"]]


def best_schedule(checkpoint, nfe):
    """The checkpoint's best schedule at `nfe`; FileNotFoundError / ValueError that say how to make one."""
    schedules = read_schedules(checkpoint)
    if not schedules:
        raise FileNotFoundError(f"no {SCHEDULES_FILE} beside {checkpoint_file(checkpoint)}: search one first with "
                                f"`python -m jobs.sweep_schedule --checkpoint {checkpoint} --nfe {nfe}`")
    if nfe not in schedules:
        raise ValueError(f"{schedules_path(checkpoint)} holds schedules for NFE {sorted(schedules)}, not {nfe}: search "
                       f"one with `python -m jobs.sweep_schedule --checkpoint {checkpoint} --nfe {nfe}`")
    return schedules[nfe]


def schedule_setting(entry):
    """The evaluation Setting of a schedules.json entry."""
    return Setting(int(entry["nfe"]), float(entry["gamma"]), sigmas=tuple(entry["sigmas"]))


def parse_schedule_option(text):
    """`best` (every NFE on file) or `best:N[,M…]` (those NFEs) → None or a list of NFEs."""
    name, _, nfes = text.partition(":")
    try:
        if name == "best":
            return [int(n) for n in nfes.split(",")] if nfes else None
    except ValueError:
        pass
    raise ValueError(f"--schedule takes 'best' (every NFE in {SCHEDULES_FILE}) or 'best:N' such as best:2; "
                     f"got {text!r}")


def best_settings(checkpoint, nfes=None):
    """The Settings of a checkpoint's best schedules: every NFE on file, or those of `nfes`."""
    if nfes is None:
        schedules = read_schedules(checkpoint)
        nfes = sorted(schedules) or [2]  # none on file: best_schedule's error names NFE 2
    return [schedule_setting(best_schedule(checkpoint, n)) for n in nfes]
