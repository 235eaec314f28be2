"""Chapter 02, "v_rev": the page. Its parameters, the entry point (:func:`run`), tables, prose
and saving; what it computes is :mod:`reversion.analysis.estimation`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.analysis import estimation, rules, verdicts
from reversion.analysis.estimation import Result, history_geometry
from reversion.book.chapters.common import SubjectParams, write_chapter
from reversion.book.display import interval
from reversion.infra import paths
from reversion.infra.checks import check_choice, check_float, check_int

STEM = "02_vrev_estimation"


@dataclass(frozen=True)
class Params(SubjectParams):
    """Parameters of chapter 02."""

    n_probe: int
    """Harmful (and harmless) probe prompts from the ``probe_vrev`` split (organism only;
    with checkpoints: the estimation half of the prompt file)."""
    position: str
    """``last`` prompt token or ``mean`` over prompt tokens."""
    n_boot: int
    """Bootstrap splits for the split-half stability."""
    min_stability: float
    """Stability a layer needs to be chosen (see the layer rule)."""
    probe_sizes: list
    """Numbers of probes for the stability-versus-probes curve."""
    top_k: int
    """Tokens shown at each end of the vocabulary readout."""
    n_histories: int
    """Independent organism histories whose directions are compared (your checkpoints: one)."""

    def __post_init__(self) -> None:
        check_int("n_probe", self.n_probe, 4)
        check_int("n_histories", self.n_histories, 1)
        check_int("top_k", self.top_k, 1)
        check_choice("position", self.position, ("last", "mean"))
        check_float("min_stability", self.min_stability, 0.0, 1.0, lo_open=True, hi_open=True)
        bad = [n for n in self.probe_sizes if not isinstance(n, int) or not 4 <= n <= self.n_probe]
        if bad:
            raise ValueError(f"probe_sizes must be ints in [4, n_probe={self.n_probe}], got {bad}")


def run(P: Params, progress: bool = True) -> Result:
    """The chapter: every history's estimate, history 0's layer table, stability and readout
    (:func:`reversion.analysis.estimation.train`)."""
    world = P.make_world()
    subjects = P.subjects(world)
    return estimation.train(P, world, P.subject(world), subjects[1:], progress)


def readout_table(readout: dict) -> pd.DataFrame:
    """Top and bottom tokens of each readout, side by side."""
    cols = {}
    for label, r in readout.items():
        cols[f"{label}: top"] = [f"{t} ({x:+.2f})" for t, x in r["top"]]
        cols[f"{label}: bottom"] = [f"{t} ({x:+.2f})" for t, x in r["bottom"]]
    return pd.DataFrame(cols)


def readout_verdict(m: dict) -> str:
    """The readout over histories in words, chosen by the rule of its claim (V2-b): v_rev's
    interval against the logit margin, and its contrast with every control direction's."""
    ro = m.get("readout_over_histories")
    if ro is None:
        return "undefined: the witness opens its answers with the refusal's own first token"
    lm = rules.margin("logit")
    v = ro["v_rev"]
    where = verdicts.side(v, +1, lm)
    text = f"over {v['n']} histor{'y' if v['n'] == 1 else 'ies'}, {interval(v)}"
    if where == "null" or where == "wrong":
        return f"{text}: v_rev does not favour answer-opening over refusal-opening tokens beyond ±{lm:g}, unlike the paper's report"
    if where == "wide":
        return f"{text}: too wide to tell whether v_rev favours answer-opening tokens beyond ±{lm:g}"
    cons = {k: verdicts.side(c, +1, lm) for k, c in ro["contrasts"].items()}
    if all(c == "there" for c in cons.values()):
        return (f"{text}: v_rev favours answer-opening over refusal-opening tokens, and more than every control "
                f"direction ({', '.join(cons)}) by more than ±{lm:g}, as the paper's later version reports")
    same = [k for k, c in cons.items() if c in ("null", "wrong")]
    if same:
        return (f"{text}: v_rev favours answer-opening tokens, but so does {', '.join(same)} as much or more: "
                "the readout is not specific to v_rev")
    return f"{text}: v_rev favours answer-opening tokens; its margin over the control directions is too wide to tell"


NEAR = 0.9
"""|cos| at or above which two directions are called nearly the same (or opposite)."""


def geometry_sentence(m: dict) -> str:
    """What the histories' geometry says about "which past", chosen by the numbers."""
    g = m["across_histories"]
    vp, rs = g["cos_v_rev_v_P"], g["cos_v_rev_r_S"]
    if vp is None:
        return "Without a pretrained checkpoint there is no v_P to compare with."
    lo, hi = min(vp["by_history"]), max(vp["by_history"])
    n = g["n"]
    if lo >= NEAR:
        out = (f"In {'every one of the ' + str(n) + ' histories' if n > 1 else 'this history'}, v_rev is nearly v_P "
               f"(cos {lo:.2f} to {hi:.2f}): at the chosen layer the direction toward the helpful-only model is nearly "
               "the direction toward the pretrained one, so alignment with v_rev alone cannot say which past pulls "
               "(chapter 03 reports both).")
    elif hi >= NEAR:
        out = (f"v_rev is nearly v_P in some histories but not all (cos {lo:.2f} to {hi:.2f}): how much alignment "
               "with v_rev says about which past depends on the history.")
    else:
        out = (f"v_rev and v_P differ (cos {lo:.2f} to {hi:.2f}), so alignment with v_rev is not alignment with v_P "
               "under another name.")
    if rs is not None and max(rs["by_history"]) <= -NEAR / 1.5:
        out += (f" v_rev is also largely the opposite of the refusal direction (cos {min(rs['by_history']):.2f} to "
                f"{max(rs['by_history']):.2f}).")
    return out


def geometry_table(res: Result) -> pd.DataFrame:
    """Each history's chosen layer, stability there and cosines of its v_rev with its own v_P and r_S
    (:func:`reversion.analysis.estimation.history_geometry`)."""
    return history_geometry(res)


def save(P: Params, res: Result) -> dict:
    """metrics.json plus ``v_rev.safetensors`` (all layers, metadata) beside it."""
    m = estimation.metrics(res)
    # The direction file first: a metrics.json that exists always has its direction beside it.
    res.est.directions.save(paths.results_dir() / STEM / "v_rev.safetensors")
    return write_chapter(STEM, __name__, P, res, m, fine_tunes=False)
