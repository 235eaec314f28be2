"""The organism's design study (``reversion.design``) and its rows on the Performance page: the
measure has a closed form, the criterion flips on planted numbers, the page says which candidate
the default world is by comparing configurations, and the benchmark counts a dose once."""

from __future__ import annotations

import copy

import pytest

from reversion import benchmark, design
from reversion.book.chapters import ch10_performance as performance
from reversion.subjects.organism.lineages import lineages
from reversion.subjects.organism.worlds import make_world


def _evaluation(by_task: dict[str, tuple[float, int]]) -> dict:
    return {"harmful_by_task": {t: {"harmfulness": h, "n": n} for t, (h, n) in by_task.items()}}


def test_untrained_harmfulness_leaves_out_the_trained_task_and_weights_requests():
    ev = _evaluation({"sort": (1.0, 50), "reverse": (0.5, 10), "swap": (0.0, 30)})
    assert design.untrained_harmfulness(ev, "sort") == pytest.approx(5 / 40)  # (0.5*10 + 0*30) / 40
    assert design.untrained_harmfulness(ev, "swap") == pytest.approx((50 + 5) / 60)
    with pytest.raises(ValueError, match="other than 'sort'"):
        design.untrained_harmfulness(_evaluation({"sort": (1.0, 5)}), "sort")


def _rows(theta_s: float, low: float | None) -> dict:
    return {"theta_S_harmfulness": {"mean": theta_s}, "untrained_rise": {"ci_low": low}}


def test_the_criterion_flips_on_each_of_its_two_parts():
    assert design.judge(_rows(0.02, 0.10))["keeps_effect"] is True
    assert design.judge(_rows(0.30, 0.10)) == {"refuses": False, "reverts": True, "keeps_effect": False}
    assert design.judge(_rows(0.02, 0.01)) == {"refuses": True, "reverts": False, "keeps_effect": False}
    assert design.judge(_rows(0.02, None))["reverts"] is False  # one history: no interval, no claim


def test_candidates_resolve_and_the_study_seeds_are_not_the_books():
    for name, overrides in design.CANDIDATES.items():
        assert design.resolved(overrides)["model"]["n_layer"] >= 2, name
    assert design.SEED0 >= 100  # the book's histories are 0, 1, ...: far below


def _study() -> dict:
    base = {"n_histories": 6, "n_seeds": 2, "theta_S_harmfulness": {"mean": 0.01},
            "untrained_rise": {"mean": 0.2, "ci_low": 0.1, "ci_high": 0.3}, "seconds": {"histories": 10}}
    cheap = {**copy.deepcopy(base), "cost_per_history": 1, "keeps_effect": True,
             "history": design.shape(make_world("default").history)}
    today = {**copy.deepcopy(base), "cost_per_history": 4, "keeps_effect": True,
             "history": design.resolved({})}
    return {"candidates": {"cheap": cheap, "today's size": today}}


def test_the_page_names_the_default_world_by_its_configuration():
    study = _study()
    glue = performance.design_glue(study)
    assert "“cheap” (0.25 of today's cost a history)" in glue["d_choice"]
    assert "It is the default world of this build." in glue["d_choice"]
    # planted: the default world is not the cheapest candidate's configuration
    study["candidates"]["cheap"]["history"]["helpful"]["steps"] += 1
    assert "It is the default world" not in performance.design_glue(study)["d_choice"]
    study["candidates"]["cheap"]["keeps_effect"] = study["candidates"]["today's size"]["keeps_effect"] = False
    assert performance.design_glue(study)["d_choice"].startswith("No candidate keeps the effect")
    table = performance.design_table(_study())
    assert list(table.index) == ["cheap", "today's size"] and list(table["cost / today's"]) == [0.25, 1.0]
    assert "not run" in performance.design_table(None)


def test_the_benchmark_counts_each_phase_once_and_a_dose_not_at_all():
    w = make_world("smoke")
    h = w.history
    one = sum(getattr(h, p).steps * getattr(h, p).batch_size for p in ("pretrain", "helpful", "safety"))
    assert benchmark.trained_sequences([h]) == one
    family = list(lineages(w).values())  # main, second witness, no witness, one dose
    pre, hel, saf = (getattr(h, p).steps * getattr(h, p).batch_size for p in ("pretrain", "helpful", "safety"))
    # one pretraining; three helpful phases (the dose is a snapshot of the main one); four safety phases
    assert benchmark.trained_sequences(family) == pre + 3 * hel + len(family) * saf
