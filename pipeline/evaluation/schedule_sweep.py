"""The schedule sweep: a fixed grid of sampling settings (eval.schedule_nfe × eval.schedule_gammas and the 2-step
pairs eval.schedule_two_step) scored on finished checkpoints by the evaluation actors.

Sampling settings never touch training: the schedule sweep only loads checkpoints and samples from them. (The Tune
"sweep" is jobs.sweep over training keys; the Tune "schedule search" is jobs.sweep_schedule.)
"""

import json
from pathlib import Path

from .report import by_model, fid_curves, fid_table, measured_on, public, slug
from .settings import gamma_settings, two_step_settings


def schedule_sweep_settings(eval_cfg):
    e = eval_cfg
    return gamma_settings(e.schedule_nfe, e.schedule_gammas) + two_step_settings(e.schedule_two_step)


def best_per_nfe(results):
    """{NFE: the result with the lowest FID among the settings of that NFE}."""
    best = {}
    for r in results:
        n = r["setting"]["nfe"]
        if n not in best or r["fid"] < best[n]["fid"]:
            best[n] = r
    return dict(sorted(best.items()))


def plot_fid_vs_gamma(results, path, title=""):
    """FID against γ, one line per NFE."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for n, pts in fid_curves(results, x="gamma", by="nfe").items():
        ax.plot(*zip(*pts), marker="o", label=f"NFE {n}")
    if results:
        ax.axhline(results[0]["real_vs_real"]["fd"], color="grey", ls=":", lw=1, label="real vs real")
        ax.set_ylabel(f"FID ({results[0]['features']['name']})")
    ax.set_xlabel("γ")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_schedule_sweep_report(results, out, config=None):
    """schedule_sweep.json, schedule_sweep.md (a table and the best setting per NFE for each checkpoint) and
    schedule_sweep_<i>_<checkpoint>.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Schedule sweep (no training)", "", *measured_on(results[0]), ""]
    for i, (label, group) in enumerate(by_model(results).items()):
        plot = out / f"schedule_sweep_{i}_{slug(label)}.png"
        plot_fid_vs_gamma(group, plot, label)
        lines += [f"## {label}", "", *fid_table(group), "", "Best setting per NFE:", ""]
        lines += [f"- NFE {n}: {r['setting']['label']}, FID {r['fid']:.4g}" for n, r in best_per_nfe(group).items()]
        lines += ["", f"![FID against γ]({plot.name})", ""]
    report = out / "schedule_sweep.md"
    report.write_text("\n".join(lines))
    (out / "schedule_sweep.json").write_text(json.dumps({"results": [public(r) for r in results], "config": config},
                                               indent=2, default=str))
    return report
