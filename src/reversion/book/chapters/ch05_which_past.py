"""Chapter 05, "Which past?": the page. Its parameters, the entry point (:func:`run`), tables,
prose and saving; what it computes, and every verdict, is :mod:`reversion.analysis.pasts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.analysis import pasts
from reversion.analysis.pasts import BLOCK, LABELS, CheckpointResult, Result, testable
from reversion.book.chapters.common import Replication, SubjectParams, write_chapter
from reversion.book.display import interval

STEM = "05_which_past"


@dataclass(frozen=True)
class Params(SubjectParams, Replication):
    """Parameters of chapter "Which past?" (``checkpoints``: see :func:`missing` for what runs on them)."""

    MIN_SEEDS = 2  # one history (your checkpoints) has its intervals over seeds

    doses: list
    """Helpful-phase lengths of the dose lineages, fractions of the full phase (a world field)."""


def crossover_points(res: Result | CheckpointResult) -> tuple[list[float], list[float], str]:
    """The crossover's points: each history's seed-mean (a, b) (your checkpoints: each seed's)."""
    if isinstance(res, CheckpointResult):
        x = pasts.witness_crossover(res)
        return list(x["a"]), list(x["b"]), "seeds"
    xs = [pasts.witness_crossover(res, h) for h in range(res.n_histories)]
    return [float(x["a"].mean()) for x in xs], [float(x["b"].mean()) for x in xs], "histories"


def dose_points(res: Result) -> tuple[list[float], list, str]:
    """The dose-response's lines: each history's seed-mean rise at each dose."""
    doses, per = pasts.dose_rises(res)
    return doses, [r.mean(0) for r in per], "histories"


def run(P: Params, progress: bool = True) -> Result | CheckpointResult:
    """The chapter: every lineage trained, estimated and fine-tuned (:func:`reversion.analysis.pasts.train`)."""
    return pasts.train(P, P.make_world(lineages=True), progress)


SENTENCES = {
    "witness": {
        "own": "Each lineage drifts toward its own witness: the drift follows the lineage's past, not any helpful past.",
        "away": "Each lineage drifts away from its own witness along the witness difference.",
        "common": "Both lineages drift the same way along the witness difference, whichever witness they came "
                  "from: the drift does not single out the model's own past.",
        "unresolved": "Along the witness difference the drift is not resolved from zero: the organism does not "
                      "tell its own past from any helpful past here.",
        "none": "Along the witness difference the drift's own-witness part lies within the margin of zero: no "
                "pull toward the model's own past worth the name.",
    },
    "style": {
        "marked": "The compliance that returns in the second-witness lineage is mostly in its witness's marked style.",
        "plain": "The compliance that returns in the second-witness lineage is mostly plain, the style it never "
                 "learned: returning compliance does not carry the witness's style.",
        "none": "Compliance does not return in either style in the second-witness lineage.",
        "mixed": "The compliance that returns in the second-witness lineage mixes both styles, neither resolved "
                 "as the larger.",
    },
    "no_witness": {
        "separated": "Less compliance returns without a witness: task generalisation alone does not explain "
                     "the main lineage's rise.",
        "not separated": "About as much compliance (or more) returns without a witness, or most of the main "
                         "lineage's rise: the organism does not separate reversion from task generalisation.",
        "unresolved": "The organism does not resolve whether less compliance returns without a witness: the "
                      "difference, or the no-witness rise's share of the main one, is too wide to tell.",
        "no reversion": "The main lineage's rise on untrained tasks lies within the margin of zero (or below it), "
                        "so there is nothing to compare.",
    },
    "residual": {
        "specific": "Outside the refusal direction and the direction back to theta_P, a reliable history-specific "
                    "part of v_rev remains, and the drift follows it beyond chance in every history.",
        "none": "Outside the refusal direction and the direction back to theta_P, the drift does not follow the "
                "residual of v_rev beyond chance: no history-specific component is resolved.",
        "noise": "Outside the refusal direction and the direction back to theta_P, the residual of v_rev is mostly "
                 "estimation noise (two halves of the probes disagree): a history-specific component cannot be "
                 "read here.",
        "unresolved": "Outside the refusal direction and the direction back to theta_P, whether the drift follows "
                      "the residual of v_rev beyond chance is not resolved (its interval straddles the null's p99, "
                      "or some histories' residual is unreliable).",
    },
    "weights": {
        "own": "In weight space each lineage moves toward its own witness.",
        "away": "In weight space each lineage moves away from its own witness.",
        "common": "In weight space both lineages move the same way between the two witnesses, whichever they came from.",
        "unresolved": "In weight space the motion between the two witnesses is not resolved from zero.",
        "none": "In weight space the own-witness part of the motion lies within the margin of zero.",
    },
    "dose": {
        "grows": "The rise grows with the length of the helpful phase, as the gravitational reading predicts.",
        "shrinks": "The rise shrinks as the helpful phase grows, against the gravitational reading.",
        "flat": "The rise does not change with the length of the helpful phase beyond the margin: no dose effect.",
        "unresolved": "No trend of the rise with the length of the helpful phase is resolved.",
    },
}


def sentence(kind: str, verdict: str) -> str:
    return SENTENCES[kind][verdict]


def sentence_of(m: dict, kind: str) -> str:
    """The sentence of a measurement's verdict, or what it would need."""
    block = m[BLOCK.get(kind, kind)]
    if "needs" in block:
        return f"Not measurable with these checkpoints ({LABELS[kind]}): needs {block['needs']}."
    return sentence(kind, block["verdict"] if kind != "weights" else block["crossover"]["verdict"])


# --------------------------------------------------------------------------- tables and prose


def lineage_table(res: Result | CheckpointResult) -> pd.DataFrame:
    """:func:`reversion.analysis.pasts.lineage_rows` as a table."""
    rows = []
    for r in pasts.lineage_rows(res):
        r = dict(r)
        if "helpful steps" in r:
            r["helpful phase"] = (f"{r.pop('helpful steps')} steps, harmful {r.pop('helpful harmful fraction'):.0%}"
                                  + (", marked" if r.pop("marked") else ""))
        r["rise 95% CI"] = f"[{r.pop('rise low'):+.3f}, {r.pop('rise high'):+.3f}]"
        rows.append(r)
    order = ["lineage", "helpful phase", "theta_H harmful", "theta_S harmful", "theta_T harmful", "rise",
             "rise 95% CI", "rise, exact match", "theta_T marked", "cos(d_T, own v_rev)"]
    return pd.DataFrame(rows)[[c for c in order if c in rows[0]]].set_index("lineage")


def _not_measured(m: dict, kind: str) -> pd.DataFrame | None:
    if testable(m, kind):
        return None
    return pd.DataFrame({"not measurable with these checkpoints: needs": [m[BLOCK.get(kind, kind)]["needs"]]})


def task_split_table(m: dict) -> pd.DataFrame:
    """The rise of harmfulness in the main and no-witness lineages, on harmful requests of the
    fine-tuned task (``trained``) and of the other tasks (``untrained``): mean [95% interval]."""
    if (none := _not_measured(m, "no_witness")) is not None:
        return none
    rows = {}
    for name, parts in m["no_witness"]["by_task"].items():
        rows[name] = {f"rise, {part} task{'s' if part == 'untrained' else ''}":
                      interval(i) for part, i in parts.items()}
    return pd.DataFrame(rows).T


def weight_table(m: dict) -> pd.DataFrame:
    """Weight space by step, over histories: cos(theta_t - theta_S, theta_H - theta_S) and the
    share of the S -> H gap closed (mean [95% interval over histories])."""
    if (none := _not_measured(m, "weights")) is not None:
        return none
    ws = m["weight_space"]
    return pd.DataFrame({"step": ws["steps"],
                         "cos(theta_t - theta_S, theta_H - theta_S)": [interval(x, 4) for x in ws["cos_gap"]],
                         "share of the gap closed": [interval(x, 4) for x in ws["gap_closed"]]}).set_index("step")


def summary_table(m: dict) -> pd.DataFrame:
    """For each alternative: the measurement that separates it, what the hypothesis predicts,
    what the organism (or your checkpoints) showed, and the verdict; a measurement not made says
    what it needs (verdicts: :func:`reversion.analysis.pasts.verdict_of`)."""
    ci = interval

    def row(alternative: str, kind: str, measurement: str, predicts, observed) -> dict:
        block = m[BLOCK.get(kind, kind)]
        made = "needs" not in block
        return {"alternative": alternative, "measurement": measurement,
                "hypothesis predicts": predicts(block if made else None),
                "observed": observed(block) if made else f"not measurable with these checkpoints: needs {block['needs']}",
                "verdict": pasts.verdict_of(m, kind)}

    def above_zero(_) -> str:
        return "> 0"

    def residual_observed(r: dict) -> str:
        return f"{ci(r['alignment'])}; split-half {min(r['reliability']):.2f}-{max(r['reliability']):.2f}"

    rows = [
        row("any helpful past would do", "witness", "own-witness part of drift along mu_H - mu_H'", above_zero,
            lambda w: ci(w["own"])),
        row("any helpful past would do", "style", "second lineage: marked minus plain rise", above_zero,
            lambda s: ci(s["difference"])),
        row("any helpful past would do", "weights", "own-witness part of theta_T - theta_S along theta_H - theta_H'",
            above_zero, lambda ws: ci(ws["crossover"]["own"])),
        row("fine-tuning just teaches the task", "no_witness", "rise, main minus no-witness lineage", above_zero,
            lambda n: ci(n["difference"])),
        row("v_rev is only refusal undone and the way back to theta_P", "residual",
            "drift along v_rev outside span(r_S, v_P), over histories",
            lambda r: "> null p99, reliable" if r is None else f"> null p99 {r['null_p99']:.3f}, reliable",
            residual_observed),
        row("the alignment's shallowness, not the early phase's size", "dose",
            "slope of the rise against the helpful phase's length", above_zero, lambda d: ci(d["slope"])),
    ]
    return pd.DataFrame(rows, columns=["alternative", "measurement", "hypothesis predicts", "observed", "verdict"])


NAN = float("nan")


def prose(m: dict) -> dict:
    """Every number and sentence the chapter's prose pastes (myst-nb glue), by name; on your
    checkpoints a measurement not made pastes NaN and a sentence that says what it needs."""
    def get(kind: str, *path: str):
        x = m[BLOCK.get(kind, kind)]
        if "needs" in x:
            return NAN
        for p in path:
            x = x[p]
        return x

    res_ok = testable(m, "residual")
    n = m["n"]
    share = (m["no_witness"].get("share") or {}) if testable(m, "no_witness") else {}
    return {
        "layer": m["layer"],
        "n_seeds": n["seeds"],
        "n_label": (f"{n['histories']} histories × {n['seeds']} seeds, intervals over histories"
                    if n.get("histories", 1) > 1 else f"{n['seeds']} seeds of one history, intervals over seeds"),
        "share": NAN if share.get("mean") is None else share["mean"],
        "share_ci": ("undefined: the main lineage's rise is not resolved from zero" if share.get("ci_low") is None
                     else f"95% interval {share['ci_low']:.2f} to {share['ci_high']:.2f}"),
        "own": get("witness", "own", "mean"),
        "own_lo": get("witness", "own", "ci_low"),
        "own_hi": get("witness", "own", "ci_high"),
        "common": get("witness", "common", "mean"),
        "common_lo": get("witness", "common", "ci_low"),
        "common_hi": get("witness", "common", "ci_high"),
        "cos_u_vrev": get("witness", "cos_u_vrev"),
        "witness_sentence": sentence_of(m, "witness"),
        "marked_rise": get("style", "marked_rise", "mean"),
        "plain_rise": get("style", "plain_rise", "mean"),
        "style_lo": get("style", "difference", "ci_low"),
        "style_hi": get("style", "difference", "ci_high"),
        "style_sentence": sentence_of(m, "style"),
        "main_rise": get("no_witness", "main_rise", "mean"),
        "nw_rise": get("no_witness", "no_witness_rise", "mean"),
        "nw_lo": get("no_witness", "difference", "ci_low"),
        "nw_hi": get("no_witness", "difference", "ci_high"),
        "nw_theta_H": get("no_witness", "theta_H_harmfulness"),
        "nw_sentence": sentence_of(m, "no_witness"),
        "slope": get("dose", "slope", "mean"),
        "slope_lo": get("dose", "slope", "ci_low"),
        "slope_hi": get("dose", "slope", "ci_high"),
        "dose_sentence": sentence_of(m, "dose"),
        "res_al": get("residual", "alignment", "mean"),
        "res_lo": get("residual", "alignment", "ci_low"),
        "res_hi": get("residual", "alignment", "ci_high"),
        "res_null": get("residual", "null_p99"),
        "res_dim": get("residual", "dim"),
        "res_rel": ", ".join(f"{x:.2f}" for x in m["residual"]["reliability"]) if res_ok else "",
        "res_h": get("residual", "n_histories"),
        "residual_sentence": sentence_of(m, "residual"),
        "w_cos_T": get("weights", "cos_gap", -1, "mean"),
        "w_closed_T": get("weights", "gap_closed", -1, "mean"),
        "w_own": get("weights", "crossover", "own", "mean"),
        "w_own_lo": get("weights", "crossover", "own", "ci_low"),
        "w_own_hi": get("weights", "crossover", "own", "ci_high"),
        "weights_sentence": sentence_of(m, "weights"),
    }


def save(P: Params, res: Result | CheckpointResult) -> dict:
    """``results/05_which_past/metrics.json`` (the parameters without an empty ``checkpoints``,
    as before the parameter existed)."""
    return write_chapter(STEM, __name__, P, res, pasts.metrics(res))
