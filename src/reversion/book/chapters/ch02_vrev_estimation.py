"""Chapter 02: estimating v_rev, its stability, the layer, its vocabulary readout, controls."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.book.chapters.common import SubjectParams, write_chapter
from reversion.core import stats
from reversion.infra import paths
from reversion.infra.checks import check_choice, check_float, check_int
from reversion.stages.estimate import (
    VRevEstimate,
    estimate,
    stability_vs_probes,
    summary,
)
from reversion.stages.readout import readout
from reversion.subjects.base import Subject
from reversion.subjects.organism.worlds import World

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


@dataclass
class Result:
    world: World
    est: VRevEstimate
    layers: pd.DataFrame
    by_size: dict
    readout: dict
    subject: Subject
    """The organism or your checkpoints."""
    ests: list[VRevEstimate] | None = None
    """Every history's estimate (history 0 is :attr:`est`); None: history 0 only."""

    @property
    def sizes(self) -> list[int]:
        return sorted(self.by_size)

    @property
    def notes(self) -> list[str]:
        """What differs from the organism's chapter (printed under the parameters)."""
        notes = self.subject.describe()
        n = self.est.acts["H"].shape[0]
        if notes:
            notes.append(f"Stability against the number of probes: sizes {self.sizes} (the estimation half holds "
                         f"{n} prompts).")
        extra = self.readout["v_rev"]
        if "answer_openers" in extra:
            notes.append("Vocabulary readout: tokens decoded by your tokenizer (quoted). 'Answer-opening' tokens "
                         "are the witness's greedy first tokens on the estimation prompts "
                         f"({', '.join(extra['answer_openers']) or 'none besides the refusal token'}); the refusal "
                         f"token is the first token of refusal_response ({extra['refusal_token']}). The organism's "
                         "harmful-token comparison has no text counterpart.")
        return notes


def readout_table(readout: dict) -> pd.DataFrame:
    """Top and bottom tokens of each readout, side by side."""
    cols = {}
    for label, r in readout.items():
        cols[f"{label}: top"] = [f"{t} ({x:+.2f})" for t, x in r["top"]]
        cols[f"{label}: bottom"] = [f"{t} ({x:+.2f})" for t, x in r["bottom"]]
    return pd.DataFrame(cols)


def readout_verdict(m: dict) -> str:
    x = m["readout"]["v_rev"]["compliance_minus_refusal"]
    if x is None:
        return "undefined: the witness opens its answers with the refusal's own first token"
    if x > 0:
        return "v_rev favours answer-opening over refusal-opening tokens, as the paper's later version reports"
    return "v_rev does not favour answer-opening over refusal-opening tokens, unlike the paper's report"


def probe_sizes(P: Params, est: VRevEstimate) -> list[int]:
    """The sizes of the stability-versus-probes curve: those of ``probe_sizes`` the estimate has,
    and all of its probes."""
    n = est.acts["H"].shape[0]
    return sorted({k for k in P.probe_sizes if k <= n} | {n})


def run(P: Params, progress: bool = True) -> Result:
    """What the notebook shows, in one call: stage ``estimate`` (every history), the per-layer table,
    the stability against the number of probes and stage ``readout`` (history 0)."""
    world = P.make_world()
    subject = P.subject(world)
    est = estimate(subject, P.n_probe, P.position, P.n_boot, P.min_stability, progress)
    others = [estimate(s, P.n_probe, P.position, P.n_boot, P.min_stability, progress) for s in P.subjects(world)[1:]]
    return analyse(P, world, subject, est, readout(subject, est, P.top_k), [est, *others])


def analyse(P: Params, world: World, subject: Subject, est: VRevEstimate, vocabulary: dict,
            ests: list[VRevEstimate] | None = None) -> Result:
    """The per-layer table and the stability against the number of probes, with the readout."""
    layers = pd.DataFrame(summary(est)["rows"]).set_index("layer")
    by_size = stability_vs_probes(est, est.layer, probe_sizes(P, est), P.n_boot, subject.seed)
    return Result(world, est, layers, by_size, vocabulary, subject, ests)


def _cos(d, name: str, layer: int) -> float | None:
    v = getattr(d, name)
    return None if v is None else float(d.v_rev[layer] @ v[layer])


def history_geometry(res: Result) -> pd.DataFrame:
    """Each history's chosen layer, the stability there and the cosines of its v_rev with its own
    v_P and r_S: how much of the geometry is one history's accident."""
    rows = []
    for h, e in enumerate(res.ests or [res.est]):
        d, l = e.directions, e.layer
        rows.append({"history": h, "layer": l, "stability": float(e.stability[:, l].mean()),
                     "cos(v_rev, v_P)": _cos(d, "v_P", l), "cos(v_rev, r_S)": _cos(d, "r_S", l)})
    return pd.DataFrame(rows).set_index("history")


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


def save(P: Params, res: Result) -> dict:
    """metrics.json plus ``v_rev.safetensors`` (all layers, metadata) beside it."""
    d = res.est.directions
    layer = res.est.layer
    m = {
        "layer": layer, "layer_reason": d.meta["layer_reason"], "width": int(d.v_rev.shape[1]),
        "stability": stats.aggregate(res.est.stability[:, layer]),
        "stability_by_n_probes": {str(k): v for k, v in res.by_size.items()},
        "displacement_norm": float(d.displacement_norm[layer]),
        "relative_displacement": float(d.displacement_norm[layer] / d.activation_norm[layer]),
        "cos_v_rev_v_P": float(d.v_rev[layer] @ d.v_P[layer]) if d.v_P is not None else None,
        "cos_v_rev_r_S": float(d.v_rev[layer] @ d.r_S[layer]) if d.r_S is not None else None,
        "readout": res.readout,
        "by_layer": res.layers.reset_index().to_dict(orient="records"),
    }
    g = history_geometry(res)

    def across(col: str):
        vals = g[col].tolist()
        return None if any(v is None or v != v for v in vals) else stats.nested([[v] for v in vals])

    m["across_histories"] = {"n": len(g), "layers": [int(x) for x in g["layer"]],
                             "cos_v_rev_v_P": across("cos(v_rev, v_P)"), "cos_v_rev_r_S": across("cos(v_rev, r_S)"),
                             "stability": stats.nested([[v] for v in g["stability"]])}
    # The direction file first: a metrics.json that exists always has its direction beside it.
    d.save(paths.results_dir() / STEM / "v_rev.safetensors")
    return write_chapter(STEM, __name__, P, res, m, fine_tunes=False)
