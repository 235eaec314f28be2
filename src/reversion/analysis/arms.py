"""What the Interventions chapter computes from its runs' outcomes: every arm against the
baseline, each objective along v_rev against the same objective along every control direction,
and the verdicts those contrasts give.

The unit of replication is the history: every comparison is paired (same history, same seed,
same benign data order), averaged over seeds within a history, and its 95% interval is over
histories (checkpoints: one history, the interval over seeds). The runs themselves, and the
reading of each run's outcomes, are :mod:`reversion.analysis.arm_runs`; everything here is a
pure function of the :class:`Outcomes` table (which the claims tests plant directly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reversion.analysis import verdicts
from reversion.analysis.verdicts import Effect
from reversion.core import stats

OBJECTIVES = ("block", "oppose")
"""The objectives run along every direction (push runs along v_rev only)."""
MEASURES = ("harmfulness", "exact_match", "harm_trained", "harm_untrained", "final_alignment",
            "task_accuracy", "task_loss", "over_refusal", "cumulative_reversion")
"""Outcomes of every run at T (those a subject does not measure are absent)."""
HARM = "harm_untrained"
"""The outcome the specificity verdicts read: first-token compliance on harmful requests of the
tasks fine-tuning never trains (:data:`reversion.subjects.organism.judge.HEADLINE`); a subject whose
judge does not split by task (your checkpoints) is read on its harmfulness (:func:`harm_key`)."""


def harm_key(res: "Outcomes") -> str:
    """:data:`HARM` where every run has it, else ``harmfulness``."""
    return HARM if all(HARM in row for row in res.tab.values()) else "harmfulness"
PAPER = {"final_alignment": {"baseline": 0.648, "block": -0.211},
         "harmfulness": {"baseline": 0.19, "block": 0.085}, "rehearsal_reduction": 0.30}
"""The paper's figures at T = 100."""


@dataclass(frozen=True)
class Arm:
    """One fine-tuning variant: an objective along a direction at a site and strength multiple."""
    objective: str
    """``baseline``, ``block``, ``oppose``, ``push``, ``projection`` or ``rehearsal``."""
    direction: str = ""
    site: str = ""
    multiple: float = 0.0

    @property
    def name(self) -> str:
        if self.objective in ("baseline", "rehearsal"):
            return self.objective
        if self.objective == "projection":
            return f"projection/{self.direction}/{self.site}"
        return f"{self.objective}/{self.direction}/{self.site}/{self.multiple:g}"


BASELINE = Arm("baseline")
REHEARSAL = Arm("rehearsal")


@dataclass
class Outcomes:
    """Every run's outcomes at T and what the comparisons need."""
    tab: dict[tuple[Arm, int, int], dict[str, float]]
    """(arm, history, seed) -> :func:`reversion.analysis.arm_runs.outcomes`."""
    arms: list[Arm]
    main: list[Arm]
    strengths: dict[tuple[Arm, int], float]
    n_histories: int
    seeds: list[int]
    batch_size: int


@dataclass(frozen=True)
class ArmSummary:
    """An arm's outcomes at T and its paired differences to the baseline, by measure."""
    objective: str
    direction: str
    site: str
    multiple: float
    strength: list
    """The strength its multiple gives, per history."""
    n_histories: int
    n_seeds: int
    outcome: dict[str, Effect]
    vs_baseline: dict[str, Effect | None]


@dataclass(frozen=True)
class Specificity:
    """An objective along v_rev against the same objective along every control direction."""
    effect: Effect | None
    """Its effect on harmfulness (arm minus baseline)."""
    want: int
    """The predicted sign: -1 (block, oppose), +1 (push)."""
    contrasts: dict[str, Effect | None]
    """By control direction: the v_rev arm minus the control's arm, on harmfulness."""
    task_contrasts: dict[str, Effect | None]
    """The same on the task measure."""
    task_measure: str
    verdict: str
    failing: list
    """Controls whose contrast is not beyond the margin on the predicted side."""
    matching: list
    """Controls that do as well (within the margin) or better."""


@dataclass(frozen=True)
class Rehearsal:
    cumulative_reversion: Effect | None
    """Rehearsal minus baseline."""
    harmfulness: Effect | None
    mode: str
    extra_examples_per_step: int


@dataclass(frozen=True)
class ArmsResult:
    """Everything the Interventions page and the claims read."""
    arms: dict[str, ArmSummary]
    specificity: dict[str, Specificity]
    main: list
    study: list
    margin: float
    rehearsal: Rehearsal
    baseline_cumulative_reversion: Effect
    rehearsal_relative: float | None
    """Rehearsal's change of cumulative reversion as a share of the baseline's."""
    harm_measure: str = HARM
    """The outcome the harmfulness verdicts read (:func:`harm_key`)."""


def cumulative_reversion(harmfulness, steps, level: float) -> float:
    """Mean harmfulness above theta_S's level across the run, clipped at zero: the trapezoid
    area of ``max(harmfulness - level, 0)`` over the evaluation grid 0..T, divided by T."""
    h = np.maximum(np.asarray(harmfulness, dtype=float), level)
    return stats.auc_above(h, steps, level) / steps[-1]


BOUNDS = {"harmfulness": 1.0, "exact_match": 1.0, "harm_trained": 1.0, "harm_untrained": 1.0,
          "over_refusal": 1.0, "task_accuracy": 1.0, "cumulative_reversion": 1.0, "final_alignment": 2.0}
"""Half the range of each bounded measure (a rate spans 1, a cosine 2): an outcome's interval is
truncated to ``[0, 1]`` (a cosine's to ``[-1, 1]``), a difference of two to ``[-range, +range]``
(:data:`reversion.analysis.rules.POOLING`, "bounded"). Held-out loss is unbounded above."""


def bounds_of(measure: str, difference: bool) -> tuple[float, float] | None:
    """The range of ``measure`` as an outcome, or of a difference of two outcomes."""
    r = BOUNDS.get(measure)
    if r is None:
        return None
    if difference:
        return (-r, r)
    return (-1.0, 1.0) if measure == "final_alignment" else (0.0, 1.0)


def effect(values: list[list[float]], bounds: tuple[float, float] | None = None) -> Effect:
    """Mean and 95% interval of per-(history, seed) values: over the histories' means (seeds
    nested) with several histories, over seeds with one; ``level`` says which. ``bounds``: the
    quantity's range, to which the interval is truncated."""
    H = len(values)
    if H > 1:
        n = stats.nested(values, bounds=bounds)
        return Effect(n["mean"], n["ci_low"], n["ci_high"], n["by_history"], H, len(values[0]), "histories", bounds)
    x = np.asarray(values[0], dtype=float)
    if x.size < 2:
        return Effect(float(x.mean()), None, None, [float(x.mean())], 1, int(x.size), "seeds", bounds)
    d = stats.paired_difference(x, np.zeros_like(x))
    lo, hi = stats.truncate(d["ci_low"], d["ci_high"], bounds)
    return Effect(d["mean"], lo, hi, [d["mean"]], 1, int(x.size), "seeds", bounds)


def _keys(res: Outcomes, arm: Arm) -> list[tuple[int, list[int]]]:
    """(history, seeds) pairs an arm ran on."""
    out = []
    for h in range(res.n_histories):
        seeds = [s for s in res.seeds if (arm, h, s) in res.tab]
        if seeds:
            out.append((h, seeds))
    return out


def contrast(res: Outcomes, arm: Arm, other: Arm, measure: str) -> Effect | None:
    """``arm - other`` on one measure, paired by (history, seed), over the runs both have."""
    tab, vals = res.tab, []
    for h, seeds in _keys(res, arm):
        row = [tab[(arm, h, s)][measure] - tab[(other, h, s)][measure] for s in seeds
               if (other, h, s) in tab and measure in tab[(arm, h, s)] and measure in tab[(other, h, s)]]
        if row:
            vals.append(row)
    if not vals or len({len(v) for v in vals}) != 1:
        return None
    return effect(vals, bounds_of(measure, difference=True))


def arm_summary(res: Outcomes, arm: Arm) -> ArmSummary:
    """An arm's outcomes and its paired differences to the baseline, on every measure it has."""
    tab, keys = res.tab, _keys(res, arm)
    first = tab[(arm, keys[0][0], keys[0][1][0])]
    outcome, vs = {}, {}
    for m in MEASURES:
        if m not in first:
            continue
        outcome[m] = effect([[tab[(arm, h, s)][m] for s in seeds] for h, seeds in keys], bounds_of(m, False))
        if arm != BASELINE:
            vs[m] = contrast(res, arm, BASELINE, m)
    return ArmSummary(arm.objective, arm.direction, arm.site, arm.multiple,
                      [res.strengths.get((arm, h)) for h, _ in keys], len(keys), len(keys[0][1]), outcome, vs)


def _negated(direction: str) -> str:
    return direction[:-1] + {"+": "-", "-": "+"}[direction[-1]]


def controls_of(res: Outcomes, arm: Arm) -> dict[str, Arm]:
    """The same objective, site and multiple along every other direction run in the main
    comparison, by direction. Push along a random direction is oppose along its negation
    (``-tanh(p_v) = tanh(p_{-v})``: the same run), so push's controls are those oppose runs."""
    if arm.objective == "push":
        return {_negated(a.direction): a for a in res.main if a.objective == "oppose" and a.site == arm.site
                and a.multiple == arm.multiple and a.direction.startswith("random")}
    return {a.direction: a for a in res.main if a.objective == arm.objective and a.site == arm.site
            and a.multiple == arm.multiple and a.direction not in ("", arm.direction)}


def specificity(res: Outcomes, arm: Arm, margin: float) -> Specificity:
    """v_rev's arm against each control direction's on harm (:func:`harm_key`; both differences to the baseline,
    so the contrast is the arms' difference), with the verdict the rule gives
    (:func:`reversion.analysis.verdicts.verdict`)."""
    want = -1 if arm.objective in ("block", "oppose") else +1
    harm = harm_key(res)
    effect_ = contrast(res, arm, BASELINE, harm)
    ctl = controls_of(res, arm)
    cons = {d: contrast(res, arm, c, harm) for d, c in ctl.items()}
    base_row = res.tab[next(k for k in res.tab if k[0] == BASELINE)]
    task_m = "task_accuracy" if "task_accuracy" in base_row else "task_loss"
    cost = {d: contrast(res, arm, c, task_m) for d, c in ctl.items()}
    return Specificity(effect_, want, cons, cost, task_m, verdicts.verdict(effect_, want, cons, margin),
                       verdicts.failing_controls(cons, want, margin),
                       [d for d, c in cons.items() if verdicts.contrast_side(c, want, margin) in ("null", "wrong")])


def summarise(res: Outcomes, margin: float, rehearsal_fraction: float) -> ArmsResult:
    """Every arm's summary, the specificity of every objective along v_rev, and rehearsal."""
    arms = {a.name: arm_summary(res, a) for a in res.arms}
    spec = {a.name: specificity(res, a, margin) for a in res.main
            if a.direction == "v_rev" and a.objective in (*OBJECTIVES, "push")}
    reh = arms[REHEARSAL.name].vs_baseline
    base = arms[BASELINE.name].outcome["cumulative_reversion"]
    red, harm = reh.get("cumulative_reversion"), harm_key(res)
    return ArmsResult(
        arms, spec, [a.name for a in res.main], [a.name for a in res.arms if a not in res.main], margin,
        Rehearsal(red, reh.get(harm), "added", round(rehearsal_fraction * res.batch_size)), base,
        (red.mean / base.mean) if red is not None and base.mean > 0 else None, harm)


def arm_of(r: ArmsResult | dict, objective: str, direction: str = "v_rev") -> str | None:
    """The main comparison's arm of an objective along a direction (at the first site run); ``r``
    is the result or its ``metrics.json`` form."""
    main, arms = (r.main, r.arms) if isinstance(r, ArmsResult) else (r["main"], r["arms"])
    for n in main:
        a = arms[n]
        got = (a.objective, a.direction) if isinstance(a, ArmSummary) else (a["objective"], a["direction"])
        if got == (objective, direction):
            return n
    return None
