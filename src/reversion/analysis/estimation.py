"""What the v_rev estimation chapter computes: the direction per layer, the chosen layer and its
stability, the stability against the number of probes, the vocabulary readout, and how much of
the geometry (cosines with v_P and r_S) is one history's accident.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.core import stats
from reversion.stages.estimate import VRevEstimate, estimate, stability_vs_probes, summary
from reversion.stages.readout import readout
from reversion.subjects.base import Subject
from reversion.subjects.organism.worlds import World


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
    readouts: list[dict] | None = None
    """Every history's readout (history 0's is :attr:`readout`); None: history 0 only."""

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


def probe_sizes(requested: list[int], est: VRevEstimate) -> list[int]:
    """The sizes of the stability-versus-probes curve: those of ``requested`` the estimate has,
    and all of its probes."""
    n = est.acts["H"].shape[0]
    return sorted({k for k in requested if k <= n} | {n})


def train(design, world: World, subject: Subject, others: list[Subject], progress: bool = True) -> Result:
    """Stage ``estimate`` (history 0 and the ``others``), the per-layer table, the stability
    against the number of probes and stage ``readout`` (every history)."""
    est = estimate(subject, design.n_probe, design.position, design.n_boot, design.min_stability, progress)
    rest = [estimate(s, design.n_probe, design.position, design.n_boot, design.min_stability, progress)
            for s in others]
    ros = [readout(s, e, design.top_k) for s, e in zip([subject, *others], [est, *rest])]
    return analyse(design, world, subject, est, ros[0], [est, *rest], ros)


def analyse(design, world: World, subject: Subject, est: VRevEstimate, vocabulary: dict,
            ests: list[VRevEstimate] | None = None, readouts: list[dict] | None = None) -> Result:
    """The per-layer table and the stability against the number of probes, with the readout."""
    layers = pd.DataFrame(summary(est)["rows"]).set_index("layer")
    by_size = stability_vs_probes(est, est.layer, probe_sizes(design.probe_sizes, est), design.n_boot, subject.seed)
    return Result(world, est, layers, by_size, vocabulary, subject, ests, readouts)


READ = "compliance_minus_refusal"


def readout_over_histories(readouts: list[dict]) -> dict | None:
    """v_rev's readout (mean answer-opening logit minus the refusal's) over histories, and its
    contrast with every control direction's (v_rev's minus the control's, paired by history);
    None where a history's readout is undefined (no answer-opening token). One history: the
    intervals are undefined."""
    if not readouts or any(r["v_rev"][READ] is None for r in readouts):
        return None
    controls = [k for k in readouts[0] if k != "v_rev" and all(k in r and r[k][READ] is not None for r in readouts)]
    return {"v_rev": stats.nested([[r["v_rev"][READ]] for r in readouts]),
            "controls": {k: stats.nested([[r[k][READ]] for r in readouts]) for k in controls},
            "contrasts": {k: stats.nested([[r["v_rev"][READ] - r[k][READ]] for r in readouts]) for k in controls}}


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


def metrics(res: Result) -> dict:
    """Every number of the chapter (``metrics.json``)."""
    d = res.est.directions
    layer = res.est.layer
    m = {
        "layer": layer, "width": int(d.v_rev.shape[1]),
        "stability": stats.aggregate(res.est.stability[:, layer]),
        "stability_by_n_probes": {str(k): v for k, v in res.by_size.items()},
        "displacement_norm": float(d.displacement_norm[layer]),
        "relative_displacement": float(d.displacement_norm[layer] / d.activation_norm[layer]),
        "cos_v_rev_v_P": float(d.v_rev[layer] @ d.v_P[layer]) if d.v_P is not None else None,
        "cos_v_rev_r_S": float(d.v_rev[layer] @ d.r_S[layer]) if d.r_S is not None else None,
        "readout": res.readout,
        "readout_over_histories": readout_over_histories(res.readouts or [res.readout]),
        "by_layer": res.layers.reset_index().to_dict(orient="records"),
    }
    g = history_geometry(res)

    def across(col: str):
        vals = g[col].tolist()
        return None if any(v is None or v != v for v in vals) else stats.nested([[v] for v in vals])

    m["across_histories"] = {"n": len(g), "layers": [int(x) for x in g["layer"]],
                             "cos_v_rev_v_P": across("cos(v_rev, v_P)"), "cos_v_rev_r_S": across("cos(v_rev, r_S)"),
                             "stability": stats.nested([[v] for v in g["stability"]])}
    return m
