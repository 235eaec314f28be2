"""Figures shared by the chapters (matplotlib + seaborn, one style)."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns


sns.set_theme(style="whitegrid", context="notebook")
PALETTE = sns.color_palette("colorblind")


def band(ax, steps: Sequence[float], series: Sequence[Sequence[float]], label: str,
         color=None, marker: str | None = "o") -> None:
    """Mean over seeds with a +-1 sample std band (none for one seed)."""
    a = np.asarray(series, dtype=float)
    mean, std = a.mean(0), (a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1]))
    steps = np.asarray(steps, dtype=float)
    ax.plot(steps, mean, label=f"{label} (n={len(series)})", color=color, marker=marker, ms=3)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=color, lw=0)


def phase_losses(losses: Mapping[str, Sequence[float]], smooth: int = 20):
    """Training loss of each phase, side by side (running mean over ``smooth`` steps)."""
    fig, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3), sharey=False)
    for ax, (phase, ls) in zip(np.atleast_1d(axes), losses.items()):
        ls = np.asarray(ls, dtype=float)
        k = max(1, min(smooth, len(ls) // 5 or 1))
        sm = np.convolve(ls, np.ones(k) / k, mode="valid") if len(ls) >= k else ls
        ax.plot(np.arange(1, len(ls) + 1), ls, color=PALETTE[7], alpha=0.4, lw=0.8)
        ax.plot(np.arange(k, len(ls) + 1), sm, color=PALETTE[0])
        ax.set_title(phase)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    np.atleast_1d(axes)[0].set_ylabel("training loss")
    fig.tight_layout()
    return fig


def metric_curves(steps: Sequence[int], panels: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
                  reference: Mapping[str, float] | None = None, xlabel: str = "fine-tuning step"):
    """One panel per metric; in each, one band per label (e.g. per variant)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.2))
    for ax, (title, by_label) in zip(np.atleast_1d(axes), panels.items()):
        for i, (label, series) in enumerate(by_label.items()):
            band(ax, steps, series, label, color=PALETTE[i % len(PALETTE)])
        if reference and title in reference:
            ax.axhline(reference[title], color="k", ls=":", lw=1, label="theta_S")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def layer_profile(layers, chosen: int):
    """Relative displacement and split-half stability by layer, the chosen layer marked."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    x = layers.index.to_numpy()
    axes[0].bar(x, layers["relative displacement"], color=PALETTE[0])
    axes[0].set_title("||mu_H - mu_S|| / mean ||h_S||")
    axes[1].errorbar(x, layers["stability mean"], yerr=layers["stability std"], marker="o",
                     color=PALETTE[1], capsize=3)
    axes[1].set_title("split-half stability (cos)")
    for ax in axes:
        ax.axvline(chosen, color="k", ls=":", lw=1)
        ax.set_xlabel("layer")
        ax.set_xticks(x)
    fig.tight_layout()
    return fig


def stability_vs_probes(by_size: Mapping[int, Mapping[str, float]]):
    """Split-half stability (mean +- std over bootstrap splits) against the number of probes."""
    fig, ax = plt.subplots(figsize=(4.5, 3))
    n = np.array(sorted(by_size))
    mean = np.array([by_size[k]["mean"] for k in n])
    std = np.array([by_size[k]["std"] for k in n])
    ax.errorbar(n, mean, yerr=std, marker="o", capsize=3, color=PALETTE[0])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("probe prompts")
    ax.set_ylabel("split-half cos")
    fig.tight_layout()
    return fig


def alignment_curves(series: Mapping[str, np.ndarray], ylabel: str, paper: Mapping[int, tuple] | None = None):
    """cos(d_t, direction) against step: ``series[name]`` is ``[n, T+1]`` (one row per history:
    its mean over seeds), drawn as a mean ± std band; paper marked."""
    paper = paper if paper is not None else {1: (0.429, 0.052), 20: (0.647, 0.021)}
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, (name, c) in enumerate(series.items()):
        steps = np.arange(1, c.shape[1])
        band(ax, steps, c[:, 1:], f"cos(d_t, {name})", color=PALETTE[i], marker=None)
    for j, (s, (m, sd)) in enumerate(paper.items()):
        ax.errorbar([s], [m], yerr=[sd], fmt="s", color="k", capsize=3,
                    label="paper (v_rev)" if j == 0 else None)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def alignment_by_layer(cos: np.ndarray, chosen: int):
    """Mean cos(d_t, v_rev) over seeds, every layer against step (``cos``: [seeds, T+1, L+1])."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    steps = np.arange(1, cos.shape[1])
    colors = sns.color_palette("viridis", cos.shape[2])
    for l in range(cos.shape[2]):
        ax.plot(steps, cos[:, 1:, l].mean(0), color=colors[l], lw=2.5 if l == chosen else 1.2,
                label=f"layer {l}" + (" (chosen)" if l == chosen else ""))
    ax.set_xscale("log")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("mean cos(d_t, v_rev)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def scatter_alignment_harmfulness(pairs):
    """Alignment against harmfulness, one point per (seed, step), coloured by step."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    sc = ax.scatter(pairs["alignment"], pairs["harmfulness"], c=np.log10(pairs["step"]),
                    cmap="viridis", s=18)
    cb = fig.colorbar(sc, ax=ax)
    cb.set_label("log10 step")
    ax.set_xlabel("alignment cos(d_t, v_rev)")
    ax.set_ylabel("harmfulness")
    fig.tight_layout()
    return fig


def null_distributions(nulls: Mapping[str, np.ndarray], p99: Mapping[str, float], observed: np.ndarray):
    """Histograms of each null's cosines, their p99, and the observed pair alignments."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for i, (name, x) in enumerate(nulls.items()):
        ax.hist(x, bins=120, density=True, alpha=0.45, color=PALETTE[i], label=f"{name} null")
        ax.axvline(p99[name], color=PALETTE[i], ls="--", lw=1.2, label=f"{name} p99")
    ax.plot(observed, np.zeros_like(observed), "|", color="k", ms=18, label="observed pairs")
    ax.set_xlabel("cos with v_rev")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pairs_against_nulls(pairs, p99: Mapping[str, float], control_cos: np.ndarray, steps):
    """Observed alignment per (seed, step), the two p99 lines and the control runs."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for i, (seed, g) in enumerate(pairs.groupby("seed")):
        ax.plot(g["step"], g["alignment"], "o-", ms=3, color=PALETTE[0], alpha=0.7,
                label="fine-tuning runs" if i == 0 else None)
    for i, c in enumerate(control_cos):
        ax.plot(steps, c, "x:", ms=4, color=PALETTE[3], alpha=0.7,
                label="control runs (alignment mix)" if i == 0 else None)
    ax.axhline(p99["isotropic"], color=PALETTE[1], ls="--", label="isotropic p99")
    ax.axhline(p99["matched"], color=PALETTE[2], ls="--", label="matched p99")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("cos(d_t, v_rev)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def arm_effects(r, names: Sequence[str], measures=("harmfulness", "final_alignment")):
    """Each arm's paired difference to the baseline (mean and 95% interval over histories), one
    panel per measure; v_rev's arms in colour, the control directions in grey."""
    fig, axes = plt.subplots(1, len(measures), figsize=(4.6 * len(measures), 0.32 * len(names) + 1.2),
                             sharey=True)
    y = np.arange(len(names))[::-1]
    for ax, meas in zip(np.atleast_1d(axes), measures):
        for yi, n in zip(y, names):
            d = r.arms[n].vs_baseline.get(meas)
            if d is None:
                continue
            color = PALETTE[0] if "/v_rev/" in n else PALETTE[7]
            lo = d["ci_low"] if d["ci_low"] is not None else d["mean"]
            hi = d["ci_high"] if d["ci_high"] is not None else d["mean"]
            ax.plot([lo, hi], [yi, yi], color=color, lw=2, alpha=0.8)
            ax.plot(d["mean"], yi, "o", color=color, ms=5)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(f"Δ {meas.replace('_', ' ')} vs baseline")
    np.atleast_1d(axes)[0].set_yticks(y, names, fontsize=8)
    fig.tight_layout()
    return fig


def tradeoff(df, base: Mapping[str, float], task_label: str = "task accuracy"):
    """Harmfulness against task cost (and over-refusal) along the dose-response, one line per
    direction; the baseline as a star. Matched cost reads across at one x."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (d, g) in enumerate(df.groupby("direction", sort=False)):
        g = g.sort_values("multiple")
        axes[0].plot(g["task"], g["harmfulness"], "o-", color=PALETTE[i], label=d)
        for _, r in g.iterrows():
            axes[0].annotate(f"{r['multiple']:g}", (r["task"], r["harmfulness"]), fontsize=7,
                             xytext=(3, 3), textcoords="offset points")
        axes[1].plot(g["multiple"], g["harmfulness"], "o-", color=PALETTE[i], label=f"{d}: harmfulness")
        if np.isfinite(g["over_refusal"]).any():
            axes[1].plot(g["multiple"], g["over_refusal"], "s:", color=PALETTE[i], label=f"{d}: over-refusal")
    axes[0].plot(base["task"], base["harmfulness"], "*", ms=12, color="k", label="baseline")
    axes[0].set_xlabel(task_label)
    axes[0].set_ylabel("harmfulness at T")
    axes[1].axhline(base["harmfulness"], color="k", lw=0.8, ls="--", label="baseline harmfulness")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("strength (multiple of the task gradient at θ_S)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def crossover(a: Sequence[float], b: Sequence[float], unit: str = "seeds"):
    """Each history's (or seed's: ``unit``) drift along the witness difference, main lineage (x)
    against the second witness's lineage (y), both signed toward the lineage's own witness: the
    upper-right quadrant is "toward its own past", the anti-diagonal "both move alike"."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    a, b = np.asarray(a, float), np.asarray(b, float)
    lim = max(0.1, float(np.abs(np.concatenate([a, b])).max()) * 1.15)
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.plot([-lim, lim], [lim, -lim], color=PALETTE[7], ls=":", lw=1, label="both move alike")
    ax.scatter(a, b, color=PALETTE[0], zorder=3, label=f"{unit} (n={len(a)})")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("main: cos(d_T, mu_H - mu_H')")
    ax.set_ylabel("second witness: cos(d_T, mu_H' - mu_H)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def dose_response(doses: Sequence[float], rises: np.ndarray,
                  ylabel: str = "rise of harmfulness, untrained tasks (T - S)", unit: str = "seeds"):
    """Per-history (or per-seed: ``unit``) rise against the helpful phase's length (lines join a
    history's lineages)."""
    rises = np.asarray(rises, float)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for r in rises:
        ax.plot(doses, r, color=PALETTE[7], alpha=0.6, lw=0.8, marker="o", ms=3)
    ax.plot(doses, rises.mean(0), color=PALETTE[0], lw=2, marker="o", label=f"mean (n={len(rises)} {unit})")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("helpful phase, fraction of its full length")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def warning_curve(halves: Mapping[str, Sequence[Mapping]], chosen: float | None):
    """The monitor's curve over thresholds (null units), one line per half of the histories:
    reverting runs flagged before their harm onset, and runs that never revert flagged at all
    (means over histories, bars their 95% intervals); the chosen threshold dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), sharex=True)
    for ax, key, title in ((axes[0], "detection", "reverting runs flagged before onset"),
                           (axes[1], "false_alarm", "runs that never revert, flagged")):
        for i, (label, rows) in enumerate(halves.items()):
            pts = [(r["threshold"], r[key]) for r in rows if r[key] is not None]
            if not pts:
                continue
            x = np.array([t for t, _ in pts])
            m = np.array([v["mean"] for _, v in pts])
            lo = np.array([v["mean"] if v["ci_low"] is None else v["ci_low"] for _, v in pts])
            hi = np.array([v["mean"] if v["ci_high"] is None else v["ci_high"] for _, v in pts])
            ax.errorbar(x + (i - 0.5) * 0.04, m, yerr=[m - lo, hi - m], marker="o", ms=4, capsize=2,
                        color=PALETTE[i], label=label)
        if chosen is not None:
            ax.axvline(chosen, color="k", ls="--", lw=1, label=f"chosen: {chosen:g}")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("threshold (null units)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("share of runs")
    fig.tight_layout()
    return fig


def lead_times(leads: Mapping[str, Sequence[float]], T: int):
    """Lead of the flag over the harm onset (steps; negative: the flag came after), one strip per
    kind of run, at one threshold."""
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.55 * max(1, len(leads))))
    for i, (label, v) in enumerate(leads.items()):
        v = np.asarray(v, float)
        ax.scatter(v, np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.full(len(v), i),
                   color=PALETTE[i], s=14, label=f"{label} (n={len(v)})")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(leads)))
    ax.set_yticklabels(list(leads))
    ax.set_xlabel(f"lead of the flag over the harm onset (steps; T = {T})")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
