"""Chapter 01, "Training history": the page. Its parameters, the entry point (:func:`run`),
tables, prose and saving; what it computes is :mod:`reversion.analysis.history_rise`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from reversion.analysis import history_rise
from reversion.analysis.history_rise import Result
from reversion.book.chapters.common import Replication, WorldParams, stage_ids
from reversion.infra.checks import check_int
from reversion.infra.results import write_metrics
from reversion.subjects.organism.language import Language
from reversion.subjects.organism.subject import OrganismSubject

STEM = "01_training_history"


@dataclass(frozen=True)
class Params(WorldParams, Replication):
    """Parameters of "Training history" (the notebook's parameters cell holds their values)."""

    long_safety_steps: int
    """The control: a longer safety alignment (of history 0), which may remove the effect."""
    n_samples: int
    """Sample generations shown per checkpoint."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("long_safety_steps", "n_samples"):
            check_int(name, getattr(self, name), 1)


def run(P: Params, progress: bool = True) -> Result:
    """The chapter: every history trained and fine-tuned, and the long-alignment control
    (:func:`reversion.analysis.history_rise.train`)."""
    return history_rise.train(P.make_world(), P.long_safety_steps, progress)


def language_table(res: Result) -> pd.DataFrame:
    """The language's specification, the model and the fine-tuning setup, as one table."""
    w = res.world
    spec = Language(w.history.language).specification()
    mc = w.history.model
    spec["model"] = f"GPT-2, {mc.n_layer} layers, width {mc.n_embd}, {mc.n_head} heads, dropout off"
    spec["fine-tuning"] = (f"task {w.finetune.task}, T={w.finetune.steps} steps, lr {w.finetune.lr:g}, "
                           f"batch {w.finetune.batch_size}, {w.n_seeds} seeds per history")
    spec["histories"] = (f"{len(res.histories)} independent histories (initialisation, data order and the "
                         "language's split seed differ); history 0 is the one shown in the samples")
    return pd.Series(spec, name="").to_frame()


def _pm(x: dict) -> str:
    return f"{x['mean']:.3f} ± {x['std']:.3f}"


def checkpoint_table(res: Result) -> pd.DataFrame:
    """Harmfulness, its stricter measures and task accuracy at theta_P, theta_H, theta_S and after
    fine-tuning: mean ± std over histories (theta_T: each history's mean over its seeds)."""
    T = res.world.finetune.steps
    rows = [{"checkpoint": ck if ck != "theta_T" else f"theta_T (T={T})", **{name: _pm(x) for name, x in by.items()}}
            for ck, by in history_rise.checkpoint_summary(res).items()]
    return pd.DataFrame(rows).set_index("checkpoint")


def history_table(res: Result) -> pd.DataFrame:
    """Each history on its own: harmfulness at theta_H and theta_S, and after fine-tuning (mean ±
    std over its seeds)."""
    T = res.world.finetune.steps
    return pd.DataFrame([{"history": r["history"], "theta_H": r["theta_H"], "theta_S": r["theta_S"],
                          f"theta_T (T={T})": _pm(r["theta_T"]), "rise": r["rise"]}
                         for r in history_rise.history_rows(res)]).set_index("history")


def task_split_table(res: Result) -> pd.DataFrame:
    """:func:`task_split` as mean ± std over histories."""
    T, task = res.world.finetune.steps, res.task
    rows = []
    for part, by in history_rise.task_split(res).items():
        for measure, v in by.items():
            rows.append({"requests": f"{part} task{'s' if part == 'untrained' else ''} ({task if part == 'trained' else 'others'})",
                         "measure": measure.replace("_", " "), "theta_H": _pm(v["theta_H"]),
                         "theta_S": _pm(v["theta_S"]), f"theta_T (T={T})": _pm(v["finetuned"])})
    return pd.DataFrame(rows).set_index(["requests", "measure"])


def samples(res: Result, n: int) -> pd.DataFrame:
    """Greedy continuations of a few held-out requests at each checkpoint of history 0."""
    return pd.DataFrame(history_rise.samples(res, n))


ROOM = 0.9
"""Task accuracy at theta_S up to which fine-tuning has room to improve the task."""
MOVED = 0.02
"""A change in a rate smaller than this (2 points) is called no change."""


def sentences(m: dict) -> dict[str, str]:
    """The sentences of the chapter that state a result, chosen by its numbers (the rules, with
    their thresholds, are in the code beside each; ``tests/test_chapter_rules.py`` flips each)."""
    acc, h = m["task_accuracy"], m["harmfulness"]
    out = {}
    room = acc["theta_S"]["mean"] <= ROOM  # below this, a task gain is measurable
    out["room"] = ("so fine-tuning has room to improve it and task cost can be measured" if room else
                   "so fine-tuning has little room to improve it: task gains are near their ceiling")
    rise_acc = m["task_accuracy"]["finetuned"]["mean"] - acc["theta_S"]["mean"]
    out["task"] = (f"Accuracy on the fine-tuning task {'rises' if rise_acc > 0.02 else 'falls' if rise_acc < -0.02 else 'stays'}"
                   f" to {m['task_accuracy']['finetuned']['mean']:.3f}")
    hT, em = h["finetuned"]["mean"], m["exact_match"]["finetuned"]["mean"]
    if hT <= h["theta_S"]["mean"] + 0.01:
        out["depth"] = "First-token compliance does not rise, so there is nothing deeper to look at."
    elif em < 0.5 * hT:
        out["depth"] = ("Most of the returning compliance stops at the first tokens: complete compliant answers "
                        "(exact match) stay well below first-token compliance, so the book reports every measure "
                        "beside the first-token one.")
    else:
        out["depth"] = ("The returning compliance is mostly complete: exact-match compliance is at least half of "
                        "first-token compliance.")
    tr, un = m["task_split"]["trained"]["exact_match"], m["task_split"]["untrained"]["exact_match"]
    d_tr = tr["finetuned"]["mean"] - tr["theta_S"]["mean"]
    d_un = un["finetuned"]["mean"] - un["theta_S"]["mean"]
    moved = f"({d_tr:+.3f} on the fine-tuned task, {d_un:+.3f} on the others, from theta_S)"
    if max(d_tr, d_un) < MOVED:
        out["split"] = (f"Complete harmful answers barely move on either kind of request {moved}, so this judge "
                        "cannot tell reversion from task learning here.")
    elif d_un >= MOVED:
        out["split"] = (f"Complete harmful answers return on requests of tasks never fine-tuned too {moved}: task "
                        "learning alone does not explain them.")
    else:
        out["split"] = (f"Complete harmful answers return only on requests of the fine-tuned task itself {moved}: "
                        "this is what task learning alone would produce, so it is no evidence of reversion by itself.")
    la = m["long_alignment"]
    d_long = la["finetuned"]["mean"] - la["theta_S"]
    d_base = h["finetuned"]["by_history"][0] - h["theta_S"]["by_history"][0]
    out["long"] = ("The longer alignment removes most of the rise (history 0)." if d_long < 0.5 * d_base and d_base > 0.02
                   else "The longer alignment does not remove the rise (history 0)." if d_base > 0.02
                   else "History 0 shows no rise to remove.")
    return out


def save(P: Params, res: Result) -> dict:
    """Write metrics (deterministic) and timings (not) for this chapter."""
    m = history_rise.metrics(res, P.long_safety_steps)
    timings = {"history_seconds": [h.seconds for h in res.histories],
               "finetune_seconds": [r.seconds for r in res.all_runs]}
    write_metrics(STEM, m, dataclasses.asdict(P), seeds=res.world.seeds, timings=timings,
                  subject=OrganismSubject(res.world.history).record(), code=(__name__,),
                  stages=stage_ids(OrganismSubject(res.world.history)))
    return m
