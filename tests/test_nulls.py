"""Nulls for an alignment (``reversion.stages.nulls``): what a cosine with v_rev would be by
chance, isotropic and matched to theta_S's activation covariance.

Known answers: the isotropic Monte-Carlo p99 converges to the closed form; activations that
vary along one axis ``u`` only give matched directions ``+-u`` (cosine +-1 with ``u``, 0 with
anything orthogonal to it); a layer with no direction or no variance has no matched null.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reversion.core import stats
from reversion.stages.nulls import alignment_nulls, matched_p99_by_layer, p99

D = 16


def _axes(seed: int) -> tuple[np.ndarray, np.ndarray]:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((D, 2)))
    return q[:, 0], q[:, 1]


def _along(u: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``[n, d]`` activations that vary along ``u`` only (around a non-zero mean)."""
    g = np.random.default_rng(seed)
    return 3.0 + g.standard_normal(n)[:, None] * u[None, :]


def test_isotropic_null_matches_the_closed_form_and_the_matched_null_follows_the_covariance():
    u, w = _axes(0)
    acts = _along(u, 30, 1)
    nulls = alignment_nulls(u, acts, 20000, np.random.default_rng(2))
    assert nulls["isotropic"].shape == nulls["matched"].shape == (20000,)
    assert abs(nulls["isotropic"].mean()) < 0.01
    q = p99(nulls, D)
    assert q["isotropic"] == pytest.approx(stats.isotropic_cos_quantile(D, 0.99))
    assert q["isotropic_mc"] == pytest.approx(q["isotropic"], abs=0.02)
    # every matched direction is +-u: its cosine with u is +-1, so the p99 is 1
    np.testing.assert_allclose(np.abs(nulls["matched"]), 1.0, atol=1e-12)
    assert q["matched"] == pytest.approx(1.0)
    # ... and with a direction orthogonal to the variance, 0
    ortho = alignment_nulls(w, acts, 500, np.random.default_rng(2))["matched"]
    np.testing.assert_allclose(ortho, 0.0, atol=1e-12)


def test_alignment_nulls_are_reproducible_from_the_generator():
    u, _ = _axes(3)
    acts = np.random.default_rng(4).standard_normal((20, D))
    a = alignment_nulls(u, acts, 100, np.random.default_rng(5))
    b = alignment_nulls(u, acts, 100, np.random.default_rng(5))
    c = alignment_nulls(u, acts, 100, np.random.default_rng(6))
    for k in ("isotropic", "matched"):
        assert np.array_equal(a[k], b[k]) and not np.array_equal(a[k], c[k])


def test_matched_p99_by_layer_known_answers_and_undefined_layers():
    u, w = _axes(7)
    n = 25
    acts = np.zeros((n, 4, D))
    acts[:, 0] = np.random.default_rng(8).standard_normal((n, D))  # v_rev is zero here
    acts[:, 1] = _along(u, n, 9)                                   # varies along v_rev only
    acts[:, 2] = _along(w, n, 10)                                  # varies orthogonally to v_rev
    acts[:, 3] = 5.0                                               # no variance at all
    v_rev = torch.tensor(np.stack([np.zeros(D), u, u, u]))
    got = matched_p99_by_layer(torch.tensor(acts), v_rev, 200, np.random.default_rng(11))
    assert len(got) == 4
    assert got[0] is None and got[3] is None
    assert got[1] == pytest.approx(1.0)
    assert got[2] == pytest.approx(0.0, abs=1e-12)
    # a realistic layer: the p99 of a matched null lies strictly between 0 and 1
    iso = torch.tensor(np.random.default_rng(12).standard_normal((n, 1, D)))
    (p,) = matched_p99_by_layer(iso, torch.tensor(u[None]), 500, np.random.default_rng(13))
    assert 0 < p < 1
