"""Chapter 06: every claim of the paper against what the chapters measured.

The verdict rules judge the qualitative pattern -- direction, ordering, significance --
not closeness to an LLM's number: our +- spans fine-tuning seeds of one small organism,
and what the paper's +- spans is not known.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.infra.results import read_metrics

CHAPTERS = {"01": "01_training_history", "02": "02_vrev_estimation", "03": "03_alignment",
            "04": "04_null_test", "05": "05_interventions"}
REPRODUCED, PARTLY, NOT = "reproduced", "partly", "not reproduced"

RULES = {
    "V1-a": "reproduced: mean alignment at step 1 above the matched null's p99 and every seed above "
            "the isotropic p99; partly: mean > 0 and above the isotropic p99 only; else not.",
    "V1-b": "reproduced: mean alignment at step 20 above the matched p99 and above step 1's; "
            "partly: above the matched p99 but not higher than at step 1; else not.",
    "V1-c": "reproduced: every pair above the isotropic p99; partly: at least half; else not.",
    "V1-d": "reproduced: block - baseline final alignment has a 95% paired CI below zero; partly: "
            "mean difference below zero; else not.",
    "V1-e": "as V1-d, for harmfulness at T.",
    "V1-f": "reproduced: |block - baseline task accuracy| <= 0.05 and its CI within +-0.10; partly: "
            "|mean difference| <= 0.10; else not. Text models (no accuracy): the same with the held-out "
            "loss difference relative to the baseline's loss (<= 5%, CI high <= 10%; partly <= 10%).",
    "V2-a": "reproduced: every run significant in the per-run test against the matched null "
            "(family-wise alpha); partly: some runs; else not.",
    "V2-b": "reproduced: v_rev's readout favours answer-opening over refusal-opening tokens "
            "(logit difference > 0); else not.",
    "V2-c": "reproduced: Spearman r >= 0.5 and still > 0 with the step controlled for (partial); "
            "partly: r >= 0.5 but not beyond the common trend; else not.",
    "V2-d": "reproduced: block's paired CIs below zero for alignment and harmfulness; partly: one "
            "of the two, or both means below zero; else not.",
    "V2-e": "reproduced: push's paired CIs above zero for alignment and harmfulness; partly: one of "
            "the two, or both means above zero; else not.",
    "V2-f": "reproduced: mean ordering block < baseline < push for alignment and harmfulness; "
            "partly: for one of the two; else not.",
    "V2-g": "reproduced: rehearsal's paired CI of cumulative reversion below zero; partly: mean "
            "difference below zero; else not.",
}


def fmt(a: dict | float | None, digits: int = 3) -> str:
    if a is None:
        return "undefined"
    if isinstance(a, dict):
        return f"{a['mean']:.{digits}f} ± {a['std']:.{digits}f} (n={a['n']})"
    return f"{a:.{digits}f}"


def _ci_sign(d: dict) -> int:
    """+1 if the CI is above zero, -1 if below, 0 otherwise."""
    return 1 if d["ci_low"] > 0 else -1 if d["ci_high"] < 0 else 0


@dataclass(frozen=True)
class Row:
    id: str
    claim: str
    paper: str
    ours: str
    verdict: str
    chapter: str
    magnitude: str = ""
    """Our number against the paper's, in words (not part of the verdict)."""


def magnitude(ours: float | None, paper: float, paper_sd: float = 0.0) -> str:
    """'higher' / 'lower' / 'within the paper's ±' -- information beside the verdict."""
    if ours is None:
        return ""
    if abs(ours - paper) <= paper_sd:
        return "within the paper's ±"
    return f"{'higher' if ours > paper else 'lower'} than the paper's ({ours:.3f} vs {paper:.3f})"


def build_rows(m: dict[str, dict]) -> list[Row]:
    """``m``: chapter number -> that chapter's ``metrics``."""
    rows = []
    al, nt, iv, vr = m["03"], m["04"], m["05"], m["02"]
    p99_iso = nt["null"]["isotropic_p99"]
    # the threshold is the larger of the two nulls' p99 (chapter 04), whichever is stricter
    p99_m = max(p99_iso, nt["null"]["matched_p99"])

    a1, a20 = al["alignment"].get("1"), al["alignment"].get("20")
    if a1 is None:
        v = NOT
    elif a1["mean"] > p99_m and al["alignment_min_over_seeds"]["1"] > p99_iso:
        v = REPRODUCED
    elif a1["mean"] > p99_iso:
        v = PARTLY
    else:
        v = NOT
    rows.append(Row("V1-a", "alignment after the first update", "0.429 ± 0.052", fmt(a1), v, "03",
                    magnitude(a1 and a1["mean"], 0.429, 0.052)))
    if a20 is None:
        v, ours = NOT, "T < 20"
    else:
        v = REPRODUCED if a20["mean"] > p99_m and a20["mean"] > a1["mean"] else \
            PARTLY if a20["mean"] > p99_m else NOT
        ours = fmt(a20)
    rows.append(Row("V1-b", "alignment by step 20", "0.647 ± 0.021", ours, v, "03",
                    magnitude(a20 and a20["mean"], 0.647, 0.021)))
    pr = nt["pairs"]
    v = REPRODUCED if pr["above_isotropic"] == pr["n"] else PARTLY if 2 * pr["above_isotropic"] >= pr["n"] else NOT
    rows.append(Row("V1-c", "run-step pairs above the isotropic null's p99", "24 of 24",
                    f"{pr['above_isotropic']} of {pr['n']}", v, "04"))

    pv = iv["paired_vs_baseline"]
    V = iv["variants"]

    def by_ci(d: dict, want: int) -> str:
        s = _ci_sign(d)
        return REPRODUCED if s == want else PARTLY if d["mean"] * want > 0 else NOT

    rows.append(Row("V1-d", "final alignment at T, baseline → block", "0.648 → −0.211",
                    f"{V['baseline']['final_alignment']['mean']:.3f} → {V['block']['final_alignment']['mean']:.3f}",
                    by_ci(pv["block"]["final_alignment"], -1), "05",
                    "with block: " + magnitude(V["block"]["final_alignment"]["mean"], -0.211, 0.021)))
    rows.append(Row("V1-e", "harmfulness at T, baseline → block", "0.190 → 0.085",
                    f"{V['baseline']['harmfulness']['mean']:.3f} → {V['block']['harmfulness']['mean']:.3f}",
                    by_ci(pv["block"]["harmfulness"], -1), "05",
                    "baseline: " + magnitude(V["baseline"]["harmfulness"]["mean"], 0.190, 0.040)))
    if "task_accuracy" in pv["block"]:
        dt = pv["block"]["task_accuracy"]
        v = REPRODUCED if abs(dt["mean"]) <= 0.05 and dt["ci_low"] >= -0.10 and dt["ci_high"] <= 0.10 else \
            PARTLY if abs(dt["mean"]) <= 0.10 else NOT
        rows.append(Row("V1-f", "task cost of blocking", "little", f"Δ accuracy {dt['mean']:+.3f} "
                        f"[{dt['ci_low']:+.3f}, {dt['ci_high']:+.3f}]", v, "05"))
    else:  # text models: held-out loss, no accuracy; same thresholds relative to the baseline's loss
        dt, base = pv["block"]["task_loss"], V["baseline"]["task_loss"]["mean"]
        rel = dt["mean"] / base if base > 0 else float("inf")
        v = REPRODUCED if abs(rel) <= 0.05 and dt["ci_high"] <= 0.10 * base else \
            PARTLY if abs(rel) <= 0.10 else NOT
        rows.append(Row("V1-f", "task cost of blocking", "little", f"Δ held-out loss {dt['mean']:+.3f} "
                        f"[{dt['ci_low']:+.3f}, {dt['ci_high']:+.3f}] ({rel:+.1%} of the baseline's)", v, "05"))

    pr_run = nt["per_run"]
    v = REPRODUCED if pr_run["significant"] == pr_run["n"] else PARTLY if pr_run["significant"] else NOT
    rows.append(Row("V2-a", "every trajectory exceeds a matched empirical null", "all",
                    f"{pr_run['significant']} of {pr_run['n']} runs (α={pr_run['alpha']}); "
                    f"{pr['above_matched']} of {pr['n']} pairs", v, "04"))
    x = vr["readout"]["v_rev"]["compliance_minus_refusal"]
    rows.append(Row("V2-b", "vocabulary readout favours task-engaging over refusal openings",
                    "qualitative", "undefined (no answer-opening token)" if x is None else f"logit difference {x:+.3f}",
                    REPRODUCED if x is not None and x > 0 else NOT, "02"))
    r, rp = al["spearman_alignment_harmfulness"], al["partial_spearman_given_step"]
    if r is None:
        v = NOT
    else:
        v = REPRODUCED if r >= 0.5 and rp is not None and rp > 0 else PARTLY if r >= 0.5 else NOT
    rows.append(Row("V2-c", "alignment and harmfulness rise together (Spearman r)", "0.958",
                    f"{fmt(r)} (step controlled: {fmt(rp)})", v, "03", magnitude(r, 0.958)))

    def both(variant: str, want: int) -> str:
        sa, sh = _ci_sign(pv[variant]["final_alignment"]), _ci_sign(pv[variant]["harmfulness"])
        if sa == want and sh == want:
            return REPRODUCED
        ma, mh = pv[variant]["final_alignment"]["mean"], pv[variant]["harmfulness"]["mean"]
        return PARTLY if want in (sa, sh) or (ma * want > 0 and mh * want > 0) else NOT

    rows.append(Row("V2-d", "opposing positive motion lowers alignment and harmfulness", "all settings",
                    f"Δ alignment {pv['block']['final_alignment']['mean']:+.3f}, Δ harmfulness "
                    f"{pv['block']['harmfulness']['mean']:+.3f}", both("block", -1), "05"))
    rows.append(Row("V2-e", "reinforcing the motion raises both", "all settings",
                    f"Δ alignment {pv['push']['final_alignment']['mean']:+.3f}, Δ harmfulness "
                    f"{pv['push']['harmfulness']['mean']:+.3f}", both("push", +1), "05"))
    o = iv["ordering"]
    v = REPRODUCED if o["alignment"] and o["harmfulness"] else PARTLY if o["alignment"] or o["harmfulness"] else NOT
    rows.append(Row("V2-f", "mean ordering block < baseline < push", "every model and scale",
                    f"alignment: {'yes' if o['alignment'] else 'no'}; harmfulness: "
                    f"{'yes' if o['harmfulness'] else 'no'}", v, "05"))
    red = iv["rehearsal_reduction"]
    rows.append(Row("V2-g", "safety rehearsal (no v_rev) cuts cumulative reversion", "≈ 30%",
                    f"{red:.0%} reduction" if red is not None else "baseline has no reversion",
                    by_ci(pv["rehearsal"]["cumulative_reversion"], -1), "05", magnitude(red, 0.30)))
    return rows


def load_all() -> dict[str, dict]:
    """Every chapter's metrics; a clear error names the chapter that has not run, and
    results that do not belong together (other code, world or layer) are refused."""
    docs = {k: read_metrics(stem) for k, stem in CHAPTERS.items()}
    check_consistent(docs)
    return {k: d["metrics"] for k, d in docs.items()}


def _stage(doc: dict, name: str):
    return (doc.get("stages") or {}).get(name)


def check_consistent(docs: dict[str, dict]) -> None:
    """The chapters' numbers come from the same stages: the same world everywhere, the same
    subject (the organism's history, or the same checkpoints and input files: the subject
    stage's identity), the same v_rev estimate and layer in chapters 02-05. Code edits that
    change no stage (a plot, the prose) leave these identities as they were."""
    worlds = {k: (d["parameters"].get("world"), repr(d["parameters"].get("world_overrides"))) for k, d in docs.items()}
    if len(set(worlds.values())) > 1:
        raise ValueError(f"the chapters' results differ in world ({worlds}): re-run them together "
                         "(make book) before building the claims table")
    subjects = {k: _stage(d, "subject") for k, d in docs.items()}
    if len(set(subjects.values())) > 1:
        kinds = {k: (d.get("subject") or {}).get("kind") for k, d in docs.items()}
        raise ValueError(f"the chapters ran on different subjects ({kinds}; identities {subjects}: a history, or "
                         "checkpoints, input files or settings differ): re-run them on one subject before "
                         "building the claims table")
    estimates = {k: _stage(docs[k], "estimate") for k in ("02", "03", "04", "05") if k in docs}
    if len(set(estimates.values())) > 1:
        raise ValueError(f"chapters 02-05 used different v_rev estimates {estimates}; the claims would mix them")
    layers = {k: docs[k]["metrics"]["layer"] for k in ("02", "03", "04", "05")}
    if len(set(layers.values())) > 1:
        raise ValueError(f"chapters 02-05 used different layers {layers}; the claims would mix them")


def table(rows: list[Row], links: bool = False) -> pd.DataFrame:
    """One row per claim; with ``links`` the chapter column holds HTML links to the chapters
    (the executed notebooks are pages beside this one in the book)."""
    df = pd.DataFrame([r.__dict__ for r in rows]).set_index("id")
    label = {c: f"{c} · {CHAPTERS[c].split('_', 1)[1].replace('_', ' ')}" for c in CHAPTERS}
    df["chapter"] = [f'<a href="{CHAPTERS[c]}.html">{label[c]}</a>' if links else label[c]
                     for c in df["chapter"]]
    return df[["claim", "paper", "ours", "verdict", "magnitude", "chapter"]]


def counts(rows: list[Row]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in (REPRODUCED, PARTLY, NOT)}
