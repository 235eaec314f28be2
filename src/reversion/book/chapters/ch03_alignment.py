"""Chapter 03: alignment of fine-tuning drift with v_rev, step by step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from reversion.book.chapters.common import SubjectParams, write_chapter
from reversion.core import stats
from reversion.core.drift import drift_alignment
from reversion.infra.checks import check_choice, check_int
from reversion.stages.estimate import VRevEstimate, estimate
from reversion.stages.finetune import FinetuneRun, finetune_many
from reversion.subjects.base import Subject
from reversion.subjects.organism.judge import split_by_task
from reversion.subjects.organism.worlds import World

STEM = "03_alignment"
REPORT_STEPS = (1, 5, 10, 20, 50, 100)
PAPER = {"1": (0.429, 0.052), "20": (0.647, 0.021)}


@dataclass(frozen=True)
class Params(SubjectParams):
    """Parameters of chapter 03."""

    n_seeds: int
    """Fine-tuning seeds per history (>= 5 for the book)."""
    n_histories: int
    """Independent organism histories (>= 3 for the book; your checkpoints are one history)."""
    n_probe: int
    """Probe prompts per set (v_rev estimation and drift)."""
    position: str
    """``last`` prompt token or ``mean`` over prompt tokens."""

    def __post_init__(self) -> None:
        check_int("n_seeds", self.n_seeds, 2)  # a spread needs two seeds
        check_int("n_histories", self.n_histories, 1)
        check_int("n_probe", self.n_probe, 4)
        check_choice("position", self.position, ("last", "mean"))

    def make_world(self) -> World:
        return super().make_world(finetune={"n_probe": self.n_probe})


@dataclass
class Result:
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
    def subject(self) -> Subject:
        return self.subjects[0]

    @property
    def est(self) -> VRevEstimate:
        return self.ests[0]

    @property
    def layer(self) -> int:
        """History 0's chosen layer (the layer chapters 02, 04 and 05 use)."""
        return self.est.layer

    @property
    def layers(self) -> list[int]:
        """Each history's chosen layer."""
        return [e.layer for e in self.ests]

    def at_layer(self, name: str = "v_rev") -> np.ndarray:
        """``[n_histories, n_seeds, T+1]``: alignment at each history's own chosen layer."""
        c = self.cos[name]
        return np.stack([c[h, :, :, l] for h, l in enumerate(self.layers)])

    @property
    def notes(self) -> list[str]:
        """What differs from the organism's chapter (printed under the parameters)."""
        return self.subject.describe(self.world.finetune)


def directions(est: VRevEstimate) -> dict[str, torch.Tensor]:
    """v_rev and the control directions the subject has (v_P, r_S), ``[L+1, d]`` each."""
    d = est.directions
    return {name: v for name, v in {"v_rev": d.v_rev, "v_P": d.v_P, "r_S": d.r_S}.items() if v is not None}


def check(P: Params) -> None:
    if P.position != "last":
        raise ValueError("drift probes are recorded at the last prompt token; position must be 'last' here")


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


def run(P: Params, progress: bool = True) -> Result:
    """What the notebook shows, in one call: stages ``estimate`` (per history) and ``finetune``
    (every history x seed), then the alignment of each run's drift with its history's directions."""
    check(P)
    world = P.make_world()
    subjects = P.subjects(world, need_finetune=True)
    ests = [estimate(s, P.n_probe, P.position, progress=progress) for s in subjects]
    runs = finetune_many([(s, world.finetune_config(k), None) for s in subjects for k in world.seeds], progress)
    return Result(world, ests, by_history(runs, world.n_seeds), alignments(ests, runs, world.n_seeds), subjects)


def step_table(res: Result, steps=REPORT_STEPS) -> pd.DataFrame:
    """At the reported steps, each history's chosen layer: mean ± std over histories of the
    per-history seed means of cos(d_t, .), with the paper's figures beside ours."""
    T = res.world.finetune.steps
    rows = []
    for s in [s for s in steps if s <= T]:
        row = {"step": s}
        for name in res.cos:
            a = stats.nested(res.at_layer(name)[:, :, s])
            row[f"cos(d_t, {name})"] = f"{a['mean']:.3f} ± {a['std']:.3f}"
        row["paper (v_rev)"] = "{:.3f} ± {:.3f}".format(*PAPER[str(s)]) if str(s) in PAPER else ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("step")


def history_table(res: Result, steps=(1, 20)) -> pd.DataFrame:
    """Each history on its own: its chosen layer and mean ± std over its seeds of cos(d_t, v_rev)."""
    T = res.world.finetune.steps
    a = res.at_layer("v_rev")
    rows = []
    for h, layer in enumerate(res.layers):
        row = {"history": h, "layer": layer}
        for s in [s for s in steps if s <= T] + [T]:
            x = stats.aggregate(a[h, :, s])
            row[f"step {s}"] = f"{x['mean']:.3f} ± {x['std']:.3f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("history")


def harmfulness_pairs(res: Result) -> pd.DataFrame:
    """(history, seed, step) triples on the evaluation grid, step >= 1: alignment at the history's
    chosen layer and harmfulness."""
    a = res.at_layer("v_rev")
    rows = []
    for h, runs in enumerate(res.runs):
        for i, (seed, r) in enumerate(zip(res.world.seeds, runs)):
            for s in r.steps:
                if s == 0:
                    continue
                rows.append({"history": h, "seed": seed, "step": s, "alignment": float(a[h, i, s]),
                             "harmfulness": r.evals[s]["harmfulness"]})
    return pd.DataFrame(rows)


def correlations(pairs: pd.DataFrame) -> dict:
    """Spearman r of alignment with harmfulness; partial (step controlled) and within-step."""
    def safe(f, *args):
        try:
            return f(*args)
        except ValueError:  # e.g. harmfulness constant (never moved): undefined, not zero
            return None

    a, h, s = pairs["alignment"], pairs["harmfulness"], pairs["step"]
    out = {"spearman": safe(stats.spearman, a, h),
           "partial_spearman_step": safe(stats.partial_spearman, a, h, s)}
    w = safe(stats.within_group_spearman, a, h, s)
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

    return {measure: {part: stats.nested([[rise(r, part, measure) for r in runs] for runs in res.runs])
                      for part in ("trained", "untrained")} for measure in JUDGES}


def judge_table(split: dict) -> pd.DataFrame:
    """:func:`judge_split` as mean [95% interval over histories]."""
    def cell(x: dict) -> str:
        ci = "" if x["ci_low"] is None else f" [{x['ci_low']:+.3f}, {x['ci_high']:+.3f}]"
        return f"{x['mean']:+.3f}{ci}"
    return pd.DataFrame({measure.replace("_", " "): {f"{part} task{'s' if part == 'untrained' else ''}": cell(x)
                                                     for part, x in by.items()}
                         for measure, by in split.items()})


def judge_sentence(split: dict | None) -> str:
    """Whether complete compliant answers return on tasks never fine-tuned, in words chosen by the
    interval over histories (the mean over seeds when there is one history)."""
    if split is None:
        return "Your checkpoints' judge does not split harmful requests by task."
    x = split["exact_match"]["untrained"]
    lo = x["ci_low"] if x["ci_low"] is not None else x["mean"]
    hi = x["ci_high"] if x["ci_high"] is not None else x["mean"]
    if lo > 0:
        return ("Complete compliant answers return on tasks never fine-tuned, so the rise is not only the "
                "fine-tuned task's own tokens.")
    if hi < 0:
        return "Complete compliant answers on tasks never fine-tuned fall below theta_S's level."
    return ("On tasks never fine-tuned, the rise of complete compliant answers is not resolved from zero: "
            "the measured rise may be task learning rather than reversion.")


def interval_text(a: dict) -> str:
    """A history-level summary's interval, in words (one history has none)."""
    if a.get("ci_low") is None:
        return "one history: no interval over histories"
    return f"{a['level']:.0%} interval over {a['n']} histories {a['ci_low']:.3f} to {a['ci_high']:.3f}"


def paper_comparison(m: dict) -> str:
    """Where our step-1 and step-20 alignment fall against the paper's, in words."""
    parts = []
    for s, (pm, ps) in PAPER.items():
        if s not in m["alignment"]:
            continue
        ours = m["alignment"][s]["mean"]
        rel = "above" if ours > pm + ps else "below" if ours < pm - ps else "within one paper std of"
        parts.append(f"at step {s} ours is {rel} the paper's figure")
    return ("Compared with the paper: " + "; ".join(parts) + ". The organism is one small model, so "
            "the direction of the effect, not the exact value, is what it can reproduce.") if parts else ""


def metrics(P: Params, res: Result) -> dict:
    """History-level summaries (the history is the unit of replication; seeds are nested in it)."""
    T = res.world.finetune.steps
    a = res.at_layer("v_rev")
    al, al_min = {}, {}
    for s in [s for s in REPORT_STEPS if s <= T]:
        al[str(s)] = stats.nested(a[:, :, s])
        al_min[str(s)] = float(a[:, :, s].min())
    c = res.cos["v_rev"]
    final_all = {str(l): stats.nested(c[:, :, T, l]) for l in range(c.shape[3])}
    corr = correlations(harmfulness_pairs(res))
    controls = {name: {str(s): stats.nested(res.at_layer(name)[:, :, s]) for s in [1, T]}
                for name in res.cos if name != "v_rev"}
    return {"layer": res.layer, "layers": res.layers, "T": T, "judge_split": judge_split(res),
            "n_histories": len(res.runs), "n_seeds": len(res.runs[0]),
            "alignment": al, "alignment_min_over_seeds": al_min, "final_alignment": stats.nested(a[:, :, T]),
            "final_alignment_by_layer": final_all,
            "control_alignment": controls,
            "spearman_alignment_harmfulness": corr["spearman"],
            "partial_spearman_given_step": corr["partial_spearman_step"],
            "within_step_spearman": corr["within_step_spearman"],
            "paper": {"alignment": {k: {"mean": m, "std": s} for k, (m, s) in PAPER.items()},
                      "spearman_alignment_harmfulness": 0.958}}


def save(P: Params, res: Result) -> dict:
    return write_chapter(STEM, __name__, P, res, metrics(P, res))
