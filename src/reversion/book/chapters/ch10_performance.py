"""Book page "Performance": the latest ``benchmarks/results.json``, against its targets.

The page only reads the file; ``make benchmark`` (``python benchmarks/run.py``) writes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from reversion.benchmark import TARGETS
from reversion.design import CRITERION, shape
from reversion.book.display import interval
from reversion.infra.paths import resolve
from reversion.infra.results import write_metrics
from reversion.subjects.organism.worlds import make_world

STEM = "10_performance"


@dataclass(frozen=True)
class Params:
    """Parameters of the Performance page."""

    benchmark_file: str
    """The benchmark's JSON (relative to the project root unless absolute)."""
    design_file: str = "benchmarks/design_study.json"
    """The organism's design study (``python -m reversion.design``)."""


def load(P: Params) -> dict:
    path = resolve(P.benchmark_file)
    if not path.is_file():
        raise FileNotFoundError(f"parameter benchmark_file: {path} does not exist; run `make benchmark` "
                                "(python benchmarks/run.py) to write it")
    res = json.loads(path.read_text())
    missing = [k for k in ("steps", "extraction", "scaling", "machine") if k not in res]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it is not a benchmark results file")
    res["_dir"] = str(path.parent)
    return res


def measurements(res: dict) -> dict[str, float | None]:
    """Each target's measured value (None when not measured, e.g. a run with --no-book)."""
    s, e, b, g = res["steps"], res["extraction"], res.get("book"), current_batched(res)
    r = g["ratio"] if g else {}
    lora = res.get("lora")
    return {
        "histories_lineages_to_floor": r.get("histories_lineages_to_floor"),
        "workload_runs_to_floor": r.get("workload_runs_to_floor"),
        "histories_lineages_seconds": g["seconds"].get("histories_lineages") if g else None,
        "seeds_batched_to_one_seed": r.get("seeds_batched_to_one_seed"),
        "seeds_batched_to_one_per_worker": r.get("seeds_batched_to_one_per_worker"),
        "workload_seconds": g["seconds"]["workload"] if g else None,
        "tracking_chosen_layer_overhead": s["overhead"]["tracked_chosen_layer"],
        "block_overhead": s["overhead"]["block"],
        "extraction_ratio": e["ratio_to_plain"]["mean_activations"],
        "lora_monitor_check_to_floor": lora["ratio"]["check_to_floor"] if lora else None,
        "book_cold_seconds": b["cold"]["seconds"] if b else None,
        "book_warm_seconds": b["warm"]["seconds"] if b else None,
        "book_peak_memory_gib": max(b["cold"]["peak_memory_gib"], b["warm"]["peak_memory_gib"]) if b else None,
    }


LABELS = {
    "histories_lineages_to_floor": ("histories with their lineages, grouped", "time / matrix floor"),
    "workload_runs_to_floor": ("their fine-tuning runs, grouped", "time / matrix floor"),
    "histories_lineages_seconds": ("the benchmark's histories with their lineages, grouped", "seconds"),
    "seeds_batched_to_one_seed": ("five fine-tuning seeds as one group", "time / one seed alone"),
    "seeds_batched_to_one_per_worker": ("five fine-tuning seeds as one group", "time / one run per worker (before)"),
    "workload_seconds": ("those histories, lineages and runs, from nothing", "seconds"),
    "tracking_chosen_layer_overhead": ("drift tracking, chosen layer, every step", "added time per step"),
    "block_overhead": ("block objective", "added time per step"),
    "extraction_ratio": ("activation extraction (mean_activations)", "time / plain forward"),
    "lora_monitor_check_to_floor": ("monitor check in a LoRA Trainer run", "time / plain forward of the probes"),
    "book_cold_seconds": ("whole book, empty cache", "seconds"),
    "book_warm_seconds": ("whole book, nothing changed", "seconds"),
    "book_peak_memory_gib": ("peak memory of the book build", "GiB"),
}


def save(P: Params, res: dict) -> dict:
    """``results/10_performance/metrics.json``: each target's measured value and whether it is met
    (the numbers this page shows, from the benchmark file)."""
    m = {k: {"value": v, "met": met(k, v)} for k, v in measurements(res).items()}
    write_metrics(STEM, m, {"benchmark_file": P.benchmark_file}, code=(__name__,))
    return m


def met(key: str, value: float | None) -> bool | None:
    return None if value is None else value <= TARGETS[key]


def targets_table(res: dict) -> pd.DataFrame:
    rows = []
    for key, value in measurements(res).items():
        what, unit = LABELS[key]
        pct = "overhead" in key
        fmt = (lambda x: f"{x:+.0%}") if pct else (lambda x: f"{x:.2f}")
        ok = met(key, value)
        rows.append({"measurement": what, "unit": unit, "measured": "not measured" if value is None else fmt(value),
                     "target": ("≤ " + (f"{TARGETS[key]:.0%}" if pct else f"{TARGETS[key]:g}")),
                     "met": "—" if ok is None else ("yes" if ok else "no")})
    return pd.DataFrame(rows).set_index("measurement")


def current_batched(res: dict) -> dict | None:
    """The file's batched-runs part, None when absent or written by an older benchmark (without
    the histories-with-lineages rows)."""
    g = res.get("batched")
    return g if g and "histories_lineages" in g.get("seconds", {}) else None


def batched_table(res: dict) -> pd.DataFrame | str:
    """Each batched workload's seconds, its floor (matrix FLOPs at the machine's matrix rate on
    every core) and the ratio of the two."""
    g = current_batched(res)
    if not g:
        return "batched runs were not measured in this file"
    names = {"one_seed": "one fine-tuning seed", "seeds_batched": f"{g['n_seeds']} seeds, one group",
             "seeds_one_per_worker": f"{g['n_seeds']} seeds, one run per worker (before batching)",
             "one_history": "one history, alone",
             "histories_lineages": f"{g['n_histories']} histories with their lineages "
                                   f"({g['n_history_configs']} in all), grouped",
             "workload_runs": f"their {g['workload_runs']} fine-tuning runs, grouped",
             "workload": "both, from nothing"}
    rows = []
    for k, name in names.items():
        sec = g["seconds"][k]
        floor = g["floor_seconds"].get(k, g["floor_seconds"]["seeds_batched"] if k == "seeds_one_per_worker" else None)
        rows.append({"workload": name, "seconds": round(sec, 1),
                     "floor (s)": None if floor is None else round(floor, 2),
                     "time / floor": None if floor is None else round(sec / floor, 1)})
    return pd.DataFrame(rows).set_index("workload")


def gpu_table(res: dict) -> pd.DataFrame | str:
    """The large-model rows (``make benchmark`` on a machine with CUDA), ours against the reference."""
    g = res.get("gpu")
    if not g:
        return "not measured: the file was written on a machine without CUDA"
    ms, r = g["ms"], g["ratio"]
    on = f" ({g['card']}, {g.get('dtype', '')})" if g.get("card") else ""
    return pd.DataFrame([
        {"measurement": f"extraction, every layer, {g['n_prompts']} prompts{on}", "ours (ms)": round(ms["mean_activations"], 1),
         "reference (ms)": round(ms["plain_forward"], 1), "reference": "plain output_hidden_states forward",
         "ratio": round(r["extraction_to_plain"], 2), "target": "≤ 1.0"},
        {"measurement": f"tracking check, layer {g['layer']}, {g['n_probe']} probes", "ours (ms)": round(ms["tracking_check"], 1),
         "reference (ms)": round(ms["probe_forward"], 1), "reference": "plain forward of the probes (floor)",
         "ratio": round(r["tracking_to_floor"], 2), "target": "≤ 1.2"},
    ]).set_index("measurement")


def lora_table(res: dict) -> pd.DataFrame | str:
    """The LoRA row: each part's median milliseconds, its matrix-FLOP floor and the ratio of the two."""
    g = res.get("lora")
    if not g:
        return "not measured: the file predates the LoRA row"
    ms, fl = g["ms"], g["floor_ms"]
    rows = [("LoRA step, no check", "step_plain", "train_step"),
            ("LoRA step carrying a monitor check", "step_monitored", None),
            ("the monitor's check alone", "monitor_check", "monitor_check"),
            ("plain no-grad forward of the probes (floor)", "plain_forward", "plain_forward")]
    return pd.DataFrame([{"measurement": name, "ms": round(ms[k], 1),
                          "FLOP floor (ms)": None if f is None else round(fl[f], 1),
                          "time / FLOP floor": None if f is None else round(ms[k] / fl[f], 1)}
                         for name, k, f in rows]).set_index("measurement")


def lora_sentence(res: dict) -> str:
    """What the LoRA row says, chosen by its numbers: the check against its floor, then what the
    check adds to a step at the monitor's default of a check every 10 steps."""
    g = res.get("lora")
    if not g:
        return "The LoRA row was not measured in this file."
    r, fl = g["ratio"], g["flops"]
    x = r["check_to_floor"]
    share = fl["monitor_check"] / fl["plain_forward"]
    if x <= 1:
        first = (f"Inside the Trainer the monitor's check takes {x:.2f} times the plain forward a user would write: "
                 f"less than that floor, because it stops the forward after layer {g['layer']} of "
                 f"{g['model']['n_layer']} and skips the LM head ({share:.0%} of the plain forward's matrix FLOPs), "
                 "and pads its length-sorted probe batches once.")
    elif x <= TARGETS["lora_monitor_check_to_floor"]:
        first = (f"Inside the Trainer the monitor's check takes {x:.2f} times the plain forward a user would write, "
                 f"within the target of {TARGETS['lora_monitor_check_to_floor']:g}: a check costs its forward.")
    else:
        first = (f"Inside the Trainer the monitor's check takes {x:.2f} times the plain forward a user would write, "
                 f"beyond the target of {TARGETS['lora_monitor_check_to_floor']:g}: the check costs more than "
                 "its forward there.")
    per10 = g["overhead"]["check_to_step"] / 10
    second = (f" A check adds {g['overhead']['monitored_step']:.0%} to the step that carries it (the probe forward "
              f"covers {g['probe_tokens']} tokens, the step {g['train_tokens_per_step']}); at the monitor's default "
              f"of a check every 10 steps that adds {per10:.0%} to the run's time.")
    if r["check_to_flop_floor"] <= r["step_to_flop_floor"]:
        third = (f" Against the matrix arithmetic, the check runs at {r['check_to_flop_floor']:.1f} times its FLOP "
                 f"floor and the LoRA step at {r['step_to_flop_floor']:.1f} times its own: the check is the closer "
                 "of the two to its arithmetic.")
    else:
        third = (f" Against the matrix arithmetic, the check runs at {r['check_to_flop_floor']:.1f} times its FLOP "
                 f"floor and the LoRA step at {r['step_to_flop_floor']:.1f} times its own: the check is the further "
                 "of the two from its arithmetic.")
    return first + second + third


def batched_sentence(res: dict) -> str:
    """Where a grouped step's time goes beyond its floor, chosen by the measured ratios."""
    g = current_batched(res)
    if not g:
        return ""
    r = g["ratio"]
    worst = max(r["histories_lineages_to_floor"], r["workload_runs_to_floor"])
    if worst <= TARGETS["histories_lineages_to_floor"]:
        return (f"Both stay within {TARGETS['histories_lineages_to_floor']:g} times the floor: what remains above "
                "it is element-wise work the floor does not count (layer norms, softmax, GELU, AdamW) and the "
                "matrix products' own shortfall from the 512 x 512 rate on the organism's narrow matrices.")
    return (f"The further of the two runs at {worst:.1f} times its floor, above the target of "
            f"{TARGETS['histories_lineages_to_floor']:g}: the profile below shows where the rest goes.")


def batched_glue(res: dict) -> dict[str, str]:
    """The numbers the page's batched-runs prose cites (an em dash each when not measured)."""
    keys = ("b_seeds", "b_hist", "b_configs", "b_one", "b_group", "b_workers", "b_r_one", "b_r_workers", "b_h_one",
            "b_h_lin", "b_h_lin_floor", "b_per_hist", "b_runs", "b_runs_s", "b_runs_floor", "b_per_run", "b_work",
            "b_rate", "b_cores", "b_step_mflop", "b_why", "b_device")
    g = current_batched(res)
    if not g:
        return {**{k: "—" for k in keys}, "b_measured": "were not measured in this file"}
    sec, r = g["seconds"], g["ratio"]
    return {"b_measured": "were measured", "b_seeds": str(g["n_seeds"]), "b_hist": str(g["n_histories"]),
            "b_configs": str(g["n_history_configs"]), "b_one": f"{sec['one_seed']:.1f}",
            "b_group": f"{sec['seeds_batched']:.1f}", "b_workers": f"{sec['seeds_one_per_worker']:.1f}",
            "b_r_one": f"{r['seeds_batched_to_one_seed']:.2f}", "b_r_workers": f"{r['seeds_batched_to_one_per_worker']:.2f}",
            "b_h_one": f"{sec['one_history']:.0f}", "b_h_lin": f"{sec['histories_lineages']:.0f}",
            "b_h_lin_floor": f"{r['histories_lineages_to_floor']:.2f}", "b_per_hist": f"{g['per_history']['seconds']:.1f}",
            "b_runs": str(g["workload_runs"]), "b_runs_s": f"{sec['workload_runs']:.0f}",
            "b_runs_floor": f"{r['workload_runs_to_floor']:.2f}", "b_per_run": f"{g['per_run']['seconds']:.2f}",
            "b_work": f"{sec['workload']:.0f}", "b_rate": f"{g['matmul_gflops_all_cores']:.0f}", "b_cores": str(g["cores"]),
            "b_step_mflop": f"{g['flops']['step'] / 1e6:.0f}", "b_why": batched_sentence(res),
            "b_device": g.get("card") or g.get("device", "cpu")}


def load_design(P: Params) -> dict | None:
    """The organism's design study (``python -m reversion.design``), None when absent."""
    path = resolve(P.design_file)
    return json.loads(path.read_text()) if path.is_file() else None


def design_glue(study: dict | None) -> dict[str, str]:
    """The numbers and the one sentence the design section cites; the sentence says which candidate
    the default world is, compared field by field with the world this build uses."""
    out = {"d_max_s": f"{CRITERION['theta_S_harmfulness_max']:.2f}",
           "d_min_rise": f"{CRITERION['untrained_rise_ci_low_min']:.2f}"}
    if not study or not study.get("candidates"):
        return {**out, "d_hist": "—", "d_seeds": "—", "d_choice": "The study has not been run."}
    cands = study["candidates"]
    any_c = next(iter(cands.values()))
    out.update(d_hist=str(any_c["n_histories"]), d_seeds=str(any_c["n_seeds"]))
    kept = sorted((c["cost_per_history"], n) for n, c in cands.items() if c["keeps_effect"])
    now = shape(make_world("default").history)
    current = [n for n, c in cands.items() if c.get("history") == now]
    base = cands.get("today's size", {}).get("cost_per_history")
    if not kept:
        choice = ("No candidate keeps the effect, today's size included: the table is the finding, and the default "
                  "world stays at its size.")
    else:
        cost, name = kept[0]
        rel = f" ({cost / base:.2f} of today's cost a history)" if base else ""
        choice = f"The cheapest candidate that keeps the effect is “{name}”{rel}. "
        choice += ("It is the default world of this build." if name in current else
                   f"The default world of this build is {'“' + current[0] + '”' if current else 'none of them'}.")
    out["d_choice"] = choice
    return out


def design_table(study: dict | None) -> pd.DataFrame | str:
    """One row per candidate organism: its cost and the criterion's two measures over histories."""
    if not study or not study.get("candidates"):
        return "the design study was not run (python -m reversion.design)"
    rows = []
    base = study["candidates"].get("today's size", {}).get("cost_per_history")
    for name, c in sorted(study["candidates"].items(), key=lambda kv: kv[1]["cost_per_history"]):
        rise = c["untrained_rise"]
        rows.append({"candidate": name, "cost / today's": None if not base else round(c["cost_per_history"] / base, 2),
                     "histories x seeds": f"{c['n_histories']} x {c['n_seeds']}",
                     "θ_S harmfulness": round(c["theta_S_harmfulness"]["mean"], 3),
                     "untrained-task rise [95% CI]": interval(rise),
                     "seconds (histories)": round(c["seconds"]["histories"]),
                     "keeps the effect": "yes" if c["keeps_effect"] else "no"})
    return pd.DataFrame(rows).set_index("candidate")


def profile_text(res: dict, key: str = "batched") -> str:
    """The saved operator profile of a grouped step (first lines), if the file has one."""
    g = res.get(key) or {}
    name = g.get("profile")
    if not name:
        return "(no profile in this file)"
    path = Path(res["_dir"]) / name
    return path.read_text() if path.is_file() else f"({name} is missing beside the results file)"


def verdict(res: dict, key: str) -> str:
    ok = met(key, measurements(res)[key])
    return "not measured" if ok is None else ("met" if ok else "missed")


def plot_steps(res: dict):
    """Added time per step of each variant, with the two per-step targets."""
    s = res["steps"]
    names = {"tracked_chosen_layer": f"tracking, layer {s['layer']}", "tracked_all_layers": "tracking, every layer",
             "tracked_all_layers_mean_activations": "tracking, every layer\n(mean_activations: before)",
             "block": "block objective"}
    vals = [s["overhead"][k] * 100 for k in names]
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.barh(list(names.values()), vals, color=["C0", "C0", "0.6", "C1"])
    ax.axvline(TARGETS["tracking_chosen_layer_overhead"] * 100, color="C0", ls="--", lw=1, label="tracking target")
    ax.axvline(TARGETS["block_overhead"] * 100, color="C1", ls="--", lw=1, label="block target")
    ax.set_xlabel(f"added time per fine-tuning step (%)  [plain step {s['ms']['plain']:.1f} ms]")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    return fig


def scaling_table(res: dict) -> pd.DataFrame:
    df = pd.DataFrame(res["scaling"])
    df["overhead"] = df["overhead"].map(lambda x: f"{x:.0%}")
    df[["step_ms", "tracking_ms"]] = df[["step_ms", "tracking_ms"]].round(1)
    return df.rename(columns={"step_ms": "step (ms)", "tracking_ms": "tracking, every layer (ms)",
                              "overhead": "tracking / step"}).drop(columns=["value"]).set_index("vary")


def plot_scaling(res: dict):
    df = pd.DataFrame(res["scaling"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, (kind, label) in zip(axes, [("width", "model width d"), ("n_probe", "probe prompts")]):
        d = df[df["vary"] == kind]
        ax.plot(d["value"], d["step_ms"], "o-", label="fine-tuning step")
        ax.plot(d["value"], d["tracking_ms"], "s-", label="tracking (every layer)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("ms")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def profile_excerpt(res: dict, n_lines: int = 45) -> str:
    """The first lines of the saved profile of a tracked step (empty when none was needed)."""
    name = res.get("profile")
    if not name:
        return ""
    path = Path(res["_dir"]) / name
    if not path.is_file():
        return f"(profile file {name} is missing)"
    lines = path.read_text().splitlines()
    # Drop pyinstrument's banner (recording time, absolute path): keep the call tree.
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("Profile at")), 0)
    body = [line for line in lines[start:] if line.strip()]
    return "\n".join(body[:n_lines])


def _cold_book(res: dict) -> dict:
    """The cold build's measurements ({} when the file has no book run)."""
    return (res.get("book") or {}).get("cold") or {}


def memory_sentence(res: dict) -> str:
    """The cold build's peak with shared pages counted once, where it was measured ("" otherwise):
    the summed resident memory counts a page that n processes share (torch's code) n times."""
    pss = _cold_book(res).get("peak_memory_pss_gib")
    if pss is None:
        return ""
    return (f" Counting each page shared between processes once (the summed proportional set size), "
            f"the cold build's peak was {pss:.2f} GiB.")


def notebook_table(res: dict) -> pd.DataFrame | None:
    """Execution seconds of each notebook in the cold build and, where measured, the peak memory
    of the build's processes while it ran (None when not measured)."""
    cold = _cold_book(res)
    per = cold.get("notebook_seconds")
    if not per:
        return None
    df = pd.DataFrame({"notebook": list(per), "seconds (cold)": list(per.values())}).set_index("notebook")
    peaks = cold.get("notebook_peak_memory_gib")
    if peaks:
        df["peak memory (GiB)"] = [peaks.get(n) for n in df.index]
    df.loc["total"] = [df["seconds (cold)"].sum()] + ([cold["peak_memory_gib"]] if peaks else [])
    return df.round({"seconds (cold)": 1, "peak memory (GiB)": 2})
