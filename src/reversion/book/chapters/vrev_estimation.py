"""Chapter 02: estimating v_rev, its stability, the layer, its vocabulary readout, controls."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reversion.infra import paths
from reversion.core import stats
from reversion.core.directions import logit_lens
from reversion.subjects.organism.history import train_history
from reversion.subjects.organism.language import Language
from reversion.infra.results import write_metrics
from reversion.stages.estimate import VRevEstimate, stability_vs_probes, summary
from reversion.subjects.organism.worlds import World
from reversion.book.chapters.common import SubjectParams, estimate, subject_notes

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

    def __post_init__(self) -> None:
        if self.n_probe < 4:
            raise ValueError(f"n_probe must be >= 4, got {self.n_probe}")
        if self.position not in ("last", "mean"):
            raise ValueError(f"position must be 'last' or 'mean', got {self.position!r}")
        if not 0 < self.min_stability < 1:
            raise ValueError(f"min_stability must lie in (0, 1), got {self.min_stability}")
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
    subject: object = None
    """The :class:`~reversion.checkpoint_subject.Subject`, or None for the organism."""
    notes: list = field(default_factory=list)
    """What differs from the organism's chapter (printed under the parameters)."""


def readout(world: World, est: VRevEstimate, top_k: int) -> dict:
    """Logit-lens readout of v_rev (and of -r_S) through theta_S's unembedding at the chosen
    layer: top and bottom tokens, and compliance-opening minus refusal-opening logit."""
    lang = Language(world.history.language)
    model = train_history(world.history, progress=False).load("theta_S")
    out = {}
    names = lang.token_names
    openers = np.concatenate([lang.content, lang.harmful_tokens])
    layer = est.layer
    for label, vec in {"v_rev": est.directions.v_rev[layer],
                       "-r_S": -est.directions.r_S[layer]}.items():
        logits = logit_lens(model, vec).numpy()
        order = np.argsort(logits)
        out[label] = {
            "top": [(names[i], float(logits[i])) for i in order[::-1][:top_k]],
            "bottom": [(names[i], float(logits[i])) for i in order[:top_k]],
            "compliance_minus_refusal": float(logits[openers].mean() - logits[lang.refusal[0]]),
            "harmful_minus_refusal": float(logits[lang.harmful_tokens].mean() - logits[lang.refusal[0]]),
        }
    return out


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


def run(P: Params, progress: bool = True) -> Result:
    subject = P.subject()
    world = P.make_world()
    est = estimate(subject, world, P.n_probe, P.position, P.n_boot, P.min_stability, progress)
    layers = pd.DataFrame(summary(est)["rows"]).set_index("layer")
    if subject is None:
        by_size = stability_vs_probes(est, est.layer, list(P.probe_sizes), P.n_boot, world.history.seed)
        return Result(world, est, layers, by_size, readout(world, est, P.top_k))
    from reversion.subjects.checkpoints import subject as checkpoint_subject

    n = est.acts["H"].shape[0]
    sizes = sorted({k for k in P.probe_sizes if k <= n} | {n})
    notes = subject_notes(subject, world, finetunes=False)
    notes.append(f"Stability against the number of probes: sizes {sizes} (the estimation half holds {n} prompts).")
    by_size = stability_vs_probes(est, est.layer, sizes, P.n_boot, 0)
    ro = checkpoint_subject.readout(subject, est, P.top_k)
    notes.append("Vocabulary readout: tokens decoded by your tokenizer (quoted). 'Answer-opening' tokens are "
                 f"the witness's greedy first tokens on the estimation prompts ({', '.join(ro['v_rev']['answer_openers']) or 'none besides the refusal token'}); "
                 f"the refusal token is the first token of refusal_response ({ro['v_rev']['refusal_token']}). "
                 "The organism's harmful-token comparison has no text counterpart.")
    return Result(world, est, layers, by_size, ro, subject, notes)


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
    if getattr(res, "subject", None) is not None:
        m["subject"] = res.subject.record()
        # nan (no control direction) is not JSON: None
        m["by_layer"] = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
                         for row in m["by_layer"]]
    # The direction file first: a metrics.json that exists always has its direction beside it.
    d.save(paths.results_dir() / STEM / "v_rev.safetensors")
    write_metrics(STEM, m, P.recorded())
    return m
