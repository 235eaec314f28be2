"""How much each row of the claims table can decide: the minimum detectable effect at the
current number of histories, and the number of histories an effect of the paper's size (or of
the margin) would need at the spread between histories the organism shows.

A row decides on an interval over histories (a t-interval at :data:`reversion.analysis.rules.LEVEL`)
that must lie beyond a margin (or a null's p99) on the predicted side. With H histories whose
values spread with standard deviation ``sd``, a true effect ``d`` clears a margin ``m`` with
probability ``power`` when ``d >= m + (t_{1-alpha/2, H-1} + t_{power, H-1}) * sd / sqrt(H)``
(the usual normal-theory bound; ``tests/test_power.py`` checks it against simulated tables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import stats as sps

from reversion.analysis import claims, rules
from reversion.analysis.arms import arm_of
from reversion.core import stats

POWER = 0.8


def mde(sd: float, n: int, margin: float = 0.0, power: float = POWER, alpha: float = rules.ALPHA) -> float | None:
    """The smallest true effect whose interval over ``n`` histories lies beyond ``margin`` with
    probability ``power`` (None for fewer than 2 histories)."""
    if n < 2:
        return None
    if sd < 0 or not 0 < power < 1:
        raise ValueError(f"sd must be >= 0 and power in (0, 1), got sd={sd!r}, power={power!r}")
    return margin + (sps.t.ppf(1 - alpha / 2, n - 1) + sps.t.ppf(power, n - 1)) * sd / math.sqrt(n)


def histories_needed(effect: float, sd: float, margin: float = 0.0, power: float = POWER,
                     most: int = 1000) -> int | None:
    """The fewest histories (>= 2) at which ``effect`` is detected beyond ``margin`` with ``power``;
    None when the effect does not exceed the margin (no number of histories suffices) or more than
    ``most`` are needed."""
    if abs(effect) <= margin:
        return None
    for n in range(2, most + 1):
        if mde(sd, n, margin, power) <= abs(effect):
            return n
    return None


@dataclass(frozen=True)
class RowPower:
    """A row's decisive interval: its spread over histories, the margin (or threshold) it must
    clear, its minimum detectable effect now, and the histories the paper's effect would need."""

    row: str
    what: str
    n: int
    sd: float | None
    margin: float
    mde: float | None
    effect: float | None
    """The paper's effect on this scale (None: the paper gives none; the margin's doubling is used)."""
    needed: int | None


def _sd(x: Mapping | None) -> tuple[float | None, int]:
    by = [v for v in (x or {}).get("by_history") or [] if v is not None]
    if len(by) < 2:
        return None, len(by)
    if (x or {}).get("pool") == "fisher":
        by = list(stats.fisher_z(by))
    return float(np.std(by, ddof=1)), len(by)


def decisive(m: Mapping[str, dict]) -> dict[str, tuple[str, Mapping | None, float, float | None]]:
    """Row -> (what, the decisive interval, the margin or threshold, the paper's effect on that
    scale or None). Rows that count (V1-c, V2-a), state no effect (V2-f) or bound a cost (V1-f)
    are left out."""
    al, nt, iv, wp, ve = (m.get(k) or {} for k in (claims.ALIGNMENT, claims.NULL_TEST, claims.INTERVENTIONS,
                                                  claims.WHICH_PAST, claims.ESTIMATION))
    strict = (nt.get("null") or {}).get("threshold_p99", 0.0)
    harm, cos = rules.margin("harmfulness"), rules.margin("cosine")
    out: dict = {}
    a = al.get("alignment") or {}
    out["V1-a"] = ("alignment at step 1 vs the stricter p99", a.get("1"), strict, 0.429)
    out["V1-b"] = ("alignment at step 20 vs the stricter p99", a.get("20"), strict, 0.647)
    blk, psh = (arm_of(iv, "block"), arm_of(iv, "push")) if iv.get("arms") else (None, None)
    if blk:
        out["V1-d"] = ("Δ final alignment, block", iv["arms"][blk]["vs_baseline"].get("final_alignment"), cos,
                       0.648 + 0.211)
        out["V1-e"] = ("Δ harmfulness, block", iv["specificity"][blk]["effect"], harm, 0.190 - 0.085)
        out["V2-d"] = out["V1-e"]
    if psh:
        out["V2-e"] = ("Δ harmfulness, push", iv["specificity"][psh]["effect"], harm, None)
    reh = (iv.get("rehearsal") or {}).get("cumulative_reversion")
    base = (iv.get("baseline_cumulative_reversion") or {}).get("mean")
    if reh is not None:
        out["V2-g"] = ("Δ cumulative reversion, rehearsal", reh, rules.margin("cumulative_reversion"),
                       0.30 * base if base else None)
    ro = ve.get("readout_over_histories")
    if ro:
        out["V2-b"] = ("readout of v_rev", ro["v_rev"], rules.margin("logit"), None)
    wh = (al.get("within_history_spearman") or {}).get("step_removed")
    if wh:
        out["V2-c"] = ("Fisher z of the within-history partial r", wh, math.atanh(rules.margin("correlation")),
                       math.atanh(0.958))
    for row, key, field, mg in (("H-1", "witness", "own", cos), ("H-2", "no_witness", "difference", harm),
                                ("H-3", "dose", "slope", rules.margin("dose_slope"))):
        b = wp.get(key) or {}
        if field in b:
            out[row] = (f"{key.replace('_', '-')}: {field}", b[field], mg, None)
    return out


def table(m: Mapping[str, dict]) -> list[RowPower]:
    """Every decisive row's power at the current n (:func:`decisive`)."""
    rows = []
    for row, (what, x, margin, effect) in decisive(m).items():
        sd, n = _sd(x)
        target = effect if effect is not None else 2 * margin if margin > 0 else None
        rows.append(RowPower(row, what, n, sd, margin, None if sd is None else mde(sd, n, margin), effect,
                             None if sd is None or target is None else histories_needed(target, sd, margin)))
    return rows
