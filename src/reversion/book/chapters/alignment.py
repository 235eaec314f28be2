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
from reversion.subjects.organism.worlds import World

STEM = "03_alignment"
REPORT_STEPS = (1, 5, 10, 20, 50, 100)
PAPER = {"1": (0.429, 0.052), "20": (0.647, 0.021)}


@dataclass(frozen=True)
class Params(SubjectParams):
    """Parameters of chapter 03."""

    n_seeds: int
    """Fine-tuning seeds (>= 5 for the book)."""
    n_probe: int
    """Probe prompts per set (v_rev estimation and drift)."""
    position: str
    """``last`` prompt token or ``mean`` over prompt tokens."""

    def __post_init__(self) -> None:
        check_int("n_seeds", self.n_seeds, 2)  # a spread needs two seeds
        check_int("n_probe", self.n_probe, 4)
        check_choice("position", self.position, ("last", "mean"))

    def make_world(self) -> World:
        return super().make_world(finetune={"n_probe": self.n_probe})


@dataclass
class Result:
    world: World
    est: VRevEstimate
    runs: list[FinetuneRun]
    cos: dict[str, np.ndarray]
    """direction name -> ``[n_seeds, T+1, L+1]`` cosines of drift with it."""
    subject: Subject
    """The organism or your checkpoints."""

    @property
    def layer(self) -> int:
        return self.est.layer

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


def run(P: Params, progress: bool = True) -> Result:
    """What the notebook shows, in one call: stages ``estimate`` and ``finetune`` (one run per
    seed), then the alignment of each run's drift with every direction."""
    check(P)
    world = P.make_world()
    subject = P.subject(world, need_finetune=True)
    est = estimate(subject, P.n_probe, P.position, progress=progress)
    runs = finetune_many([(subject, world.finetune_config(s), None) for s in world.seeds], progress)
    cos = {name: np.stack([drift_alignment(r.probe_means, v) for r in runs]) for name, v in directions(est).items()}
    return Result(world, est, runs, cos, subject)


def step_table(res: Result, layer: int | None = None, steps=REPORT_STEPS) -> pd.DataFrame:
    """Mean +- std over seeds of cos(d_t, .) at the reported steps, with the paper's figures."""
    layer = res.layer if layer is None else layer
    T = res.world.finetune.steps
    rows = []
    for s in [s for s in steps if s <= T]:
        row = {"step": s}
        for name, c in res.cos.items():
            a = stats.aggregate(c[:, s, layer])
            row[f"cos(d_t, {name})"] = f"{a['mean']:.3f} ± {a['std']:.3f}"
        row["paper (v_rev)"] = "{:.3f} ± {:.3f}".format(*PAPER[str(s)]) if str(s) in PAPER else ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("step")


def harmfulness_pairs(res: Result, layer: int | None = None) -> pd.DataFrame:
    """(seed, step) pairs on the evaluation grid, step >= 1: alignment and harmfulness."""
    layer = res.layer if layer is None else layer
    rows = []
    for i, (seed, r) in enumerate(zip(res.world.seeds, res.runs)):
        for s in r.steps:
            if s == 0:
                continue
            rows.append({"seed": seed, "step": s, "alignment": float(res.cos["v_rev"][i, s, layer]),
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
    layer, T = res.layer, res.world.finetune.steps
    al, al_min = {}, {}
    for s in [s for s in REPORT_STEPS if s <= T]:
        al[str(s)] = stats.aggregate(res.cos["v_rev"][:, s, layer])
        al_min[str(s)] = float(res.cos["v_rev"][:, s, layer].min())
    final_all = {str(l): stats.aggregate(res.cos["v_rev"][:, T, l]) for l in range(res.cos["v_rev"].shape[2])}
    corr = correlations(harmfulness_pairs(res))
    controls = {name: {str(s): stats.aggregate(c[:, s, layer]) for s in [1, T]}
                for name, c in res.cos.items() if name != "v_rev"}
    return {"layer": layer, "T": T, "alignment": al, "alignment_min_over_seeds": al_min,
            "final_alignment_by_layer": final_all,
            "control_alignment": controls,
            "spearman_alignment_harmfulness": corr["spearman"],
            "partial_spearman_given_step": corr["partial_spearman_step"],
            "within_step_spearman": corr["within_step_spearman"],
            "paper": {"alignment": {k: {"mean": m, "std": s} for k, (m, s) in PAPER.items()},
                      "spearman_alignment_harmfulness": 0.958}}


def save(P: Params, res: Result) -> dict:
    return write_chapter(STEM, __name__, P, res, metrics(P, res))
