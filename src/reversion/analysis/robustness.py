"""Every verdict recomputed on subsets of the histories, fixed in advance: the two halves of
:data:`reversion.analysis.rules.SPLIT` (even and odd histories) and every leave-one-history-out.

A chapter's ``metrics.json`` keeps, beside each interval over histories, the per-history values
it was computed from (``by_history``; a ratio's ``num_by_history`` and ``den_by_history``), and
each per-history list (``reliability``, ``*_by_history``, the null test's rows). :func:`restrict`
recomputes every such interval on the kept histories with the interval's own pooling (the
t-interval, truncated to its ``bounds``; Fisher z; Fieller), re-derives the verdicts the chapters
computed from those intervals ("Which past?"; the claims judge the Interventions' specificity
from its intervals themselves), and the claims are judged again on the result (:func:`reversion.analysis.claims.evaluate`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Sequence

from reversion.analysis import claims, pasts
from reversion.analysis.verdicts import INCONCLUSIVE, NOT_TESTABLE
from reversion.core import stats

PER_HISTORY = ("reliability", "layers")
"""Lists with one entry per history, besides those whose key ends in ``_by_history``."""


def histories_of(m: Mapping[str, dict]) -> dict[str, int]:
    """Each chapter's number of histories, as its metrics record it."""
    out = {}
    for stem, c in m.items():
        n = c.get("n_histories") or (c.get("n") or {}).get("histories") or (c.get("across_histories") or {}).get("n")
        out[stem] = int(n or 1)
    return out


def _interval(x: dict, keep: list[int]) -> dict:
    pool = x.get("pool")
    if pool == "fieller":
        num, den = [x["num_by_history"][i] for i in keep], [x["den_by_history"][i] for i in keep]
        if len(keep) < 2:
            my = sum(den) / len(den) if den else 0.0
            return {**x, "mean": (sum(num) / len(num)) / my if den and my else None, "ci_low": None,
                    "ci_high": None, "n": len(keep), "num_by_history": num, "den_by_history": den}
        return {**x, **stats.ratio_interval(num, den, x.get("level", 0.95))}
    by = [x["by_history"][i] for i in keep]
    if pool == "fisher":
        return {**x, **stats.fisher_interval(by, x.get("level", 0.95))}
    b = x.get("bounds")
    r = stats.nested([[v] for v in by], bounds=tuple(b) if b else None)
    out = {**x, "mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "by_history": r["by_history"]}
    for k, v in (("std", r["std"]), ("n_histories", len(keep))):
        if k in x:
            out[k] = v
    if "n" in x and isinstance(x.get("level"), (float, str)) and x.get("level") != "seeds":
        out["n"] = len(keep)
    return out


def _walk(x, keep: list[int], H: int):
    if isinstance(x, dict):
        by = x.get("by_history")
        if "ci_low" in x and isinstance(by, list) and len(by) == H and (by == [] or not isinstance(by[0], dict)):
            return _interval(x, keep)
        if x.get("pool") == "fieller" and len(x.get("num_by_history") or []) == H:
            return _interval(x, keep)
        out = {}
        for k, v in x.items():
            if isinstance(v, list) and len(v) == H and (k in PER_HISTORY or k.endswith("_by_history")) \
                    and not (v and isinstance(v[0], dict)):
                out[k] = [v[i] for i in keep]
            elif k.endswith("_by_history") and isinstance(v, dict):  # one list per step, say
                out[k] = {j: [w[i] for i in keep] if isinstance(w, list) and len(w) == H else w for j, w in v.items()}
            elif k == "by_history" and isinstance(v, list) and v and isinstance(v[0], dict) and "history" in v[0]:
                out[k] = [e for e in v if e["history"] in keep]
            else:
                out[k] = _walk(v, keep, H)
        return out
    if isinstance(x, list):
        return [_walk(v, keep, H) for v in x]
    return x


def restrict(m: Mapping[str, dict], keep: Sequence[int]) -> dict[str, dict]:
    """The chapters' metrics as if only histories ``keep`` had been run (indices into each
    chapter's histories; those a chapter lacks are skipped), verdicts re-derived."""
    sizes = histories_of(m)
    out = {}
    for stem, c in m.items():
        H = sizes[stem]
        k = sorted(i for i in set(keep) if i < H)
        c = _walk(c, k, H) if H > 1 and k else copy.deepcopy(c)
        if stem == claims.WHICH_PAST:
            c = pasts.reverdict(c)
        out[stem] = c  # the Interventions' specificity is judged by the claims from its intervals
    return out


def verdicts(m: Mapping[str, dict]) -> dict[str, str]:
    return {r.id: r.verdict for r in claims.evaluate(m)}


@dataclass(frozen=True)
class Robustness:
    """Each row's verdict on the two halves and how many leave-one-out recomputations change it."""

    halves: dict[str, tuple[str, str]]
    """Row -> (verdict on the even histories, on the odd ones)."""
    agreement: dict[str, str]
    """Row -> ``agree, both decided`` / ``agree, both inconclusive`` / ``disagree`` (or ``not testable``)."""
    loo_changed: dict[str, int]
    """Row -> the number of histories whose removal changes its verdict."""
    n_histories: int


def agreement(a: str, b: str) -> str:
    if a == b == NOT_TESTABLE:
        return "not testable"
    if a != b:
        return "disagree"
    return "agree, both inconclusive" if a == INCONCLUSIVE else "agree, both decided"


def robustness(m: Mapping[str, dict]) -> Robustness:
    """The half-split (:data:`reversion.analysis.rules.SPLIT`) and the leave-one-out of every row."""
    H = max(histories_of(m).values())
    full = verdicts(m)
    even = verdicts(restrict(m, range(0, H, 2)))
    odd = verdicts(restrict(m, range(1, H, 2))) if H > 1 else full
    loo = {r: 0 for r in full}
    if H > 2:
        for h in range(H):
            v = verdicts(restrict(m, [i for i in range(H) if i != h]))
            for r in full:
                loo[r] += v[r] != full[r]
    return Robustness({r: (even[r], odd[r]) for r in full}, {r: agreement(even[r], odd[r]) for r in full},
                      loo, H)


def counts(rows, r: Robustness) -> dict[str, int]:
    """How many rows agree decided, agree inconclusive and disagree across the halves; how many no
    single history's removal changes; how many are decided (neither inconclusive nor not testable)
    on all the histories."""
    a = list(r.agreement.values())
    return {"agree_decided": a.count("agree, both decided"), "agree_inconclusive": a.count("agree, both inconclusive"),
            "disagree": a.count("disagree"), "loo_stable": sum(v == 0 for v in r.loo_changed.values()),
            "decided": sum(x.verdict not in (INCONCLUSIVE, NOT_TESTABLE) for x in rows)}
