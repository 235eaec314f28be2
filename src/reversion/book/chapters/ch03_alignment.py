"""Chapter 03, "Alignment": the page. Its parameters, the entry point (:func:`run`), tables,
prose and saving; what it computes is :mod:`reversion.analysis.alignment`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.analysis import alignment
from reversion.analysis.alignment import PAPER, REPORT_STEPS, Result
from reversion.book.chapters.common import Replication, SubjectParams, write_chapter
from reversion.book.display import interval
from reversion.infra.checks import check_choice, check_int

STEM = "03_alignment"


@dataclass(frozen=True)
class Params(SubjectParams, Replication):
    """Parameters of "Alignment"."""

    MIN_SEEDS = 2  # a spread over one history's seeds needs two

    n_probe: int
    """Probe prompts per set (v_rev estimation and drift)."""
    position: str
    """``last`` prompt token or ``mean`` over prompt tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("n_probe", self.n_probe, 4)
        check_choice("position", self.position, ("last", "mean"))

    def make_world(self):
        return super().make_world(finetune={"n_probe": self.n_probe})


def run(P: Params, progress: bool = True) -> Result:
    """The chapter: every history's estimate and runs, and each run's alignment
    (:func:`reversion.analysis.alignment.train`)."""
    world = P.make_world()
    return alignment.train(world, P.subjects(world, need_finetune=True), P.n_probe, P.position, progress)


def step_table(res: Result, steps=REPORT_STEPS) -> pd.DataFrame:
    """At the reported steps, each history's chosen layer: mean ± std over histories of the
    per-history seed means of cos(d_t, .), with the paper's figures beside ours."""
    rows = []
    for s, by in alignment.step_summary(res, steps).items():
        row = {"step": s, **{f"cos(d_t, {name})": f"{a['mean']:.3f} ± {a['std']:.3f}" for name, a in by.items()}}
        row["paper (v_rev)"] = "{:.3f} ± {:.3f}".format(*PAPER[str(s)]) if str(s) in PAPER else ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("step")


def history_table(res: Result, steps=(1, 20)) -> pd.DataFrame:
    """Each history on its own: its chosen layer and mean ± std over its seeds of cos(d_t, v_rev)."""
    return pd.DataFrame([{"history": h["history"], "layer": h["layer"],
                          **{f"step {s}": f"{x['mean']:.3f} ± {x['std']:.3f}" for s, x in h["steps"].items()}}
                         for h in alignment.history_summary(res, steps)]).set_index("history")


def judge_table(split: dict) -> pd.DataFrame:
    """:func:`reversion.analysis.alignment.judge_split` as mean [95% interval over histories]."""
    return pd.DataFrame({measure.replace("_", " "): {f"{part} task{'s' if part == 'untrained' else ''}": interval(x)
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


def save(P: Params, res: Result) -> dict:
    return write_chapter(STEM, __name__, P, res, alignment.metrics(res))
