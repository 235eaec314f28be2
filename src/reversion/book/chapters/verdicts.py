"""The verdict vocabulary of the claims table, and the rules that choose a verdict.

An organism can show a pattern, and show it for the reason a claim gives, or not; it cannot
show what holds "for every model and scale". So a claim gets one of:

* ``consistent`` -- the pattern is there (its interval excludes zero in the predicted
  direction) and every control that separates it from its alternative passed;
* ``consistent but not specific`` -- the pattern is there, but a control explains it as well:
  the contrast with that control lies within the equivalence margin, or favours the control;
* ``inconclusive`` -- an interval is too wide to tell;
* ``not reproduced`` -- the interval lies on the wrong side, or within the margin of zero;
* ``not testable here`` -- the claim is about model families or scales the organism lacks, or
  needs a measurement this subject cannot make.

Intervals are dicts with ``mean``, ``ci_low`` and ``ci_high`` (None where undefined: one
history and one seed). Every rule has planted cases that flip it (``tests/test_claims.py``).
"""

from __future__ import annotations

from typing import Mapping

CONSISTENT = "consistent"
NOT_SPECIFIC = "consistent but not specific"
INCONCLUSIVE = "inconclusive"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable here"
VERDICTS = (CONSISTENT, NOT_SPECIFIC, INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE)


def _defined(i: Mapping | None) -> bool:
    return i is not None and i.get("ci_low") is not None and i.get("ci_high") is not None


def side(i: Mapping | None, want: int, margin: float = 0.0) -> str:
    """Where an interval lies for a prediction of sign ``want`` (+1 or -1): ``"there"`` (beyond
    zero on the predicted side), ``"wrong"`` (beyond zero on the other side), ``"null"``
    (within ``[-margin, +margin]``: equivalent to no effect) or ``"wide"``."""
    if want not in (1, -1):
        raise ValueError(f"want must be +1 or -1, got {want!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    if not _defined(i):
        return "wide"
    lo, hi = (i["ci_low"], i["ci_high"]) if want > 0 else (-i["ci_high"], -i["ci_low"])
    if lo > 0:
        return "there"
    if hi < 0:
        return "wrong"
    if margin > 0 and lo >= -margin and hi <= margin:
        return "null"
    return "wide"


def contrast_side(i: Mapping | None, want: int, margin: float = 0.0) -> str:
    """Where a contrast (the claim's effect minus a control's) lies: ``"there"`` only when it
    beats the control by more than the margin (the interval beyond ``+margin`` on the predicted
    side -- statistically better by a trivial amount is not better); ``"null"`` within
    ``[-margin, +margin]`` (equivalent); ``"wrong"`` beyond zero on the control's side (the
    control does more); else ``"wide"``."""
    s = side(i, want, margin)
    if s != "there" or margin == 0:
        return s
    lo = i["ci_low"] if want > 0 else -i["ci_high"]
    return "there" if lo > margin else "wide"


def verdict(effect: Mapping | None, want: int, controls: Mapping[str, Mapping | None] | None = None,
            margin: float = 0.0) -> str:
    """The verdict of a predicted effect of sign ``want`` and, where the claim has alternatives,
    of its contrasts with each control (``effect - control's effect``, same sign predicted).

    Pattern absent: ``not reproduced`` if its interval is on the wrong side or within the
    margin, else ``inconclusive``. Pattern present: ``consistent`` if every contrast beats its
    control by more than the margin (:func:`contrast_side`); ``consistent but not specific`` if
    any contrast is within the margin or favours the control; else ``inconclusive``. ``controls=None``: the claim has no alternative a
    control could separate (the pattern decides); ``{}``: it has one, but no control was run --
    then the pattern alone cannot make it ``consistent`` (``inconclusive``)."""
    s = side(effect, want, margin)
    if s in ("wrong", "null"):
        return NOT_REPRODUCED
    if s == "wide":
        return INCONCLUSIVE
    if controls is not None and not controls:
        return INCONCLUSIVE
    sides = [contrast_side(c, want, margin) for c in (controls or {}).values()]
    if all(c == "there" for c in sides):
        return CONSISTENT
    if any(c in ("null", "wrong") for c in sides):
        return NOT_SPECIFIC
    return INCONCLUSIVE


def failing_controls(controls: Mapping[str, Mapping | None], want: int, margin: float = 0.0) -> list[str]:
    """The controls whose contrast is not on the predicted side (what makes a verdict weaker)."""
    return [n for n, c in controls.items() if contrast_side(c, want, margin) != "there"]
