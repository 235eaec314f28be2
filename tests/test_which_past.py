"""Chapter "Which past?": the crossover statistic and every verdict rule on planted cases with
known answers (each rule flipped by a planted case), and the chapter on the smoke world (on your
checkpoints: ``test_which_past_checkpoints.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reversion.analysis import pasts
from reversion.book.chapters import ch05_which_past as ch
from reversion.core import stats
from reversion.core.drift import crossover
from reversion.stages.finetune import finetune_many
from reversion.subjects.organism.lineages import MAIN, NONE, SECOND, dose_name, lineages, train_world
from reversion.subjects.organism.subject import OrganismSubject
from reversion.subjects.organism.worlds import make_world

D = 64


def _drifts(g: np.random.Generator, toward: np.ndarray, n: int, noise: float) -> list[torch.Tensor]:
    return [torch.tensor(toward + noise * g.standard_normal(D)) for _ in range(n)]


@pytest.fixture
def witnesses():
    mu_h = np.zeros(D)
    mu_h[0] = 1.0
    mu_h2 = np.zeros(D)
    mu_h2[0] = -1.0
    mu_h2[1] = 0.5
    return torch.tensor(mu_h), torch.tensor(mu_h2)


def test_crossover_closed_form(witnesses):
    """Drifts exactly along +u (main) and -u (second lineage): a = b = 1, own 1, common 0."""
    mu_h, mu_h2 = witnesses
    u = (mu_h - mu_h2)
    x = crossover([2 * u, 0.5 * u], [-u, -3 * u], mu_h, mu_h2)
    np.testing.assert_allclose(x["a"], [1, 1])
    np.testing.assert_allclose(x["b"], [1, 1])
    np.testing.assert_allclose(x["own"], [1, 1])
    np.testing.assert_allclose(x["common"], [0, 0], atol=1e-15)
    # both toward the second witness: a = -1, b = +1 -> own 0, common -1
    y = crossover([-u], [-u], mu_h, mu_h2)
    assert y["own"][0] == pytest.approx(0) and y["common"][0] == pytest.approx(-1)


def _verdict(x: dict) -> str:
    return pasts.witness_verdict(pasts.interval(x["own"]), pasts.interval(x["common"]))


def test_an_own_part_within_the_margin_is_no_pull(witnesses):
    """Equivalence: the own part's whole interval within +-0.05 and no common motion reads "none"
    (not reproduced), not "unresolved"."""
    tight = {"mean": 0.01, "ci_low": -0.02, "ci_high": 0.03}
    assert pasts.witness_verdict(tight, tight) == "none"
    assert pasts.witness_verdict({"mean": 0.01, "ci_low": -0.2, "ci_high": 0.2}, tight) == "unresolved"


def test_planted_own_witness_is_read_as_own(witnesses):
    mu_h, mu_h2 = witnesses
    g = np.random.default_rng(0)
    u = (mu_h - mu_h2).numpy()
    x = crossover(_drifts(g, 0.3 * u, 5, 0.05), _drifts(g, -0.3 * u, 5, 0.05), mu_h, mu_h2)
    assert _verdict(x) == "own"


def test_planted_drift_toward_the_second_witness_is_read_as_such(witnesses):
    """Both lineages follow theta_H': not "own", but a common part toward H' (negative)."""
    mu_h, mu_h2 = witnesses
    g = np.random.default_rng(1)
    u = (mu_h - mu_h2).numpy()
    x = crossover(_drifts(g, -0.3 * u, 5, 0.05), _drifts(g, -0.3 * u, 5, 0.05), mu_h, mu_h2)
    assert _verdict(x) == "common"
    assert pasts.interval(x["common"])["ci_high"] < 0


def test_planted_isotropic_drift_is_unresolved(witnesses):
    """The null: drift with no component along u in expectation. Across 50 planted worlds the
    rule calls "own" or "common" at about its nominal rate, not more."""
    mu_h, mu_h2 = witnesses
    g = np.random.default_rng(2)
    calls = [_verdict(crossover(_drifts(g, np.zeros(D), 5, 1.0), _drifts(g, np.zeros(D), 5, 1.0), mu_h, mu_h2))
             for _ in range(50)]
    assert calls.count("own") <= 3 and calls.count("unresolved") >= 40


def test_planted_away_from_own(witnesses):
    mu_h, mu_h2 = witnesses
    g = np.random.default_rng(3)
    u = (mu_h - mu_h2).numpy()
    assert _verdict(crossover(_drifts(g, -0.3 * u, 5, 0.05), _drifts(g, 0.3 * u, 5, 0.05), mu_h, mu_h2)) == "away"


def test_crossover_bad_input(witnesses):
    mu_h, _ = witnesses
    with pytest.raises(ValueError, match="same number"):
        crossover([mu_h], [], mu_h, -mu_h)
    with pytest.raises(ValueError, match="equal"):
        crossover([mu_h], [mu_h], mu_h, mu_h.clone())


def _iv(values) -> dict:
    return pasts.interval(np.asarray(values, float))


def test_style_verdict_flips():
    up = [0.30, 0.32, 0.28, 0.31, 0.29]
    flat = [0.0, 0.01, -0.01, 0.0, 0.005]
    diff = lambda a, b: stats.paired_difference(np.array(a), np.array(b))  # noqa: E731
    assert pasts.style_verdict(_iv(up), _iv(flat), diff(up, flat)) == "marked"
    assert pasts.style_verdict(_iv(flat), _iv(up), diff(flat, up)) == "plain"
    assert pasts.style_verdict(_iv(flat), _iv(flat), diff(flat, flat)) == "none"
    assert pasts.style_verdict(_iv(up), _iv(up[::-1]), diff(up, up[::-1])) == "mixed"


def test_no_witness_verdict_flips():
    main = np.array([0.30, 0.35, 0.25, 0.32, 0.28])
    none_small = np.array([0.02, 0.0, 0.05, 0.01, 0.03])
    none_same = main + np.array([0.005, -0.005, 0.003, -0.003, 0.0])  # the difference within the margin
    d = stats.paired_difference
    assert pasts.no_witness_verdict(_iv(main), d(main, none_small)) == "separated"
    assert pasts.no_witness_verdict(_iv(main), d(main, none_same)) == "not separated"
    zero = np.array([0.005, -0.005, 0.0, 0.004, -0.004])
    assert pasts.no_witness_verdict(_iv(zero), d(zero, none_small)) == "no reversion"  # within the margin
    noisy = np.array([0.30, -0.20, 0.10, 0.40, -0.10])
    assert pasts.no_witness_verdict(_iv(noisy), d(noisy, none_small)) == "unresolved"  # too wide to tell


def test_no_witness_share_decides_beside_the_difference():
    """Over histories: a difference beyond the margin is not enough when the no-witness rise is
    most of the main one (the share's interval above one half); a small share separates them."""
    main = np.array([0.30, 0.35, 0.25, 0.32, 0.28, 0.31, 0.29, 0.33, 0.27, 0.30])
    d = stats.paired_difference
    most = main * 0.72 + np.array([0.01, -0.01] * 5)
    share = stats.ratio_interval(most, main)
    assert share["ci_low"] > 0.5 and d(main, most)["ci_low"] > 0.02  # the difference alone would separate
    assert pasts.no_witness_verdict(_iv(main), d(main, most), share) == "not separated"
    little = main * 0.2 + np.array([0.01, -0.01] * 5)
    assert pasts.no_witness_verdict(_iv(main), d(main, little), stats.ratio_interval(little, main)) == "separated"
    half = main * 0.5 + np.array([0.05, -0.05] * 5)
    assert pasts.no_witness_verdict(_iv(main), d(main, half), stats.ratio_interval(half, main)) == "unresolved"


def test_dose_slopes_closed_form_and_verdict():
    doses = [0.25, 0.5, 1.0]
    rises = np.array([[0.1 + 0.2 * f + e for f in doses] for e in (0.0, 0.01, -0.01, 0.02)])
    np.testing.assert_allclose(pasts.dose_slopes(doses, rises), 0.2)
    assert pasts.dose_verdict(_iv(pasts.dose_slopes(doses, rises))) == "grows"
    assert pasts.dose_verdict(_iv(pasts.dose_slopes(doses, -rises))) == "shrinks"
    g = np.random.default_rng(4)
    flat = 0.3 + 0.05 * g.standard_normal((5, 3))
    flat_slopes = pasts.dose_slopes(doses, flat)
    assert pasts.dose_verdict(_iv(flat_slopes - flat_slopes.mean())) == "unresolved"  # too wide to tell
    assert pasts.dose_verdict({"mean": 0.0, "ci_low": -0.01, "ci_high": 0.01}) == "flat"  # within the margin
    with pytest.raises(ValueError, match="at least 2 doses"):
        pasts.dose_slopes([1.0], rises[:, :1])


def test_residual_verdict_flips():
    above = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    below = {"mean": 0.1, "ci_low": -0.1, "ci_high": 0.3}
    assert pasts.residual_verdict(above, [0.9, 0.8, 0.95], 0.3) == "specific"
    assert pasts.residual_verdict(below, [0.9, 0.8, 0.95], 0.3) == "none"
    assert pasts.residual_verdict(above, [0.1, 0.2, 0.9], 0.3) == "noise"
    assert pasts.residual_verdict(above, [0.4, 0.8, 0.9], 0.3) == "unresolved"  # one unreliable history
    assert pasts.residual_verdict({"mean": 0.5, "ci_low": None, "ci_high": None}, [0.9], 0.3) == "unresolved"
    straddles = {"mean": 0.3, "ci_low": 0.2, "ci_high": 0.4}
    assert pasts.residual_verdict(straddles, [0.9, 0.8, 0.95], 0.3) == "unresolved"
    assert pasts.residual_verdict({"mean": 0.1, "ci_low": 0.05, "ci_high": 0.3}, [0.9, 0.8], 0.3) == "none"


def test_every_verdict_has_a_sentence():
    for kind, rule in (("witness", ("own", "away", "common", "unresolved", "none")),
                       ("style", ("marked", "plain", "none", "mixed")),
                       ("no_witness", ("separated", "not separated", "unresolved", "no reversion")),
                       ("dose", ("grows", "shrinks", "flat", "unresolved")),
                       ("residual", ("specific", "none", "noise", "unresolved")),
                       ("weights", ("own", "away", "common", "unresolved", "none"))):
        assert set(ch.SENTENCES[kind]) == set(rule)


def test_lineages_share_theta_P_and_differ_in_the_helpful_phase_only():
    w = make_world("default")
    ls = lineages(w)
    assert list(ls) == [MAIN, SECOND, NONE, dose_name(0.25), dose_name(0.5)]
    for name, c in ls.items():
        assert (c.pretrain, c.safety, c.seed, c.language, c.model) == \
               (w.history.pretrain, w.history.safety, w.history.seed, w.history.language, w.history.model), name
    assert ls[SECOND].helpful.marker and not ls[MAIN].helpful.marker
    assert ls[NONE].helpful.harmful_fraction == 0.0
    assert ls[dose_name(0.25)].helpful.steps == w.history.helpful.steps // 4


@pytest.mark.parametrize("over, match", [
    ({"doses": [1.5]}, "doses"), ({"doses": [0.5, 0.5]}, "doses"), ({"doses": [0.0]}, "doses"),
    ({"lineages": 1}, "lineages"),
])
def test_bad_world_lineage_fields(over, match):
    with pytest.raises(ValueError, match=match):
        make_world("smoke", over)


def test_params_need_two_seeds():
    with pytest.raises(ValueError, match="n_seeds"):
        ch.Params(world="smoke", world_overrides={}, n_seeds=1, doses=[0.5], n_histories=2)


@pytest.mark.slow
def test_chapter_on_the_smoke_world(isolated, one_thread):
    P = ch.Params(world="smoke", world_overrides={}, n_seeds=2, doses=[0.5], n_histories=2)
    res = ch.run(P, progress=False)
    assert list(res.runs) == [MAIN, SECOND, NONE, dose_name(0.5)]
    assert all(len(r) == 2 and all(len(x) == 2 for x in r) for r in res.runs.values())  # 2 histories x 2 seeds
    m = ch.save(P, res)
    assert m["n"] == {"histories": 2, "seeds": 2, "level": "histories (seeds averaged within each)",
                      "residual_histories": 2}
    assert m["witness"]["own"]["n"] == 2 and m["no_witness"]["main_rise"]["level"] == "histories"
    assert set(m["residual"]["by_step"]) == {"1", "6"}  # T = 6 < 20: the steps that exist
    assert len(m["residual"]["reliability"]) == 2 and m["residual"]["verdict"] in ch.SENTENCES["residual"]
    assert len(ch.summary_table(m)) == 6 and "summary" not in m  # numbers only in metrics.json
    ws = m["weight_space"]
    assert ws["steps"] == [1, 2, 3, 6] and len(ws["cos_gap"]) == 4 and ws["cos_gap"][0]["n"] == 2
    assert ws["crossover"]["verdict"] in ch.SENTENCES["weights"]
    assert ch.weight_table(m).shape == (4, 2) and m["dose"]["doses"] == [0.5, 1.0]
    assert m["witness"]["verdict"] in ch.SENTENCES["witness"]
    # the main lineage's runs are each history's own (chapter 01's cache entries)
    assert res.runs[MAIN][0][0].path == finetune_many([(res.subject, res.world.finetune_config(0), None)],
                                                      progress=False)[0].path
    assert (isolated / "results" / ch.STEM / "metrics.json").is_file()
    assert ch.lineage_table(res).shape[0] == 4 and ch.task_split_table(m).shape[0] == 2


@pytest.mark.slow
def test_a_no_witness_world_built_to_generalise_the_task_shows_compliance_returning(isolated, one_thread):
    """The smoke world is built so that task learning alone reopens compliance: a 16-token language
    whose tiny model, fine-tuned long on sort, starts harmful answers by task skill. There the
    no-witness lineage's compliance returns as in the main lineage, and the rule must not call
    the two separated."""
    world = make_world("smoke", {"finetune": {"steps": 200, "lr": 3e-3, "batch_size": 16, "eval_steps": [0, 200],
                                              "n_eval": 64}, "n_histories": 1})
    train_world(world, progress=False)
    cfgs = lineages(world)
    main, none = (finetune_many([(OrganismSubject(cfgs[n]), world.finetune_config(k), None) for k in range(3)],
                                progress=False) for n in (MAIN, NONE))
    rise_main, rise_none = pasts.rise(main, 200), pasts.rise(none, 200)
    assert pasts.interval(rise_none)["ci_low"] > 0, rise_none
    assert pasts.no_witness_verdict(pasts.interval(rise_main), stats.paired_difference(rise_main, rise_none)) \
        != "separated"
