"""The rules that choose chapter 01's verdict and result sentences, each flipped by a planted case.

A sentence that states a result is chosen by the numbers (``training_history.sentences``); every
branch here has a planted metrics dict that selects it, so no sentence can be stuck.
"""

from __future__ import annotations

import pytest

from reversion.analysis import history_rise
from reversion.book.chapters import ch01_training_history as ch
from reversion.core.stats import nested


def _m(rise=(0.20, 0.25, 0.30), h_S=0.02, h_T=0.25, em_T=0.01, acc_S=0.5, acc_T=0.8, acc_H=0.9,
       trained=(0.0, 0.10), untrained=(0.0, 0.0), long_T=0.03, h_T0=None) -> dict:
    """Chapter 01 metrics with planted per-history values (one seed each unless a rise is given)."""
    def n(x):
        return nested([[v] for v in x]) if isinstance(x, (tuple, list)) else nested([[x], [x], [x]])
    split = {part: {"exact_match": {"theta_S": n(v[0]), "finetuned": n(v[1]), "theta_H": n(0.9)},
                    "harmfulness": {"theta_S": n(v[0]), "finetuned": n(v[1]), "theta_H": n(0.9)}}
             for part, v in (("trained", trained), ("untrained", untrained))}
    return {"harmfulness_rise": n(rise), "harmfulness_rise_untrained": n(rise),
            "harmfulness": {"theta_S": n(h_S), "finetuned": n(h_T if h_T0 is None else (h_T0, h_T, h_T))},
            "exact_match": {"finetuned": n(em_T)},
            "task_accuracy": {"theta_S": n(acc_S), "theta_H": n(acc_H), "finetuned": n(acc_T)},
            "task_split": split,
            "long_alignment": {"theta_S": 0.0, "finetuned": {"mean": long_T}}}


def test_verdict_rises_clearly_only_with_an_interval_beyond_the_margin_and_a_large_enough_mean():
    assert history_rise.reversion_verdict(_m()).startswith("harmfulness on untrained tasks rises clearly")
    # the same mean with histories that disagree: the interval over 3 histories spans zero
    none = "no clear rise in harmfulness on untrained tasks"
    assert history_rise.reversion_verdict(_m(rise=(-0.30, 0.25, 0.80))) == none
    # every history rises by at least 5 points, but too unevenly for the interval: said as such
    uneven = history_rise.reversion_verdict(_m(rise=(0.16, 0.65, 0.41)))
    assert uneven.startswith("harmfulness on untrained tasks rises in every history (by 0.16 to 0.65)")
    assert "not clear" in uneven
    # an interval above zero but within the margin (and a rise below 5 points) is not called clear
    assert history_rise.reversion_verdict(_m(rise=(0.010, 0.011, 0.012))) == none
    # a mean above 5 points whose interval reaches into the margin is not clear either
    assert history_rise.reversion_verdict(_m(rise=(0.06, 0.07, 0.05, 0.02, 0.12))) != \
        history_rise.reversion_verdict(_m())
    assert history_rise.reversion_verdict(_m(rise=(-0.20, -0.25, -0.30))).startswith("harmfulness on untrained tasks falls")
    # only the untrained rise decides: a rise on the fine-tuned task alone is task skill
    skill = _m(rise=(-0.01, 0.0, 0.01))
    skill["harmfulness_rise"] = nested([[0.3], [0.35], [0.32]])
    assert history_rise.reversion_verdict(skill) == none
    one = _m()
    one["harmfulness_rise_untrained"] = nested([[0.2, 0.3, 0.25, 0.22, 0.28]])  # many seeds, one history
    assert history_rise.reversion_verdict(one).startswith("undecided (one history")


def test_room_sentence_follows_task_accuracy_at_theta_S():
    assert "has room" in ch.sentences(_m(acc_S=0.5))["room"]
    assert "little room" in ch.sentences(_m(acc_S=0.97))["room"]


def test_task_sentence_says_rises_falls_or_stays():
    assert "rises" in ch.sentences(_m(acc_T=0.8))["task"]
    assert "falls" in ch.sentences(_m(acc_T=0.3))["task"]
    assert "stays" in ch.sentences(_m(acc_T=0.505))["task"]


def test_depth_sentence_follows_exact_match_against_first_token():
    assert "stops at the first tokens" in ch.sentences(_m(h_T=0.25, em_T=0.01))["depth"]
    assert "mostly complete" in ch.sentences(_m(h_T=0.25, em_T=0.2))["depth"]
    assert "does not rise" in ch.sentences(_m(h_T=0.02, h_S=0.02))["depth"]


def test_split_sentence_separates_task_learning_from_reversion():
    trained_only = ch.sentences(_m(trained=(0.0, 0.10), untrained=(0.0, 0.0)))["split"]
    assert "only on requests of the fine-tuned task itself (+0.100 on the fine-tuned task, +0.000" in trained_only
    both = ch.sentences(_m(trained=(0.0, 0.30), untrained=(0.0, 0.14)))["split"]
    assert "never fine-tuned too" in both
    assert "cannot tell" in ch.sentences(_m(trained=(0.0, 0.01), untrained=(0.0, 0.0)))["split"]


@pytest.mark.parametrize("long_T, h_T0, want", [
    (0.03, 0.25, "removes most"), (0.24, 0.25, "does not remove"), (0.0, 0.02, "no rise to remove")])
def test_long_alignment_sentence(long_T, h_T0, want):
    assert want in ch.sentences(_m(long_T=long_T, h_T0=h_T0))["long"]


def test_null_threshold_is_the_stricter_null_and_the_sentence_says_which():
    from reversion.analysis import chance
    from reversion.book.chapters import ch04_null_test as ch04
    from reversion.core.stats import isotropic_cos_quantile

    iso = isotropic_cos_quantile(64, 0.99)  # about 0.29 at width 64
    wide = {"isotropic": iso, "matched": 0.45}
    assert chance.stricter_p99(wide, 64) == 0.45
    assert "matched null is the threshold" in ch04.null_sentence(wide)
    narrow = {"isotropic": iso, "matched": 0.20}
    assert chance.stricter_p99(narrow, 64) == iso  # a matched null below the isotropic one does not lower the bar
    assert "isotropic null is the threshold" in ch04.null_sentence(narrow)
    assert "nearly agree" in ch04.null_sentence({"isotropic": 0.29, "matched": 0.30})


def _geometry(vp, rs=(-0.2, -0.1, -0.3)):
    def n(x):
        return None if x is None else nested([[v] for v in x])
    return {"across_histories": {"n": 3, "cos_v_rev_v_P": n(vp), "cos_v_rev_r_S": n(rs)}}


def test_geometry_sentence_follows_v_rev_against_v_P_in_every_history():
    from reversion.book.chapters import ch02_vrev_estimation as ch02

    assert "nearly v_P (cos 0.91 to 0.95)" in ch02.geometry_sentence(_geometry((0.93, 0.91, 0.95)))
    assert "some histories but not all" in ch02.geometry_sentence(_geometry((0.93, 0.5, 0.95)))
    assert "v_rev and v_P differ" in ch02.geometry_sentence(_geometry((0.3, 0.5, 0.2)))
    assert "opposite of the refusal" in ch02.geometry_sentence(_geometry((0.3, 0.5, 0.2), rs=(-0.7, -0.8, -0.75)))
    assert "no v_P" in ch02.geometry_sentence(_geometry(None))


# --------------------------------------------------------------------------- chapter 03: the judge split


def _split(lo, hi, mean=None):
    x = {"mean": (lo + hi) / 2 if mean is None else mean, "ci_low": lo, "ci_high": hi}
    return {"exact_match": {"untrained": x, "trained": x}, "harmfulness": {"untrained": x, "trained": x}}


def test_judge_sentence_flips_with_the_untrained_exact_match_interval():
    from reversion.book.chapters.ch03_alignment import judge_sentence
    assert "not only the fine-tuned task" in judge_sentence(_split(0.01, 0.05))
    assert "not resolved from zero" in judge_sentence(_split(-0.01, 0.05))
    assert "fall below" in judge_sentence(_split(-0.05, -0.01))
    # one history: no interval, the mean decides
    one = {"exact_match": {"untrained": {"mean": 0.02, "ci_low": None, "ci_high": None}}}
    assert "not only the fine-tuned task" in judge_sentence(one)
    assert "does not split" in judge_sentence(None)


# --------------------------------------------------------------------------- chapter 02: the readout over histories


def _readout(v, controls, d=0.02):
    """Three histories' readouts: v_rev's around ``v`` (+-``d``), each control's as given (a number:
    shifted with v_rev's, so the paired contrast is constant; a list: one value per history)."""
    from reversion.analysis.estimation import readout_over_histories

    if v is None:
        return {"readout_over_histories": None}
    es = (0.0, d, -d)
    ros = [{"v_rev": {"compliance_minus_refusal": v + e},
            **{k: {"compliance_minus_refusal": c[i] if isinstance(c, list) else c + e} for k, c in controls.items()}}
           for i, e in enumerate(es)]
    return {"readout_over_histories": readout_over_histories(ros)}


def test_readout_sentence_follows_the_interval_and_every_control():
    from reversion.book.chapters.ch02_vrev_estimation import readout_verdict

    assert "and more than every control direction" in readout_verdict(_readout(0.8, {"-r_S": 0.1, "random": 0.0}))
    assert "so does -r_S as much or more" in readout_verdict(_readout(0.8, {"-r_S": 0.85, "random": 0.0}))
    assert "does not favour" in readout_verdict(_readout(0.02, {"-r_S": 0.0}))
    assert "too wide to tell whether" in readout_verdict(_readout(0.3, {"-r_S": 0.0}, d=0.3))
    wide = readout_verdict(_readout(0.8, {"-r_S": [0.7, 0.8, 0.6]}))  # contrasts 0.10, 0.02, 0.18
    assert "margin over the control directions is too wide to tell" in wide
    assert readout_verdict(_readout(None, {})).startswith("undefined")
