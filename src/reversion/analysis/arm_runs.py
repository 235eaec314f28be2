"""The Interventions chapter's experiment: which arms run where, at what strength, and what
each run's outcomes are.

Strengths are calibrated blind to outcomes: a term's strength makes its gradient at theta_S
``multiple`` times the task gradient's (:mod:`reversion.stages.calibrate`), for every direction
alike. ``design`` below is the chapter's parameters (the page's ``Params``): any object with
their fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from reversion.analysis.arms import BASELINE, REHEARSAL, Arm, Outcomes, cumulative_reversion
from reversion.analysis.readings import OverHistories
from reversion.core.directions import control_directions, unit_rows
from reversion.core.drift import drift_alignment
from reversion.core.interventions import DIRECTIONAL, Projection, Rehearsal
from reversion.stages.calibrate import calibrate
from reversion.stages.estimate import VRevEstimate, estimate
from reversion.stages.finetune import FinetuneRun, finetune_many
from reversion.subjects.base import Subject
from reversion.subjects.organism.judge import headline
from reversion.subjects.organism.lineages import SECOND, lineages, witnesses_differ
from reversion.subjects.organism.subject import OrganismSubject
from reversion.subjects.organism.worlds import World

SITES = ("layer", "intermediate", "all")
"""Where a term acts: the chosen layer only; blocks 1..L-1 (not the state the judge reads); 1..L."""


@dataclass(frozen=True)
class ArmPlan:
    """Every run of the chapter, before any is trained."""
    jobs: dict
    """(arm, history, seed) -> (subject, fine-tuning config, intervention) for the finetune stage."""
    strengths: dict
    """(arm, history) -> the strength its multiple gives there."""
    calibration: list
    """Per history: the gradient norms of every (direction, site) term."""
    main: list
    """The arms of the main comparison (every history and seed); the rest are history-0 studies."""


@dataclass
class ArmRuns(OverHistories):
    """The trained runs and what they ran on."""
    world: World
    subjects: list[Subject]
    ests: list[VRevEstimate]
    arms: list[Arm]
    """Every arm run (main comparison, studies), baseline first."""
    runs: dict[tuple[Arm, int, int], FinetuneRun]
    """(arm, history, seed) -> run."""
    strengths: dict[tuple[Arm, int], float]
    calibration: list[dict]
    main: list[Arm] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    """Control directions of no length in this world, not run (:func:`no_length`)."""

    @property
    def notes(self) -> list[str]:
        return super().notes + [f"Not testable here: the control direction {d} has no length in this world "
                                "(theta_H is theta_P when the helpful phase has no steps); its arms are not run."
                                for d in self.dropped]


def site_layers(site: str, L: int, layer: int) -> list[int]:
    """The layers a site names (``intermediate`` falls back to the chosen layer when L = 1)."""
    if site == "layer":
        return [layer]
    if site == "intermediate":
        return list(range(1, L)) or [layer]
    if site == "all":
        return list(range(1, L + 1))
    raise ValueError(f"unknown site {site!r} (known: {', '.join(SITES)})")


def directions_of(design, est: VRevEstimate) -> dict[str, torch.Tensor]:
    """Every direction this estimate has (v_rev and its controls) that has a length at every block
    layer: a control of no length (v_P where theta_H is theta_P) has nothing to act along and no
    alternative to stand for (:func:`no_length`)."""
    return {k: v for k, v in control_directions(est.directions, design.n_random).items()
            if k == "v_rev" or _has_length(v)}


def _has_length(v: torch.Tensor) -> bool:
    """A direction ``[L+1, d]`` that is not zero at any block layer (1..L)."""
    return bool((v[1:].norm(dim=-1) > 1e-12).all())


def no_length(design, est: VRevEstimate) -> list[str]:
    """The control directions of this estimate that are zero at some block layer."""
    return [k for k, v in control_directions(est.directions, design.n_random).items()
            if k != "v_rev" and not _has_length(v)]


def check_directions(design, est: VRevEstimate) -> None:
    """Named directions exist for this subject, before any training."""
    have = directions_of(design, est)
    for name in ("directions", "study_directions"):
        bad = [d for d in getattr(design, name) if d not in have]
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


def plan(design, est: VRevEstimate) -> tuple[list[Arm], list[Arm]]:
    """(main comparison arms, history-0 study arms), baseline and rehearsal included in the main."""
    have = directions_of(design, est)
    dirs = list(design.directions) or list(have)
    main = [BASELINE, REHEARSAL]
    for site in design.sites:
        main += [Arm(o, d, site, design.multiple) for o in design.objectives for d in dirs]
        main.append(Arm("push", "v_rev", site, design.multiple))
    study = []
    for d in design.study_directions:
        study += [Arm("block", d, "all", m) for m in sorted({*design.dose_multiples, design.multiple})]
        study += [Arm("block", d, s, design.multiple) for s in design.study_sites]
        if design.projection:
            study.append(Arm("projection", d, "intermediate"))
    main = list(dict.fromkeys(main))
    return main, [a for a in dict.fromkeys(study) if a not in main]


def _terms_needed(arms: list[Arm], L: int, layer: int, have: dict) -> dict[str, tuple[torch.Tensor, list[int]]]:
    return {f"{a.direction}@{a.site}": (have[a.direction], site_layers(a.site, L, layer))
            for a in arms if a.objective in DIRECTIONAL}


def make(arm: Arm, est: VRevEstimate, have: dict, norms: dict, design):
    """The intervention object of an arm (None for the baseline) and its strength."""
    if arm.objective == "baseline":
        return None, 0.0
    if arm.objective == "rehearsal":
        return Rehearsal(design.rehearsal_fraction, mode="add"), 0.0
    d = est.directions
    L = d.v_rev.shape[0] - 1
    layers = site_layers(arm.site, L, est.layer)
    if arm.objective == "projection":
        return Projection(have[arm.direction], [l for l in layers if l < L] or [max(1, L - 1)]), 0.0
    strength = arm.multiple * norms[f"{arm.direction}@{arm.site}"]["ratio"]
    return DIRECTIONAL[arm.objective](have[arm.direction], d.displacement_norm, strength, layers,
                                      direction=arm.direction), strength


def finetune_changes(design, arm: Arm | None = None, T: int | None = None) -> dict:
    """The fine-tuning settings of an arm's runs: the chapter's grid for the baseline and
    rehearsal (``arm`` None: those), steps 0 and ``T`` for the others (read at T only)."""
    if arm is None or arm.objective in ("baseline", "rehearsal"):
        return {"eval_steps": tuple(design.eval_steps), "track_every": design.track_every}
    return {"eval_steps": (0, T), "track_every": T}


def jobs(design, world: World, subjects: list[Subject], ests: list[VRevEstimate]) -> ArmPlan:
    """Every (arm, history, seed) run with its calibrated strength (stage ``calibrate``)."""
    if len(subjects) == 1 and world.n_seeds < 2:
        raise ValueError("n_seeds must be >= 2 on one history (checkpoints): the intervals are over seeds")
    main, study = plan(design, ests[0])
    out, strengths, calib = {}, {}, []
    for h, (s, est) in enumerate(zip(subjects, ests)):
        have = directions_of(design, est)
        arms = main + (study if h == 0 else [])
        if (h == 0 and design.witness_direction and isinstance(s, OrganismSubject) and world.lineages
                and witnesses_differ(world.history)):  # else theta_H' is theta_H: no witness difference
            have["witness"] = witness_difference(world, est)
            arms = arms + [Arm("block", "witness", "all", design.multiple)]
        L = est.directions.v_rev.shape[0] - 1
        ft0 = world.finetune_config(0, **finetune_changes(design))
        norms = calibrate(s, ft0, _terms_needed(arms, L, est.layer, have), est.directions.displacement_norm)
        calib.append(norms)
        for arm in arms:
            seeds = world.seeds if arm in main else world.seeds[: design.n_study_seeds]
            iv, strengths[(arm, h)] = make(arm, est, have, norms, design)
            for seed in seeds:
                # a fresh object per run: a term holds its run's probe state while it trains
                iv_k = make(arm, est, have, norms, design)[0] if iv is not None else None
                ft = world.finetune_config(seed, **finetune_changes(design, arm, world.finetune.steps))
                out[(arm, h, seed)] = (s, ft, iv_k)
    return ArmPlan(out, strengths, calib, main)


def train(design, world: World, subjects: list[Subject], progress: bool = True) -> ArmRuns:
    """Estimate (each history), calibrate and fine-tune every arm: the chapter's runs."""
    ests = [estimate(s, world.finetune.n_probe, progress=progress) for s in subjects]
    check_directions(design, ests[0])
    p = jobs(design, world, subjects, ests)
    done = dict(zip(p.jobs, finetune_many(list(p.jobs.values()), progress)))
    arms = list(dict.fromkeys(a for a, _, _ in done))
    return ArmRuns(world, list(subjects), ests, arms, done, p.strengths, p.calibration, p.main,
                   no_length(design, ests[0]))


def outcomes(run: FinetuneRun, v_rev: torch.Tensor, layer: int, task: str, level: float) -> dict[str, float]:
    """Every measure of :data:`reversion.analysis.arms.MEASURES` this run has, at T; cumulative
    reversion reads the headline measure (untrained tasks; ``level``: theta_S's)."""
    T = run.steps[-1]
    e = run.evals[T]
    out = {"harmfulness": e["harmfulness"],
           "final_alignment": float(drift_alignment(run.probe_means[[0, T]], v_rev)[1, layer])}
    if len(run.steps) > 2:  # judged along the way (baseline, rehearsal): the area is defined
        out["cumulative_reversion"] = cumulative_reversion([headline(run.evals[s], task) for s in run.steps],
                                                           run.steps, level)
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


def outcomes_of(res: ArmRuns) -> Outcomes:
    """Every run's outcomes."""
    task = res.subject.task_key(res.world.finetune)
    levels = {h: headline(res.runs[(BASELINE, h, res.world.seeds[0])].evals[0], task)
              for h in range(len(res.subjects))}
    tab = {k: outcomes(r, res.ests[k[1]].directions.v_rev, res.ests[k[1]].layer, task, levels[k[1]])
           for k, r in res.runs.items()}
    return Outcomes(tab, res.arms, res.main, res.strengths, len(res.subjects), res.world.seeds,
                    res.world.finetune.batch_size)
