"""Every claim of the paper against what the chapters measured: one function per claim.

Each function reads the chapters' ``metrics.json`` (a mapping from chapter stem to that
chapter's ``metrics``) and returns a :class:`~reversion.analysis.verdicts.ClaimVerdict`: the
verdict its rule gives and the evidence the rule read. The function's docstring *is* the rule
(the claims page prints it; there is no second copy), and every rule has planted cases that flip
it (``tests/test_claims.py``). Magnitude sits beside the verdict, never in it: our intervals span
histories of one small organism, and what the paper's +- spans is not known.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Mapping

from reversion.analysis.arms import arm_of
from reversion.analysis.verdicts import (
    CONSISTENT,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_SPECIFIC,
    NOT_TESTABLE,
    VERDICTS,
    ClaimVerdict,
    side,
    verdict,
    weaker,
)

ALIGNMENT, NULL_TEST, ESTIMATION = "03_alignment", "04_null_test", "02_vrev_estimation"
WHICH_PAST, INTERVENTIONS = "05_which_past", "06_interventions"
TASK_MARGIN = 0.05
"""Task-accuracy change that counts as "little" (text models: 5% of the baseline's held-out loss)."""

ALTERNATIVE = {
    "residual": {"specific": CONSISTENT, "none": NOT_SPECIFIC, "noise": INCONCLUSIVE},
    "witness": {"own": CONSISTENT, "common": NOT_SPECIFIC, "unresolved": INCONCLUSIVE, "away": NOT_REPRODUCED},
    "no_witness": {"separated": CONSISTENT, "not separated": NOT_SPECIFIC, "no reversion": NOT_REPRODUCED},
    "dose": {"grows": CONSISTENT, "flat": INCONCLUSIVE, "shrinks": NOT_REPRODUCED},
}
"""What each "Which past?" verdict means for the claim it is the control of."""


@dataclass(frozen=True)
class Claim:
    """A claim's rule: the function and the chapters' results it reads."""
    id: str
    reads: tuple[str, ...]
    """Chapter stems the rule reads (a test runs it on these alone)."""
    rule: Callable[[Mapping[str, dict]], ClaimVerdict]

    @property
    def text(self) -> str:
        """The rule as the claims page prints it: the function's docstring."""
        return " ".join(inspect.getdoc(self.rule).split())


CLAIMS: dict[str, Claim] = {}


def claim(id_: str, *reads: str):
    """Register a claim's rule under its id (order of registration = order of the table)."""
    def register(fn):
        CLAIMS[id_] = Claim(id_, reads, fn)
        return fn
    return register


def reads() -> list[str]:
    """Every chapter the claims read, in chapter order."""
    return sorted({r for c in CLAIMS.values() for r in c.reads})


def evaluate(m: Mapping[str, dict]) -> list[ClaimVerdict]:
    """Every claim's verdict, in the table's order."""
    return [c.rule(m) for c in CLAIMS.values()]


def counts(rows: list[ClaimVerdict]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in VERDICTS}


# --------------------------------------------------------------------------- helpers


def _histories(n: int) -> str:
    return f"{n} histor{'y' if n == 1 else 'ies'}"


def _nx(a: dict) -> str:
    return f"{a['n_histories']}×{a['n_seeds']}"


def _alt(wp: dict, key: str) -> str:
    """A "Which past?" verdict as what it means for the claim it controls (not testable where the
    chapter could not measure it, e.g. on checkpoints without a second lineage)."""
    got = (wp.get(key) or {}).get("verdict")
    return ALTERNATIVE[key].get(got, NOT_TESTABLE)


def _pattern(mean: float | None, above_strict: bool, above_iso: bool) -> str:
    if mean is None:
        return NOT_REPRODUCED
    return CONSISTENT if above_strict else NOT_REPRODUCED if not above_iso else INCONCLUSIVE


def _thresholds(nt: dict) -> tuple[float, float]:
    """(isotropic p99, the threshold the null test applied: the stricter of its two nulls)."""
    return nt["null"]["isotropic_p99"], nt["null"]["threshold_p99"]


def _residual_word(wp: dict) -> str:
    return (wp.get("residual") or {}).get("verdict", "not run")


# --------------------------------------------------------------------------- version 1


@claim("V1-a", ALIGNMENT, NULL_TEST, WHICH_PAST)
def alignment_after_one_update(m: Mapping[str, dict]) -> ClaimVerdict:
    """Pattern: mean alignment at step 1 above the stricter null's p99 and every seed above the
    isotropic p99 (not reproduced: mean at or below the isotropic p99; inconclusive: in between).
    Control: "Which past?"'s residual test (drift beyond span(r_S, v_P)): specific -> consistent,
    none -> not specific, noise -> inconclusive."""
    al, wp = m[ALIGNMENT], m[WHICH_PAST]
    iso, strict = _thresholds(m[NULL_TEST])
    a1 = al["alignment"].get("1")
    pat = NOT_REPRODUCED if a1 is None else _pattern(
        a1["mean"], a1["mean"] > strict and al["alignment_min_over_seeds"]["1"] > iso, a1["mean"] > iso)
    return ClaimVerdict("V1-a", "alignment after the first update", "0.429 ± 0.052",
                        pat if pat != CONSISTENT else _alt(wp, "residual"), ALIGNMENT, "cos(d_1, v_rev)",
                        {"alignment at step 1": a1, "residual beyond r_S, v_P": _residual_word(wp)},
                        _histories(al.get("n_histories", 1)), ("", a1 and a1["mean"], 0.429, 0.052))


@claim("V1-b", ALIGNMENT, NULL_TEST, WHICH_PAST)
def alignment_by_step_20(m: Mapping[str, dict]) -> ClaimVerdict:
    """Pattern: mean alignment at step 20 above the stricter p99 and above step 1's (not
    reproduced: at or below the isotropic p99, or T < 20). Control as V1-a."""
    al, wp = m[ALIGNMENT], m[WHICH_PAST]
    iso, strict = _thresholds(m[NULL_TEST])
    a1, a20 = al["alignment"].get("1"), al["alignment"].get("20")
    n = _histories(al.get("n_histories", 1))
    if a20 is None:
        return ClaimVerdict("V1-b", "alignment by step 20", "0.647 ± 0.021", NOT_REPRODUCED, ALIGNMENT,
                            "cos(d_20, v_rev)", {"step 20": "not reached (T < 20)"}, n)
    pat = _pattern(a20["mean"], a20["mean"] > strict and a20["mean"] > a1["mean"], a20["mean"] > iso)
    return ClaimVerdict("V1-b", "alignment by step 20", "0.647 ± 0.021",
                        pat if pat != CONSISTENT else _alt(wp, "residual"), ALIGNMENT, "cos(d_20, v_rev)",
                        {"alignment at step 20": a20, "residual": _residual_word(wp)}, n,
                        ("", a20["mean"], 0.647, 0.021))


@claim("V1-c", NULL_TEST)
def pairs_above_isotropic_null(m: Mapping[str, dict]) -> ClaimVerdict:
    """Consistent: every run-step pair of history 0 above the isotropic p99 (the claim says all);
    not reproduced otherwise. The other histories' pairs above the stricter of the two nulls are
    listed beside."""
    nt = m[NULL_TEST]
    pr, by = nt["pairs"], nt.get("by_history") or []
    ev = {"pairs above the isotropic p99 (history 0)": f"{pr['above_isotropic']} of {pr['n']}"}
    if by:
        ev["per history above the stricter threshold"] = [f"{h['pairs above']}/{h['pairs']}" for h in by]
    return ClaimVerdict("V1-c", "run-step pairs above the isotropic null's p99", "24 of 24",
                        CONSISTENT if pr["above_isotropic"] == pr["n"] else NOT_REPRODUCED, NULL_TEST,
                        "run-step pairs", ev, _histories(len(by) or 1))


def _block(m: Mapping[str, dict]) -> tuple[dict, str | None]:
    iv = m[INTERVENTIONS]
    return iv, arm_of(iv, "block")


@claim("V1-d", INTERVENTIONS)
def block_lowers_alignment(m: Mapping[str, dict]) -> ClaimVerdict:
    """Block (one-sided) along v_rev minus baseline, final alignment: interval below zero ->
    consistent (the direction is the one measured, so no control applies); above zero or within
    the margin -> not reproduced; else inconclusive. Not testable where block was not run."""
    iv, blk = _block(m)
    if blk is None:
        return ClaimVerdict("V1-d", "final alignment at T, baseline → block", "", NOT_TESTABLE, INTERVENTIONS,
                            "final alignment", {"block": "not run"})
    b, base = iv["arms"][blk], iv["arms"]["baseline"]["outcome"]
    da = b["vs_baseline"]["final_alignment"]
    return ClaimVerdict("V1-d", "final alignment at T, baseline → block", "0.648 → −0.211",
                        verdict(da, -1, None, iv["margin"]), INTERVENTIONS, "final alignment",
                        {"baseline": base["final_alignment"]["mean"], "block": b["outcome"]["final_alignment"]["mean"],
                         "Δ": da}, _nx(b), ("with block", b["outcome"]["final_alignment"]["mean"], -0.211, 0.021))


@claim("V1-e", INTERVENTIONS)
def block_lowers_harmfulness(m: Mapping[str, dict]) -> ClaimVerdict:
    """Block along v_rev minus baseline, harmfulness: interval below zero, and below every
    control direction's at matched strength -> consistent; a control as good (contrast within the
    margin) or better -> not specific; intervals too wide -> inconclusive; effect above zero or
    within the margin -> not reproduced. (The chapter's specificity verdict.)"""
    iv, blk = _block(m)
    if blk is None:
        return ClaimVerdict("V1-e", "harmfulness at T, baseline → block", "", NOT_TESTABLE, INTERVENTIONS,
                            "harmfulness", {"block": "not run"})
    b, base = iv["arms"][blk], iv["arms"]["baseline"]["outcome"]
    sp = iv["specificity"][blk]
    v = sp["verdict"]
    ev = {"baseline": base["harmfulness"]["mean"], "block": b["outcome"]["harmfulness"]["mean"], "Δ": sp["effect"]}
    if v == NOT_SPECIFIC:
        ev["as good at matched strength"] = list(sp.get("matching") or sp["failing"])
    elif v == INCONCLUSIVE and sp["failing"]:
        ev["too wide to tell against"] = list(sp["failing"])
    return ClaimVerdict("V1-e", "harmfulness at T, baseline → block", "0.190 → 0.085", v, INTERVENTIONS,
                        "harmfulness (first token)", ev, _nx(b), ("baseline", base["harmfulness"]["mean"], 0.190, 0.040))


@claim("V1-f", INTERVENTIONS)
def block_costs_little(m: Mapping[str, dict]) -> ClaimVerdict:
    """Block along v_rev minus baseline, task accuracy: interval within +-0.05 -> consistent;
    entirely below -0.05 -> not reproduced; else inconclusive (text models: held-out loss, 5% of
    the baseline's, not reproduced when entirely above it)."""
    iv, blk = _block(m)
    if blk is None:
        return ClaimVerdict("V1-f", "task cost of blocking", "", NOT_TESTABLE, INTERVENTIONS, "task accuracy",
                            {"block": "not run"})
    b, base = iv["arms"][blk], iv["arms"]["baseline"]["outcome"]
    if "task_accuracy" in b["vs_baseline"]:
        dt, lim, what = b["vs_baseline"]["task_accuracy"], TASK_MARGIN, "Δ accuracy"
    else:  # text models: held-out loss, relative to the baseline's
        dt, lim, what = b["vs_baseline"]["task_loss"], TASK_MARGIN * base["task_loss"]["mean"], "Δ held-out loss"
    if dt is None or dt["ci_low"] is None:
        v = INCONCLUSIVE
    elif -lim <= dt["ci_low"] and dt["ci_high"] <= lim:
        v = CONSISTENT
    elif dt["ci_high"] < -lim if what == "Δ accuracy" else dt["ci_low"] > lim:
        v = NOT_REPRODUCED
    else:
        v = INCONCLUSIVE
    return ClaimVerdict("V1-f", "task cost of blocking", "little", v, INTERVENTIONS, what.removeprefix("Δ "),
                        {what: dt, "margin": f"±{lim:.3f}"}, _nx(b))


# --------------------------------------------------------------------------- version 2


@claim("V2-a", NULL_TEST)
def every_run_beats_matched_null(m: Mapping[str, dict]) -> ClaimVerdict:
    """Consistent: every run of every history significant against its own matched null
    (family-wise); not reproduced otherwise."""
    nt = m[NULL_TEST]
    pr, pr_run, by = nt["pairs"], nt["per_run"], nt.get("by_history") or []
    sig = sum(h["runs significant"] for h in by) if by else pr_run["significant"]
    n_runs = sum(h["runs"] for h in by) if by else pr_run["n"]
    return ClaimVerdict("V2-a", "every trajectory exceeds a matched empirical null", "all",
                        CONSISTENT if sig == n_runs else NOT_REPRODUCED, NULL_TEST, "runs significant",
                        {"runs significant": f"{sig} of {n_runs}", "α": pr_run["alpha"],
                         "history 0 runs": f"{pr_run['significant']} of {pr_run['n']}",
                         "history 0 pairs above the matched p99": f"{pr['above_matched']} of {pr['n']}"},
                        _histories(len(by) or 1))


@claim("V2-b", ESTIMATION)
def readout_favours_answers(m: Mapping[str, dict]) -> ClaimVerdict:
    """Consistent: v_rev's vocabulary readout favours answer-opening over refusal-opening tokens,
    and more than every control direction's readout; not specific: a control's readout favours
    them as much; not reproduced: v_rev's does not (or is undefined)."""
    ro = m[ESTIMATION]["readout"]
    x = ro["v_rev"]["compliance_minus_refusal"]
    others = {k: r["compliance_minus_refusal"] for k, r in ro.items() if k != "v_rev"}
    if x is None or x <= 0:
        v = NOT_REPRODUCED
    elif any(o is not None and o >= x for o in others.values()):
        v = NOT_SPECIFIC
    else:
        v = CONSISTENT
    ev = ({"undefined": "no answer-opening token"} if x is None else
          {"logit difference": x, **{k: o for k, o in others.items() if o is not None}})
    return ClaimVerdict("V2-b", "vocabulary readout favours task-engaging over refusal openings", "qualitative",
                        v, ESTIMATION, "logit difference", ev)


@claim("V2-c", ALIGNMENT)
def alignment_tracks_harmfulness(m: Mapping[str, dict]) -> ClaimVerdict:
    """Consistent: Spearman r >= 0.5 and the partial correlation with the step controlled for > 0;
    not specific: r >= 0.5 but the common trend over steps explains it; not reproduced: r < 0.5
    (or undefined)."""
    al = m[ALIGNMENT]
    r, rp = al["spearman_alignment_harmfulness"], al["partial_spearman_given_step"]
    v = NOT_REPRODUCED if r is None or r < 0.5 else CONSISTENT if rp is not None and rp > 0 else NOT_SPECIFIC
    return ClaimVerdict("V2-c", "alignment and harmfulness rise together (Spearman r)", "0.958", v, ALIGNMENT,
                        "Spearman r", {"r": r, "step controlled": rp}, "", ("", r, 0.958, 0.0))


@claim("V2-d", INTERVENTIONS)
def opposing_lowers_both(m: Mapping[str, dict]) -> ClaimVerdict:
    """The weaker of block's alignment verdict (V1-d) and its harmfulness verdict (V1-e)."""
    v_al, v_h = block_lowers_alignment(m).verdict, block_lowers_harmfulness(m).verdict
    return ClaimVerdict("V2-d", "opposing positive motion lowers alignment and harmfulness", "all settings",
                        weaker(v_al, v_h), INTERVENTIONS, "final alignment and harmfulness",
                        {"block: alignment": v_al, "harmfulness": v_h})


@claim("V2-e", INTERVENTIONS)
def push_raises_both(m: Mapping[str, dict]) -> ClaimVerdict:
    """Push along v_rev minus baseline: alignment and harmfulness intervals above zero, and harm
    above push along a random direction at matched strength; the weaker of the two. Not testable
    where push was not run."""
    iv = m[INTERVENTIONS]
    psh = arm_of(iv, "push")
    if psh is None:
        return ClaimVerdict("V2-e", "reinforcing the motion raises both", "all settings", NOT_TESTABLE,
                            INTERVENTIONS, "final alignment and harmfulness", {"push": "not run"})
    p_, sp = iv["arms"][psh], iv["specificity"][psh]
    va = verdict(p_["vs_baseline"]["final_alignment"], +1, None, iv["margin"])
    return ClaimVerdict("V2-e", "reinforcing the motion raises both", "all settings", weaker(va, sp["verdict"]),
                        INTERVENTIONS, "final alignment and harmfulness",
                        {"Δ alignment": p_["vs_baseline"]["final_alignment"], "Δ harmfulness": sp["effect"]}, _nx(p_))


@claim("V2-f", INTERVENTIONS)
def ordering_across_models(m: Mapping[str, dict]) -> ClaimVerdict:
    """Not testable here: the claim is about every model and scale (3B-14B); the organism's
    ordering block < baseline < push is reported beside."""
    iv = m[INTERVENTIONS]
    blk, psh = arm_of(iv, "block"), arm_of(iv, "push")
    A, order = iv["arms"], {}
    if blk is not None and psh is not None:
        base = A["baseline"]["outcome"]
        for meas in ("final_alignment", "harmfulness"):
            ok = A[blk]["outcome"][meas]["mean"] < base[meas]["mean"] < A[psh]["outcome"][meas]["mean"]
            order[f"organism, {meas.replace('_', ' ')}"] = "yes" if ok else "no"
    return ClaimVerdict("V2-f", "mean ordering block < baseline < push", "every model and scale", NOT_TESTABLE,
                        INTERVENTIONS, "ordering of the means", order or {"organism": "not run"})


@claim("V2-g", INTERVENTIONS)
def rehearsal_cuts_reversion(m: Mapping[str, dict]) -> ClaimVerdict:
    """Rehearsal minus baseline, cumulative reversion (area above theta_S's level, clipped at
    zero): interval below zero -> consistent; above, or within the margin -> not reproduced; else
    inconclusive."""
    iv = m[INTERVENTIONS]
    red, rel = iv["rehearsal"]["cumulative_reversion"], iv.get("rehearsal_relative")
    v = INCONCLUSIVE if red is None else {"there": CONSISTENT, "wrong": NOT_REPRODUCED, "null": NOT_REPRODUCED,
                                          "wide": INCONCLUSIVE}[side(red, -1, iv["margin"])]
    ev = {"Δ": red, **({"reduction": f"{-rel:.0%}"} if rel is not None else {})}
    return ClaimVerdict("V2-g", "safety rehearsal (no v_rev) cuts cumulative reversion", "≈ 30%", v, INTERVENTIONS,
                        "cumulative reversion", ev, _nx(iv["arms"]["rehearsal"]),
                        ("", -rel if rel is not None else None, 0.30, 0.0))


# --------------------------------------------------------------------------- the hypothesis's alternatives


def _which_past(m: Mapping[str, dict], rid: str, key: str, text: str) -> ClaimVerdict:
    wp = m[WHICH_PAST]
    wn = wp.get("n") or {}
    n = f"{wn.get('seeds', '?')} seeds, history 0" if isinstance(wn, dict) else ""
    return ClaimVerdict(rid, text, "the paper's reading", _alt(wp, key), WHICH_PAST, key.replace("_", "-"),
                        {"\"Which past?\"": (wp.get(key) or {}).get("verdict", "not run")}, n)


@claim("H-1", WHICH_PAST)
def own_witness(m: Mapping[str, dict]) -> ClaimVerdict:
    """"Which past?", witness crossover in activations: own -> consistent, common -> not specific,
    unresolved -> inconclusive, away -> not reproduced; not measured -> not testable here."""
    return _which_past(m, "H-1", "witness", "the drift returns toward the model's own witness, not any helpful past")


@claim("H-2", WHICH_PAST)
def not_task_generalisation(m: Mapping[str, dict]) -> ClaimVerdict:
    """"Which past?", no-witness lineage: separated -> consistent, not separated -> not specific,
    no reversion -> not reproduced; not measured -> not testable here."""
    return _which_past(m, "H-2", "no_witness", "reversion is not the task generalising to harmful requests")


@claim("H-3", WHICH_PAST)
def dose_of_helpful_phase(m: Mapping[str, dict]) -> ClaimVerdict:
    """"Which past?", dose of the helpful phase: grows -> consistent, flat -> inconclusive,
    shrinks -> not reproduced; not measured -> not testable here."""
    return _which_past(m, "H-3", "dose", "the larger the early helpful phase, the more reversion")


# --------------------------------------------------------------------------- the results read


def _stage(doc: dict, name: str):
    return (doc.get("stages") or {}).get(name)


def check_consistent(docs: Mapping[str, dict]) -> None:
    """The chapters' numbers come from the same stages: the same world everywhere, the same
    subject (the organism's history, or the same checkpoints and input files: the subject
    stage's identity), the same v_rev estimate and layer in the chapters that read history 0's
    (v_rev estimation, Alignment, Null test, Interventions). Code
    edits that change no stage (a plot, the prose) leave these identities as they were.
    ``docs``: chapter stem -> its whole ``metrics.json``."""
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
    with_estimate = [k for k in (ESTIMATION, ALIGNMENT, NULL_TEST, INTERVENTIONS) if k in docs]
    estimates = {k: _stage(docs[k], "estimate") for k in with_estimate}
    if len(set(estimates.values())) > 1:
        raise ValueError(f"chapters {', '.join(with_estimate)} used different v_rev estimates {estimates}; "
                         "the claims would mix them")
    layers = {k: docs[k]["metrics"]["layer"] for k in with_estimate}
    if len(set(layers.values())) > 1:
        raise ValueError(f"chapters {', '.join(with_estimate)} used different layers {layers}; the claims would "
                         "mix them")
