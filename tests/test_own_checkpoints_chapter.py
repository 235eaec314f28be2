"""Chapter 07's LoRA section, its pieces on planted numbers: the comparison of ``reversion track``'s
CSV with the monitor's log, and the sentence it chooses (the notebook end to end:
``tests/test_notebooks.py -k 07``)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from reversion.book.chapters import ch08_own_checkpoints as oc


def _csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _run(tmp_path, shift: float = 0.0, steps=(5, 10)):
    log = [{"step": s, "alignment": 0.1 * s, "projection": 0.2 * s, "drift_norm": 1.0 + s} for s in (0, 5, 10)]
    tracked = [{"step": s, "alignment": 0.1 * s + (shift if s == 10 else 0.0), "projection": 0.2 * s,
                "drift_norm": 1.0 + s} for s in steps]
    run = SimpleNamespace(log_path=_csv(tmp_path / "log.csv", log))
    return run, _csv(tmp_path / "track.csv", tracked)


@pytest.mark.parametrize("shift, says", [
    (0.0, "reproduces the monitor's log exactly"),
    (5e-7, "agree within 1e-06 (largest difference 5.0e-07, in the alignment)"),
    (1e-3, "does NOT reproduce the monitor's log within 1e-06: the alignment differs by 1.0e-03 at step 10"),
])
def test_the_track_sentence_follows_the_largest_difference(tmp_path, shift, says):
    run, track = _run(tmp_path, shift)
    compared = oc.compare_track(run, track)
    assert list(compared.index) == [5, 10]  # the monitor's step 0 has no checkpoint
    assert oc.track_diff(compared)["alignment"] == pytest.approx(shift, abs=1e-12)
    assert oc.track_diff(compared)["projection"] == 0.0
    assert says in oc.track_sentence(compared)
    assert "2 adapter checkpoints" in oc.track_sentence(compared)


def test_a_tracked_step_the_log_lacks_is_refused(tmp_path):
    run, track = _run(tmp_path, steps=(5, 15))
    with pytest.raises(ValueError, match=r"track measured steps \[15\]"):
        oc.compare_track(run, track)
