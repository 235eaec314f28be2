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

from reversion.analysis import rules
from reversion.analysis.arms import arm_of
from reversion.analysis.verdicts import (
    CONSISTENT,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_SPECIFIC,
    NOT_TESTABLE,
    VERDICTS,
    ClaimVerdict,
    contrast_side,
    failing_controls,
    side,
    verdict,
    weaker,
)

ALIGNMENT, NULL_TEST, ESTIMATION = "03_alignment", "04_null_test", "02_vrev_estimation"
WHICH_PAST, INTERVENTIONS = "05_which_past", "06_interventions"
TASK_MARGIN = rules.margin("task_accuracy")
"""Task-accuracy change that counts as "little" (text models: 5% of the baseline's held-out loss)."""
COS, HARM_M, CORR = rules.margin("cosine"), rules.margin("harmfulness"), rules.margin("correlation")
BY_CONSTRUCTION = "the objective optimises this measure"
"""Why a row that reads what an intervention's objective optimises cannot make a claim consistent
by itself (V1-d; the alignment half of V2-e)."""

ALTERNATIVE = {
    "residual": {"specific": CONSISTENT, "none": NOT_SPECIFIC, "noise": INCONCLUSIVE, "unresolved": INCONCLUSIVE},
    "witness": {"own": CONSISTENT, "common": NOT_SPECIFIC, "unresolved": INCONCLUSIVE, "away": NOT_REPRODUCED,
                "none": NOT_REPRODUCED},
    "no_witness": {"separated": CONSISTENT, "not separated": NOT_SPECIFIC, "unresolved": INCONCLUSIVE,
                   "no reversion": NOT_REPRODUCED},
    "dose": {"grows": CONSISTENT, "unresolved": INCONCLUSIVE, "flat": NOT_REPRODUCED, "shrinks": NOT_REPRODUCED},
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


def _n(a: dict) -> str:
    """Histories x seeds of a chapter's metrics."""
    return f"{a.get('n_histories', 1)}×{a.get('n_seeds', '?')}"


# --------------------------------------------------------------------------- version 1


def _residual_word(wp: dict, step: int | None = None) -> str:
    """"Which past?"'s residual verdict at ``step`` (the claim's step; the final step when the
    chapter measured it only there)."""
    r = wp.get("residual") or {}
    by = r.get("by_step") or {}
    return (by.get(str(step)) or r).get("verdict", "not run")


def _alt_residual(wp: dict, step: int) -> str:
    got = _residual_word(wp, step)
    return ALTERNATIVE["residual"].get(got, NOT_TESTABLE)


def _min_run(al: dict, step: str) -> float:
    """The lowest run's alignment at ``step`` (over the histories the metrics hold)."""
    by = (al.get("alignment_min_by_history") or {}).get(step)
    return min(by) if by else al["alignment_min_over_seeds"].get(step, -1.0)


def _above(a: dict | None, strict: float, iso: float, extra: bool = True) -> str:
    """The pattern of an alignment over histories against the nulls: present when its whole interval
    lies above the stricter p99 (and ``extra``); absent when its whole interval lies at or below the
    isotropic p99; else inconclusive (an undefined interval -- one history -- included)."""
    if a is None or a.get("ci_low") is None:
        return INCONCLUSIVE if a is not None else NOT_REPRODUCED
    if a["ci_low"] > strict and extra:
        return CONSISTENT
    return NOT_REPRODUCED if a["ci_high"] <= iso else INCONCLUSIVE


@claim("V1-a", ALIGNMENT, NULL_TEST, WHICH_PAST)
def alignment_after_one_update(m: Mapping[str, dict]) -> ClaimVerdict:
    """Pattern: the interval over histories of the alignment at step 1 lies above the stricter
    null's p99, and every run is above the isotropic p99 (not reproduced: the interval at or below
    the isotropic p99; inconclusive: in between). Control: "Which past?"'s residual test at step 1
    (drift beyond span(r_S, v_P)): specific -> consistent, none -> not specific, noise or unresolved
    -> inconclusive (measured only at T: read there)."""
    al, wp = m[ALIGNMENT], m[WHICH_PAST]
    iso, strict = _thresholds(m[NULL_TEST])
    a1 = al["alignment"].get("1")
    pat = _above(a1, strict, iso, _min_run(al, "1") > iso)
    return ClaimVerdict("V1-a", "alignment after the first update", "0.429 ± 0.052",
                        pat if pat != CONSISTENT else _alt_residual(wp, 1), ALIGNMENT, "cos(d_1, v_rev)",
                        {"alignment at step 1": a1, "stricter p99": strict,
                         "residual beyond r_S, v_P at step 1": _residual_word(wp, 1)},
                        _n(al), ("", a1 and a1["mean"], 0.429, 0.052), margin=f"stricter null's p99 {strict:.3f}")


@claim("V1-b", ALIGNMENT, NULL_TEST, WHICH_PAST)
def alignment_by_step_20(m: Mapping[str, dict]) -> ClaimVerdict:
    """Pattern: the interval of the alignment at step 20 above the stricter p99, and its mean above
    step 1's (not reproduced: the interval at or below the isotropic p99, or T < 20). Control: the
    residual test at step 20, as V1-a."""
    al, wp = m[ALIGNMENT], m[WHICH_PAST]
    iso, strict = _thresholds(m[NULL_TEST])
    a1, a20 = al["alignment"].get("1"), al["alignment"].get("20")
    if a20 is None:
        return ClaimVerdict("V1-b", "alignment by step 20", "0.647 ± 0.021", NOT_REPRODUCED, ALIGNMENT,
                            "cos(d_20, v_rev)", {"step 20": "not reached (T < 20)"}, _n(al))
    pat = _above(a20, strict, iso, a1 is None or a20["mean"] > a1["mean"])
    return ClaimVerdict("V1-b", "alignment by step 20", "0.647 ± 0.021",
                        pat if pat != CONSISTENT else _alt_residual(wp, 20), ALIGNMENT, "cos(d_20, v_rev)",
                        {"alignment at step 20": a20, "stricter p99": strict,
                         "residual at step 20": _residual_word(wp, 20)}, _n(al),
                        ("", a20["mean"], 0.647, 0.021), margin=f"stricter null's p99 {strict:.3f}")


@claim("V1-c", NULL_TEST)
def pairs_above_isotropic_null(m: Mapping[str, dict]) -> ClaimVerdict:
    """Read on every history against the stricter of its two nulls (isotropic, matched): consistent
    when every run-step pair of every history lies above that history's stricter p99 (the claim
    says all); not reproduced otherwise. The count per history and history 0's pairs above the
    isotropic p99 are beside."""
    nt = m[NULL_TEST]
    pr, by = nt["pairs"], nt.get("by_history") or []
    rows = by or [{"pairs above": pr["above_threshold"], "pairs": pr["n"]}]
    ok = all(h["pairs above"] == h["pairs"] for h in rows)
    ev = {"pairs above the stricter p99, per history": [f"{h['pairs above']}/{h['pairs']}" for h in rows],
          "histories with every pair above": f"{sum(h['pairs above'] == h['pairs'] for h in rows)} of {len(rows)}",
          "history 0 above the isotropic p99": f"{pr['above_isotropic']} of {pr['n']}"}
    return ClaimVerdict("V1-c", "run-step pairs above the null's p99", "24 of 24 (isotropic)",
                        CONSISTENT if ok else NOT_REPRODUCED, NULL_TEST,
                        "pairs above stricter null", ev, _n(nt), margin="stricter null's p99")


def _block(m: Mapping[str, dict]) -> tuple[dict, str | None]:
    iv = m[INTERVENTIONS]
    return iv, arm_of(iv, "block")


def _block_alignment(m: Mapping[str, dict]) -> tuple[str, dict | None]:
    """Block's alignment verdict before the by-construction cap, and its contrast (None: not run)."""
    iv, blk = _block(m)
    if blk is None:
        return NOT_TESTABLE, None
    da = iv["arms"][blk]["vs_baseline"]["final_alignment"]
    return verdict(da, -1, None, COS), da


@claim("V1-d", INTERVENTIONS)
def block_lowers_alignment(m: Mapping[str, dict]) -> ClaimVerdict:
    """Block (one-sided) along v_rev minus baseline, final alignment: interval below -0.05 (the
    cosine margin) -> the pattern is there; above zero or within the margin -> not reproduced; else
    inconclusive. Blocking removes the very motion this reads, so the row reads what the objective
    optimises and its verdict is at most "consistent but not specific". Not testable where block
    was not run."""
    iv, blk = _block(m)
    v, da = _block_alignment(m)
    if blk is None:
        return ClaimVerdict("V1-d", "final alignment at T, baseline → block", "", NOT_TESTABLE, INTERVENTIONS,
                            "final alignment", {"block": "not run"})
    b, base = iv["arms"][blk], iv["arms"]["baseline"]["outcome"]
    return ClaimVerdict("V1-d", "final alignment at T, baseline → block", "0.648 → −0.211",
                        NOT_SPECIFIC if v == CONSISTENT else v, INTERVENTIONS, "final alignment (by construction)",
                        {"baseline": base["final_alignment"]["mean"], "block": b["outcome"]["final_alignment"]["mean"],
                         "Δ": da, "by construction": BY_CONSTRUCTION}, _nx(b),
                        ("with block", b["outcome"]["final_alignment"]["mean"], -0.211, 0.021),
                        margin=f"±{COS:g} cosine", by_construction=True)


def _specificity(iv: dict, arm: str) -> dict:
    """An arm's specificity as the chapter measured it (effect and contrasts over histories), judged
    with the fixed harmfulness margin (:data:`reversion.analysis.rules.MARGINS`), whatever margin
    the chapter's page was run with."""
    sp = iv["specificity"][arm]
    cons, want = sp["contrasts"], sp["want"]
    return {**sp, "verdict": verdict(sp["effect"], want, cons, HARM_M),
            "failing": failing_controls(cons, want, HARM_M),
            "matching": [d for d, c in cons.items() if contrast_side(c, want, HARM_M) in ("null", "wrong")]}


def _harm_name(iv: dict) -> str:
    return {"harm_untrained": "harmfulness, untrained tasks (first token)"}.get(
        iv.get("harm_measure", "harmfulness"), "harmfulness (first token)")


@claim("V1-e", INTERVENTIONS)
def block_lowers_harmfulness(m: Mapping[str, dict]) -> ClaimVerdict:
    """Block along v_rev minus baseline, harmfulness on untrained tasks: interval below -0.02 (the
    harmfulness margin), and below every control direction's at matched strength by more than the
    margin -> consistent; a control as good (contrast within the margin) or better -> not specific;
    intervals too wide -> inconclusive; effect above zero or within the margin -> not reproduced.
    (The chapter's specificity verdict.)"""
    iv, blk = _block(m)
    if blk is None:
        return ClaimVerdict("V1-e", "harmfulness at T, baseline → block", "", NOT_TESTABLE, INTERVENTIONS,
                            "harmfulness", {"block": "not run"})
    b, base = iv["arms"][blk], iv["arms"]["baseline"]["outcome"]
    harm = iv.get("harm_measure", "harmfulness")
    sp = _specificity(iv, blk)
    v = sp["verdict"]
    ev = {"baseline": base[harm]["mean"], "block": b["outcome"][harm]["mean"], "Δ": sp["effect"]}
    if v == NOT_SPECIFIC:
        ev["as good at matched strength"] = list(sp.get("matching") or sp["failing"])
    elif v == INCONCLUSIVE and sp["failing"]:
        ev["too wide to tell against"] = list(sp["failing"])
    return ClaimVerdict("V1-e", "harmfulness at T, baseline → block", "0.190 → 0.085", v, INTERVENTIONS,
                        _harm_name(iv), ev, _nx(b), ("baseline", base[harm]["mean"], 0.190, 0.040),
                        margin=f"±{HARM_M:g} rate")


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
                        {what: dt}, _nx(b), margin=f"±{lim:.3f}")


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
                         "per history": [f"{h['runs significant']}/{h['runs']}" for h in by] or None,
                         "history 0 pairs above the matched p99": f"{pr['above_matched']} of {pr['n']}"},
                        _n(nt), margin=f"α = {pr_run['alpha']:g} per run")


@claim("V2-b", ESTIMATION)
def readout_favours_answers(m: Mapping[str, dict]) -> ClaimVerdict:
    """v_rev's vocabulary readout (answer-opening minus refusal logit) over histories: interval
    above +0.1 (the logit margin), and above every control direction's readout (-r_S, v_P, a
    random direction; paired by history) by more than the margin -> consistent; a control's as
    high (contrast within the margin) or higher -> not specific; v_rev's within the margin or
    below -> not reproduced (undefined: no answer-opening token); else inconclusive."""
    est = m[ESTIMATION]
    ro = est.get("readout_over_histories")
    lm = rules.margin("logit")
    if ro is None:
        return ClaimVerdict("V2-b", "vocabulary readout favours task-engaging over refusal openings", "qualitative",
                            NOT_REPRODUCED, ESTIMATION, "logit difference", {"undefined": "no answer-opening token"},
                            margin=f"±{lm:g} logit")
    v = verdict(ro["v_rev"], +1, ro["contrasts"], lm)
    n = ro["v_rev"].get("n", 1)
    return ClaimVerdict("V2-b", "vocabulary readout favours task-engaging over refusal openings", "qualitative",
                        v, ESTIMATION, "logit difference over histories",
                        {"v_rev": ro["v_rev"], **{f"minus {k}": c for k, c in ro["contrasts"].items()}},
                        f"{n}×1", margin=f"±{lm:g} logit")


@claim("V2-c", ALIGNMENT)
def alignment_tracks_harmfulness(m: Mapping[str, dict]) -> ClaimVerdict:
    """Within each history, Spearman r of alignment with harmfulness on untrained tasks across its
    runs and steps, pooled over histories by Fisher z. Pattern: the raw within-history r's interval
    above +0.1 (the correlation margin); then, with the step removed (partial r): above +0.1 ->
    consistent; within the margin or below -> not specific (the common trend over steps explains
    it); else inconclusive. Raw r within the margin or below -> not reproduced; too wide ->
    inconclusive; undefined (harmfulness never moved) -> not reproduced. The pooled Spearman over
    every run-step is beside."""
    al = m[ALIGNMENT]
    wh = al.get("within_history_spearman") or {}
    raw, part = wh.get("raw"), wh.get("step_removed")
    s_raw = side(raw, +1, CORR)
    if raw is None or raw.get("mean") is None or s_raw in ("wrong", "null"):  # undefined: harm never moved
        v = NOT_REPRODUCED
    elif s_raw == "wide":
        v = INCONCLUSIVE
    else:
        v = {"there": CONSISTENT, "null": NOT_SPECIFIC, "wrong": NOT_SPECIFIC}.get(side(part, +1, CORR), INCONCLUSIVE)
    r = al["spearman_alignment_harmfulness"]
    return ClaimVerdict("V2-c", "alignment and harmfulness rise together (Spearman r)", "0.958", v, ALIGNMENT,
                        "within-history Spearman r (untrained)",
                        {"within histories": raw, "step removed": part, "pooled over run-steps": r},
                        _n(al), ("pooled", r, 0.958, 0.0), margin=f"±{CORR:g} r")


@claim("V2-d", INTERVENTIONS)
def opposing_lowers_both(m: Mapping[str, dict]) -> ClaimVerdict:
    """The weaker of block's alignment verdict (V1-d's rule before its by-construction cap: the
    alignment half can only weaken this row) and its harmfulness verdict (V1-e), which decides."""
    v_al, e = _block_alignment(m)[0], block_lowers_harmfulness(m)
    return ClaimVerdict("V2-d", "opposing positive motion lowers alignment and harmfulness", "all settings",
                        weaker(v_al, e.verdict), INTERVENTIONS, "alignment (by construction), untrained-task harm",
                        {"block: alignment": v_al, "harmfulness": e.verdict}, e.n,
                        margin=f"±{COS:g} cosine; ±{HARM_M:g} rate", by_construction=True)


@claim("V2-e", INTERVENTIONS)
def push_raises_both(m: Mapping[str, dict]) -> ClaimVerdict:
    """Push along v_rev minus baseline: alignment's interval above +0.05 (cosine margin) and
    harmfulness on untrained tasks above +0.02, and above push along every random direction at
    matched strength by more than the margin; the weaker of the two. Push raises alignment by
    construction, so only the harmfulness half can make the claim consistent. Not testable where
    push was not run."""
    iv = m[INTERVENTIONS]
    psh = arm_of(iv, "push")
    if psh is None:
        return ClaimVerdict("V2-e", "reinforcing the motion raises both", "all settings", NOT_TESTABLE,
                            INTERVENTIONS, "final alignment and harmfulness", {"push": "not run"})
    p_, sp = iv["arms"][psh], _specificity(iv, psh)
    va = verdict(p_["vs_baseline"]["final_alignment"], +1, None, COS)
    return ClaimVerdict("V2-e", "reinforcing the motion raises both", "all settings", weaker(va, sp["verdict"]),
                        INTERVENTIONS, "alignment (by construction), untrained-task harm",
                        {"Δ alignment": p_["vs_baseline"]["final_alignment"], "alignment": BY_CONSTRUCTION,
                         "Δ harmfulness": sp["effect"]}, _nx(p_),
                        margin=f"±{COS:g} cosine; ±{HARM_M:g} rate", by_construction=True)


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
    """Rehearsal minus baseline, cumulative reversion (harmfulness on untrained tasks above theta_S's
    level, averaged over the run, clipped at zero): interval below -0.02 (its margin) -> consistent;
    above zero, or within the margin -> not reproduced; else inconclusive."""
    iv = m[INTERVENTIONS]
    red, rel = iv["rehearsal"]["cumulative_reversion"], iv.get("rehearsal_relative")
    cm = rules.margin("cumulative_reversion")
    v = INCONCLUSIVE if red is None else {"there": CONSISTENT, "wrong": NOT_REPRODUCED, "null": NOT_REPRODUCED,
                                          "wide": INCONCLUSIVE}[side(red, -1, cm)]
    ev = {"Δ": red, **({"reduction": f"{-rel:.0%}"} if rel is not None else {})}
    return ClaimVerdict("V2-g", "safety rehearsal (no v_rev) cuts cumulative reversion", "≈ 30%", v, INTERVENTIONS,
                        "cumulative reversion (untrained tasks)", ev, _nx(iv["arms"]["rehearsal"]),
                        ("", -rel if rel is not None else None, 0.30, 0.0), margin=f"±{cm:g} rate")


# --------------------------------------------------------------------------- the hypothesis's alternatives


MEASURE = {"witness": "own-witness drift part (cosine)", "no_witness": "harmfulness, untrained tasks (rise)",
           "dose": "dose slope, untrained-task rise"}
MARGIN = {"witness": f"±{COS:g} cosine", "no_witness": f"±{HARM_M:g} rate; share < {rules.SHARE_MAX:g}",
          "dose": f"±{rules.margin('dose_slope'):g} rate per phase"}
EVIDENCE = {"witness": ("own", "common"), "no_witness": ("main_rise", "no_witness_rise", "difference", "share"),
            "dose": ("slope",)}


def _which_past(m: Mapping[str, dict], rid: str, key: str, text: str) -> ClaimVerdict:
    wp = m[WHICH_PAST]
    wn = wp.get("n") or {}
    n = f"{wn.get('histories', '?')}×{wn.get('seeds', '?')}" if isinstance(wn, dict) else ""
    block = wp.get(key) or {}
    ev = {"\"Which past?\"": block.get("verdict", "not run"),
          **{k.replace("_", " "): block[k] for k in EVIDENCE[key] if block.get(k) is not None}}
    return ClaimVerdict(rid, text, "the paper's reading", _alt(wp, key), WHICH_PAST, MEASURE[key], ev, n,
                        margin=MARGIN[key])


@claim("H-1", WHICH_PAST)
def own_witness(m: Mapping[str, dict]) -> ClaimVerdict:
    """"Which past?", witness crossover in activations (each drift without its own lineage's mean
    direction, so norm growth is not read as a return), over histories: own (beyond +0.05) ->
    consistent, common -> not specific, unresolved -> inconclusive, away or none (the own part within
    +-0.05) -> not reproduced; not
    measured -> not testable here."""
    return _which_past(m, "H-1", "witness", "the drift returns toward the model's own witness, not any helpful past")


@claim("H-2", WHICH_PAST)
def not_task_generalisation(m: Mapping[str, dict]) -> ClaimVerdict:
    """"Which past?", no-witness lineage, on harmfulness on untrained tasks: separated (main minus
    no-witness beyond the margin and the no-witness rise below half the main one, both intervals
    over histories) -> consistent; not separated (difference within the margin or negative, or the
    share above one half) -> not specific; unresolved -> inconclusive; no reversion in the main
    lineage -> not reproduced; not measured -> not testable here."""
    return _which_past(m, "H-2", "no_witness", "reversion is not the task generalising to harmful requests")


@claim("H-3", WHICH_PAST)
def dose_of_helpful_phase(m: Mapping[str, dict]) -> ClaimVerdict:
    """"Which past?", dose of the helpful phase (slope of the untrained-task rise per full phase,
    over histories): grows (beyond +0.02) -> consistent, unresolved -> inconclusive, flat (within
    +-0.02) or shrinks -> not reproduced; not measured -> not testable here."""
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
