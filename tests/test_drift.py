"""Reading drift (``reversion.core.drift``): alignment of a drift with a direction, the
alignment of a whole fine-tuning trajectory, one reading of a mean activation, and the
threshold a reading is compared with.

Drifts are planted: ``cos t * v + sin t * w`` (``w`` orthogonal to ``v``) has alignment
``cos t`` with ``v`` at any scale, and a projection of exactly its ``v`` component.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reversion.core import stats
from reversion.core.drift import (
    alignment,
    drift_alignment,
    null_threshold,
    read_drift,
    residual_alignment,
    threshold,
    weight_motion,
)

D = 32


def _orthonormal_pair(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))
    return q[:, 0], q[:, 1]


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("theta", [0.0, 0.3, math.pi / 3, math.pi / 2, 2.0, math.pi])
def test_alignment_recovers_a_planted_angle(theta):
    v, w = _orthonormal_pair(D, seed=7)
    direction = torch.stack([v, v, v])           # [L+1, d]
    drift = torch.stack([(math.cos(theta) * v + math.sin(theta) * w) * s for s in (1e-3, 1.0, 50.0)])
    got = alignment(drift, direction)
    torch.testing.assert_close(got, torch.full((3,), math.cos(theta), dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_alignment_is_batched_over_steps_and_scale_free_in_the_direction():
    v, w = _orthonormal_pair(D, seed=8)
    thetas = torch.linspace(0, math.pi, 5, dtype=torch.float64)
    drift = (torch.cos(thetas)[:, None] * v + torch.sin(thetas)[:, None] * w)[:, None, :]  # [T, 1, d]
    got = alignment(drift, 4.0 * v[None, :])
    torch.testing.assert_close(got, torch.cos(thetas)[:, None], atol=1e-12, rtol=0)


def test_zero_drift_and_zero_direction_give_zero_not_nan():
    v, _ = _orthonormal_pair(D, seed=9)
    direction = torch.stack([torch.zeros(D, dtype=torch.float64), v])
    drift = torch.stack([torch.stack([v, torch.zeros(D, dtype=torch.float64)]),  # step with zero drift at layer 1
                         torch.stack([v, v])])
    got = alignment(drift, direction)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_alignment_refuses_non_finite_inputs(bad):
    v, w = _orthonormal_pair(D, seed=10)
    drift, direction = torch.stack([w, w]), torch.stack([v, v])
    broken = drift.clone()
    broken[1, 3] = bad
    with pytest.raises(ValueError, match="drift contains NaN or infinite"):
        alignment(broken, direction)
    broken = direction.clone()
    broken[0, 0] = bad
    with pytest.raises(ValueError, match="direction contains NaN or infinite"):
        alignment(drift, broken)


# --------------------------------------------------------------------------- a trajectory


def test_drift_alignment_of_a_planted_trajectory():
    """Step t moves the mean by ``s_t (cos a_t v + sin a_t w)`` from theta_S (step 0): the
    alignment is ``cos a_t`` at every layer the direction is ``v``, and 0 at step 0; a layer
    whose direction is ``w`` reads ``sin a_t``."""
    v, w = _orthonormal_pair(D, seed=11)
    mu_S = torch.randn(3, D, generator=torch.Generator().manual_seed(12), dtype=torch.float64) * 5
    angles = [0.0, 0.2, 1.0, 2.5, math.pi / 2]
    scales = [0.0, 1e-2, 1.0, 3.0, 40.0]
    means = torch.stack([mu_S + s * (math.cos(a) * v + math.sin(a) * w) for a, s in zip(angles, scales)])
    direction = torch.stack([v, 2.0 * v, w])            # [L+1, d]; the scale of a row is irrelevant
    got = drift_alignment(means, direction)
    assert isinstance(got, np.ndarray) and got.shape == (len(angles), 3)
    want = np.array([[0.0, 0.0, 0.0]] + [[math.cos(a), math.cos(a), math.sin(a)] for a in angles[1:]])
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_drift_alignment_refuses_a_direction_of_another_model():
    means = torch.zeros(4, 3, D, dtype=torch.float64)
    for direction in (torch.ones(4, D, dtype=torch.float64), torch.ones(3, D + 1, dtype=torch.float64)):
        with pytest.raises(ValueError, match="do not match"):
            drift_alignment(means, direction)


# --------------------------------------------------------------------------- one reading


def test_read_drift_of_a_planted_displacement():
    v, w = _orthonormal_pair(D, seed=13)
    mu_S = torch.randn(D, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    a, b = 0.6, -0.8                                  # |d| = 1: alignment 0.6
    mu = mu_S + 2.0 * (a * v + b * w)
    r = read_drift(mu.float(), mu_S, 7.0 * v, displacement=4.0)   # float32 input, unnormalized v
    assert r["alignment"] == pytest.approx(0.6, abs=1e-6)
    assert r["projection"] == pytest.approx(1.2, abs=1e-6)        # activation units, along v/|v|
    assert r["drift_norm"] == pytest.approx(2.0, abs=1e-6)
    assert r["relative_projection"] == pytest.approx(1.2 / 4.0, abs=1e-6)
    # opposite motion: negative alignment and projection
    back = read_drift(mu_S - (mu - mu_S), mu_S, v)
    assert back["alignment"] == pytest.approx(-0.6, abs=1e-9) and back["projection"] == pytest.approx(-1.2)
    # without a displacement (or a zero one) there is no relative projection
    assert back["relative_projection"] is None
    assert read_drift(mu, mu_S, v, displacement=0.0)["relative_projection"] is None


def test_read_drift_of_no_motion_is_zero_not_nan():
    v, _ = _orthonormal_pair(D, seed=15)
    mu = torch.randn(D, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    assert read_drift(mu, mu.clone(), v, 1.0) == {"alignment": 0.0, "projection": 0.0, "drift_norm": 0.0,
                                                  "relative_projection": 0.0}


def test_read_drift_refuses_a_zero_or_broken_direction_and_a_broken_drift():
    v, w = _orthonormal_pair(D, seed=17)
    for bad in (torch.zeros(D, dtype=torch.float64), torch.full((D,), float("nan"), dtype=torch.float64)):
        with pytest.raises(ValueError, match="direction is zero or not finite"):
            read_drift(w, torch.zeros(D), bad)
    broken = w.clone()
    broken[0] = float("inf")
    with pytest.raises(ValueError, match="drift contains NaN or infinite"):
        read_drift(broken, torch.zeros(D), v)


# --------------------------------------------------------------------------- threshold


def test_threshold_prefers_given_then_the_null_rule():
    d = 4096
    iso = stats.isotropic_cos_quantile(d, 0.99)
    assert iso == pytest.approx(2.326 / math.sqrt(d), rel=0.01)   # the weak bar at LLM width
    p99 = [None, 0.21, None, 0.35, 0.01]
    assert threshold(d, 1, p99, given=0.5) == (0.5, "given")
    assert threshold(d, 1, p99) == (0.21, "matched null p99")
    assert threshold(d, 3, p99) == (0.35, "matched null p99")
    assert threshold(d, 4, p99) == (iso, "isotropic p99")        # a matched p99 below the isotropic one
    assert threshold(d, 2, p99) == (iso, "isotropic p99")        # undefined at this layer
    assert threshold(d, 7, p99) == (iso, "isotropic p99")        # beyond the stored layers
    assert threshold(d, 1) == (iso, "isotropic p99")
    assert threshold(d, 1, None, given=0) == (0.0, "given")      # an explicit 0 is still given
    assert threshold(d, 4, p99, given=0.001) == (0.001, "given")  # given wins even below both nulls
    value, source = threshold(64, 0)
    assert source == "isotropic p99" and value == pytest.approx(stats.isotropic_cos_quantile(64, 0.99))
    assert value > iso                                            # narrower space, higher bar


@pytest.mark.parametrize("d", [32, 64, 4096])
def test_null_threshold_is_the_larger_of_the_two_nulls(d):
    iso = stats.isotropic_cos_quantile(d, 0.99)
    below, above = 0.5 * iso, min(0.99, 1.5 * iso)
    assert null_threshold(d, None) == (iso, "isotropic p99")
    assert null_threshold(d, below) == (iso, "isotropic p99")    # a narrow matched null does not lower the bar
    assert null_threshold(d, above) == (above, "matched null p99")
    assert null_threshold(d, iso) == (iso, "isotropic p99")      # a tie: the isotropic one
    assert null_threshold(d, -0.2) == (iso, "isotropic p99")
    assert null_threshold(d, np.float32(above))[1] == "matched null p99"
    # threshold() applies the same rule to the matched p99 stored for the layer
    for m in (below, above, None):
        assert threshold(d, 2, [None, None, m]) == null_threshold(d, m)


def test_null_threshold_refuses_bad_inputs():
    for bad in (float("nan"), float("inf"), 1.5, -2.0, "0.3", True):
        with pytest.raises(ValueError, match="matched_p99"):
            null_threshold(64, bad)
    with pytest.raises(ValueError, match="^d "):
        null_threshold(1, 0.3)
    with pytest.raises(ValueError, match="matched_p99"):
        threshold(64, 1, [None, float("nan")])


# --------------------------------------------------------------------------- residual alignment


def _residual_world(g, n, d, specific: float, noise: float = 0.05):
    """Planted: H - S per prompt = 1.0 r + 0.8 p + ``specific`` w (w orthogonal to r, p) + noise;
    each run's drift is the same mixture plus noise."""
    q, _ = torch.linalg.qr(torch.tensor(g.standard_normal((d, 3))))
    r, p, w = q[:, 0], q[:, 1], q[:, 2]
    S = torch.tensor(g.standard_normal((n, d)))
    H = S + (1.0 * r + 0.8 * p + specific * w) + noise * torch.tensor(g.standard_normal((n, d)))
    drifts = [0.5 * (1.0 * r + 0.8 * p + specific * w) + noise * torch.tensor(g.standard_normal(d)) for _ in range(5)]
    return H, S, [r, p], drifts


def test_residual_alignment_finds_a_planted_history_specific_component():
    g = np.random.default_rng(0)
    H, S, ctrl, drifts = _residual_world(g, 64, 32, specific=0.5)
    out = residual_alignment(H, S, ctrl, drifts, np.random.default_rng(1))
    assert out["dim"] == 30
    assert out["reliability"] > 0.9
    # the drift's residual: signal 0.5 * 0.5 against noise 0.05 in each of 30 dimensions
    expected = 0.25 / math.sqrt(0.25 ** 2 + 30 * 0.05 ** 2)
    assert abs(float(np.mean(out["alignment"])) - expected) < 0.08
    assert (out["alignment"] > out["null_p99"]).all()


def test_residual_alignment_without_a_specific_component_stays_in_its_null():
    """H - S and the drift lie in span(r, p) up to noise: the residual is noise, unreliable, and
    its alignment with the drift is within the complement's null."""
    g = np.random.default_rng(2)
    H, S, ctrl, drifts = _residual_world(g, 64, 32, specific=0.0, noise=0.05)
    out = residual_alignment(H, S, ctrl, drifts, np.random.default_rng(3))
    assert abs(out["reliability"]) < 0.5
    assert abs(float(np.mean(out["alignment"]))) < out["null_p99"]


def test_residual_alignment_bad_input():
    g = np.random.default_rng(4)
    H, S, ctrl, drifts = _residual_world(g, 16, 8, specific=0.5)
    with pytest.raises(ValueError, match="same prompts"):
        residual_alignment(H, S[:-1], ctrl, drifts, g)
    with pytest.raises(ValueError, match="no residual"):
        residual_alignment(S + (H - S).mean(0) * 0 + torch.outer(torch.ones(16), ctrl[0]), S, ctrl, drifts, g)


def test_weight_motion_closed_form():
    gap = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    delta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]])  # half the gap; orthogonal to it
    out = weight_motion(delta, gap)
    assert out[0] == {"cos_gap": pytest.approx(1.0), "gap_closed": pytest.approx(0.5)}
    assert out[1] == {"cos_gap": pytest.approx(0.0), "gap_closed": pytest.approx(0.0)}
    assert weight_motion(-2 * gap, gap)[0] == {"cos_gap": pytest.approx(-1.0), "gap_closed": pytest.approx(-2.0)}
    with pytest.raises(ValueError, match="no gap"):
        weight_motion(delta, torch.zeros_like(gap))
    with pytest.raises(ValueError, match="one shape"):
        weight_motion(delta[:, :2], gap)
