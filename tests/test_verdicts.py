"""The verdict vocabulary's rules (:mod:`reversion.analysis.verdicts`) on planted intervals,
every branch, :func:`~reversion.analysis.verdicts.weaker` and the typed :class:`Effect`."""

from __future__ import annotations

import dataclasses

import pytest

from reversion.analysis import verdicts
from reversion.analysis.verdicts import (
    CONSISTENT,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_SPECIFIC,
    NOT_TESTABLE,
    VERDICTS,
    contrast_side,
    failing_controls,
    side,
    verdict,
)

MARGIN = 0.02


def iv(lo: float | None, hi: float | None) -> dict:
    """An interval (its mean in the middle; undefined bounds: one history and one seed)."""
    mean = 0.0 if lo is None or hi is None else (lo + hi) / 2
    return {"mean": mean, "ci_low": lo, "ci_high": hi}


# --------------------------------------------------------------------------- side


@pytest.mark.parametrize("i,want,margin,expected", [
    (iv(0.1, 0.3), +1, 0.0, "there"),
    (iv(-0.3, -0.1), -1, 0.0, "there"),
    (iv(-0.3, -0.1), +1, 0.0, "wrong"),
    (iv(0.1, 0.3), -1, 0.0, "wrong"),
    (iv(-0.01, 0.015), +1, MARGIN, "null"),
    (iv(-0.01, 0.015), -1, MARGIN, "null"),
    (iv(-0.02, 0.02), +1, MARGIN, "null"),         # the margin's ends are inside it
    (iv(-0.01, 0.03), +1, MARGIN, "wide"),         # crosses zero and the margin
    (iv(-0.01, 0.015), +1, 0.0, "wide"),           # no margin: crossing zero is never "null"
    (iv(-0.5, 0.5), -1, MARGIN, "wide"),
    (iv(0.0, 0.2), +1, 0.0, "wide"),               # touching zero is not beyond it
    (iv(-0.2, 0.0), +1, 0.0, "wide"),
    (iv(None, None), +1, MARGIN, "wide"),          # undefined interval
    (None, -1, MARGIN, "wide"),                    # no interval at all
    (iv(0.001, 0.01), +1, MARGIN, "null"),         # beyond zero but within the margin: no effect
    (iv(0.01, 0.05), +1, MARGIN, "wide"),          # beyond zero, not beyond the margin
    (iv(0.03, 0.05), +1, MARGIN, "there"),         # beyond the margin
    (iv(-0.05, -0.03), -1, MARGIN, "there"),
    (iv(-0.01, -0.001), +1, MARGIN, "wrong"),
])
def test_side(i, want, margin, expected):
    assert side(i, want, margin) == expected


@pytest.mark.parametrize("want", [0, 2, -2, "+", None])
def test_side_refuses_a_bad_want(want):
    with pytest.raises(ValueError, match="want must be"):
        side(iv(0.1, 0.2), want)
    with pytest.raises(ValueError, match="want must be"):
        verdict(iv(0.1, 0.2), want)


def test_side_refuses_a_negative_margin():
    with pytest.raises(ValueError, match="margin must be >= 0"):
        side(iv(0.1, 0.2), +1, -0.01)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        verdict(iv(0.1, 0.2), +1, None, -0.01)


# --------------------------------------------------------------------------- verdict

THERE = iv(-0.20, -0.10)
"""An effect predicted below zero (want = -1), and there."""


def test_the_pattern_with_every_control_beaten_is_consistent():
    cons = {"random0+": iv(-0.15, -0.05), "-r_S": iv(-0.12, -0.03)}
    assert verdict(THERE, -1, cons, MARGIN) == CONSISTENT
    assert failing_controls(cons, -1, MARGIN) == []


def test_no_controls_read_the_pattern_alone():
    assert verdict(THERE, -1, None, MARGIN) == CONSISTENT  # no alternative applies: the pattern decides
    assert verdict(THERE, -1, {}, MARGIN) == INCONCLUSIVE  # an alternative, but no control was run
    assert verdict(iv(0.1, 0.2), +1) == CONSISTENT


def test_a_control_within_the_margin_is_not_specific():
    cons = {"random0+": iv(-0.01, 0.01), "-r_S": iv(-0.15, -0.05)}
    assert verdict(THERE, -1, cons, MARGIN) == NOT_SPECIFIC
    assert failing_controls(cons, -1, MARGIN) == ["random0+"]


def test_a_control_better_than_the_effect_is_not_specific():
    cons = {"random0-": iv(0.05, 0.10), "-r_S": iv(-0.15, -0.05)}  # v_rev minus the control above zero
    assert verdict(THERE, -1, cons, MARGIN) == NOT_SPECIFIC
    assert failing_controls(cons, -1, MARGIN) == ["random0-"]


def test_not_specific_outranks_a_wide_contrast():
    """One control explains the effect as well: however wide another contrast is, it cannot make it specific."""
    cons = {"random0+": iv(-0.3, 0.3), "v_P": iv(-0.005, 0.005)}
    assert verdict(THERE, -1, cons, MARGIN) == NOT_SPECIFIC
    assert failing_controls(cons, -1, MARGIN) == ["random0+", "v_P"]


def test_a_wide_contrast_is_inconclusive():
    cons = {"random0+": iv(-0.3, 0.3), "-r_S": iv(-0.15, -0.05)}
    assert verdict(THERE, -1, cons, MARGIN) == INCONCLUSIVE
    assert verdict(THERE, -1, {"random0+": None}, MARGIN) == INCONCLUSIVE  # a contrast that could not be formed
    assert verdict(THERE, -1, {"random0+": iv(None, None)}, MARGIN) == INCONCLUSIVE


def test_a_wide_effect_is_inconclusive_whatever_the_controls():
    for cons in (None, {"random0+": iv(-0.15, -0.05)}, {"random0+": iv(-0.01, 0.01)}):
        assert verdict(iv(-0.3, 0.1), -1, cons, MARGIN) == INCONCLUSIVE
        assert verdict(iv(None, None), -1, cons, MARGIN) == INCONCLUSIVE
        assert verdict(None, -1, cons, MARGIN) == INCONCLUSIVE


def test_an_effect_on_the_wrong_side_is_not_reproduced():
    assert verdict(iv(0.05, 0.15), -1, {"random0+": iv(-0.15, -0.05)}, MARGIN) == NOT_REPRODUCED
    assert verdict(iv(-0.15, -0.05), +1) == NOT_REPRODUCED


def test_an_effect_within_the_margin_is_not_reproduced():
    assert verdict(iv(-0.015, 0.01), -1, {"random0+": iv(-0.15, -0.05)}, MARGIN) == NOT_REPRODUCED
    assert verdict(iv(-0.015, 0.01), -1, None, 0.0) == INCONCLUSIVE  # without a margin it is only wide


def test_every_verdict_is_named_once():
    assert len(set(VERDICTS)) == len(VERDICTS) == 5
    assert set(verdicts.ORDER) | {NOT_TESTABLE} == set(VERDICTS)
    assert verdicts.CONSISTENT in VERDICTS


# --------------------------------------------------------------------------- weaker


@pytest.mark.parametrize("vs,expected", [
    ((CONSISTENT,), CONSISTENT),
    ((CONSISTENT, CONSISTENT), CONSISTENT),
    ((CONSISTENT, NOT_SPECIFIC), NOT_SPECIFIC),
    ((NOT_SPECIFIC, INCONCLUSIVE), INCONCLUSIVE),
    ((CONSISTENT, INCONCLUSIVE, NOT_SPECIFIC), INCONCLUSIVE),
    ((INCONCLUSIVE, NOT_REPRODUCED), NOT_REPRODUCED),
    ((NOT_REPRODUCED, CONSISTENT), NOT_REPRODUCED),
    ((CONSISTENT, NOT_TESTABLE), NOT_TESTABLE),
    ((NOT_TESTABLE, NOT_REPRODUCED), NOT_TESTABLE),
])
def test_weaker(vs, expected):
    assert verdicts.weaker(*vs) == expected
    assert verdicts.weaker(*reversed(vs)) == expected


def test_weaker_refuses_an_unknown_verdict():
    with pytest.raises(ValueError):
        verdicts.weaker(CONSISTENT, "reproduced")


@pytest.mark.parametrize("contrast,expected", [
    (iv(-0.031, -0.002), INCONCLUSIVE),  # better than the control, but maybe by less than the margin
    (iv(-0.08, -0.03), CONSISTENT),      # better by more than the margin
    (iv(-0.015, 0.01), NOT_SPECIFIC),    # equivalent within the margin
    (iv(0.01, 0.05), NOT_SPECIFIC),      # the control does more
])
def test_a_contrast_must_beat_its_control_by_more_than_the_margin(contrast, expected):
    """v_rev's block 0.017 better than v_P's, with an interval [0.002, 0.031], is not "better":
    a statistically resolved but possibly trivial difference leaves specificity open."""
    assert verdict(THERE, -1, {"v_P": contrast}, 0.02) == expected
    assert contrast_side(iv(-0.08, -0.03), -1, 0.02) == "there"
    assert contrast_side(iv(-0.031, -0.002), -1, 0.02) == "wide"
    assert contrast_side(iv(-0.031, -0.002), -1, 0.0) == "there"  # no margin: beyond zero is enough


def test_an_effect_reads_as_the_dict_it_is_written_as():
    """A rule gives the same verdict on a typed :class:`Effect` and on its ``metrics.json`` form."""
    e = verdicts.Effect(-0.1, -0.15, -0.05, [-0.1], 3, 2)
    assert e["ci_low"] == -0.15 and e.get("missing", 7) == 7
    for want in (1, -1):
        assert side(e, want, 0.02) == side(dataclasses.asdict(e), want, 0.02)
    assert verdict(e, -1, {"c": verdicts.Effect(-0.2, -0.3, -0.1)}, 0.02) == \
        verdict(dataclasses.asdict(e), -1, {"c": {"mean": -0.2, "ci_low": -0.3, "ci_high": -0.1}}, 0.02) == CONSISTENT
