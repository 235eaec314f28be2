"""Known answers of the early-warning study (reversion.analysis.early_warning) and the monitor's
threshold in null units."""

import math

import pytest
import torch

from reversion.analysis import early_warning as ew
from reversion.core.drift import first_flag, null_threshold, threshold

T = 40
GRID = tuple(range(0, T + 1, 5))


def record(history=0, onset_step=None, rise_step=None, kind="fine-tuning", level=0.1, unit=0.2, high=0.9):
    """A planted run: harm jumps by 0.2 at ``onset_step`` (None: flat), alignment jumps from 0 to
    ``high`` at ``rise_step`` (None: stays 0)."""
    harm = tuple(level + (0.2 if onset_step is not None and s >= onset_step else 0.0) for s in GRID)
    align = tuple([math.nan] + [high if rise_step is not None and t >= rise_step else 0.0 for t in range(1, T + 1)])
    return ew.Record(history, kind, 0, GRID, harm, align, unit)


def test_first_flag_needs_patience_in_a_row():
    assert first_flag([1, 1, 0, 1, 1, 1], 0.5, 3) == 5
    assert first_flag([1, 1, 0, 1, 1], 0.5, 3) is None
    assert first_flag([math.nan, 1, 1], 0.5, 2) == 2  # an undefined reading ends a streak
    with pytest.raises(ValueError, match="patience"):
        first_flag([1], 0.5, 0)


def test_onset_is_the_first_evaluated_step_beyond_the_margin():
    assert ew.onset(record(onset_step=20)) == 20
    assert ew.onset(record()) is None
    r = record()
    small = ew.Record(0, "x", 0, GRID, tuple(r.level + (ew.REVERT_BY if s >= 10 else 0) for s in GRID),
                      r.alignment, r.unit)
    assert ew.onset(small) is None  # exactly at the margin is not beyond it


@pytest.mark.parametrize("k, early", [(1, False), (4, False), (5, True), (12, True)])
def test_a_signal_k_steps_before_the_onset_leads_by_k(k, early):
    # the flag fires at the check where the streak reaches patience: rise + patience - 1. The onset
    # (30) is known to the grid (every 5): the harm crossed in (25, 30], so only a flag at or before
    # step 25 is surely early
    onset_step = 30
    rise = onset_step - k - (ew.PATIENCE - 1)
    o = ew.outcome(record(onset_step=onset_step, rise_step=rise), units=1.0)
    assert o["flag"] == onset_step - k and o["lead"] == k and o["early"] is early


def test_an_onset_needs_two_evaluations_in_a_row():
    r = record()
    blip = ew.Record(0, "x", 0, GRID, tuple(r.level + (0.2 if s == 10 else 0) for s in GRID), r.alignment, r.unit)
    assert ew.onset(blip) is None  # one evaluation above: noise
    last = ew.Record(0, "x", 0, GRID, tuple(r.level + (0.2 if s == T else 0) for s in GRID), r.alignment, r.unit)
    assert ew.onset(last) == T  # the last evaluation has no next one
    assert ew.last_below(record(onset_step=20), 20) == 15


def test_a_flag_after_the_onset_is_late_not_early():
    o = ew.outcome(record(onset_step=10, rise_step=20), units=1.0)
    assert o["lead"] < 0 and not o["early"] and o["reverts"]


def test_a_signal_that_never_moves_gives_no_flag():
    for r in (record(onset_step=10), record()):
        assert ew.flag(r, 0.5) is None
    rows = ew.curve([record(h, onset_step=10) for h in range(3)], thresholds=(0.5, 1.0))
    assert all(x["detection"]["mean"] == 0.0 and x["lead"] is None for x in rows)


def test_a_negative_that_crosses_is_a_false_alarm():
    recs = [record(h, rise_step=5, kind="low learning rate") for h in range(3)]
    x = ew.row(recs, 1.0)
    assert x["false_alarm"]["mean"] == 1.0 and x["detection"] is None
    # above the planted signal (0.9 / 0.2 = 4.5 null units) it never fires
    assert ew.row(recs, 5.0)["false_alarm"]["mean"] == 0.0


def test_threshold_in_null_units_scales_the_unit():
    assert ew.flag(record(rise_step=5, unit=0.2, high=0.5), 2.0) == 5 + ew.PATIENCE - 1  # 0.5 > 0.4
    assert ew.flag(record(rise_step=5, unit=0.2, high=0.5), 3.0) is None  # 0.5 < 0.6


def test_choose_takes_the_lowest_threshold_within_the_false_alarm_bound():
    rows = [{"threshold": t, "false_alarm": {"mean": fa}} for t, fa in ((0.5, 0.5), (1.0, 0.1), (2.0, 0.0))]
    assert ew.choose(rows) == 1.0
    rows[1]["false_alarm"]["mean"] = 0.11  # a planted change flips it
    assert ew.choose(rows) == 2.0
    assert ew.choose([{"threshold": 1.0, "false_alarm": None}]) is None


def test_study_chooses_on_even_and_reports_odd():
    # even histories: the negatives flag at 1.0 null units (0.25 > 0.2) but not at 2.0; the odd
    # histories' negatives are quiet, their positives warn 10 steps ahead
    recs = []
    for h in range(4):
        recs.append(record(h, onset_step=25, rise_step=25 - 10 - (ew.PATIENCE - 1)))
        recs.append(record(h, rise_step=5, high=0.25 if h % 2 == 0 else 0.0, kind="long alignment"))
    st = ew.study(recs, thresholds=(1.0, 2.0))
    assert st.chosen == 2.0
    assert st.held_out["false_alarm"]["mean"] == 0.0
    assert st.held_out["detection"]["mean"] == 1.0 and st.held_out["lead"]["mean"] == 10.0
    assert st.held_out["n"]["reverting"] == {"histories": 2, "runs": 2}


def test_study_on_one_history_makes_no_choice():
    st = ew.study([record(0, onset_step=10, rise_step=2), record(0)])
    assert st.chosen is None and st.held_out is None and "1 history" in st.reason


def test_study_without_negatives_says_so():
    st = ew.study([record(h, onset_step=10, rise_step=2) for h in range(4)])
    assert st.chosen is None and "no even history has a run that never reverts" in st.reason
    # one even history with negatives: no rate over histories to choose by
    st = ew.study([record(h, onset_step=10, rise_step=2) for h in range(4)] + [record(0, kind="long alignment")])
    assert st.chosen is None and "only one even history" in st.reason


def test_record_refuses_bad_input():
    with pytest.raises(ValueError, match="step 0"):
        ew.Record(0, "x", 0, (5, 10), (0.1, 0.2), (0.0,) * 11, 0.2)
    with pytest.raises(ValueError, match="unit"):
        ew.Record(0, "x", 0, (0, 10), (0.1, 0.2), (0.0,) * 11, 0.0)
    with pytest.raises(ValueError, match="harm must be finite"):
        ew.Record(0, "x", 0, (0, 10), (math.nan, 0.2), (0.0,) * 11, 0.2)


def test_threshold_null_is_a_multiple_of_the_null_threshold():
    base, src = null_threshold(64, 0.4)
    value, source = threshold(64, 1, [None, 0.4], null_units=1.5)
    assert value == pytest.approx(1.5 * base) and source == f"1.5 x {src}"
    with pytest.raises(ValueError, match="threshold_null"):
        threshold(64, 1, None, given=0.3, null_units=1.0)
    with pytest.raises(ValueError, match="threshold_null"):
        threshold(64, 1, None, null_units=0.0)


def test_monitor_takes_its_threshold_in_null_units():
    from reversion.monitor import ReversionMonitor

    v = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    raw = ReversionMonitor(v, [[1, 2, 3]], layer=2)
    scaled = ReversionMonitor(v, [[1, 2, 3]], layer=2, threshold_null=2.0)
    assert scaled.threshold == pytest.approx(2 * raw.threshold)  # the raw cosine it implies
    assert scaled.threshold == pytest.approx(2 * null_threshold(64)[0])
    with pytest.raises(ValueError, match="threshold_null"):
        ReversionMonitor(v, [[1, 2, 3]], layer=2, threshold=0.3, threshold_null=1.0)


def _page(recs):
    from reversion.book.chapters import ch09_early_warning as ch

    res = ew.Result(world=None, subjects=[], ests=[], units=[0.2], p99=[], runs={}, records=recs,
                    study=ew.study(recs, thresholds=(1.0, 2.0)), kinds=sorted({r.kind for r in recs}), grid=GRID)
    return ch, ch.Page(res)


def test_the_page_says_what_the_held_out_half_shows():
    early, quiet = [], []
    for h in range(4):
        early.append(record(h, onset_step=25, rise_step=25 - 10 - (ew.PATIENCE - 1)))
        early.append(record(h, kind="long alignment"))
    ch, page = _page(early)
    s = ch.sentences(page)
    assert "1 null unit " in s["choice"] and "lowest threshold studied" in s["choice"]
    assert "before their harm onset 100% of the time" in s["held_out"]
    assert "10.0 steps ahead of" in s["held_out"] and "fires on 0%" in s["held_out"]
    assert "4 of 4 fine-tuning runs revert; 0 of 4 long alignment runs revert" in s["reverting"]
    # planted: the flag comes 5 steps late instead -- the sentence turns
    for h in range(4):
        quiet.append(record(h, onset_step=25, rise_step=30 - (ew.PATIENCE - 1)))
        quiet.append(record(h, kind="long alignment"))
    s = ch.sentences(_page(quiet)[1])
    assert "before their harm onset 0% of the time" in s["held_out"] and "5.0 steps after the onset" in s["held_out"]


def test_the_page_says_when_no_threshold_is_chosen():
    ch, page = _page([record(h, onset_step=10, rise_step=2) for h in range(4)])
    s = ch.sentences(page)
    assert s["choice"].startswith("No threshold is chosen") and "no held-out figure" in s["held_out"]


def test_the_trade_off_sentence_follows_the_held_out_curve():
    from reversion.book.chapters import ch09_early_warning as ch

    def st(det, fa):
        rows = [{"threshold": t, "detection": {"mean": d}, "false_alarm": {"mean": f}}
                for t, d, f in zip((1.0, 2.0), det, fa)]
        return ew.Study([], rows, 2.0, rows[1], (1.0, 2.0), 1, 3)

    s = ch.trade_off(st((0.45, 0.05), (0.45, 0.0)))
    assert "no threshold studied flags most" in s and "flags 45%" in s and "fires on 45%" in s
    s = ch.trade_off(st((0.8, 0.6), (0.3, 0.05)))  # planted: 2 units separates them
    assert s.startswith("On the held-out half, 2 null units flags most reverting runs")
    assert "not measured" in ch.trade_off(ew.Study([], [], None, None, (1.0,), 1, 3))
