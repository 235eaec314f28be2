"""Statistics (``reversion.core.stats``) against known answers: closed forms, Monte-Carlo, planted signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from reversion.core import stats as S


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def binomial_ok(count: int, n: int, p: float, z: float = 4.0) -> bool:
    """``count`` out of ``n`` is within ``z`` binomial standard errors of rate ``p``."""
    return abs(count / n - p) <= z * math.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------- aggregate, geometry


def test_aggregate_known_values():
    out = S.aggregate([1.0, 2.0, 3.0, 4.0])
    assert out["mean"] == pytest.approx(2.5)
    assert out["std"] == pytest.approx(math.sqrt(5 / 3))  # sample std, ddof=1
    assert out["n"] == 4
    assert S.aggregate(torch.tensor([2.0, 4.0]))["mean"] == pytest.approx(3.0)
    assert S.aggregate([7.0]) == {"mean": 7.0, "std": 0.0, "n": 1}


def test_aggregate_errors():
    with pytest.raises(ValueError, match="values is empty"):
        S.aggregate([])
    with pytest.raises(ValueError, match="NaN or infinite"):
        S.aggregate([1.0, float("nan")])
    with pytest.raises(ValueError, match="NaN or infinite"):
        S.aggregate([1.0, float("inf")])


def test_cosine_unit_project_known_values():
    assert S.cosine([1, 0], [1, 1]) == pytest.approx(1 / math.sqrt(2))
    assert S.cosine([1, 2, 3], [-2, -4, -6]) == pytest.approx(-1.0)
    assert S.cosine(torch.tensor([0.0, 3.0]), np.array([0.0, 5.0])) == pytest.approx(1.0)
    np.testing.assert_allclose(S.cosine(np.eye(3), [1.0, 1.0, 0.0]), [2**-0.5, 2**-0.5, 0.0])
    np.testing.assert_allclose(S.unit([3.0, 4.0]), [0.6, 0.8])
    np.testing.assert_allclose(np.linalg.norm(S.unit(rng(0).normal(size=(5, 7))), axis=1), 1.0)
    assert S.project([3.0, 4.0], [10.0, 0.0]) == pytest.approx(3.0)
    np.testing.assert_allclose(S.project([[3.0, 4.0], [1.0, -2.0]], [0.0, 2.0]), [4.0, -2.0])


def test_zero_norm_errors():
    with pytest.raises(ValueError, match="zero-norm direction"):
        S.unit([0.0, 0.0])
    with pytest.raises(ValueError, match="zero-norm direction"):
        S.project([1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="a has zero norm"):
        S.cosine([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="b has zero norm"):
        S.cosine([1.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="differ in dimension"):
        S.cosine([1.0, 0.0], [1.0, 0.0, 0.0])


# --------------------------------------------------------------------------- isotropic null


def test_isotropic_quantile_closed_forms():
    # Beta formula itself.
    assert S.isotropic_cos_quantile(64) == pytest.approx(math.sqrt(sps.beta.ppf(0.98, 0.5, 31.5)))
    assert S.isotropic_cos_quantile(64, 0.95, one_sided=False) == pytest.approx(
        math.sqrt(sps.beta.ppf(0.95, 0.5, 31.5))
    )
    # d=3 (Archimedes): cos ~ Uniform(-1, 1), so |cos| ~ Uniform(0, 1).
    assert S.isotropic_cos_quantile(3, 0.99) == pytest.approx(0.98)
    assert S.isotropic_cos_quantile(3, 0.9, one_sided=False) == pytest.approx(0.9)
    # d=2: cos of a uniform angle, P(cos > c) = arccos(c) / pi.
    assert S.isotropic_cos_quantile(2, 0.99) == pytest.approx(math.cos(math.pi * 0.01))


def test_isotropic_quantile_large_d_normal_limit():
    # sqrt(d) * cos -> N(0, 1), so the one-sided p99 -> z_0.99 / sqrt(d).
    d = 4096
    assert S.isotropic_cos_quantile(d) * math.sqrt(d) == pytest.approx(sps.norm.ppf(0.99), rel=5e-3)
    assert S.isotropic_cos_quantile(d) * math.sqrt(d) == pytest.approx(2.33, rel=1e-2)


def test_isotropic_quantile_matches_monte_carlo():
    d, n = 64, 200_000
    dirs = S.sample_isotropic_directions(d, n, rng(1))
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    cos = dirs[:, 0]  # cosine with the fixed vector e_1
    for q in (0.95, 0.99):
        c = S.isotropic_cos_quantile(d, q)
        assert binomial_ok(int(np.count_nonzero(cos > c)), n, 1 - q)
        c2 = S.isotropic_cos_quantile(d, q, one_sided=False)
        assert binomial_ok(int(np.count_nonzero(np.abs(cos) > c2)), n, 1 - q)
    # And the empirical quantile itself, within a few Monte-Carlo standard errors (~0.002 here).
    assert S.empirical_quantile(cos, 0.99) == pytest.approx(S.isotropic_cos_quantile(d), abs=0.01)


def test_isotropic_quantile_validation():
    with pytest.raises(ValueError, match="d must be"):
        S.isotropic_cos_quantile(1)
    for q in (0.5, 1.0, 0.3):
        with pytest.raises(ValueError, match="q must lie"):
            S.isotropic_cos_quantile(64, q)
    with pytest.raises(TypeError, match="generator"):
        S.sample_isotropic_directions(8, 4, generator=0)


# --------------------------------------------------------------------------- planted alignment


def planted_drift(v: np.ndarray, cos_theta: float, noise: float, g: np.random.Generator) -> np.ndarray:
    """cos(theta) v + sin(theta) w with w a random unit vector orthogonal to v, plus Gaussian noise."""
    w = g.normal(size=v.shape)
    w -= (w @ v) * v
    w /= np.linalg.norm(w)
    return cos_theta * v + math.sqrt(1 - cos_theta**2) * w + noise * g.normal(size=v.shape)


def test_planted_alignment_recovered_and_beats_isotropic_p99():
    d, g = 64, rng(2)
    v = S.unit(g.normal(size=d))
    p99 = S.isotropic_cos_quantile(d)
    for cos_theta in (0.1, 0.5, 0.9):
        drift = planted_drift(v, cos_theta, noise=0.01, g=g)
        assert S.cosine(drift, v) == pytest.approx(cos_theta, abs=0.03)
    # Positive control: alignment 0.5 at d=64 is well above the isotropic p99 (~0.29).
    assert S.cosine(planted_drift(v, 0.5, 0.01, g), v) > p99


def test_random_drift_exceeds_p99_at_one_percent():
    # Negative control: isotropic Gaussian drift crosses the one-sided p99 1% of the time.
    d, n, g = 64, 20_000, rng(3)
    v = S.unit(g.normal(size=d))
    cos = S.cosine(g.normal(size=(n, d)), v)
    assert binomial_ok(int(np.count_nonzero(cos > S.isotropic_cos_quantile(d))), n, 0.01)


# --------------------------------------------------------------------------- matched null


def test_matched_gaussian_reproduces_covariance():
    d, g = 6, rng(4)
    a = g.normal(size=(d, d))
    cov = a @ a.T / d + 0.1 * np.eye(d)
    draws = S.sample_matched_gaussian(cov, 200_000, rng(5))
    assert draws.shape == (200_000, d)
    est = np.cov(draws, rowvar=False)
    assert np.linalg.norm(est - cov) / np.linalg.norm(cov) < 0.02


def test_matched_gaussian_from_samples_reproduces_sample_covariance():
    d, m, g = 5, 40, rng(6)
    samples = g.normal(size=(m, d)) @ g.normal(size=(d, d)) + 3.0  # the offset must not matter
    draws = S.sample_matched_gaussian(samples, 200_000, rng(7))
    target = np.cov(samples, rowvar=False)
    assert np.linalg.norm(np.cov(draws, rowvar=False) - target) / np.linalg.norm(target) < 0.02
    assert np.abs(draws.mean(axis=0)).max() < 0.05 * np.sqrt(np.diag(target)).max()


def test_matched_directions_low_rank_covariance_is_clipped_not_rejected():
    # Rank-1 covariance: eigh gives tiny negative eigenvalues, which must be clipped.
    u = S.unit(rng(8).normal(size=10))
    dirs = S.sample_matched_directions(np.outer(u, u), 100, rng(9), kind="cov")
    np.testing.assert_allclose(np.abs(dirs @ u), 1.0, atol=1e-6)


def test_matched_with_isotropic_cov_matches_isotropic_quantile():
    d, n = 32, 100_000
    v = S.unit(rng(10).normal(size=d))
    dirs = S.sample_matched_directions(2.5 * np.eye(d), n, rng(11))
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    null = S.null_cosines(dirs, v)
    assert null.shape == (n,)
    assert S.empirical_quantile(null, 0.99) == pytest.approx(S.isotropic_cos_quantile(d), abs=0.01)


def test_matched_directions_follow_anisotropy():
    d = 16
    cov = np.diag([100.0] + [1.0] * (d - 1))
    dirs = S.sample_matched_directions(cov, 5000, rng(12))
    # Concentrated along the high-variance axis, unlike isotropic directions.
    assert np.mean(np.abs(dirs[:, 0])) > 0.7
    assert np.mean(np.abs(dirs[:, 1])) < 0.2


def test_matched_errors():
    bad = np.diag([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="positive semi-definite"):
        S.sample_matched_directions(bad, 10, rng(0), kind="cov")
    with pytest.raises(ValueError, match="symmetric"):
        S.sample_matched_directions(np.arange(6.0).reshape(2, 3), 10, rng(0), kind="cov")
    with pytest.raises(ValueError, match="zero-norm direction"):
        S.sample_matched_directions(np.zeros((3, 3)), 10, rng(0), kind="cov")
    with pytest.raises(ValueError, match="at least 2 samples"):
        S.sample_matched_directions(np.ones((1, 3)), 10, rng(0), kind="samples")
    with pytest.raises(ValueError, match="unknown kind"):
        S.sample_matched_directions(np.eye(3), 10, rng(0), kind="covariance")
    with pytest.raises(ValueError, match="differ in dimension"):
        S.null_cosines(np.ones((4, 3)), np.ones(5))


def test_empirical_quantile_and_p_value():
    null = np.arange(1.0, 11.0)
    assert S.empirical_quantile(null, 0.5) == pytest.approx(5.5)
    assert S.empirical_p_value(5.0, null) == pytest.approx(7 / 11)  # 5..10 are >= 5
    assert S.empirical_p_value(100.0, null) == pytest.approx(1 / 11)  # never 0
    with pytest.raises(ValueError, match="q must lie"):
        S.empirical_quantile(null, 1.5)
    with pytest.raises(ValueError, match="null_samples is empty"):
        S.empirical_p_value(1.0, [])


# --------------------------------------------------------------------------- split-half stability


def test_split_half_strong_shift_is_stable():
    n, d, g = 40, 50, rng(13)
    shift = 3.0 * S.unit(g.normal(size=d))
    acts_b = g.normal(size=(n, d))
    acts_a = acts_b + shift + 0.3 * g.normal(size=(n, d))
    cos = S.split_half_stability(acts_a, acts_b, 300, rng(14))
    assert cos.shape == (300,)
    assert cos.min() > 0.9


def test_split_half_pure_noise_averages_zero():
    n, d = 40, 200
    means = []
    for seed in range(5):
        g = rng(100 + seed)
        cos = S.split_half_stability(g.normal(size=(n, d)), g.normal(size=(n, d)), 200, g)
        means.append(cos.mean())
    assert abs(np.mean(means)) < 0.1


def test_split_half_uses_disjoint_halves():
    # Two prompts whose differences are orthogonal: disjoint halves (one prompt each) always
    # give cosine 0; a half reused on both sides would give 1.
    cos = S.split_half_stability(np.eye(2), np.zeros((2, 2)), 50, rng(0))
    np.testing.assert_allclose(cos, 0.0, atol=1e-12)
    # A half that carries no difference has no direction.
    a = np.zeros((3, 2))
    a[0, 0] = 1.0
    with pytest.raises(ValueError, match="zero-norm direction"):
        S.split_half_stability(a, np.zeros((3, 2)), 50, rng(0))
    with pytest.raises(ValueError, match="same shape"):
        S.split_half_stability(np.ones((4, 2)), np.ones((5, 2)), 10, rng(0))


# --------------------------------------------------------------------------- rank correlations


def test_spearman_monotone_transform():
    x = rng(15).normal(size=50)
    assert S.spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert S.spearman(x, -(x**3)) == pytest.approx(-1.0)
    y = rng(16).normal(size=50)
    assert S.spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic)
    with pytest.raises(ValueError, match="x is constant"):
        S.spearman(np.ones(5), np.arange(5.0))
    with pytest.raises(ValueError, match="differ in length"):
        S.spearman(np.arange(5.0), np.arange(4.0))


def test_partial_spearman_matches_textbook_formula():
    g = rng(17)
    z = g.normal(size=200)
    x = z + g.normal(size=200)
    y = 0.5 * z + g.normal(size=200) + 0.3 * x
    rxy, rxz, ryz = S.spearman(x, y), S.spearman(x, z), S.spearman(y, z)
    expected = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    assert S.partial_spearman(x, y, z) == pytest.approx(expected, abs=1e-10)


def test_partial_spearman_removes_confound():
    g = rng(18)
    z = g.normal(size=2000)
    x = z + 0.3 * g.normal(size=2000)
    y = z + 0.3 * g.normal(size=2000)
    assert S.spearman(x, y) > 0.8
    assert abs(S.partial_spearman(x, y, z)) < 0.1
    # A real x-y link survives the control.
    y2 = z + x + 0.3 * g.normal(size=2000)
    assert S.partial_spearman(x, y2, z) > 0.3


def test_within_group_spearman():
    x = np.array([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 5, 5, 5], dtype=float)
    y = np.array([1, 2, 3, 4, 4, 3, 2, 1, 9, 9, 1, 2, 3], dtype=float)
    groups = ["up"] * 4 + ["down"] * 4 + ["tiny"] * 2 + ["flat"] * 3
    out = S.within_group_spearman(x, y, groups)
    assert out["per_group"] == {"up": pytest.approx(1.0), "down": pytest.approx(-1.0)}
    assert out["mean"] == pytest.approx(0.0)
    assert out["n_groups"] == 2
    assert out["skipped"] == ["tiny", "flat"]


def test_within_group_spearman_simpsons_paradox():
    # Pooled: positive (group offsets); within each group: negative.
    g = rng(19)
    xs, ys, groups = [], [], []
    for k in range(4):
        x = g.uniform(size=20)
        xs.append(x + 2 * k)
        ys.append(-x + 2 * k + 0.05 * g.normal(size=20))
        groups += [k] * 20
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert S.spearman(x, y) > 0.5
    out = S.within_group_spearman(x, y, np.array(groups))
    assert out["mean"] < -0.9
    assert set(out["per_group"]) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="no group"):
        S.within_group_spearman([1.0, 2.0], [1.0, 2.0], ["a", "b"])


# --------------------------------------------------------------------------- across-run tests


def test_paired_difference_known_values_and_coverage():
    out = S.paired_difference([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])  # diffs 2, 3, 4
    assert out["mean"] == pytest.approx(3.0)
    assert out["std"] == pytest.approx(1.0)
    half = sps.t.ppf(0.975, 2) / math.sqrt(3)
    assert (out["ci_low"], out["ci_high"]) == (pytest.approx(3 - half), pytest.approx(3 + half))

    # Coverage of the true mean difference over many planted experiments.
    g, n_exp, true = rng(20), 2000, 0.3
    base = g.normal(size=(n_exp, 8))
    treated = base + true + 0.5 * g.normal(size=(n_exp, 8))
    covered = 0
    for t, b in zip(treated, base):
        r = S.paired_difference(t, b, level=0.95)
        covered += r["ci_low"] <= true <= r["ci_high"]
    assert binomial_ok(covered, n_exp, 0.95)

    with pytest.raises(ValueError, match="at least 2 pairs"):
        S.paired_difference([1.0], [0.0])
    with pytest.raises(ValueError, match="level must lie"):
        S.paired_difference([1.0, 2.0], [0.0, 0.0], level=95)


def test_sign_flip_exact_known_values():
    assert S.sign_flip_test([1.0, 2.0, 3.0]) == pytest.approx(1 / 8)
    # Sums of +-1 +-2 +-3 that reach the observed 1 - 2 + 3 = 2: 6, 4, 2.
    assert S.sign_flip_test([1.0, -2.0, 3.0]) == pytest.approx(3 / 8)
    assert S.sign_flip_test([-1.0, -2.0, -3.0]) == pytest.approx(1.0)
    assert S.sign_flip_test([0.0, 0.0]) == pytest.approx(1.0)  # ties count


def test_sign_flip_planted_shift_is_significant():
    g = rng(21)
    assert S.sign_flip_test(0.5 + 0.1 * g.normal(size=10)) == pytest.approx(1 / 1024)
    p = S.sign_flip_test(0.5 + 0.1 * g.normal(size=30), n_perm=999, generator=rng(22))
    assert p == pytest.approx(1 / 1000)
    with pytest.raises(ValueError, match="generator is required"):
        S.sign_flip_test(g.normal(size=30))


def test_sign_flip_false_positive_rate_under_symmetric_null():
    g, n_sim = rng(23), 2000
    pvals = np.array([S.sign_flip_test(g.normal(size=10)) for _ in range(n_sim)])
    # Exact test with n=10: P(p <= 0.05) = floor(0.05 * 1024) / 1024.
    assert binomial_ok(int(np.count_nonzero(pvals <= 0.05)), n_sim, 51 / 1024)
    assert pvals.mean() == pytest.approx(0.5, abs=0.03)  # roughly uniform
    # Monte-Carlo branch: valid (rate <= alpha, up to sampling error).
    pvals_mc = np.array(
        [S.sign_flip_test(g.normal(size=20), n_perm=199, generator=g) for _ in range(500)]
    )
    assert np.count_nonzero(pvals_mc <= 0.05) / 500 <= 0.05 + 4 * math.sqrt(0.05 * 0.95 / 500)


# --------------------------------------------------------------------------- trajectories


def test_auc_above_linear_ramp_closed_form():
    # values = a + b*s on a non-uniform grid over [0, T]: integral of (values - c) is (a-c)T + bT^2/2,
    # which the trapezoid rule gets exactly for a linear function.
    steps = np.array([0.0, 1.0, 3.0, 4.5, 10.0])
    a, b, c, T = 0.1, 0.02, 0.05, 10.0
    assert S.auc_above(a + b * steps, steps, c) == pytest.approx((a - c) * T + b * T**2 / 2)
    assert S.auc_above(np.zeros(5), steps, 0.2) == pytest.approx(-0.2 * T)  # below baseline: negative
    assert S.auc_above(torch.tensor([1.0, 1.0]), [0, 4], 0.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        S.auc_above([1.0, 2.0, 3.0], [0.0, 2.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="at least 2 steps"):
        S.auc_above([1.0], [0.0], 0.0)


# --------------------------------------------------------------------------- over seeds


def test_over_seeds_is_the_mean_and_sample_std_per_step():
    series = [[0.0, 1.0, 4.0], [2.0, 3.0, 4.0], [4.0, 8.0, 4.0]]   # 3 seeds x 3 steps
    mean, std = S.over_seeds(series)
    np.testing.assert_allclose(mean, [2.0, 4.0, 4.0])
    np.testing.assert_allclose(std, [2.0, math.sqrt(13.0), 0.0])    # ddof=1: 8/2, 26/2
    mean1, std1 = S.over_seeds([[0.5, 0.25]])                       # one seed: no spread, not NaN
    np.testing.assert_array_equal(mean1, [0.5, 0.25])
    np.testing.assert_array_equal(std1, [0.0, 0.0])
    for bad in ([], [1.0, 2.0], [[[1.0]]]):
        with pytest.raises(ValueError, match=r"expected \[n_seeds, n_steps\]"):
            S.over_seeds(bad)


def test_at_step_aggregates_one_grid_point_over_seeds():
    steps = [0, 1, 5, 10]                                            # an uneven grid
    series = [[0.1, 0.2, 0.3, 0.9], [0.1, 0.4, 0.5, 0.7]]
    assert S.at_step(series, steps, 10) == S.aggregate([0.9, 0.7])
    got = S.at_step(series, steps, 5)                               # the grid point, not index 5
    assert got["mean"] == pytest.approx(0.4) and got["n"] == 2
    assert got["std"] == pytest.approx(math.sqrt(0.02))
    with pytest.raises(ValueError, match=r"step 3 is not on the grid \[0, 1, 5, 10\]"):
        S.at_step(series, steps, 3)


def test_nested_summary_is_over_histories_with_seeds_within():
    """Closed form: per-history means 2, 6, 10 -> mean 6, std 4, t-interval 6 +- t(.975, 2) 4/sqrt(3);
    within-history deviations +-1 -> pooled seed std sqrt(6 / 3)."""
    from scipy import stats as sps

    from reversion.core.stats import nested

    out = nested([[1, 3], [5, 7], [9, 11]])
    half = sps.t.ppf(0.975, 2) * 4 / np.sqrt(3)
    assert out["by_history"] == [2.0, 6.0, 10.0] and out["n"] == 3 and out["n_seeds"] == [2, 2, 2]
    assert out["mean"] == pytest.approx(6.0) and out["std"] == pytest.approx(4.0)
    assert out["ci_low"] == pytest.approx(6 - half) and out["ci_high"] == pytest.approx(6 + half)
    assert out["within_std"] == pytest.approx(np.sqrt(2.0))
    # the seeds do not count as replicates: the same spread of seeds with one history per value
    # would give a narrower interval; here more seeds per history leave the interval unchanged
    many = nested([[1, 3, 1, 3], [5, 7, 5, 7], [9, 11, 9, 11]])
    assert many["ci_low"] == pytest.approx(out["ci_low"]) and many["n"] == 3
    one = nested([[1.0, 2.0, 3.0]])
    assert one["n"] == 1 and one["std"] == 0.0 and one["ci_low"] is None  # undefined, and JSON-writable
    assert nested([[4.0], [6.0]])["within_std"] is None  # no seed spread to pool
    with pytest.raises(ValueError, match="at least one history"):
        nested([])
    with pytest.raises(ValueError, match=r"values\[1\] is empty"):
        nested([[1.0], []])
