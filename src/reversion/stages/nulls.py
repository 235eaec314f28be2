"""Nulls for the alignment of drift with a direction: what a cosine would be by chance.

* isotropic: a direction uniform on the sphere in R^d (closed form, and Monte Carlo);
* matched: Gaussian directions with the covariance of theta_S's own probe activations at
  the layer -- drift that moves the way activations vary anyway.

The Null test chapter reads both at its layer (:func:`alignment_nulls`); ``reversion estimate``
stores the matched p99 of every layer in the direction file (:func:`matched_p99_by_layer`). All
of them compare a drift reading with the stricter of the two p99s: the one rule,
:func:`reversion.core.drift.null_threshold`.
"""

from __future__ import annotations

import numpy as np
import torch

from reversion.core import stats

__all__ = ["alignment_nulls", "matched_p99_by_layer", "p99"]


def alignment_nulls(v: np.ndarray, acts_S: np.ndarray, n_null: int, generator: np.random.Generator) -> dict:
    """Null cosines with ``v`` ``[d]``: ``isotropic`` then ``matched`` (to the covariance of
    ``acts_S`` ``[n, d]``), ``n_null`` each, drawn in that order from ``generator``."""
    d = int(np.asarray(v).shape[0])
    iso = stats.null_cosines(stats.sample_isotropic_directions(d, n_null, generator), v)
    matched = stats.null_cosines(stats.sample_matched_directions(acts_S, n_null, generator, kind="samples"), v)
    return {"isotropic": iso, "matched": matched}


def p99(nulls: dict, d: int) -> dict:
    """The p99 of each null: the isotropic one in closed form and by Monte Carlo, the matched one."""
    return {"isotropic": stats.isotropic_cos_quantile(d, 0.99),
            "isotropic_mc": stats.empirical_quantile(nulls["isotropic"], 0.99),
            "matched": stats.empirical_quantile(nulls["matched"], 0.99)}


def matched_p99_by_layer(acts_S: torch.Tensor, v_rev: torch.Tensor, n_null: int,
                         generator: np.random.Generator) -> list[float | None]:
    """The matched null's p99 at every layer (None where undefined: a zero direction or no
    variance), from theta_S's activations ``[n, L+1, d]`` and v_rev ``[L+1, d]``."""
    out: list[float | None] = []
    for layer in range(acts_S.shape[1]):
        v = v_rev[layer].double().numpy()
        try:
            if not np.linalg.norm(v) > 0:
                raise ValueError("zero direction")
            null = stats.null_cosines(stats.sample_matched_directions(
                acts_S[:, layer].double().numpy(), n_null, generator, kind="samples"), v)
            out.append(stats.empirical_quantile(null, 0.99))
        except ValueError:
            out.append(None)
    return out
