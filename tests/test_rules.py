"""The rules fixed before the data (:mod:`reversion.analysis.rules`) and the statistics they
name, each on a case with a known answer: bounded intervals, correlations pooled by Fisher z,
Fieller's ratio interval, and the witness crossover's planted null of its own confound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reversion.analysis import pasts, rules
from reversion.analysis.estimation import readout_over_histories
from reversion.analysis.verdicts import CONSISTENT, NOT_REPRODUCED, verdict
from reversion.core import stats
from reversion.core.drift import crossover


def test_every_margin_is_positive_has_a_unit_and_a_reason():
    assert set(rules.MARGINS) >= {"harmfulness", "cosine", "correlation", "task_accuracy", "cumulative_reversion",
                                  "dose_slope", "logit"}
    for k, m in rules.MARGINS.items():
        assert m.value > 0 and m.unit and len(m.why) > 20, k
    assert rules.ALPHA == 0.05 and rules.LEVEL == 0.95
    rec = rules.record()
    assert rec["margins"]["harmfulness"]["value"] == rules.margin("harmfulness") == 0.02
    with pytest.raises(ValueError, match="measure must be one of"):
        rules.margin("vibes")


def test_an_effect_within_its_margin_is_no_effect():
    """The rule a contrast already followed, now for every effect: beyond zero is not enough."""
    m = rules.margin("harmfulness")
    assert verdict({"ci_low": 0.001, "ci_high": 0.015}, +1, None, m) == NOT_REPRODUCED
    assert verdict({"ci_low": 0.021, "ci_high": 0.05}, +1, None, m) == CONSISTENT


def test_a_bounded_interval_stays_in_its_range_with_the_coverage_of_the_plain_one():
    """Closed form: the truncated interval is the plain t-interval cut at the bounds; a cosine near 1
    no longer reaches above it, and one far from the bounds is untouched."""
    near = [[0.99], [0.60], [0.98]]
    plain, cut = stats.nested(near), stats.nested(near, bounds=(-1.0, 1.0))
    assert plain["ci_high"] > 1 and cut["ci_high"] == 1.0 and cut["ci_low"] == plain["ci_low"]
    assert cut["bounds"] == [-1.0, 1.0] and cut["mean"] == plain["mean"]
    far = [[0.1], [0.2], [0.15]]
    assert stats.nested(far, bounds=(-1.0, 1.0))["ci_low"] == stats.nested(far)["ci_low"]
    # coverage: the truncated interval holds the true value exactly when the plain one does
    g = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        x = np.clip(0.9 + 0.08 * g.standard_normal(5), -1, 1)
        p, c = stats.nested([[v] for v in x]), stats.nested([[v] for v in x], bounds=(-1.0, 1.0))
        assert (p["ci_low"] <= 0.9 <= p["ci_high"]) == (c["ci_low"] <= 0.9 <= c["ci_high"])
        hits += c["ci_low"] <= 0.9 <= c["ci_high"]
    assert 0.9 <= hits / 400 <= 0.99


def test_fisher_pooling_closed_form_planted_signal_and_null():
    same = stats.fisher_interval([0.6, 0.6, 0.6])
    assert same["mean"] == pytest.approx(0.6) and same["ci_low"] == pytest.approx(0.6)
    assert stats.fisher_interval([0.999999, 0.2])["ci_high"] <= 1.0  # back-transformed: never above 1
    assert stats.fisher_interval([None, 0.5])["n"] == 1 and stats.fisher_interval([None])["mean"] is None
    with pytest.raises(ValueError, match="correlations in"):
        stats.fisher_interval([1.5, 0.2])
    g = np.random.default_rng(1)

    def per_history(rho: float, H: int = 10, n: int = 40) -> list[float]:
        out = []
        for _ in range(H):
            x = g.standard_normal(n)
            y = rho * x + np.sqrt(1 - rho ** 2) * g.standard_normal(n)
            out.append(stats.spearman(x, y))
        return out

    found = sum(stats.fisher_interval(per_history(0.5))["ci_low"] > 0.1 for _ in range(50))
    false = sum(stats.fisher_interval(per_history(0.0))["ci_low"] > 0.0 for _ in range(200))
    assert found >= 48 and false <= 20  # the signal found; the null rarely


def test_fieller_ratio_closed_form_coverage_and_an_unresolved_denominator():
    den = np.array([0.2, 0.3, 0.25, 0.35])
    exact = stats.ratio_interval(0.5 * den, den)  # proportional: one ratio fits every history
    assert exact["mean"] == pytest.approx(0.5)
    assert exact["ci_low"] == pytest.approx(0.5, abs=1e-6) and exact["ci_high"] == pytest.approx(0.5, abs=1e-6)
    g = np.random.default_rng(2)
    hits = 0
    for _ in range(400):
        d = 0.2 + 0.05 * g.standard_normal(10)
        r = stats.ratio_interval(0.3 * d + 0.02 * g.standard_normal(10), d)
        hits += r["ci_low"] <= 0.3 <= r["ci_high"]
    assert 0.91 <= hits / 400 <= 0.98
    flat = stats.ratio_interval(g.normal(0.1, 0.05, 10), g.normal(0.0, 0.05, 10))  # no rise to share
    assert flat["ci_low"] is None and flat["ci_high"] is None
    with pytest.raises(ValueError, match="at least 2 pairs"):
        stats.ratio_interval([1.0], [1.0])


D = 32


def _lineages(g: np.random.Generator):
    """Two witnesses and the aligned models each inherits its witness's side of u from."""
    mu_h, mu_h2 = torch.tensor(g.standard_normal(D)), torch.tensor(g.standard_normal(D))
    mu_s = mu_h + 0.3 * torch.tensor(g.standard_normal(D))
    mu_s2 = mu_h2 + 0.3 * torch.tensor(g.standard_normal(D))
    return mu_h, mu_h2, mu_s, mu_s2


def test_norm_growth_is_not_read_as_a_return_to_the_own_witness():
    """The crossover's own confound, planted: each lineage's drift amplifies its own theta_S mean
    (norm growth) and returns toward nothing. Without the control it reads "own" (the confound is
    real); with each drift read without its own mean, it does not."""
    g = np.random.default_rng(3)
    mu_h, mu_h2, mu_s, mu_s2 = _lineages(g)
    grow_a = [c * mu_s for c in (0.1, 0.2, 0.15, 0.12)]
    grow_b = [c * mu_s2 for c in (0.1, 0.2, 0.15, 0.12)]
    naive = crossover(grow_a, grow_b, mu_h, mu_h2)
    controlled = crossover(grow_a, grow_b, mu_h, mu_h2, mu_s, mu_s2)
    iv = pasts.interval
    assert pasts.witness_verdict(iv(naive["own"]), iv(naive["common"])) == "own"
    assert np.abs(controlled["own"]).max() < 1e-6
    assert pasts.witness_verdict(iv(controlled["own"] + [0.001, -0.001, 0.0, 0.0]),
                                 iv(controlled["common"] + [0.001, -0.001, 0.0, 0.0])) != "own"
    # the positive control: a real return toward each own witness still reads "own" with the control
    back_a = [0.2 * (mu_h - mu_s) + 0.01 * torch.tensor(g.standard_normal(D)) for _ in range(4)]
    back_b = [0.2 * (mu_h2 - mu_s2) + 0.01 * torch.tensor(g.standard_normal(D)) for _ in range(4)]
    ret = crossover(back_a, back_b, mu_h, mu_h2, mu_s, mu_s2)
    assert pasts.witness_verdict(iv(ret["own"]), iv(ret["common"])) == "own"


def _ro(v: float | None, **controls: float) -> dict:
    out = {"v_rev": {"compliance_minus_refusal": v}}
    out.update({k: {"compliance_minus_refusal": x} for k, x in controls.items()})
    return out


def test_the_readout_over_histories_contrasts_every_control():
    ros = [_ro(0.8 + d, **{"-r_S": 0.1 + d, "v_P": 0.3, "random": 0.0}) for d in (0.0, 0.05, -0.05)]
    r = readout_over_histories(ros)
    assert set(r["contrasts"]) == {"-r_S", "v_P", "random"} and r["v_rev"]["n"] == 3
    assert r["contrasts"]["-r_S"]["ci_low"] == pytest.approx(0.7)  # paired by history: the shift cancels
    assert verdict(r["v_rev"], +1, r["contrasts"], rules.margin("logit")) == CONSISTENT
    assert readout_over_histories([_ro(None, random=0.1)]) is None
