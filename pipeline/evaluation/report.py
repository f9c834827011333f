"""The evaluation report: results.json, report.md (FID per NFE and γ), fid_vs_nfe.png (the CTM paper's figure) and
sample grids. Every table names its features, reference, sample count and the real-against-real FD at that count."""

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.images import save_grid


def model_label(info):
    if "checkpoint" in info:
        weights = "online weights" if info["ema_rate"] == 0 else f"EMA {info['ema_rate']}"
        return f"{Path(info['checkpoint']).name} step {info['step']} {weights}"
    return info.get("model", "model")


def slug(text):
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def by_model(results):
    groups = defaultdict(list)
    for r in results:
        groups[model_label(r["model"])].append(r)
    return groups


def public(result):
    """A result without its preview images (those go to PNG grids)."""
    return {k: v for k, v in result.items() if k != "preview"}


def measured_on(result):
    """The lines that say what a number was measured with."""
    f, ref, rr = result["features"], result["reference"], result["real_vs_real"]
    count = f"{ref['count']} images" if ref.get("count") else "a given statistics file"
    return [f"- Features: `{f['name']}` (digest {f['digest']}): {f['description']}",
            f"- Reference: {ref['dataset']} ({count}; {ref['source']})",
            f"- Samples per setting: {draws(result)}",
            f"- Real against real: FD {rr['fd']:.4g} ({rr['n']} against {rr['against']} real images, {rr['how']}); "
            "FD is biased by sample count and no model can be expected to score below this"]


def draws(result):
    """How the samples of each setting were drawn."""
    repeats, seed = result.get("repeats", 1), result.get("seed")
    if repeats == 1:
        return f"{result['num_samples']}; latents shared by all settings (seed {seed})"
    return (f"{result['num_samples']} in each of {repeats} latent draws (seeds {seed} to {seed + repeats - 1}), shared "
            "by all settings; each FID is the mean over the draws, their range in brackets")


def fid_text(result):
    """A result's FID, with the range over its latent draws when there were several."""
    fids = result.get("fids") or [result["fid"]]
    return f"{result['fid']:.4g}" + (f" ({min(fids):.3g}–{max(fids):.3g})" if len(fids) > 1 else "")


def fid_table(results):
    """Markdown rows NFE × γ for γ-sampling results, one row per 2-step setting, and one per searched schedule."""
    gamma = ramp_settings(results)
    two_step = [r for r in results if r["setting"].get("i1") is not None]
    searched = [r for r in results if r["setting"].get("sigmas") is not None]
    lines = []
    if gamma:
        gammas = sorted({r["setting"]["gamma"] for r in gamma})
        cell = {(r["setting"]["nfe"], r["setting"]["gamma"]): fid_text(r) for r in gamma}
        lines += ["| NFE | " + " | ".join(f"γ = {g:g}" for g in gammas) + " |",
                  "|---|" + "---|" * len(gammas)]
        for n in sorted({r["setting"]["nfe"] for r in gamma}):
            lines.append(f"| {n} | " + " | ".join(cell.get((n, g), "") for g in gammas) + " |")
    if two_step:
        lines += ["", "| 2-step i1 | i2 | t_i1 | t_i2 | FID |", "|---|---|---|---|---|"]
        for r in sorted(two_step, key=lambda r: (r["setting"]["i1"], r["setting"]["i2"])):
            s = r["setting"]
            lines.append(f"| {s['i1']} | {s['i2']} | {s['s_steps'][0]:.4g} | {s['t_steps'][1]:.4g} | {fid_text(r)} |")
    if searched:
        lines += ["", "| searched schedule NFE | γ | intermediate times | FID |", "|---|---|---|---|"]
        for r in sorted(searched, key=lambda r: (r["setting"]["nfe"], r["fid"])):
            s = r["setting"]
            lines.append(f"| {s['nfe']} | {s['gamma']:.4g} | {', '.join(f'{t:.4g}' for t in s['sigmas']) or '-'} | "
                         f"{fid_text(r)} |")
    return lines


def ramp_settings(results):
    """The γ-sampling results on the default ρ-ramp times (not a searched schedule's own times)."""
    return [r for r in results if r["setting"].get("gamma") is not None and r["setting"].get("sigmas") is None]


def fid_curves(results, x, by):
    """{value of `by`: [(x, FID), ...] sorted by x} over the γ-sampling settings, e.g. x="nfe", by="gamma"."""
    gamma = ramp_settings(results)
    return {v: sorted((r["setting"][x], r["fid"]) for r in gamma if r["setting"][by] == v)
            for v in sorted({r["setting"][by] for r in gamma})}


def plot_fid_vs_nfe(results, path, teacher=None, title=""):
    """FID against NFE, one line per γ; the teacher and the real-against-real floor as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(5, 3.6))
    curves = fid_curves(results, x="nfe", by="gamma")
    for g, pts in curves.items():
        ax.plot(*zip(*pts), marker="o", label=f"γ = {g:g}")
    searched = [(r["setting"]["nfe"], r["fid"]) for r in results if r["setting"].get("sigmas") is not None]
    if searched:
        ax.scatter(*zip(*searched), marker="*", s=60, color="C3", zorder=3, label="searched schedule")
    if teacher is not None:
        ax.axhline(teacher["fid"], color="k", ls="--", lw=1, label=f"teacher Heun ({teacher['setting']['nfe']} NFE)")
    if results:
        ax.axhline(results[0]["real_vs_real"]["fd"], color="grey", ls=":", lw=1, label="real vs real")
    nfes = sorted({n for pts in [*curves.values(), searched] for n, _ in pts})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.set_xlabel("NFE")
    ax.set_ylabel(f"FID ({results[0]['features']['name'] if results else ''})")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_grids(results, out, prefix):
    for r in results:
        save_grid(np.asarray(r["preview"], dtype=np.float32), Path(out) / f"{prefix}{r['setting']['tag']}.png")


def write_report(evaluation, out, config=None):
    """Write results.json, report.md, fid_vs_nfe[_<model>].png and sample grids into `out`; returns report.md's path.

    evaluation: EvaluatorPool.evaluate's {"results", "teacher", "likelihood"}.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, teacher = evaluation["results"], evaluation.get("teacher")
    groups = by_model(results)
    lines = ["# Evaluation", ""]
    lines += measured_on(results[0] if results else teacher) + [""]
    for i, (label, group) in enumerate(groups.items()):
        tag = "" if len(groups) == 1 else f"_{i}"
        plot = out / f"fid_vs_nfe{tag}.png"
        plot_fid_vs_nfe(group, plot, teacher, label)
        save_grids(group, out, f"samples{tag}_")
        lines += [f"## {label}", "", *fid_table(group), "", f"![FID against NFE]({plot.name})", ""]
    if teacher is not None:
        save_grids([teacher], out, "")
        lines += ["## Teacher", "", f"{teacher['setting']['label']} ({teacher['setting']['nfe']} NFE): "
                  f"FID {fid_text(teacher)} ({teacher['model']['model']})", ""]
    for nll in evaluation.get("likelihood") or []:
        lines += [f"NLL of {model_label(nll['model'])}: {nll['nll_bpd']:.4g} ± {nll['stderr']:.2g} bits/dim on "
                  f"{nll['data']['images']} images of {nll['data']['source']}; {nll['estimator']}", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    document = {"results": [public(r) for r in results], "teacher": public(teacher) if teacher else None,
                "likelihood": evaluation.get("likelihood") or [], "config": config}
    (out / "results.json").write_text(json.dumps(document, indent=2, default=str))
    return report
