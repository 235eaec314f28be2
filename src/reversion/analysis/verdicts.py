"""The vocabulary of evidence: intervals, verdicts, and the rules that choose a verdict.

An organism can show a pattern, and show it for the reason a claim gives, or not; it cannot
show what holds "for every model and scale". So a claim gets one of:

* ``consistent`` -- the pattern is there (its interval lies beyond the measure's equivalence
  margin in the predicted direction) and every control that separates it from its alternative
  passed;
* ``consistent but not specific`` -- the pattern is there, but a control explains it as well:
  the contrast with that control lies within the equivalence margin, or favours the control;
* ``inconclusive`` -- an interval is too wide to tell;
* ``not reproduced`` -- the interval lies on the wrong side, or within the margin of zero;
* ``not testable here`` -- the claim is about model families or scales the organism lacks, or
  needs a measurement this subject cannot make.

Intervals are :class:`Effect` results or dicts with ``mean``, ``ci_low`` and ``ci_high`` (as
read back from ``metrics.json``; None where undefined: one history and one seed). Every rule has
planted cases that flip it (``tests/test_verdicts.py``, ``tests/test_claims.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

CONSISTENT = "consistent"
NOT_SPECIFIC = "consistent but not specific"
INCONCLUSIVE = "inconclusive"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable here"
VERDICTS = (CONSISTENT, NOT_SPECIFIC, INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE)
ORDER = (NOT_REPRODUCED, INCONCLUSIVE, NOT_SPECIFIC, CONSISTENT)
"""From weakest to strongest: a claim resting on two findings gets the weaker one."""


@dataclass(frozen=True)
class Effect:
    """A mean with its 95% interval: over the histories' means (seeds nested) with several
    histories, over seeds with one (``level`` says which). Reads like the dict it is written as
    (``e["ci_low"]``), so a rule takes it or the same numbers read back from ``metrics.json``."""

    mean: float
    ci_low: float | None
    """None where undefined (one history and one seed)."""
    ci_high: float | None
    by_history: list = field(default_factory=list)
    """Each history's mean over its seeds."""
    n_histories: int = 1
    n_seeds: int = 1
    level: str = "histories"
    """``histories`` or ``seeds``: what the interval is over."""
    bounds: tuple | None = None
    """The quantity's range, to which the interval was truncated (None: unbounded)."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


@dataclass(frozen=True)
class ClaimVerdict:
    """One claim of the paper against what the chapters measured: the verdict its rule gave and
    the evidence the rule read (numbers and the verdicts of the findings it rests on)."""

    id: str
    claim: str
    """The claim, in a line."""
    paper: str
    """The paper's figure."""
    verdict: str
    """One of :data:`VERDICTS`."""
    chapter: str
    """The stem of the chapter that measured it."""
    measure: str
    """The quantity the verdict reads."""
    evidence: dict = field(default_factory=dict)
    """What the rule read, by name (intervals as dicts, counts, sub-verdicts)."""
    n: str = ""
    """Histories x seeds behind the verdict."""
    magnitude: tuple | None = None
    """(what is compared, ours, the paper's value, the paper's +-): information beside the
    verdict, never in it."""
    margin: str = ""
    """The equivalence margin (or threshold) the rule applied, with its unit."""
    by_construction: bool = False
    """The row reads what an intervention's objective optimises: that reading cannot make a claim
    consistent by itself (a row that reads nothing else, V1-d, is at most "consistent but not
    specific"; in V2-d and V2-e it can only weaken the harmfulness half, which decides)."""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def weaker(*vs: str) -> str:
    """The weakest of several verdicts (:data:`ORDER`); "not testable here" if any is."""
    if NOT_TESTABLE in vs:
        return NOT_TESTABLE
    return min(vs, key=ORDER.index)


def _defined(i: Mapping | None) -> bool:
    return i is not None and i.get("ci_low") is not None and i.get("ci_high") is not None


def side(i: Mapping | None, want: int, margin: float = 0.0) -> str:
    """Where an interval lies for a prediction of sign ``want`` (+1 or -1), against the measure's
    equivalence margin (:data:`reversion.analysis.rules.MARGINS`): ``"there"`` only when the whole
    interval lies beyond ``+margin`` on the predicted side (an effect statistically above zero by a
    trivial amount is not an effect); ``"null"`` within ``[-margin, +margin]`` (equivalent to no
    effect); ``"wrong"`` beyond zero on the other side; else ``"wide"``."""
    if want not in (1, -1):
        raise ValueError(f"want must be +1 or -1, got {want!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    if not _defined(i):
        return "wide"
    lo, hi = (i["ci_low"], i["ci_high"]) if want > 0 else (-i["ci_high"], -i["ci_low"])
    if lo > margin:
        return "there"
    if hi < 0:
        return "wrong"
    if lo >= -margin and hi <= margin:
        return "null"
    return "wide"


def contrast_side(i: Mapping | None, want: int, margin: float = 0.0) -> str:
    """Where a contrast (the claim's effect minus a control's) lies: the same rule as an effect
    (:func:`side`) -- it beats the control only by more than the margin; ``"wrong"``: the control
    does more."""
    return side(i, want, margin)


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
