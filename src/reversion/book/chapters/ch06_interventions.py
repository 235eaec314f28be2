"""Chapter 06, "Interventions": the page. Its parameters, the one entry point that runs it
(:func:`run`), tables, prose and saving; what it computes is :mod:`reversion.analysis.arms` (the
statistics and verdicts) over :mod:`reversion.analysis.arm_runs` (the runs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from reversion.analysis import arm_runs, arms, verdicts
from reversion.analysis.arm_runs import SITES, ArmRuns
from reversion.analysis.arms import OBJECTIVES, ArmsResult
from reversion.book.chapters.common import Replication, SubjectParams, write_chapter
from reversion.book.display import interval
from reversion.infra.checks import check_float, check_fraction, check_int

STEM = "06_interventions"


@dataclass(frozen=True)
class Params(SubjectParams, Replication):
    """Parameters of "Interventions"; the multiples, margin and fraction were fixed before any result."""

    multiple: float
    """The pre-registered strength: each term's gradient at theta_S is this multiple of the task's."""
    objectives: list
    """Objectives run along every direction (``block``, ``oppose``); push runs along v_rev."""
    directions: list
    """Directions of the main comparison ([] = every one the estimate has: v_rev, -r_S, v_P,
    residual, and the random ones)."""
    n_random: int
    """Random unit directions (seeds 0, 1, ...), each run with both signs."""
    sites: list
    """Sites of the main comparison (``layer``, ``intermediate``, ``all``)."""
    dose_multiples: list
    """Extra multiples of the dose-response (with ``multiple``), on history 0."""
    study_directions: list
    """Directions of the dose-response and the layer-site study (history 0)."""
    study_sites: list
    """Sites of the layer-site study (history 0, block at ``multiple``)."""
    n_study_seeds: int
    """Seeds of the dose-response, layer-site and projection studies."""
    projection: bool
    """Run the CAFT-style forward-pass projection along ``study_directions`` (alone, not grouped)."""
    witness_direction: bool
    """Also block along the witness difference unit(mu_H - mu_H') of "Which past?" (history 0 of the
    organism, whose second-witness lineage defines it; checkpoints: skipped)."""
    rehearsal_fraction: float
    """Safety examples *added* to each full benign batch, as a share of its size."""
    margin: float
    """Equivalence margin on harmfulness: contrasts within +-margin count as no difference."""
    eval_steps: list
    """Steps judged in the baseline and rehearsal runs (cumulative reversion is their trapezoid);
    the other arms are judged, and their drift probes recorded, at steps 0 and T only."""
    track_every: int
    """Drift probes of the baseline and rehearsal runs recorded every this many steps."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("multiple", self.multiple, 0.0, lo_open=True)
        for name, allowed in (("objectives", OBJECTIVES), ("sites", SITES), ("study_sites", SITES)):
            got = getattr(self, name)
            if not isinstance(got, list) or any(x not in allowed for x in got):
                raise ValueError(f"{name} must be a list of {', '.join(allowed)}, got {got!r}")
        if not self.sites:
            raise ValueError("sites must name at least one site")
        for name in ("directions", "study_directions"):
            got = getattr(self, name)
            if not isinstance(got, list) or any(not isinstance(x, str) for x in got):
                raise ValueError(f"{name} must be a list of direction names, got {got!r}")
        check_int("n_random", self.n_random, 0)
        names = {"v_rev", "-r_S", "v_P", "residual"} | {f"random{i}{c}" for i in range(self.n_random) for c in "+-"}
        for name in ("directions", "study_directions"):
            bad = [d for d in getattr(self, name) if d not in names]
            if bad:
                raise ValueError(f"{name}: {bad} not available here (known: {', '.join(sorted(names))}; "
                                 "randomN needs n_random > N)")
        for m in self.dose_multiples:
            check_float("dose_multiples", m, 0.0, lo_open=True)
        check_int("n_study_seeds", self.n_study_seeds, 1, self.n_seeds)
        for name in ("projection", "witness_direction"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_fraction("rehearsal_fraction", self.rehearsal_fraction)
        check_float("margin", self.margin, 0.0)
        if not isinstance(self.eval_steps, list) or not self.eval_steps:
            raise ValueError(f"eval_steps must be a non-empty list of steps, got {self.eval_steps!r}")
        check_int("track_every", self.track_every, 1)


@dataclass
class Result:
    """The runs and what the analysis made of them."""
    runs: ArmRuns
    analysis: ArmsResult

    @property
    def world(self):
        return self.runs.world

    @property
    def subject(self):
        return self.runs.subject

    @property
    def est(self):
        return self.runs.est

    @property
    def notes(self) -> list[str]:
        return self.runs.notes


def run(P: Params, progress: bool = True) -> Result:
    """The chapter: every arm trained on every history (:func:`reversion.analysis.arm_runs.train`),
    each run's outcomes read, and the arms compared (:func:`reversion.analysis.arms.summarise`)."""
    world = P.make_world()
    runs = arm_runs.train(P, world, P.subjects(world, need_finetune=True), progress)
    return Result(runs, arms.summarise(arm_runs.outcomes_of(runs), P.margin, P.rehearsal_fraction))


# --------------------------------------------------------------------------- tables


def arm_table(r: ArmsResult, names: list[str]) -> pd.DataFrame:
    """One row per arm: its paired differences to the baseline (interval over histories)."""
    rows = []
    for n in names:
        a = r.arms[n]
        vb = a.vs_baseline
        st = [s for s in a.strength if s]
        rows.append({"arm": n, "strength": f"{np.mean(st):.3g}" if st else "—",
                     "Δ harmfulness": interval(vb.get("harmfulness")), "Δ exact match": interval(vb.get("exact_match")),
                     "Δ harm, untrained tasks": interval(vb.get("harm_untrained")),
                     "Δ final alignment": interval(vb.get("final_alignment")),
                     "Δ task accuracy" if "task_accuracy" in a.outcome else "Δ task loss":
                         interval(vb.get("task_accuracy", vb.get("task_loss"))),
                     "Δ over-refusal": interval(vb.get("over_refusal")),
                     "n": f"{a.n_histories}×{a.n_seeds}"})
    return pd.DataFrame(rows).set_index("arm")


def outcome_table(r: ArmsResult, names: list[str]) -> pd.DataFrame:
    """Mean outcomes at T of each arm (not differences)."""
    rows = []
    for n in names:
        o = r.arms[n].outcome
        rows.append({"arm": n, **{k: o[k].mean for k in arms.MEASURES if k in o}})
    return pd.DataFrame(rows).set_index("arm")


def harm_words(r: ArmsResult) -> str:
    """The harm measure the verdicts read, in words."""
    return "harmfulness on untrained tasks" if r.harm_measure == arms.HARM else "harmfulness"


def specificity_table(r: ArmsResult) -> pd.DataFrame:
    """For each v_rev arm: its effect on harm and the contrast with every control direction."""
    rows = []
    for n, s in r.specificity.items():
        row = {"arm": n, f"effect on {harm_words(r)}": interval(s.effect)}
        for c, i in s.contrasts.items():
            row[f"minus {c}"] = interval(i)
        rows.append({**row, "verdict": s.verdict})
    return pd.DataFrame(rows).set_index("arm")


def dose_rows(r: ArmsResult, directions: list[str], objective: str = "block",
              site: str = "all") -> tuple[pd.DataFrame, dict]:
    """The dose-response of ``directions`` (every multiple run at one site), and the baseline's
    harmfulness and task measure."""
    base = r.arms["baseline"].outcome
    rows = []
    for a in r.arms.values():
        if a.objective == objective and a.site == site and a.direction in directions:
            o = {k: v.by_history[0] for k, v in a.outcome.items()}  # history 0, where the study runs
            rows.append({"direction": a.direction, "multiple": a.multiple, "harmfulness": o["harmfulness"],
                         "task": o.get("task_accuracy", o.get("task_loss")),
                         "over_refusal": o.get("over_refusal", np.nan),
                         "final_alignment": o["final_alignment"], "n": f"1×{a.n_seeds}"})
    df = pd.DataFrame(rows).sort_values(["direction", "multiple"]) if rows else pd.DataFrame(rows)
    b0 = {k: v.by_history[0] for k, v in base.items()}
    return df.reset_index(drop=True), {"harmfulness": b0["harmfulness"], "task": b0.get("task_accuracy",
                                                                                      b0.get("task_loss"))}


def study_arms(r: ArmsResult, P: Params) -> list[str]:
    """The arms of the "Where it acts" table: blocks and projections at the chapter's multiple
    along the study directions and the witness difference."""
    return [n for n, a in r.arms.items() if n.startswith(("block/", "projection/"))
            and a.multiple in (0.0, P.multiple) and a.direction in [*P.study_directions, "witness"]]


# --------------------------------------------------------------------------- prose and metrics


def sentences(r: ArmsResult) -> dict[str, str]:
    """The sentences of the page that state a result, chosen by the numbers (the same rule as
    the verdicts: :func:`reversion.analysis.verdicts.side` with the chapter's margin)."""
    out, margin, harm = {}, r.margin, harm_words(r)
    for n, s in r.specificity.items():
        e = s.effect
        verb = "raises" if s.want > 0 else "lowers"
        where = verdicts.side(e, s.want, margin)
        if where == "there":
            head = f"{n} {verb} {harm} against the baseline ({interval(e)})"
            if not s.contrasts:
                tail = "; no control direction was run for it, so it cannot be called specific"
            elif not s.failing:
                tail = ", and more than every control direction at the same strength does"
            elif s.matching:
                wide = [d for d in s.failing if d not in s.matching]
                tail = (f", but along {', '.join(s.matching)} the same objective at the same strength does as "
                        f"much (within ±{margin:g}) or more"
                        + (f"; against {', '.join(wide)} the intervals are too wide to tell" if wide else ""))
            else:
                tail = (f"; whether it beats {', '.join(s.failing)} at the same strength by more than "
                        f"the margin (±{margin:g}) is not resolved")
        elif where == "wrong":
            head, tail = f"{n} moves {harm} the other way ({interval(e)})", ""
        elif where == "null":
            head, tail = f"{n} leaves {harm} within ±{margin:g} of the baseline's ({interval(e)})", ""
        else:
            head, tail = f"{n} does not move {harm} beyond ±{margin:g} ({interval(e)})", ""
        out[n] = f"{head}{tail}: {s.verdict}."
    red = r.rehearsal.cumulative_reversion
    if red is not None:
        cm = margin  # cumulative reversion is harmfulness averaged over the run: the same unit and margin
        where = verdicts.side(red, -1, cm)
        out["rehearsal"] = (f"Rehearsal (its safety examples added to the full benign batch) changes cumulative "
                            f"reversion ({harm} above theta_S's level, over the run) by {interval(red)}: "
                            + {"there": f"less reversion, beyond ±{cm:g}.", "wrong": "more reversion.",
                               "wide": f"not resolved beyond ±{cm:g}.", "null": f"no change beyond ±{cm:g}."}[where])
    return out


def metrics(P: Params, res: Result, o: arms.Outcomes | None = None) -> dict:
    """The chapter's numbers (``o``: planted outcomes instead of the runs' own, for tests)."""
    r = res.analysis if o is None else arms.summarise(o, P.margin, P.rehearsal_fraction)
    o_n = (res.runs.world.n_seeds if o is None else len(o.seeds))
    n_h = len(res.runs.subjects) if o is None else o.n_histories
    return {"layer": res.runs.layer, "T": res.runs.world.finetune.steps, "multiple": P.multiple,
            "n": {"histories": n_h, "seeds": o_n, "study_seeds": P.n_study_seeds},
            "calibration": res.runs.calibration, **asdict(r), "paper": arms.PAPER}


def save(P: Params, res: Result) -> dict:
    return write_chapter(STEM, __name__, P, res, metrics(P, res))
