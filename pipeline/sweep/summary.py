"""What a finished sweep hands over: one line per trial, the best trial, and best.json + best_config.yaml."""

import json
import re

from .trial import read_pointer, trial_config

EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception)\w*: ")


def trial_id(result):
    return result.metrics.get("trial_id") or str(result.path).rstrip("/").rsplit("/", 1)[-1].removeprefix("trial_")


def error_line(error):
    """The line of a trial's error that names the exception that ended it (the rest is tracebacks and details)."""
    lines = [line.strip() for line in str(error).splitlines()]
    named = [line for line in lines if EXCEPTION_LINE.match(line)]
    return named[-1] if named else next((line for line in reversed(lines) if line), type(error).__name__)


def trial_summary(result, steps, complete):
    """{trial_id, status, step, fid, params, checkpoint, error}. status: done (all train.steps), stopped (by ASHA),
    error, or not done (the sweep was interrupted)."""
    m = result.metrics or {}
    if result.error is not None:
        status = "error"
    elif m.get("step") == steps:
        status = "done"
    else:
        status = "stopped" if complete else "not done"
    return {"trial_id": trial_id(result), "status": status, "step": m.get("step"), "fid": m.get("fid"),
            "params": dict(result.config or {}), "checkpoint": m.get("checkpoint_path"),
            "error": None if result.error is None else error_line(result.error)}


def best_trial(trials):
    """The trial with the lowest last-reported FID among those that did not fail (None when no such trial)."""
    scored = [t for t in trials if t["status"] != "error" and t["fid"] is not None]
    return min(scored, key=lambda t: t["fid"]) if scored else None


def format_table(trials):
    rows = [f"{'trial':<14}{'status':<10}{'step':>7}{'FID':>11}  params"]
    for t in trials:
        fid = "-" if t["fid"] is None else f"{t['fid']:.4g}"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        rows.append(f"{t['trial_id']:<14}{t['status']:<10}{t['step'] if t['step'] is not None else '-':>7}"
                    f"{fid:>11}  {params}" + (f"  ({t['error']})" if t["error"] else ""))
    return "\n".join(rows)


def write_best(exp, grid, trials, best, cfg, train_root):
    """best.json (the best trial, every trial, what the FID measured) and best_config.yaml (the best trial's
    full config: its Train run is train.storage_path/train.run_name) in the sweep folder."""
    result = next(r for r in grid if trial_id(r) == best["trial_id"])
    best_cfg = trial_config(cfg.to_dict(), result.config, train_root, best["trial_id"])
    exp.write_text("best_config.yaml", best_cfg.dump())
    evaluation = read_pointer(result.checkpoint)["evaluation"]
    record = {"metric": "fid", "mode": "min", "scope": "last report of each trial",
              "setting": evaluation["setting"], "best": {**best, "config": "best_config.yaml",
                                                         "evaluation": evaluation},
              "trials": trials}
    exp.write_text("best.json", json.dumps(record, indent=2, default=str))
    return best_cfg
