"""What the Alignment chapter computes: the alignment of fine-tuning drift with v_rev (and the
control directions), step by step, per history, and its relation to harmfulness.

The history is the unit of replication: each run's drift is read against its own history's
directions at that history's chosen layer, seeds are averaged within a history, and intervals
are over histories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from reversion.analysis import rules
from reversion.analysis.readings import OverHistories
from reversion.core import stats
from reversion.core.drift import drift_alignment
from reversion.stages.estimate import VRevEstimate, estimate
from reversion.stages.finetune import FinetuneRun, finetune_many
from reversion.subjects.base import Subject
from reversion.subjects.organism.judge import HEADLINE, headline, split_by_task
from reversion.subjects.organism.worlds import World

REPORT_STEPS = (1, 5, 10, 20, 50, 100)
COSINE = rules.BOUNDS["cosine"]
"""The range of an alignment: its interval over histories is truncated to it (rules.POOLING)."""
PAPER = {"1": (0.429, 0.052), "20": (0.647, 0.021)}


@dataclass
class Result(OverHistories):
    world: World
    ests: list[VRevEstimate]
    """One estimate per history (its own v_rev and chosen layer)."""
    runs: list[list[FinetuneRun]]
    """``runs[h][s]``: history h, fine-tuning seed s."""
    cos: dict[str, np.ndarray]
    """direction name -> ``[n_histories, n_seeds, T+1, L+1]`` cosines of each run's drift with its
    own history's direction."""
    subjects: list[Subject]
    """The organism's independent histories, or your checkpoints (one history)."""

    @property
    def layers(self) -> list[int]:
        """Each history's chosen layer."""
        return [e.layer for e in self.ests]

    def at_layer(self, name: str = "v_rev") -> np.ndarray:
        """``[n_histories, n_seeds, T+1]``: alignment at each history's own chosen layer."""
        c = self.cos[name]
        return np.stack([c[h, :, :, l] for h, l in enumerate(self.layers)])



def directions(est: VRevEstimate) -> dict[str, torch.Tensor]:
    """v_rev and the control directions the subject has (v_P, r_S), ``[L+1, d]`` each."""
    d = est.directions
    return {name: v for name, v in {"v_rev": d.v_rev, "v_P": d.v_P, "r_S": d.r_S}.items() if v is not None}


def alignments(ests: list[VRevEstimate], runs: list[FinetuneRun], n_seeds: int) -> dict[str, np.ndarray]:
    """cos(d_t, direction) of every run with its own history's directions (``runs`` history-major,
    ``n_seeds`` per history): direction -> ``[n_histories, n_seeds, T+1, L+1]``."""
    if len(runs) != len(ests) * n_seeds:
        raise ValueError(f"{len(runs)} runs for {len(ests)} histories x {n_seeds} seeds")
    out: dict[str, list] = {}
    for h, est in enumerate(ests):
        for name, v in directions(est).items():
            out.setdefault(name, []).append(np.stack([drift_alignment(r.probe_means, v)
                                                      for r in runs[h * n_seeds:(h + 1) * n_seeds]]))
    return {name: np.stack(v) for name, v in out.items()}


def by_history(runs: list[FinetuneRun], n_seeds: int) -> list[list[FinetuneRun]]:
    return [runs[i:i + n_seeds] for i in range(0, len(runs), n_seeds)]


def train(world: World, subjects: list[Subject], n_probe: int, position: str, progress: bool = True) -> Result:
    """Stages ``estimate`` (per history) and ``finetune`` (every history x seed), then the alignment
    of each run's drift with its history's directions."""
    if position != "last":
        raise ValueError("drift probes are recorded at the last prompt token; position must be 'last' here")
    ests = [estimate(s, n_probe, position, progress=progress) for s in subjects]
    runs = finetune_many([(s, world.finetune_config(k), None) for s in subjects for k in world.seeds], progress)
    return Result(world, ests, by_history(runs, world.n_seeds), alignments(ests, runs, world.n_seeds), subjects)


def step_summary(res: Result, steps=REPORT_STEPS) -> dict[int, dict[str, dict]]:
    """At the reported steps (up to T): per direction, :func:`reversion.core.stats.nested` over
    histories of the per-history seed means of cos(d_t, .) at each history's chosen layer."""
    T = res.world.finetune.steps
    return {s: {name: stats.nested(res.at_layer(name)[:, :, s], bounds=COSINE) for name in res.cos} for s in steps if s <= T}


def history_summary(res: Result, steps=(1, 20)) -> list[dict]:
    """Each history on its own: its chosen layer and, at the steps and T, the mean and std over
    its seeds of cos(d_t, v_rev)."""
    T = res.world.finetune.steps
    a = res.at_layer("v_rev")
    return [{"history": h, "layer": layer,
             "steps": {s: stats.aggregate(a[h, :, s]) for s in [s for s in steps if s <= T] + [T]}}
            for h, layer in enumerate(res.layers)]


def harmfulness_pairs(res: Result) -> pd.DataFrame:
    """(history, seed, step) triples on the evaluation grid, step >= 1: alignment at the history's
    chosen layer and harmfulness on untrained tasks (:data:`~reversion.subjects.organism.judge.HEADLINE`)."""
    a, task = res.at_layer("v_rev"), res.world.finetune.task
    rows = []
    for h, runs in enumerate(res.runs):
        for i, (seed, r) in enumerate(zip(res.world.seeds, runs)):
            for s in r.steps:
                if s == 0:
                    continue
                rows.append({"history": h, "seed": seed, "step": s, "alignment": float(a[h, i, s]),
                             "harmfulness": headline(r.evals[s], task)})
    return pd.DataFrame(rows)


def _safe(f, *args):
    """``f(*args)``, or None where it is undefined (e.g. harmfulness constant: never moved), not zero."""
    try:
        return f(*args)
    except ValueError:
        return None


def within_history(pairs: pd.DataFrame) -> dict:
    """The correlation of alignment with harmfulness within each history (its runs and steps), pooled
    over histories (:func:`reversion.core.stats.fisher_interval`): ``raw`` (Spearman) and
    ``step_removed`` (partial Spearman, the step controlled), each with its per-history values
    (None where a history's harmfulness never moved)."""
    raw, part = [], []
    for _, g in pairs.groupby("history", sort=True):
        raw.append(_safe(stats.spearman, g["alignment"], g["harmfulness"]))
        part.append(_safe(stats.partial_spearman, g["alignment"], g["harmfulness"], g["step"]))
    return {"raw": stats.fisher_interval(raw), "step_removed": stats.fisher_interval(part)}


def correlations(pairs: pd.DataFrame) -> dict:
    """Spearman r of alignment with harmfulness pooled over every run-step; partial (step
    controlled) and within-step (shown beside :func:`within_history`, which decides)."""
    a, h, s = pairs["alignment"], pairs["harmfulness"], pairs["step"]
    out = {"spearman": _safe(stats.spearman, a, h),
           "partial_spearman_step": _safe(stats.partial_spearman, a, h, s)}
    w = _safe(stats.within_group_spearman, a, h, s)
    out["within_step_spearman"] = w["mean"] if w and w["n_groups"] else None
    out["within_step_groups"] = w["n_groups"] if w else 0
    return out


JUDGES = ("harmfulness", "exact_match")
"""First-token compliance, and complete compliant answers."""


def judge_split(res: Result) -> dict | None:
    """The rise (theta_T minus theta_S) of each judge's harmfulness on harmful requests of the
    fine-tuned task (``trained``) and of every other task (``untrained``), over histories
    (seeds nested); None for a subject whose judge does not split by task (checkpoints)."""
    T, task = res.world.finetune.steps, res.world.finetune.task
    if "harmful_by_task" not in res.runs[0][0].evals[T]:
        return None

    def rise(r, part: str, measure: str) -> float:
        return split_by_task(r.evals[T], task)[part][measure] - split_by_task(r.evals[0], task)[part][measure]

    return {measure: {part: stats.nested([[rise(r, part, measure) for r in runs] for runs in res.runs],
                                         bounds=rules.BOUNDS["rate difference"])
                      for part in ("trained", "untrained")} for measure in JUDGES}


def metrics(res: Result) -> dict:
    """History-level summaries (the history is the unit of replication; seeds are nested in it)."""
    T = res.world.finetune.steps
    a = res.at_layer("v_rev")
    al, al_min, al_min_h = {}, {}, {}
    for s in [s for s in REPORT_STEPS if s <= T]:
        al[str(s)] = stats.nested(a[:, :, s], bounds=COSINE)
        al_min[str(s)] = float(a[:, :, s].min())
        al_min_h[str(s)] = [float(x) for x in a[:, :, s].min(axis=1)]
    c = res.cos["v_rev"]
    final_all = {str(l): stats.nested(c[:, :, T, l], bounds=COSINE) for l in range(c.shape[3])}
    pairs = harmfulness_pairs(res)
    corr = correlations(pairs)
    controls = {name: {str(s): stats.nested(res.at_layer(name)[:, :, s], bounds=COSINE) for s in [1, T]}
                for name in res.cos if name != "v_rev"}
    return {"layer": res.layer, "layers": res.layers, "T": T, "judge_split": judge_split(res),
            "n_histories": len(res.runs), "n_seeds": len(res.runs[0]),
            "alignment": al, "alignment_min_over_seeds": al_min, "alignment_min_by_history": al_min_h,
            "final_alignment": stats.nested(a[:, :, T], bounds=COSINE),
            "final_alignment_by_layer": final_all,
            "control_alignment": controls,
            "spearman_alignment_harmfulness": corr["spearman"],
            "partial_spearman_given_step": corr["partial_spearman_step"],
            "within_step_spearman": corr["within_step_spearman"],
            "within_history_spearman": within_history(pairs),
            "harm_measure": HEADLINE,
            "paper": {"alignment": {k: {"mean": m, "std": s} for k, (m, s) in PAPER.items()},
                      "spearman_alignment_harmfulness": 0.958}}
