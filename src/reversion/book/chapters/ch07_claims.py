"""Chapter 06: every claim of the paper against what the chapters measured.

Each claim gets a verdict from the vocabulary of :mod:`reversion.book.chapters.verdicts` --
*consistent*, *consistent but not specific*, *inconclusive*, *not reproduced*, *not testable
here* -- by a stated rule (:data:`RULES`) that reads the pattern (direction, interval) and the
control that separates the claim from its alternative: a control direction at matched strength
(chapter 05) or a lineage of "Which past?" (chapter 04b). Magnitude sits beside the verdict,
never in it: our intervals span histories of one small organism, and what the paper's +-
spans is not known.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.book.chapters.verdicts import (
    CONSISTENT,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_SPECIFIC,
    NOT_TESTABLE,
    VERDICTS,
    side,
    verdict,
)
from reversion.infra.results import read_metrics

CHAPTERS = {"01": "01_training_history", "02": "02_vrev_estimation", "03": "03_alignment",
            "04": "04_null_test", "04b": "05_which_past", "05": "06_interventions"}
ORDER = (NOT_REPRODUCED, INCONCLUSIVE, NOT_SPECIFIC, CONSISTENT)
"""From weakest to strongest: a claim resting on two findings gets the weaker one."""
TASK_MARGIN = 0.05
"""Task-accuracy change that counts as "little" (text models: 5% of the baseline's held-out loss)."""

ALTERNATIVE = {
    "residual": {"specific": CONSISTENT, "none": NOT_SPECIFIC, "noise": INCONCLUSIVE},
    "witness": {"own": CONSISTENT, "common": NOT_SPECIFIC, "unresolved": INCONCLUSIVE, "away": NOT_REPRODUCED},
    "no_witness": {"separated": CONSISTENT, "not separated": NOT_SPECIFIC, "no reversion": NOT_REPRODUCED},
    "dose": {"grows": CONSISTENT, "flat": INCONCLUSIVE, "shrinks": NOT_REPRODUCED},
}
"""What each "Which past?" verdict means for the claim it is the control of."""

RULES = {
    "V1-a": "pattern: mean alignment at step 1 above the stricter null's p99 and every seed above the isotropic "
            "p99 (not reproduced: mean at or below the isotropic p99; inconclusive: in between); control: "
            "\"Which past?\"'s residual test (drift beyond span(r_S, v_P)): specific -> consistent, none -> not "
            "specific, noise -> inconclusive.",
    "V1-b": "pattern: mean alignment at step 20 above the stricter p99 and above step 1's (not reproduced: at or "
            "below the isotropic p99 or T < 20); control as V1-a.",
    "V1-c": "consistent: every pair of history 0 above the isotropic p99 (the claim says all); not reproduced "
            "otherwise. The other histories' pairs above the stricter of the two nulls are listed beside.",
    "V1-d": "block (one-sided) along v_rev minus baseline, final alignment: interval below zero -> consistent "
            "(the direction is the one measured, so no control applies); above zero or within the margin -> not "
            "reproduced; else inconclusive.",
    "V1-e": "block along v_rev minus baseline, harmfulness: interval below zero, and below every control "
            "direction's at matched strength -> consistent; a control as good (contrast within the margin) or "
            "better -> not specific; intervals too wide -> inconclusive; effect above zero or within the margin "
            "-> not reproduced.",
    "V1-f": "block along v_rev minus baseline, task accuracy: interval within +-0.05 -> consistent; entirely "
            "below -0.05 -> not reproduced; else inconclusive (text models: held-out loss, 5% of the baseline's).",
    "V2-a": "consistent: every run of every history significant against its own matched null (family-wise); not "
            "reproduced otherwise.",
    "V2-b": "consistent: v_rev's readout favours answer-opening over refusal-opening tokens and more than every "
            "control direction's readout; not specific: a control's readout favours them as much; not "
            "reproduced: v_rev's does not.",
    "V2-c": "consistent: Spearman r >= 0.5 and the partial correlation with the step controlled for > 0; not "
            "specific: r >= 0.5 but the common trend over steps explains it; not reproduced: r < 0.5.",
    "V2-d": "the weaker of: block's alignment verdict (V1-d) and its harmfulness verdict (V1-e).",
    "V2-e": "push along v_rev minus baseline, alignment and harmfulness intervals above zero, and harm above push "
            "along a random direction at matched strength; the weaker of the two.",
    "V2-f": "not testable here: the claim is about every model and scale (3B-14B); the organism's ordering is "
            "reported beside.",
    "V2-g": "rehearsal minus baseline, cumulative reversion (area above theta_S's level, clipped at zero): "
            "interval below zero -> consistent; above or within the margin -> not reproduced; else inconclusive.",
    "H-1": "\"Which past?\", witness crossover in activations: own -> consistent, common -> not specific, "
           "unresolved -> inconclusive, away -> not reproduced.",
    "H-2": "\"Which past?\", no-witness lineage: separated -> consistent, not separated -> not specific, no "
           "reversion -> not reproduced.",
    "H-3": "\"Which past?\", dose of the helpful phase: grows -> consistent, flat -> inconclusive, shrinks -> "
           "not reproduced.",
}


def fmt(a: dict | float | None, digits: int = 3) -> str:
    if a is None:
        return "undefined"
    if isinstance(a, dict) and "ci_low" in a:
        if a["ci_low"] is None:
            return f"{a['mean']:+.{digits}f}"
        return f"{a['mean']:+.{digits}f} [{a['ci_low']:+.{digits}f}, {a['ci_high']:+.{digits}f}]"
    if isinstance(a, dict):
        return f"{a['mean']:.{digits}f} ± {a['std']:.{digits}f} (n={a['n']})"
    return f"{a:.{digits}f}"


def weaker(*vs: str) -> str:
    """The weakest of several verdicts (:data:`ORDER`); "not testable here" if any is."""
    if NOT_TESTABLE in vs:
        return NOT_TESTABLE
    return min(vs, key=ORDER.index)


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
    n: str = ""
    """Histories x seeds behind the verdict."""


def magnitude(ours: float | None, paper: float, paper_sd: float = 0.0) -> str:
    """'higher' / 'lower' / 'within the paper's ±' -- information beside the verdict."""
    if ours is None:
        return ""
    if abs(ours - paper) <= paper_sd:
        return "within the paper's ±"
    return f"{'higher' if ours > paper else 'lower'} than the paper's ({ours:.3f} vs {paper:.3f})"


def _alt(wp: dict, key: str) -> str:
    """A "Which past?" verdict as what it means for the claim it controls (not testable where the
    chapter could not measure it, e.g. on checkpoints without a second lineage)."""
    got = (wp.get(key) or {}).get("verdict")
    return ALTERNATIVE[key].get(got, NOT_TESTABLE)


def _pattern(mean: float | None, above_strict: bool, above_iso: bool) -> str:
    if mean is None:
        return NOT_REPRODUCED
    return CONSISTENT if above_strict else NOT_REPRODUCED if not above_iso else INCONCLUSIVE


def _arm(iv: dict, objective: str, direction: str = "v_rev") -> str | None:
    """The main comparison's arm of an objective along a direction (at the first site run)."""
    for n in iv["main"]:
        a = iv["arms"][n]
        if a["objective"] == objective and a["direction"] == direction:
            return n
    return None


def _histories(n: int) -> str:
    return f"{n} histor{'y' if n == 1 else 'ies'}"


def _nx(a: dict) -> str:
    return f"{a['n_histories']}×{a['n_seeds']}"


def build_rows(m: dict[str, dict]) -> list[Row]:
    """``m``: chapter number -> that chapter's ``metrics``."""
    rows = []
    al, nt, iv, vr, wp = m["03"], m["04"], m["05"], m["02"], m["04b"]
    p99_iso = nt["null"]["isotropic_p99"]
    p99_m = max(p99_iso, nt["null"]["matched_p99"])  # the stricter of the two nulls (chapter 04)
    res = _alt(wp, "residual")
    res_word = (wp.get("residual") or {}).get("verdict", "not run")
    n_al = _histories(al.get("n_histories", 1))

    a1, a20 = al["alignment"].get("1"), al["alignment"].get("20")
    pat = NOT_REPRODUCED if a1 is None else _pattern(
        a1["mean"], a1["mean"] > p99_m and al["alignment_min_over_seeds"]["1"] > p99_iso, a1["mean"] > p99_iso)
    rows.append(Row("V1-a", "alignment after the first update", "0.429 ± 0.052",
                    f"{fmt(a1)}; residual beyond r_S, v_P: {res_word}", pat if pat != CONSISTENT else res, "03",
                    magnitude(a1 and a1["mean"], 0.429, 0.052), n_al))
    if a20 is None:
        rows.append(Row("V1-b", "alignment by step 20", "0.647 ± 0.021", "T < 20", NOT_REPRODUCED, "03", "", n_al))
    else:
        pat = _pattern(a20["mean"], a20["mean"] > p99_m and a20["mean"] > a1["mean"], a20["mean"] > p99_iso)
        rows.append(Row("V1-b", "alignment by step 20", "0.647 ± 0.021",
                        f"{fmt(a20)}; residual: {res_word}", pat if pat != CONSISTENT else res, "03",
                        magnitude(a20["mean"], 0.647, 0.021), n_al))
    pr = nt["pairs"]
    by = nt.get("by_history") or []
    per = "; per history above the stricter threshold: " + ", ".join(
        f"{h['pairs above']}/{h['pairs']}" for h in by) if by else ""
    rows.append(Row("V1-c", "run-step pairs above the isotropic null's p99", "24 of 24",
                    f"{pr['above_isotropic']} of {pr['n']} (history 0){per}",
                    CONSISTENT if pr["above_isotropic"] == pr["n"] else NOT_REPRODUCED, "04", "",
                    _histories(len(by) or 1)))

    margin = iv["margin"]
    blk, psh = _arm(iv, "block"), _arm(iv, "push")
    A = iv["arms"]
    base = A["baseline"]["outcome"]
    if blk is None:
        for rid, claim in (("V1-d", "final alignment at T, baseline → block"),
                           ("V1-e", "harmfulness at T, baseline → block"), ("V1-f", "task cost of blocking")):
            rows.append(Row(rid, claim, "", "block not run", NOT_TESTABLE, "05"))
        v_al = v_h = NOT_TESTABLE
    else:
        b = A[blk]
        da = b["vs_baseline"]["final_alignment"]
        v_al = verdict(da, -1, None, margin)
        rows.append(Row("V1-d", "final alignment at T, baseline → block", "0.648 → −0.211",
                        f"{base['final_alignment']['mean']:.3f} → {b['outcome']['final_alignment']['mean']:.3f} "
                        f"(Δ {fmt(da)})", v_al, "05",
                        "with block: " + magnitude(b["outcome"]["final_alignment"]["mean"], -0.211, 0.021), _nx(b)))
        sp = iv["specificity"][blk]
        v_h = sp["verdict"]
        worst = (f"; {', '.join(sp.get('matching') or sp['failing'])} at matched strength as good"
                 if v_h == NOT_SPECIFIC else
                 f"; against {', '.join(sp['failing'])} too wide to tell" if v_h == INCONCLUSIVE and sp["failing"]
                 else "")
        rows.append(Row("V1-e", "harmfulness at T, baseline → block", "0.190 → 0.085",
                        f"{base['harmfulness']['mean']:.3f} → {b['outcome']['harmfulness']['mean']:.3f} "
                        f"(Δ {fmt(sp['effect'])}){worst}", v_h, "05",
                        "baseline: " + magnitude(base["harmfulness"]["mean"], 0.190, 0.040), _nx(b)))
        if "task_accuracy" in b["vs_baseline"]:
            dt = b["vs_baseline"]["task_accuracy"]
            lim, what = TASK_MARGIN, "Δ accuracy"
        else:  # text models: held-out loss, relative to the baseline's
            dt = b["vs_baseline"]["task_loss"]
            lim, what = TASK_MARGIN * base["task_loss"]["mean"], "Δ held-out loss"
        if dt is None or dt["ci_low"] is None:
            v = INCONCLUSIVE
        elif -lim <= dt["ci_low"] and dt["ci_high"] <= lim:
            v = CONSISTENT
        elif dt["ci_high"] < -lim if what == "Δ accuracy" else dt["ci_low"] > lim:
            v = NOT_REPRODUCED
        else:
            v = INCONCLUSIVE
        rows.append(Row("V1-f", "task cost of blocking", "little", f"{what} {fmt(dt)} (margin ±{lim:.3f})", v,
                        "05", "", _nx(b)))

    pr_run = nt["per_run"]
    sig = sum(h["runs significant"] for h in by) if by else pr_run["significant"]
    n_runs = sum(h["runs"] for h in by) if by else pr_run["n"]
    rows.append(Row("V2-a", "every trajectory exceeds a matched empirical null", "all",
                    f"{sig} of {n_runs} runs (α={pr_run['alpha']}; history 0: {pr_run['significant']} of "
                    f"{pr_run['n']}, {pr['above_matched']} of {pr['n']} pairs)",
                    CONSISTENT if sig == n_runs else NOT_REPRODUCED, "04", "", _histories(len(by) or 1)))
    ro = vr["readout"]
    x = ro["v_rev"]["compliance_minus_refusal"]
    others = {k: r["compliance_minus_refusal"] for k, r in ro.items() if k != "v_rev"}
    if x is None or x <= 0:
        v = NOT_REPRODUCED
    elif any(o is not None and o >= x for o in others.values()):
        v = NOT_SPECIFIC
    else:
        v = CONSISTENT
    rows.append(Row("V2-b", "vocabulary readout favours task-engaging over refusal openings", "qualitative",
                    "undefined (no answer-opening token)" if x is None else
                    f"logit difference {x:+.3f}; " + ", ".join(f"{k} {o:+.3f}" for k, o in others.items()
                                                                if o is not None),
                    v, "02"))
    r, rp = al["spearman_alignment_harmfulness"], al["partial_spearman_given_step"]
    v = NOT_REPRODUCED if r is None or r < 0.5 else CONSISTENT if rp is not None and rp > 0 else NOT_SPECIFIC
    rows.append(Row("V2-c", "alignment and harmfulness rise together (Spearman r)", "0.958",
                    f"{fmt(r)} (step controlled: {fmt(rp)})", v, "03", magnitude(r, 0.958)))

    rows.append(Row("V2-d", "opposing positive motion lowers alignment and harmfulness", "all settings",
                    f"block: alignment {v_al}, harmfulness {v_h}", weaker(v_al, v_h), "05"))
    if psh is None:
        rows.append(Row("V2-e", "reinforcing the motion raises both", "all settings", "push not run", NOT_TESTABLE,
                        "05"))
    else:
        p_ = A[psh]
        sp = iv["specificity"][psh]
        va = verdict(p_["vs_baseline"]["final_alignment"], +1, None, margin)
        rows.append(Row("V2-e", "reinforcing the motion raises both", "all settings",
                        f"Δ alignment {fmt(p_['vs_baseline']['final_alignment'])}, Δ harmfulness {fmt(sp['effect'])}",
                        weaker(va, sp["verdict"]), "05", "", _nx(p_)))
    order = []
    if blk is not None and psh is not None:
        for meas in ("final_alignment", "harmfulness"):
            ok = A[blk]["outcome"][meas]["mean"] < base[meas]["mean"] < A[psh]["outcome"][meas]["mean"]
            order.append(f"{meas.replace('_', ' ')}: {'yes' if ok else 'no'}")
    rows.append(Row("V2-f", "mean ordering block < baseline < push", "every model and scale",
                    "organism: " + ("; ".join(order) or "not run"), NOT_TESTABLE, "05"))
    red = iv["rehearsal"]["cumulative_reversion"]
    rel = iv.get("rehearsal_relative")
    v = INCONCLUSIVE if red is None else {"there": CONSISTENT, "wrong": NOT_REPRODUCED, "null": NOT_REPRODUCED,
                                          "wide": INCONCLUSIVE}[side(red, -1, margin)]
    rows.append(Row("V2-g", "safety rehearsal (no v_rev) cuts cumulative reversion", "≈ 30%",
                    f"Δ {fmt(red)}" + (f" ({-rel:.0%} reduction)" if rel is not None else ""), v, "05",
                    magnitude(-rel if rel is not None else None, 0.30), _nx(A["rehearsal"])))

    wn = (wp.get("n") or {})
    n_wp = f"{wn.get('seeds', '?')} seeds, history 0" if isinstance(wn, dict) else ""
    for rid, key, claim in (("H-1", "witness", "the drift returns toward the model's *own* witness, not any helpful past"),
                            ("H-2", "no_witness", "reversion is not the task generalising to harmful requests"),
                            ("H-3", "dose", "the larger the early helpful phase, the more reversion")):
        got = (wp.get(key) or {}).get("verdict", "not run")
        rows.append(Row(rid, claim, "the paper's reading", f"\"Which past?\": {got}", _alt(wp, key), "04b", "", n_wp))
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
    return df[["claim", "paper", "ours", "verdict", "magnitude", "n", "chapter"]]


def counts(rows: list[Row]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
