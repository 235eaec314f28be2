"""Reading drift: how far, and in which direction, activations moved from theta_S.

Drift ``d_t = mean_x h_t(x) - mean_x h_S(x)`` over probe prompts; its *alignment* with a
direction ``v`` is ``cos(d_t, v)``. One set of functions for every reader: the
fine-tuning runs of the chapters (:func:`drift_alignment` over a whole trajectory), the
``reversion track`` stage and the :class:`~reversion.subjects.checkpoints.trainer_hooks.ReversionMonitor`
(:func:`read_drift` on one mean activation), and the threshold an alignment is compared
with: :func:`null_threshold` states the rule once (the book's null test, ``track`` and the
monitor all apply it), :func:`threshold` picks the layer's matched p99 or a given value.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from reversion.core import stats
from reversion.infra.checks import check_float

__all__ = ["alignment", "crossover", "weight_motion", "drift_alignment", "null_threshold", "read_drift",
           "residual_alignment", "first_flag", "streak", "threshold"]


def alignment(drift: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """cos(drift, direction) along the last axis; drift ``[..., L+1, d]``, direction ``[L+1, d]``.

    A zero drift (step 0) gives 0 rather than NaN: no motion has no alignment. A NaN or
    infinite entry is an error (it would otherwise read as a zero drift, i.e. alignment 0).
    """
    for name, t in (("drift", drift), ("direction", direction)):
        if not torch.isfinite(t).all():
            raise ValueError(f"alignment: {name} contains NaN or infinite values")
    num = (drift * direction).sum(-1)
    den = drift.norm(dim=-1) * direction.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def drift_alignment(probe_means: torch.Tensor, direction: torch.Tensor) -> np.ndarray:
    """``[T+1, L+1]``: cos(mu_t - mu_0, direction) for a trajectory of mean probe activations
    ``[T+1, L+1, d]`` whose step 0 is theta_S (0 at step 0)."""
    if probe_means.shape[1:] != direction.shape:
        raise ValueError(f"trajectory layers/width {tuple(probe_means.shape[1:])} do not match the "
                         f"direction's {tuple(direction.shape)}")
    return alignment(probe_means - probe_means[0], direction).numpy()


def read_drift(mu: torch.Tensor, mu_S: torch.Tensor, v: torch.Tensor,
               displacement: float | None = None) -> dict[str, float]:
    """Drift of one mean activation ``mu`` ``[d]`` from ``mu_S`` along ``v`` ``[d]``.

    ``alignment`` = cos(d, v); ``projection`` = d . v/|v| (activation units); ``drift_norm``
    = |d|; ``relative_projection`` = projection / ``displacement`` (1 = as far along v as
    the witness, when ``displacement`` = |mu_H - mu_S| is given and > 0, else None).
    """
    v = v.detach().double().cpu()
    norm = float(v.norm())
    if not torch.isfinite(v).all() or not norm > 0:
        raise ValueError("read_drift: the direction is zero or not finite")
    d = (mu.detach().double().cpu() - mu_S.detach().double().cpu())
    if not torch.isfinite(d).all():
        raise ValueError("read_drift: the drift contains NaN or infinite values")
    dn = float(d.norm())
    proj = float(d @ (v / norm))
    return {"alignment": proj / dn if dn > 0 else 0.0, "projection": proj, "drift_norm": dn,
            "relative_projection": proj / displacement if displacement else None}


def null_threshold(d: int, matched_p99: float | None = None) -> tuple[float, str]:
    """The alignment a drift must exceed to be told from chance, and which null sets it.

    The rule, the one place it is stated: the **larger** of the isotropic p99 -- the 0.99
    quantile of cos(u, v) for u uniform on the sphere in R^d
    (:func:`reversion.core.stats.isotropic_cos_quantile`, about 2.33/sqrt(d): 0.036 at d =
    4096, a weak bar at LLM width) -- and the matched null's p99 (Gaussian directions with
    theta_S's activation covariance, :mod:`reversion.stages.nulls`) when it is known
    (``matched_p99`` None: the isotropic p99 alone). Neither null is assumed to be the right
    one: a matched p99 below the isotropic one does not lower the bar. Source: ``"matched null
    p99"`` when the matched p99 is the larger, else ``"isotropic p99"`` (also on a tie).

    ``d``: the width (>= 2); a matched p99 outside [-1, 1] or not finite is a ValueError.
    """
    iso = stats.isotropic_cos_quantile(d, 0.99)
    if matched_p99 is None:
        return iso, "isotropic p99"
    matched = check_float("matched_p99", matched_p99, -1.0, 1.0)
    if matched > iso:
        return matched, "matched null p99"
    return iso, "isotropic p99"


def threshold(d: int, layer: int, matched_p99: Sequence[float | None] | None = None,
              given: float | None = None, null_units: float | None = None) -> tuple[float, str]:
    """The alignment a reading at ``layer`` must exceed, and its source: ``given`` when set
    (source ``"given"``); else ``null_units`` times the null threshold when set (a threshold in
    *null units*, which carries over between widths where a raw cosine does not: the p99 falls as
    about 2.33/sqrt(d)); else the null threshold itself -- :func:`null_threshold` of the width ``d``
    and the matched p99 at ``layer`` when ``matched_p99`` (one entry per layer, None where
    undefined; ``reversion estimate`` stores it in the direction file) holds one. ``reversion
    track`` and the :class:`~reversion.subjects.checkpoints.trainer_hooks.ReversionMonitor` use it."""
    if given is not None and null_units is not None:
        raise ValueError("threshold and threshold_null (null_units) are both set: give the threshold as a cosine "
                         "or in null units, not both")
    if given is not None:
        return float(given), "given"
    known = matched_p99 is not None and 0 <= layer < len(matched_p99) and matched_p99[layer] is not None
    value, source = null_threshold(d, float(matched_p99[layer]) if known else None)
    if null_units is None:
        return value, source
    units = check_float("threshold_null (null_units)", null_units, 0.0, lo_open=True)
    return units * value, f"{units:g} x {source}"


def streak(run: int, value: float, threshold: float) -> int:
    """Checks in a row above ``threshold`` after a check reading ``value`` (``run`` before it); an
    undefined reading (NaN) ends a streak."""
    return run + 1 if value > threshold else 0


def first_flag(values: Sequence[float], threshold: float, patience: int) -> int | None:
    """The monitor's rule, the one place it is stated: a run is flagged at the first check at which
    its alignment has been above ``threshold`` for ``patience`` checks in a row (the
    :class:`~reversion.subjects.checkpoints.trainer_hooks.ReversionMonitor` applies it check by check
    through :func:`streak`). Returns the index of that check in ``values``, or None."""
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
    run = 0
    for i, v in enumerate(values):
        run = streak(run, float(v), threshold)
        if run >= patience:
            return i
    return None


def crossover(drift_a: Sequence[torch.Tensor], drift_b: Sequence[torch.Tensor], mu_wa: torch.Tensor,
              mu_wb: torch.Tensor, own_a: torch.Tensor | None = None,
              own_b: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Which witness does drift follow, read in a crossover of two lineages.

    Lineage a was aligned from witness W_a, lineage b from W_b (same theta_P and data order);
    both are fine-tuned alike, seed by seed. With u = unit(mu_Wa - mu_Wb), each run's drift
    (``[d]``, paired by seed) gives ``a = cos(d_a, u)`` and ``b = cos(d_b, -u)``: positive
    when the lineage moves toward its *own* witness. Any drift is a sum of a part that
    follows the lineage (``own`` = (a + b) / 2) and a part both lineages share (``common`` =
    (a - b) / 2: positive toward W_a, negative toward W_b, whichever lineage moves). Reading
    cos(d, v_rev) against cos(d, v_rev') instead would favour the own witness by construction.

    ``own_a``, ``own_b``: each lineage's own mean activation before fine-tuning (its theta_S's).
    Growth of a lineage's own activations (norm growth) reads as "own" -- each aligned model
    inherits its witness's side of u -- without any return toward the witness; with these given,
    each drift is read after removing its component along its own lineage's mean.
    """
    if len(drift_a) != len(drift_b) or not len(drift_a):
        raise ValueError(f"crossover needs the same number (>= 1) of runs in both lineages, got "
                         f"{len(drift_a)} and {len(drift_b)}")
    u = (mu_wa.double() - mu_wb.double())
    if not torch.isfinite(u).all() or not float(u.norm()) > 0:
        raise ValueError("crossover: the two witnesses' means are equal or not finite")

    def without(d: torch.Tensor, own: torch.Tensor | None) -> torch.Tensor:
        d = d.double()
        if own is None:
            return d
        e = own.double() / own.double().norm()
        r = d - (d @ e) * e
        return torch.zeros_like(r) if float(r.norm()) <= 1e-9 * float(d.norm()) else r  # rounding, not motion

    a = torch.stack([alignment(without(d, own_a), u) for d in drift_a]).numpy()
    b = torch.stack([alignment(without(d, own_b), -u) for d in drift_b]).numpy()
    return {"a": a, "b": b, "own": (a + b) / 2, "common": (a - b) / 2}


def residual_alignment(acts_H: torch.Tensor, acts_S: torch.Tensor, controls: Sequence[torch.Tensor],
                       drifts: Sequence[torch.Tensor], generator: np.random.Generator) -> dict:
    """Drift against v_rev once the directions a simpler story explains are taken out.

    ``acts_H``, ``acts_S``: ``[n, d]`` per-prompt activations of the witness and the aligned
    model at one layer; ``controls``: directions ``[d]`` to remove (e.g. r_S and v_P); ``drifts``:
    ``[d]`` per run. With C the projector onto the complement of the controls' span, the probes
    are split at random into two disjoint halves a and b and the residual v_rev estimated on each
    (``v_x = C (mean_x h_H - mean_x h_S)``). Returns ``reliability`` = cos(v_a, v_b) (near 0 when
    the residual is estimation noise), ``alignment`` per run = the mean over the halves of
    cos(C d, v_x) (each half's direction shares no prompt with the other's), ``dim`` = d minus
    the controls' rank, and ``null_p99``: the isotropic p99 of a cosine in that complement.
    """
    H, S = acts_H.double(), acts_S.double()
    if H.ndim != 2 or H.shape != S.shape or H.shape[0] < 4:
        raise ValueError(f"acts_H and acts_S must be [n >= 4, d] of the same prompts, got "
                         f"{tuple(acts_H.shape)} and {tuple(acts_S.shape)}")
    d = H.shape[1]
    basis = torch.stack([c.double() for c in controls], 1) if controls else torch.zeros(d, 0, dtype=torch.float64)
    if not torch.isfinite(basis).all():
        raise ValueError("residual_alignment: a control direction is not finite")
    q = basis
    if controls:  # an orthonormal basis of the span, dependent controls dropped
        q, r = torch.linalg.qr(basis)
        q = q[:, r.diagonal().abs() > 1e-10 * max(1.0, float(r.abs().max()))]
    rank = q.shape[1]

    def out(v: torch.Tensor) -> torch.Tensor:
        return v - q @ (q.T @ v)

    perm = torch.as_tensor(generator.permutation(H.shape[0]))
    half = H.shape[0] // 2
    idx = (perm[:half], perm[half:2 * half])
    raw = [H[i].mean(0) - S[i].mean(0) for i in idx]
    v = [out(x) for x in raw]
    if not all(float(x.norm()) > 1e-8 * float(y.norm()) for x, y in zip(v, raw)):
        raise ValueError("residual_alignment: v_rev lies in the controls' span (no residual)")
    rel = float(alignment(v[0], v[1]))
    al = np.array([float((alignment(out(dd.double()), v[0]) + alignment(out(dd.double()), v[1])) / 2)
                   for dd in drifts])
    return {"reliability": rel, "alignment": al, "dim": d - rank,
            "null_p99": stats.isotropic_cos_quantile(d - rank, 0.99)}


def weight_motion(delta: torch.Tensor, gap: torch.Tensor) -> list[dict[str, float]]:
    """Weight space: how far each run moved back across the gap to its witness.

    ``delta`` = theta_t - theta_S and ``gap`` = theta_H - theta_S, ``[K, P]`` (one row per run,
    all parameters flattened). Returns per run ``cos_gap`` = cos(delta, gap) (0 for no motion)
    and ``gap_closed`` = delta . gap / |gap|^2: the share of the S -> H gap closed along it (1 =
    as far as the witness).
    """
    delta, gap = delta.double(), gap.double()
    if delta.shape != gap.shape or delta.ndim != 2:
        raise ValueError(f"delta and gap must be [K, P] of one shape, got {tuple(delta.shape)} and {tuple(gap.shape)}")
    g2 = (gap * gap).sum(1)
    if not bool((g2 > 0).all()):
        raise ValueError("weight_motion: a run's witness equals its aligned model (no gap)")
    dot = (delta * gap).sum(1)
    return [{"cos_gap": float(c), "gap_closed": float(f)}
            for c, f in zip(alignment(delta, gap), dot / g2)]
