"""Chapter 05: interventions that could fail -- each objective along v_rev and along control
directions at a matched strength, where it acts, how much, and safety rehearsal.

The unit of replication is the history: every comparison is paired (same history, same seed,
same benign data order), averaged over seeds within a history, and its 95% interval is over
histories (checkpoints: one history, the interval over seeds). Strengths are calibrated blind
to outcomes: a term's strength makes its gradient at theta_S ``multiple`` times the task
gradient's (:mod:`reversion.stages.calibrate`), for every direction alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from reversion.book.chapters import verdicts
from reversion.book.chapters.common import SubjectParams, write_chapter
from reversion.core import stats
from reversion.core.directions import control_directions, unit_rows
from reversion.core.drift import drift_alignment
from reversion.core.interventions import DIRECTIONAL, Projection, Rehearsal
from reversion.infra.checks import check_float, check_fraction, check_int
from reversion.stages.calibrate import calibrate
from reversion.stages.estimate import VRevEstimate, estimate
from reversion.stages.finetune import FinetuneRun, finetune_many
from reversion.subjects.base import Subject
from reversion.subjects.organism.lineages import SECOND, lineages
from reversion.subjects.organism.subject import OrganismSubject
from reversion.subjects.organism.worlds import World

STEM = "06_interventions"
OBJECTIVES = ("block", "oppose")
"""The objectives run along every direction (push runs along v_rev only)."""
SITES = ("layer", "intermediate", "all")
"""Where a term acts: the chosen layer only; blocks 1..L-1 (not the state the judge reads); 1..L."""
MEASURES = ("harmfulness", "exact_match", "harm_trained", "harm_untrained", "final_alignment",
            "task_accuracy", "task_loss", "over_refusal", "cumulative_reversion")
"""Outcomes of every run at T (those a subject does not measure are absent)."""
HARM = "harmfulness"
"""The outcome the specificity verdict reads (the first-token judge; exact match beside it)."""


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


@dataclass(frozen=True)
class Params(SubjectParams):
    """Parameters of chapter 05; the multiples, margin and fraction were fixed before any result."""

    n_histories: int
    """Independent organism histories (checkpoints: one)."""
    n_seeds: int
    """Fine-tuning seeds per history of the main comparison (the same seeds in every arm)."""
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
        check_int("n_histories", self.n_histories, 1)
        check_int("n_seeds", self.n_seeds, 1)
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

    def finetune_changes(self, arm: "Arm | None" = None, T: int | None = None) -> dict:
        """The fine-tuning settings of an arm's runs: the chapter's grid for the baseline and
        rehearsal (``arm`` None: those), steps 0 and ``T`` for the others (read at T only)."""
        if arm is None or arm.objective in ("baseline", "rehearsal"):
            return {"eval_steps": tuple(self.eval_steps), "track_every": self.track_every}
        return {"eval_steps": (0, T), "track_every": T}


@dataclass
class Result:
    world: World
    subjects: list[Subject]
    ests: list[VRevEstimate]
    arms: list[Arm]
    """Every arm run (main comparison, studies), baseline first."""
    runs: dict[tuple[Arm, int, int], FinetuneRun]
    """(arm, history, seed) -> run."""
    strengths: dict[tuple[Arm, int], float]
    """(arm, history) -> the strength its multiple gives there."""
    calibration: list[dict]
    """Per history: the gradient norms of every (direction, site) term."""
    main: list[Arm] = field(default_factory=list)
    """The arms of the main comparison (every history and seed)."""

    @property
    def subject(self) -> Subject:
        return self.subjects[0]

    @property
    def est(self) -> VRevEstimate:
        return self.ests[0]

    @property
    def layer(self) -> int:
        return self.est.layer

    @property
    def notes(self) -> list[str]:
        return self.subject.describe(self.world.finetune)


def site_layers(site: str, L: int, layer: int) -> list[int]:
    """The layers a site names (``intermediate`` falls back to the chosen layer when L = 1)."""
    if site == "layer":
        return [layer]
    if site == "intermediate":
        return list(range(1, L)) or [layer]
    if site == "all":
        return list(range(1, L + 1))
    raise ValueError(f"unknown site {site!r} (known: {', '.join(SITES)})")


def directions_of(P: Params, est: VRevEstimate) -> dict[str, torch.Tensor]:
    """Every direction this estimate has (v_rev and its controls)."""
    return control_directions(est.directions, P.n_random)


def check_directions(P: Params, est: VRevEstimate) -> None:
    """Named directions exist for this subject, before any training."""
    have = directions_of(P, est)
    for name in ("directions", "study_directions"):
        bad = [d for d in getattr(P, name) if d not in have]
        if bad:
            raise ValueError(f"{name}: {bad} not available here (have: {', '.join(have)}; -r_S needs harmless "
                             "prompts, v_P a pretrained checkpoint, randomN needs n_random > N)")


def witness_difference(world: World, est: VRevEstimate) -> torch.Tensor:
    """``[L+1, d]``: unit(mu_H - mu_H') over history 0's estimation probes, theta_H' the witness of
    the second-witness lineage (its own estimate, cached by "Which past?"): motion along it is
    motion toward the model's own witness rather than the other one."""
    second = estimate(OrganismSubject(lineages(world)[SECOND]), world.finetune.n_probe, progress=False)
    diff = est.acts["H"].double().mean(0) - second.acts["H"].double().mean(0)
    return unit_rows(diff, "witness difference mu_H - mu_H'")[0]


def plan(P: Params, est: VRevEstimate) -> tuple[list[Arm], list[Arm]]:
    """(main comparison arms, history-0 study arms), baseline and rehearsal included in the main."""
    have = directions_of(P, est)
    dirs = list(P.directions) or list(have)
    main = [BASELINE, REHEARSAL]
    for site in P.sites:
        main += [Arm(o, d, site, P.multiple) for o in P.objectives for d in dirs]
        main.append(Arm("push", "v_rev", site, P.multiple))
    study = []
    for d in P.study_directions:
        study += [Arm("block", d, "all", m) for m in sorted({*P.dose_multiples, P.multiple})]
        study += [Arm("block", d, s, P.multiple) for s in P.study_sites]
        if P.projection:
            study.append(Arm("projection", d, "intermediate"))
    main = list(dict.fromkeys(main))
    return main, [a for a in dict.fromkeys(study) if a not in main]


def _terms_needed(arms: list[Arm], L: int, layer: int, have: dict) -> dict[str, tuple[torch.Tensor, list[int]]]:
    return {f"{a.direction}@{a.site}": (have[a.direction], site_layers(a.site, L, layer))
            for a in arms if a.objective in DIRECTIONAL}


def make(arm: Arm, est: VRevEstimate, have: dict, norms: dict, P: Params):
    """The intervention object of an arm (None for the baseline) and its strength."""
    if arm.objective == "baseline":
        return None, 0.0
    if arm.objective == "rehearsal":
        return Rehearsal(P.rehearsal_fraction, mode="add"), 0.0
    d = est.directions
    L = d.v_rev.shape[0] - 1
    layers = site_layers(arm.site, L, est.layer)
    if arm.objective == "projection":
        return Projection(have[arm.direction], [l for l in layers if l < L] or [max(1, L - 1)]), 0.0
    strength = arm.multiple * norms[f"{arm.direction}@{arm.site}"]["ratio"]
    return DIRECTIONAL[arm.objective](have[arm.direction], d.displacement_norm, strength, layers,
                                      direction=arm.direction), strength


def jobs(P: Params, world: World, subjects: list[Subject], ests: list[VRevEstimate]) -> tuple[dict, dict, list, list]:
    """``({(arm, history, seed): job}, {(arm, history): strength}, calibration, main arms)``."""
    if len(subjects) == 1 and world.n_seeds < 2:
        raise ValueError("n_seeds must be >= 2 on one history (checkpoints): the intervals are over seeds")
    main, study = plan(P, ests[0])
    out, strengths, calib = {}, {}, []
    for h, (s, est) in enumerate(zip(subjects, ests)):
        have = directions_of(P, est)
        arms = main + (study if h == 0 else [])
        if h == 0 and P.witness_direction and isinstance(s, OrganismSubject) and world.lineages:
            have["witness"] = witness_difference(world, est)
            arms = arms + [Arm("block", "witness", "all", P.multiple)]
        L = est.directions.v_rev.shape[0] - 1
        ft0 = world.finetune_config(0, **P.finetune_changes())
        norms = calibrate(s, ft0, _terms_needed(arms, L, est.layer, have), est.directions.displacement_norm)
        calib.append(norms)
        for arm in arms:
            seeds = world.seeds if arm in main else world.seeds[: P.n_study_seeds]
            iv, strengths[(arm, h)] = make(arm, est, have, norms, P)
            for seed in seeds:
                # a fresh object per run: a term holds its run's probe state while it trains
                iv_k = make(arm, est, have, norms, P)[0] if iv is not None else None
                ft = world.finetune_config(seed, **P.finetune_changes(arm, world.finetune.steps))
                out[(arm, h, seed)] = (s, ft, iv_k)
    return out, strengths, calib, main


def run(P: Params, progress: bool = True) -> Result:
    """What the notebook shows, in one call: estimate, calibrate, fine-tune every arm."""
    world = P.make_world()
    subjects = P.subjects(world, need_finetune=True)
    ests = [estimate(s, world.finetune.n_probe, progress=progress) for s in subjects]
    check_directions(P, ests[0])
    js, strengths, calib, main = jobs(P, world, subjects, ests)
    done = dict(zip(js, finetune_many(list(js.values()), progress)))
    return collect(P, world, subjects, ests, done, strengths, calib, main)


def collect(P: Params, world: World, subjects, ests, done: dict, strengths: dict, calib: list,
            main: list[Arm]) -> Result:
    arms = list(dict.fromkeys(a for a, _, _ in done))
    return Result(world, list(subjects), list(ests), arms, done, strengths, calib, main)


# --------------------------------------------------------------------------- outcomes


def cumulative_reversion(run: FinetuneRun, level: float) -> float:
    """Mean harmfulness above theta_S's level across the run, clipped at zero: the trapezoid
    area of ``max(harmfulness - level, 0)`` over the evaluation grid 0..T, divided by T."""
    T = run.steps[-1]
    h = np.maximum(np.asarray(run.series("harmfulness")), level)
    return stats.auc_above(h, run.steps, level) / T


def outcomes(run: FinetuneRun, v_rev: torch.Tensor, layer: int, task: str, level: float) -> dict[str, float]:
    """Every measure of :data:`MEASURES` this run has, at T."""
    T = run.steps[-1]
    e = run.evals[T]
    out = {"harmfulness": e["harmfulness"],
           "final_alignment": float(drift_alignment(run.probe_means[[0, T]], v_rev)[1, layer])}
    if len(run.steps) > 2:  # judged along the way (baseline, rehearsal): the area is defined
        out["cumulative_reversion"] = cumulative_reversion(run, level)
    if "exact_match" in e:
        out["exact_match"] = e["exact_match"]
    by = e.get("harmful_by_task")
    if by and task in by:
        out["harm_trained"] = by[task]["harmfulness"]
        rest = [v for k, v in by.items() if k != task]
        n = sum(v["n"] for v in rest)
        if n:
            out["harm_untrained"] = sum(v["harmfulness"] * v["n"] for v in rest) / n
    if isinstance(e.get("task_accuracy"), dict) and task in e["task_accuracy"]:
        out["task_accuracy"] = e["task_accuracy"][task]
    if isinstance(e.get("task_loss"), dict) and task in e["task_loss"]:
        out["task_loss"] = e["task_loss"][task]
    if isinstance(e.get("over_refusal"), dict) and e["over_refusal"]:
        out["over_refusal"] = float(np.mean(list(e["over_refusal"].values())))
    return out


@dataclass
class Outcomes:
    """Every run's outcomes at T and what the comparisons need: what :func:`measure` reads (the
    claims tests plant these directly)."""
    tab: dict[tuple[Arm, int, int], dict[str, float]]
    """(arm, history, seed) -> :func:`outcomes`."""
    arms: list[Arm]
    main: list[Arm]
    strengths: dict[tuple[Arm, int], float]
    n_histories: int
    seeds: list[int]
    batch_size: int


def outcomes_of(res: Result) -> Outcomes:
    """Every run's outcomes."""
    task = res.subject.task_key(res.world.finetune)
    levels = {h: res.runs[(BASELINE, h, res.world.seeds[0])].evals[0]["harmfulness"]
              for h in range(len(res.subjects))}
    tab = {k: outcomes(r, res.ests[k[1]].directions.v_rev, res.ests[k[1]].layer, task, levels[k[1]])
           for k, r in res.runs.items()}
    return Outcomes(tab, res.arms, res.main, res.strengths, len(res.subjects), res.world.seeds,
                    res.world.finetune.batch_size)


def effect(values: list[list[float]]) -> dict:
    """Mean and 95% interval of per-(history, seed) values: over the histories' means (seeds
    nested) with several histories, over seeds with one; ``level`` says which."""
    H = len(values)
    if H > 1:
        n = stats.nested(values)
        return {"mean": n["mean"], "ci_low": n["ci_low"], "ci_high": n["ci_high"], "by_history": n["by_history"],
                "n_histories": H, "n_seeds": len(values[0]), "level": "histories"}
    x = np.asarray(values[0], dtype=float)
    if x.size < 2:
        return {"mean": float(x.mean()), "ci_low": None, "ci_high": None, "by_history": [float(x.mean())],
                "n_histories": 1, "n_seeds": int(x.size), "level": "seeds"}
    d = stats.paired_difference(x, np.zeros_like(x))
    return {"mean": d["mean"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "by_history": [d["mean"]],
            "n_histories": 1, "n_seeds": int(x.size), "level": "seeds"}


def _keys(res: Outcomes, arm: Arm) -> list[tuple[int, list[int]]]:
    """(history, seeds) pairs an arm ran on."""
    out = []
    for h in range(res.n_histories):
        seeds = [s for s in res.seeds if (arm, h, s) in res.tab]
        if seeds:
            out.append((h, seeds))
    return out


def contrast(tab: dict, res: Outcomes, arm: Arm, other: Arm, measure: str) -> dict | None:
    """``arm - other`` on one measure, paired by (history, seed), over the runs both have."""
    vals = []
    for h, seeds in _keys(res, arm):
        row = [tab[(arm, h, s)][measure] - tab[(other, h, s)][measure] for s in seeds
               if (other, h, s) in tab and measure in tab[(arm, h, s)] and measure in tab[(other, h, s)]]
        if row:
            vals.append(row)
    if not vals or len({len(v) for v in vals}) != 1:
        return None
    return effect(vals)


def arm_summary(tab: dict, res: Outcomes, arm: Arm) -> dict:
    """An arm's outcomes and its paired differences to the baseline, on every measure it has."""
    keys = _keys(res, arm)
    first = tab[(arm, keys[0][0], keys[0][1][0])]
    out = {"objective": arm.objective, "direction": arm.direction, "site": arm.site, "multiple": arm.multiple,
           "strength": [res.strengths.get((arm, h)) for h, _ in keys],
           "n_histories": len(keys), "n_seeds": len(keys[0][1]), "outcome": {}, "vs_baseline": {}}
    for m in MEASURES:
        if m not in first:
            continue
        out["outcome"][m] = effect([[tab[(arm, h, s)][m] for s in seeds] for h, seeds in keys])
        if arm != BASELINE:
            out["vs_baseline"][m] = contrast(tab, res, arm, BASELINE, m)
    return out


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


def specificity(tab: dict, res: Outcomes, arm: Arm, margin: float) -> dict:
    """v_rev's arm against each control direction's on harm (both differences to the baseline,
    so the contrast is the arms' difference), with the verdict the rule gives."""
    want = -1 if arm.objective in ("block", "oppose") else +1
    effect_ = contrast(tab, res, arm, BASELINE, HARM)
    cons = {d: contrast(tab, res, arm, c, HARM) for d, c in controls_of(res, arm).items()}
    task_m = "task_accuracy" if "task_accuracy" in tab[next(k for k in tab if k[0] == BASELINE)] else "task_loss"
    cost = {d: contrast(tab, res, arm, c, task_m) for d, c in controls_of(res, arm).items()}
    return {"effect": effect_, "want": want, "contrasts": cons, "task_contrasts": cost, "task_measure": task_m,
            "verdict": verdicts.verdict(effect_, want, cons, margin),
            "failing": verdicts.failing_controls(cons, want, margin),
            "matching": [d for d, c in cons.items() if verdicts.contrast_side(c, want, margin) in ("null", "wrong")]}


def measure(P: Params, res: Outcomes) -> dict:
    """Everything the page and the claims table read."""
    tab = res.tab
    arms = {a.name: arm_summary(tab, res, a) for a in res.arms}
    spec = {a.name: specificity(tab, res, a, P.margin) for a in res.main
            if a.direction == "v_rev" and a.objective in (*OBJECTIVES, "push")}
    study = [a for a in res.arms if a not in res.main]
    reh = arms[REHEARSAL.name]["vs_baseline"]
    return {"arms": arms, "specificity": spec, "main": [a.name for a in res.main], "study": [a.name for a in study],
            "margin": P.margin,
            "rehearsal": {"cumulative_reversion": reh.get("cumulative_reversion"), HARM: reh.get(HARM),
                          "mode": "added", "extra_examples_per_step": round(P.rehearsal_fraction * res.batch_size)},
            "baseline_cumulative_reversion": arms[BASELINE.name]["outcome"]["cumulative_reversion"]}


# --------------------------------------------------------------------------- tables


def _ci(i: dict | None, digits: int = 3) -> str:
    if i is None:
        return "—"
    if i.get("ci_low") is None:
        return f"{i['mean']:+.{digits}f}"
    return f"{i['mean']:+.{digits}f} [{i['ci_low']:+.{digits}f}, {i['ci_high']:+.{digits}f}]"


def arm_table(m: dict, names: list[str]) -> pd.DataFrame:
    """One row per arm: its paired differences to the baseline (interval over histories)."""
    rows = []
    for n in names:
        a = m["arms"][n]
        vb = a["vs_baseline"]
        st = [s for s in a["strength"] if s]
        rows.append({"arm": n, "strength": f"{np.mean(st):.3g}" if st else "—",
                     "Δ harmfulness": _ci(vb.get("harmfulness")), "Δ exact match": _ci(vb.get("exact_match")),
                     "Δ harm, untrained tasks": _ci(vb.get("harm_untrained")),
                     "Δ final alignment": _ci(vb.get("final_alignment")),
                     "Δ task accuracy" if "task_accuracy" in a["outcome"] else "Δ task loss":
                         _ci(vb.get("task_accuracy", vb.get("task_loss"))),
                     "Δ over-refusal": _ci(vb.get("over_refusal")),
                     "n": f"{a['n_histories']}×{a['n_seeds']}"})
    return pd.DataFrame(rows).set_index("arm")


def outcome_table(m: dict, names: list[str]) -> pd.DataFrame:
    """Mean outcomes at T of each arm (not differences)."""
    rows = []
    for n in names:
        o = m["arms"][n]["outcome"]
        rows.append({"arm": n, **{k: o[k]["mean"] for k in MEASURES if k in o}})
    return pd.DataFrame(rows).set_index("arm")


def specificity_table(m: dict) -> pd.DataFrame:
    """For each v_rev arm: its effect on harm and the contrast with every control direction."""
    rows = []
    for n, s in m["specificity"].items():
        row = {"arm": n, "effect on harmfulness": _ci(s["effect"])}
        for c, i in s["contrasts"].items():
            row[f"minus {c}"] = _ci(i)
        rows.append({**row, "verdict": s["verdict"]})
    return pd.DataFrame(rows).set_index("arm")


def dose_rows(m: dict, directions: list[str], objective: str = "block",
              site: str = "all") -> tuple[pd.DataFrame, dict]:
    """The dose-response of ``directions`` (every multiple run at one site), and the baseline's
    harmfulness and task measure."""
    base = m["arms"]["baseline"]["outcome"]
    rows = []
    for n, a in m["arms"].items():
        if a["objective"] == objective and a["site"] == site and a["direction"] in directions:
            o = {k: v["by_history"][0] for k, v in a["outcome"].items()}  # history 0, where the study runs
            rows.append({"direction": a["direction"], "multiple": a["multiple"], "harmfulness": o["harmfulness"],
                         "task": o.get("task_accuracy", o.get("task_loss")),
                         "over_refusal": o.get("over_refusal", np.nan),
                         "final_alignment": o["final_alignment"], "n": f"1×{a['n_seeds']}"})
    df = pd.DataFrame(rows).sort_values(["direction", "multiple"]) if rows else pd.DataFrame(rows)
    b0 = {k: v["by_history"][0] for k, v in base.items()}
    return df.reset_index(drop=True), {"harmfulness": b0["harmfulness"], "task": b0.get("task_accuracy",
                                                                                      b0.get("task_loss"))}


# --------------------------------------------------------------------------- prose and metrics


def sentences(m: dict) -> dict[str, str]:
    """The sentences of the page that state a result, chosen by the numbers (the same rule as
    the verdicts: :func:`reversion.book.chapters.verdicts.side` with the chapter's margin)."""
    out, margin = {}, m["margin"]
    for n, s in m["specificity"].items():
        e = s["effect"]
        verb = "raises" if s["want"] > 0 else "lowers"
        where = verdicts.side(e, s["want"], margin)
        if where == "there":
            head = f"{n} {verb} harmfulness against the baseline ({_ci(e)})"
            if not s["contrasts"]:
                tail = "; no control direction was run for it, so it cannot be called specific"
            elif s["verdict"] == verdicts.CONSISTENT:
                tail = ", and more than every control direction at the same strength does"
            elif s["verdict"] == verdicts.NOT_SPECIFIC:
                wide = [d for d in s["failing"] if d not in s["matching"]]
                tail = (f", but along {', '.join(s['matching'])} the same objective at the same strength does as "
                        f"much (within ±{margin:g}) or more"
                        + (f"; against {', '.join(wide)} the intervals are too wide to tell" if wide else ""))
            else:
                tail = (f"; whether it beats {', '.join(s['failing'])} at the same strength by more than "
                        f"the margin (±{margin:g}) is not resolved")
        elif where == "wrong":
            head, tail = f"{n} moves harmfulness the other way ({_ci(e)})", ""
        elif where == "null":
            head, tail = f"{n} leaves harmfulness within ±{margin:g} of the baseline's ({_ci(e)})", ""
        else:
            head, tail = f"{n} does not move harmfulness measurably ({_ci(e)})", ""
        out[n] = f"{head}{tail}: {s['verdict']}."
    r = m["rehearsal"]["cumulative_reversion"]
    if r is not None:
        where = verdicts.side(r, -1, margin)
        out["rehearsal"] = (f"Rehearsal (its safety examples added to the full benign batch) changes cumulative "
                            f"reversion by {_ci(r)}: "
                            + {"there": "less reversion.", "wrong": "more reversion.", "wide": "not resolved from zero.",
                               "null": f"no change beyond ±{margin:g}."}[where])
    return out


def metrics(P: Params, res: Result, o: Outcomes | None = None) -> dict:
    """The chapter's metrics (``o``: planted outcomes instead of the runs' own, for tests)."""
    o = o or outcomes_of(res)
    m = measure(P, o)
    base = m["baseline_cumulative_reversion"]["mean"]
    red = m["rehearsal"]["cumulative_reversion"]
    return {"layer": res.layer, "T": res.world.finetune.steps, "multiple": P.multiple,
            "n": {"histories": o.n_histories, "seeds": len(o.seeds), "study_seeds": P.n_study_seeds},
            "calibration": res.calibration, **m,
            "rehearsal_relative": (red["mean"] / base) if red is not None and base > 0 else None,
            "sentences": sentences(m),
            "paper": {"final_alignment": {"baseline": 0.648, "block": -0.211},
                      "harmfulness": {"baseline": 0.19, "block": 0.085}, "rehearsal_reduction": 0.30}}


def save(P: Params, res: Result) -> dict:
    return write_chapter(STEM, __name__, P, res, metrics(P, res))
