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
from reversion.infra.paths import resolve
from reversion.infra.results import write_metrics

STEM = "09_performance"


@dataclass(frozen=True)
class Params:
    """Parameters of the Performance page."""

    benchmark_file: str
    """The benchmark's JSON (relative to the project root unless absolute)."""


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
    s, e, b, g = res["steps"], res["extraction"], res.get("book"), res.get("batched")
    r = g["ratio"] if g else {}
    lora = res.get("lora")
    return {
        "seeds_batched_to_one_seed": r.get("seeds_batched_to_one_seed"),
        "seeds_batched_to_one_per_worker": r.get("seeds_batched_to_one_per_worker"),
        "histories_batched_to_one_history": r.get("histories_batched_to_one_history"),
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
    "seeds_batched_to_one_seed": ("five fine-tuning seeds as one group", "time / one seed alone"),
    "seeds_batched_to_one_per_worker": ("five fine-tuning seeds as one group", "time / one run per worker (before)"),
    "histories_batched_to_one_history": ("three histories as one group", "time / one history"),
    "workload_seconds": ("3 histories x 5 seeds, from nothing", "seconds"),
    "tracking_chosen_layer_overhead": ("drift tracking, chosen layer, every step", "added time per step"),
    "block_overhead": ("block objective", "added time per step"),
    "extraction_ratio": ("activation extraction (mean_activations)", "time / plain forward"),
    "lora_monitor_check_to_floor": ("monitor check in a LoRA Trainer run", "time / plain forward of the probes"),
    "book_cold_seconds": ("whole book, empty cache", "seconds"),
    "book_warm_seconds": ("whole book, nothing changed", "seconds"),
    "book_peak_memory_gib": ("peak memory of the book build", "GiB"),
}


def save(P: Params, res: dict) -> dict:
    """``results/09_performance/metrics.json``: each target's measured value and whether it is met
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


def batched_table(res: dict) -> pd.DataFrame | str:
    """Each batched workload's seconds, its floor (matrix FLOPs at the machine's matrix rate on
    every core) and the ratio of the two."""
    g = res.get("batched")
    if not g:
        return "batched runs were not measured in this file"
    names = {"one_seed": "one fine-tuning seed", "seeds_batched": f"{g['n_seeds']} seeds, one group",
             "seeds_one_per_worker": f"{g['n_seeds']} seeds, one run per worker (before batching)",
             "one_history": "one history", "histories_batched": f"{g['n_histories']} histories, grouped",
             "workload": f"{g['n_histories']} histories x {g['n_seeds']} seeds, from nothing"}
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
    """Why batching gives what it gives, chosen by the measured ratios."""
    g = res.get("batched")
    if not g:
        return ""
    r = g["ratio"]
    if r["seeds_batched_to_one_seed"] <= TARGETS["seeds_batched_to_one_seed"]:
        return ("Here a group of seeds costs little more than one seed: a lone run leaves most of the machine idle "
                "(per-operator overhead), and the group fills it.")
    return (f"A group of seeds costs {r['seeds_batched_to_one_seed']:.1f} times one seed, because a lone run is "
            f"already within {r['one_seed_to_floor']:.1f} times its floor: its time goes to arithmetic that grows "
            "with the number of runs (the matrix products, and element-wise work -- GELU, layer norms, attention, "
            "AdamW -- that the floor does not count; profile below), not to per-operator overhead that a group "
            "could share. Batching removes that overhead and keeps every core busy; it cannot make K runs' "
            "arithmetic cost one run's.")


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


def notebook_table(res: dict) -> pd.DataFrame | None:
    """Execution seconds of each notebook in the cold build (None when not measured)."""
    b = res.get("book")
    per = (b or {}).get("cold", {}).get("notebook_seconds")
    if not per:
        return None
    df = pd.DataFrame({"notebook": list(per), "seconds (cold)": list(per.values())}).set_index("notebook")
    df.loc["total"] = df["seconds (cold)"].sum()
    return df.round(1)
