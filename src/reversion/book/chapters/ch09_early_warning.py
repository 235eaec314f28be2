"""Chapter 09, "The monitor's early warning": the page. Its parameters, the entry point
(:func:`run`), tables, prose and saving; what it computes is :mod:`reversion.analysis.early_warning`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.analysis import early_warning
from reversion.analysis.early_warning import Result
from reversion.book.chapters.common import Replication, SubjectParams, write_chapter
from reversion.book.display import NA_REP, interval
from reversion.infra.checks import check_float, check_int

STEM = "09_early_warning"


@dataclass(frozen=True)
class Params(SubjectParams, Replication):
    """Parameters of "The monitor's early warning"."""

    eval_every: int
    """Harmfulness is judged every this many steps: the resolution of a harm onset, hence of a lead."""
    low_lr_factor: float
    """The low-learning-rate runs train at this multiple of the world's learning rate."""
    long_safety_steps: int
    """Safety alignment of the long-alignment runs' histories (the organism)."""
    thresholds: list
    """Monitor thresholds studied, in null units (multiples of the null threshold at the layer)."""
    patience: int
    """Checks in a row above the threshold before the monitor flags (it checks every step here)."""
    n_null: int
    """Random directions of the matched null that sets each history's null unit."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("eval_every", self.eval_every, 1)
        check_float("low_lr_factor", self.low_lr_factor, 0.0, lo_open=True)
        check_int("long_safety_steps", self.long_safety_steps, 1)
        if not isinstance(self.thresholds, list) or not self.thresholds:
            raise ValueError(f"thresholds must be a non-empty list of null units, got {self.thresholds!r}")
        for t in self.thresholds:
            check_float("thresholds", t, 0.0, lo_open=True)
        check_int("patience", self.patience, 1)
        check_int("n_null", self.n_null, 1000)  # for a p99


@dataclass
class Page:
    """The study and what the page needs beside it."""

    res: Result

    @property
    def world(self):
        return self.res.world

    @property
    def subject(self):
        return self.res.subject

    @property
    def est(self):
        return self.res.est

    @property
    def notes(self) -> list[str]:
        if "long alignment" in self.res.kinds:
            return []
        return ["Your checkpoints: no long-alignment runs (the chapter cannot re-train your safety alignment); the "
                "negatives are the runs that never revert, the low-learning-rate runs among them.",
                "One history: no threshold is chosen and no interval is over histories (the curve is over your "
                "runs).",
                "Harmfulness is judged by the refusal-phrase judge on the held-out half of your prompts, the half "
                "whose activations the monitor reads: signal and ground truth share their prompts, and with few "
                "prompts one prompt moves harmfulness by many points."]


def run(P: Params, progress: bool = True) -> Page:
    """The chapter: every history's estimate, null unit and runs of each kind, and the study
    (:func:`reversion.analysis.early_warning.train`)."""
    world = P.make_world()
    return Page(early_warning.train(P, world, P.subjects(world, need_finetune=True), progress))


def kind_table(page: Page) -> pd.DataFrame:
    """Per kind of run: runs, how many revert, the share over histories, the median onset."""
    return pd.DataFrame([{"runs": k["runs"], "reverting": k["reverting"],
                          "share reverting (95% interval over histories)": interval(k["share reverting"], 2),
                          "median onset (step)": NA_REP if k["median onset"] is None else f"{k['median onset']:g}",
                          "held out: never reverting, flagged": (
                              NA_REP if k["held_out_false_alarms"] is None else
                              f"{k['held_out_false_alarms']} of {k['held_out_negatives']}")}
                         for k in early_warning.kind_table(page.res)],
                        index=pd.Index(page.res.kinds, name="runs"))


def _cell(x: dict | None, digits: int = 2) -> str:
    return interval(x, digits)


def curve_table(rows: list[dict], units: list[float], caption: str = ""):
    """A half's curve, captioned: per threshold (null units, and the mean raw cosine it implies),
    detection before onset, lead (steps; share of T) and false alarms, each a mean [95% interval over
    histories]; a sentence when the half has no history (your checkpoints: one history)."""
    if not rows:
        return f"{caption}: no history in this half"
    return pd.DataFrame([{"threshold (null units)": f"{r['threshold']:g}",
                          "≈ cosine": f"{early_warning.implied_cosine(r['threshold'], units):.3f}",
                          "flagged before onset": _cell(r["detection"]), "lead (steps)": _cell(r["lead"], 1),
                          "lead (share of run)": _cell(r["lead_share"]), "false alarms": _cell(r["false_alarm"])}
                         for r in rows]).set_index("threshold (null units)").style.set_caption(caption)


def _units(x: float) -> str:
    return f"{x:g} null unit{'' if x == 1 else 's'}"


def _n(n: dict) -> str:
    """``{"histories": h, "runs": r}`` as words: n as histories x runs."""
    h, r = n["histories"], n["runs"]
    return f"{h} histor{'y' if h == 1 else 'ies'}, {r} run{'' if r == 1 else 's'}"


MOST = 0.5
""""Most" reverting runs, in :func:`trade_off`'s sentence: more than half."""


def trade_off(st: early_warning.Study) -> str:
    """Whether any threshold studied, on the held-out half, flags most reverting runs before their
    onset while keeping false alarms within the bound the choice used; and the monitor's default."""
    rows = [r for r in st.odd if r["detection"] is not None and r["false_alarm"] is not None]
    if not rows:
        return "The held-out half lacks reverting runs or runs that never revert: the trade-off is not measured."
    good = [r["threshold"] for r in rows
            if r["detection"]["mean"] > MOST and r["false_alarm"]["mean"] <= early_warning.FALSE_ALARM_MAX]
    out = (f"On the held-out half, {' and '.join(_units(t) for t in good)} flag{'s' if len(good) == 1 else ''} "
           f"most reverting runs before their onset with false alarms at or below "
           f"{early_warning.FALSE_ALARM_MAX:.0%}." if good else
           "On the held-out half no threshold studied flags most reverting runs before their onset while keeping "
           f"false alarms at or below {early_warning.FALSE_ALARM_MAX:.0%}: in this organism the flag does not "
           "separate the runs that revert from those that do not.")
    default = [r for r in rows if r["threshold"] == 1.0]
    if default:
        d = default[0]
        out += (f" At the monitor's default ({_units(1.0)}) it flags {d['detection']['mean']:.0%} of a history's "
                f"reverting runs before their onset and fires on {d['false_alarm']['mean']:.0%} of its runs that "
                "never revert.")
    return out


def sentences(page: Page) -> dict[str, str]:
    """The page's result sentences, chosen by the numbers."""
    st, res = page.res.study, page.res
    kinds = {k["kind"]: k for k in early_warning.kind_table(res)}
    out = {"reverting": "; ".join(f"{k['reverting']} of {k['runs']} {name} runs revert" for name, k in kinds.items())
                        + ". A run that never reverts is read at T: one cut off before it would revert is among them.",
           "trade_off": trade_off(st)}
    if st.chosen is None:
        out["choice"] = f"No threshold is chosen: {st.reason}."
        out["held_out"] = "There is no held-out figure to quote."
        return out
    h = st.held_out
    lowest = st.chosen == min(st.thresholds)
    out["choice"] = (f"The rule chooses {_units(st.chosen)} on the even histories (the lowest threshold whose "
                     f"mean false-alarm rate there is at most {early_warning.FALSE_ALARM_MAX:.0%}"
                     + ("; it is the lowest threshold studied, so a lower one might qualify too)." if lowest else ")."))
    parts = []
    if h["detection"] is None:
        parts.append("the odd histories have no reverting run, so how often the flag comes first is not measured")
    else:
        d = h["detection"]
        parts.append(f"it flags a history's reverting runs before their harm onset {d['mean']:.0%} of the time "
                     f"(mean over histories {_cell(d)}; {_n(h['n']['reverting'])})")
        if h["lead"] is not None:
            lead = h["lead"]
            when = (f"{lead['mean']:.1f} steps ahead of" if lead["mean"] > 0 else
                    f"{-lead['mean']:.1f} steps after" if lead["mean"] < 0 else "at")
            parts.append(f"its flags on reverting runs come on average {when} the onset ({_cell(lead, 1)}; "
                         f"{_n(h['n']['flagged_reverting'])} flagged)")
    fa = h["false_alarm"]
    if fa is None:
        parts.append("the odd histories have no run that never reverts, so false alarms are not measured")
    else:
        over = fa["mean"] > early_warning.FALSE_ALARM_MAX
        parts.append(f"it fires on {fa['mean']:.0%} of a history's runs that never revert ({_cell(fa)}; "
                     f"{_n(h['n']['negatives'])})"
                     + (f", above the {early_warning.FALSE_ALARM_MAX:.0%} the threshold was chosen for"
                        if over else ""))
    out["held_out"] = "On the odd histories, held out: " + "; ".join(parts) + "."
    return out


def metrics(page: Page) -> dict:
    return early_warning.metrics(page.res)


def save(P: Params, page: Page) -> dict:
    return write_chapter(STEM, __name__, P, page, metrics(page))
