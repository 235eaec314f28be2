"""Statistics for reversion: directions, null distributions, and tests.

Inputs may be numpy arrays, torch tensors or lists; everything is computed in
float64 numpy. Scalars come back as Python floats, vectors as numpy arrays.

Nulls for an alignment ``cos(drift, v_rev)`` in R^d:

* isotropic: a direction uniform on the sphere has ``cos^2 ~ Beta(1/2, (d-1)/2)``
  and a cosine symmetric about 0, so the one-sided ``q`` quantile of ``cos`` is
  ``sqrt(Beta.ppf(2q - 1, 1/2, (d-1)/2))`` (about ``2.33 / sqrt(d)`` for q=0.99);
* matched: Gaussian directions with the activations' covariance
  (``sample_matched_directions``), whose cosines are compared empirically.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

import numpy as np
from scipy import stats as sps

from reversion.infra.checks import check_int

__all__ = [
    "aggregate",
    "at_step",
    "over_seeds",
    "auc_above",
    "cosine",
    "empirical_p_value",
    "empirical_quantile",
    "isotropic_cos_quantile",
    "null_cosines",
    "paired_difference",
    "partial_spearman",
    "project",
    "sample_isotropic_directions",
    "sample_matched_directions",
    "sample_matched_gaussian",
    "sign_flip_test",
    "spearman",
    "split_half_stability",
    "unit",
    "within_group_spearman",
]

# Largest run count for which sign_flip_test enumerates all 2^n sign patterns.
EXACT_SIGN_FLIP_MAX = 16


# --------------------------------------------------------------------------- helpers


def _array(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """``x`` (numpy, torch or list) as a finite float64 array; ``ndim`` checked if given."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_generator(generator: Any) -> np.random.Generator:
    if not isinstance(generator, np.random.Generator):
        raise TypeError(
            f"generator must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(generator).__name__}"
        )
    return generator


def _same_length(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} differ in length ({len(a)} vs {len(b)})")


# --------------------------------------------------------------------------- summaries


def aggregate(values: Any) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of a set of values (e.g. one metric across seeds).

    ``std`` is the sample standard deviation (ddof=1); for a single value it is
    reported as 0.0 rather than NaN, so summaries stay finite.
    """
    arr = _array(values, "values").ravel()
    n = arr.size
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if n > 1 else 0.0, "n": int(n)}


def truncate(lo: float, hi: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    """An interval's ends cut to a quantity's range ``bounds`` (None: unbounded). The coverage is
    unchanged: the true value always lies in the range."""
    if bounds is None:
        return lo, hi
    return min(max(lo, bounds[0]), bounds[1]), max(min(hi, bounds[1]), bounds[0])


def nested(values: Sequence[Sequence[float]], level: float = 0.95,
           bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """Seeds nested in histories, ``values[h][s]``; the history is the unit of replication.

    ``mean``, ``std`` and the ``level`` t-interval (``ci_low``, ``ci_high``; H - 1 degrees of
    freedom; None for one history) are over the per-history means ``by_history``; ``n`` is the
    number of histories H, ``n_seeds`` the seeds of each; ``within_std`` is the pooled standard
    deviation over seeds within a history (None when no history has two seeds). Undefined values
    are None, not NaN: they are written to metrics files. ``bounds``: the quantity's range (a
    cosine's ``(-1, 1)``); the interval is truncated to it -- the coverage is unchanged, since the
    true value lies in the range -- and recorded as ``bounds``.
    """
    per, sizes, ss, dof = [], [], 0.0, 0
    for h, v in enumerate(values):
        arr = _array(v, f"values[{h}]").ravel()
        if arr.size == 0:
            raise ValueError(f"values[{h}] is empty: every history needs at least one seed")
        per.append(float(arr.mean()))
        sizes.append(int(arr.size))
        ss += float(((arr - arr.mean()) ** 2).sum())
        dof += arr.size - 1
    if not per:
        raise ValueError("values must hold at least one history")
    H = len(per)
    m = float(np.mean(per))
    sd = float(np.std(per, ddof=1)) if H > 1 else 0.0
    half = float(sps.t.ppf(0.5 + level / 2, H - 1) * sd / np.sqrt(H)) if H > 1 else None
    lo, hi = (None, None) if half is None else truncate(m - half, m + half, bounds)
    return {"mean": m, "std": sd, "n": H, "ci_low": lo, "ci_high": hi, "level": level,
            "by_history": per, "n_seeds": sizes, "within_std": float(np.sqrt(ss / dof)) if dof else None,
            **({"bounds": list(bounds)} if bounds is not None else {})}


# --------------------------------------------------------------------------- geometry


def unit(v: Any) -> np.ndarray:
    """``v`` scaled to unit norm along its last axis (``[d]`` or ``[n, d]``)."""
    arr = _array(v, "v")
    norm = np.linalg.norm(arr, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("zero-norm direction: cannot normalize v")
    return arr / norm


def cosine(a: Any, b: Any) -> float | np.ndarray:
    """Cosine similarity along the last axis; a float for two ``[d]`` vectors.

    ``a`` and ``b`` broadcast (e.g. ``[n, d]`` against ``[d]`` gives ``[n]``).
    """
    x, y = _array(a, "a"), _array(b, "b")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"a and b differ in dimension ({x.shape[-1]} vs {y.shape[-1]})")
    nx, ny = np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1)
    if np.any(nx == 0):
        raise ValueError("a has zero norm: cosine is undefined")
    if np.any(ny == 0):
        raise ValueError("b has zero norm: cosine is undefined")
    c = np.sum(x * y, axis=-1) / (nx * ny)
    c = np.clip(c, -1.0, 1.0)  # rounding can step just outside [-1, 1]
    return float(c) if np.ndim(c) == 0 else c


def project(x: Any, v: Any) -> float | np.ndarray:
    """Scalar projection ``x . v/|v|`` of ``x`` (``[d]`` or ``[n, d]``) on the direction ``v`` ``[d]``."""
    xs = _array(x, "x")
    u = unit(_array(v, "v", ndim=1))
    if xs.shape[-1] != u.shape[0]:
        raise ValueError(f"x and v differ in dimension ({xs.shape[-1]} vs {u.shape[0]})")
    p = xs @ u
    return float(p) if np.ndim(p) == 0 else p


# --------------------------------------------------------------------------- nulls


def isotropic_cos_quantile(d: int, q: float = 0.99, one_sided: bool = True) -> float:
    """Quantile of the cosine between a fixed vector and a uniform random direction in R^d.

    One-sided: the ``q`` quantile of ``cos`` (``sqrt(Beta.ppf(2q-1, 1/2, (d-1)/2))``,
    using the symmetry of ``cos``); two-sided: the ``q`` quantile of ``|cos|``
    (``sqrt(Beta.ppf(q, ...))``).
    """
    d = check_int("d", d, 2)
    if not 0.5 < q < 1:
        raise ValueError(f"q must lie in (0.5, 1), got {q!r}")
    p = 2 * q - 1 if one_sided else q
    return float(math.sqrt(sps.beta.ppf(p, 0.5, (d - 1) / 2)))


def sample_isotropic_directions(d: int, n: int, generator: np.random.Generator) -> np.ndarray:
    """``[n, d]`` unit rows uniform on the sphere (normalized standard Gaussians)."""
    d = check_int("d", d, 2)
    n = check_int("n", n, 1)
    g = _check_generator(generator).standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _is_covariance(arr: np.ndarray) -> bool:
    return arr.ndim == 2 and arr.shape[0] == arr.shape[1] and np.allclose(arr, arr.T, rtol=1e-8, atol=1e-12)


def sample_matched_gaussian(
    cov_or_samples: Any, n: int, generator: np.random.Generator, kind: str = "auto"
) -> np.ndarray:
    """``[n, d]`` draws from ``N(0, C)`` with ``C`` a covariance ``[d, d]`` or the sample covariance of ``[m, d]``.

    ``kind``: ``"cov"``, ``"samples"``, or ``"auto"`` (a symmetric square matrix is
    read as a covariance). From samples no ``d x d`` matrix is formed: a draw is
    ``z @ (X - mean) / sqrt(m - 1)`` with ``z ~ N(0, I_m)``, whose covariance is
    exactly the sample covariance. A covariance is factored with ``eigh``;
    eigenvalues slightly below 0 from rounding are clipped to 0.
    """
    n = check_int("n", n, 1)
    gen = _check_generator(generator)
    arr = _array(cov_or_samples, "cov_or_samples", ndim=2)
    if kind == "auto":
        kind = "cov" if _is_covariance(arr) else "samples"
    if kind == "samples":
        m = arr.shape[0]
        if m < 2:
            raise ValueError(f"cov_or_samples needs at least 2 samples (rows), got {m}")
        centered = arr - arr.mean(axis=0)  # [m, d]
        return gen.standard_normal((n, m)) @ centered / math.sqrt(m - 1)
    if kind == "cov":
        if not _is_covariance(arr):
            raise ValueError(f"cov_or_samples must be a symmetric [d, d] covariance, got shape {arr.shape}")
        evals, evecs = np.linalg.eigh(arr)
        scale = max(float(np.abs(evals).max()), np.finfo(np.float64).tiny)
        if evals.min() < -1e-8 * scale:
            raise ValueError(f"cov_or_samples is not positive semi-definite (smallest eigenvalue {evals.min():.3g})")
        factor = evecs * np.sqrt(np.clip(evals, 0.0, None))  # [d, d], factor @ factor.T = cov
        return gen.standard_normal((n, arr.shape[0])) @ factor.T
    raise ValueError(f"unknown kind {kind!r}; expected 'auto', 'cov' or 'samples'")


def sample_matched_directions(
    cov_or_samples: Any, n: int, generator: np.random.Generator, kind: str = "auto"
) -> np.ndarray:
    """``[n, d]`` unit rows: normalized ``sample_matched_gaussian`` draws (the matched null)."""
    g = sample_matched_gaussian(cov_or_samples, n, generator, kind=kind)
    norm = np.linalg.norm(g, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("zero-norm direction: the covariance is zero (or too degenerate) to draw directions")
    return g / norm


def null_cosines(directions: Any, v: Any) -> np.ndarray:
    """Cosines ``[n]`` between null directions ``[n, d]`` and a fixed direction ``v`` ``[d]``."""
    dirs = _array(directions, "directions", ndim=2)
    vec = _array(v, "v", ndim=1)
    if dirs.shape[1] != vec.shape[0]:
        raise ValueError(f"directions and v differ in dimension ({dirs.shape[1]} vs {vec.shape[0]})")
    return np.asarray(cosine(dirs, vec))


def empirical_quantile(null_values: Any, q: float) -> float:
    """The ``q`` quantile (linear interpolation) of a sample of null values."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must lie in [0, 1], got {q!r}")
    return float(np.quantile(_array(null_values, "null_values").ravel(), q))


def empirical_p_value(observed: float, null_samples: Any) -> float:
    """One-sided Monte-Carlo p-value ``(1 + #(null >= observed)) / (1 + n_null)``; never 0."""
    obs = float(_array(observed, "observed"))
    null = _array(null_samples, "null_samples").ravel()
    return float((1 + np.count_nonzero(null >= obs)) / (1 + null.size))


# --------------------------------------------------------------------------- reliability


def split_half_stability(acts_a: Any, acts_b: Any, n_boot: int, generator: np.random.Generator) -> np.ndarray:
    """Cosines ``[n_boot]`` between mean-difference directions estimated on two disjoint prompt halves.

    ``acts_a``, ``acts_b``: ``[n, d]`` activations of the same ``n`` prompts under two
    models (paired rows). Each draw splits the prompts at random into halves of
    ``n // 2`` (dropping one if ``n`` is odd) and compares
    ``normalize(mean_a - mean_b)`` between the halves. Near 1: a stable direction;
    near 0 (spread ~1/sqrt(d)): noise.
    """
    a = _array(acts_a, "acts_a", ndim=2)
    b = _array(acts_b, "acts_b", ndim=2)
    if a.shape != b.shape:
        raise ValueError(f"acts_a and acts_b must have the same shape [n, d], got {a.shape} vs {b.shape}")
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"split_half_stability needs at least 2 paired prompts, got {n}")
    n_boot = check_int("n_boot", n_boot, 1)
    gen = _check_generator(generator)
    half = n // 2
    diffs = a - b  # [n, d]; paired, so mean_a - mean_b over a half is the mean of diffs over it
    # Each permutation row gives two halves; averaging by a [n_boot, n] weight matrix
    # avoids a [n_boot, half, d] gather.
    perms = gen.permuted(np.tile(np.arange(n), (n_boot, 1)), axis=1)  # [n_boot, n]
    rows = np.arange(n_boot)[:, None]
    w1 = np.zeros((n_boot, n))
    w2 = np.zeros((n_boot, n))
    w1[rows, perms[:, :half]] = 1.0 / half
    w2[rows, perms[:, half : 2 * half]] = 1.0 / half
    d1, d2 = w1 @ diffs, w2 @ diffs  # [n_boot, d]
    n1, n2 = np.linalg.norm(d1, axis=1), np.linalg.norm(d2, axis=1)
    if np.any(n1 == 0) or np.any(n2 == 0):
        raise ValueError("zero-norm direction: acts_a - acts_b averages to zero on some half")
    return np.clip(np.sum(d1 * d2, axis=1) / (n1 * n2), -1.0, 1.0)


# --------------------------------------------------------------------------- rank correlations


def _paired_1d(x: Any, y: Any, names: tuple[str, str] = ("x", "y"), min_n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = _array(x, names[0], ndim=1), _array(y, names[1], ndim=1)
    _same_length(names[0], xs, names[1], ys)
    if xs.size < min_n:
        raise ValueError(f"need at least {min_n} points for a rank correlation, got {xs.size}")
    for name, arr in zip(names, (xs, ys)):
        if np.all(arr == arr[0]):
            raise ValueError(f"{name} is constant: the rank correlation is undefined")
    return xs, ys


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation of ``x`` and ``y`` ``[n]`` (ties get average ranks)."""
    xs, ys = _paired_1d(x, y)
    return float(np.corrcoef(sps.rankdata(xs), sps.rankdata(ys))[0, 1])


def partial_spearman(x: Any, y: Any, z: Any) -> float:
    """Spearman correlation of ``x`` and ``y`` controlling for ``z`` (``[n]`` or ``[n, k]`` covariates).

    Rank-transforms every variable, regresses the ranks of ``x`` and ``y`` on an
    intercept plus the ranks of ``z``, and returns the Pearson correlation of the
    residuals.
    """
    xs, ys = _paired_1d(x, y)
    zs = _array(z, "z")
    if zs.ndim == 1:
        zs = zs[:, None]
    if zs.ndim != 2 or zs.shape[0] != xs.size:
        raise ValueError(f"z must be [n] or [n, k] with n={xs.size}, got shape {zs.shape}")
    if xs.size < zs.shape[1] + 3:
        raise ValueError(f"need at least {zs.shape[1] + 3} points to control for {zs.shape[1]} covariate(s)")
    design = np.column_stack([np.ones(xs.size), *(sps.rankdata(col) for col in zs.T)])  # [n, 1 + k]

    def residual(v: np.ndarray) -> np.ndarray:
        r = sps.rankdata(v)
        return r - design @ np.linalg.lstsq(design, r, rcond=None)[0]

    rx, ry = residual(xs), residual(ys)
    scale = math.sqrt(xs.size)  # ranks are O(n); residuals below this are rounding noise
    if np.linalg.norm(rx) < 1e-9 * scale or np.linalg.norm(ry) < 1e-9 * scale:
        raise ValueError("x or y is fully explained by z: the partial correlation is undefined")
    return float(np.dot(rx, ry) / (np.linalg.norm(rx) * np.linalg.norm(ry)))


FISHER_CLIP = 0.999
"""|r| is capped here before Fisher's z (atanh 0.999 = 3.8): one history whose few run-steps rank
perfectly would otherwise weigh as z = 14 and swamp every other history's mean and spread."""


def fisher_z(rs: Any) -> np.ndarray:
    """Fisher's z of correlations, |r| capped at :data:`FISHER_CLIP`."""
    return np.arctanh(np.clip(np.asarray(rs, dtype=float), -FISHER_CLIP, FISHER_CLIP))


def fisher_interval(rs: Any, level: float = 0.95) -> dict[str, Any]:
    """Correlations, one per history, pooled over histories: the mean of their Fisher z
    (``atanh``), a ``level`` t-interval over histories on that scale (H - 1 degrees of freedom),
    both transformed back (``tanh``), so the interval lies within (-1, 1). ``rs`` ``[H]``; None
    entries (undefined correlations) are dropped; fewer than two left: ``ci_low``/``ci_high`` None."""
    vals = [float(r) for r in rs if r is not None and r == r]
    for r in vals:
        if not -1.0 <= r <= 1.0:
            raise ValueError(f"rs must be correlations in [-1, 1], got {r!r}")
    if not vals:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "level": level, "by_history": list(rs),
                "pool": "fisher"}
    z = fisher_z(vals)
    m, H = float(z.mean()), z.size
    half = float(sps.t.ppf(0.5 + level / 2, H - 1) * z.std(ddof=1) / np.sqrt(H)) if H > 1 else None
    return {"mean": float(np.tanh(m)), "ci_low": None if half is None else float(np.tanh(m - half)),
            "ci_high": None if half is None else float(np.tanh(m + half)), "n": int(H), "level": level,
            "by_history": list(rs), "pool": "fisher"}


def ratio_interval(num: Any, den: Any, level: float = 0.95) -> dict[str, Any]:
    """The ratio of two means over paired units (``num[h]``, ``den[h]``: e.g. the no-witness and
    the main lineage's rise, one value per history) with Fieller's ``level`` interval: every
    theta for which ``mean(num - theta * den)`` is not rejected by a t-test (n - 1 degrees of
    freedom). The interval is bounded only when the denominator's mean is itself resolved from
    zero at that level; otherwise ``ci_low``/``ci_high`` are None (the ratio could be anything).
    ``mean`` (the ratio of the means) is None when the denominator's mean is zero."""
    x = _array(num, "num", ndim=1)
    y = _array(den, "den", ndim=1)
    _same_length("num", x, "den", y)
    n = x.size
    if n < 2:
        raise ValueError(f"ratio_interval needs at least 2 pairs, got {n}")
    mx, my = float(x.mean()), float(y.mean())
    c = np.cov(np.stack([x, y]), ddof=1)
    t2 = float(sps.t.ppf(0.5 + level / 2, n - 1)) ** 2 / n
    a, b, cc = my * my - t2 * c[1, 1], -2 * (mx * my - t2 * c[0, 1]), mx * mx - t2 * c[0, 0]
    out = {"mean": mx / my if my != 0 else None, "ci_low": None, "ci_high": None, "n": int(n), "level": level,
           "num_by_history": [float(v) for v in x], "den_by_history": [float(v) for v in y], "pool": "fieller"}
    disc = b * b - 4 * a * cc
    if a > 0 and disc >= 0:
        r = math.sqrt(disc)
        out["ci_low"], out["ci_high"] = (-b - r) / (2 * a), (-b + r) / (2 * a)
    return out


def within_group_spearman(x: Any, y: Any, groups: Sequence[Hashable]) -> dict[str, Any]:
    """Spearman r computed within each group, then averaged over groups.

    Groups with fewer than 3 points or a constant ``x`` or ``y`` are skipped.
    Returns ``{"mean": float, "per_group": {group: r}, "n_groups": int, "skipped": [group, ...]}``.
    """
    xs, ys = _array(x, "x", ndim=1), _array(y, "y", ndim=1)
    _same_length("x", xs, "y", ys)
    labels = list(groups.tolist() if hasattr(groups, "tolist") else groups)
    if len(labels) != xs.size:
        raise ValueError(f"groups and x differ in length ({len(labels)} vs {xs.size})")
    per_group: dict[Hashable, float] = {}
    skipped: list[Hashable] = []
    for g in dict.fromkeys(labels):  # first-seen order
        mask = np.array([lab == g for lab in labels])
        gx, gy = xs[mask], ys[mask]
        if gx.size < 3 or np.all(gx == gx[0]) or np.all(gy == gy[0]):
            skipped.append(g)
            continue
        per_group[g] = spearman(gx, gy)
    if not per_group:
        raise ValueError("no group has at least 3 points with non-constant x and y")
    return {
        "mean": float(np.mean(list(per_group.values()))),
        "per_group": per_group,
        "n_groups": len(per_group),
        "skipped": skipped,
    }


# --------------------------------------------------------------------------- tests across runs


def paired_difference(treated: Any, baseline: Any, level: float = 0.95) -> dict[str, float]:
    """Mean of per-seed differences ``treated - baseline`` ``[n]`` with a t confidence interval.

    Returns ``{"mean", "std", "n", "ci_low", "ci_high"}`` (``std``: ddof=1).
    """
    t = _array(treated, "treated", ndim=1)
    b = _array(baseline, "baseline", ndim=1)
    _same_length("treated", t, "baseline", b)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    n = t.size
    if n < 2:
        raise ValueError(f"paired_difference needs at least 2 pairs for an interval, got {n}")
    diff = t - b
    mean, std = float(diff.mean()), float(diff.std(ddof=1))
    half = float(sps.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": int(n), "ci_low": mean - half, "ci_high": mean + half}


def sign_flip_test(
    per_run_values: Any, n_perm: int = 10_000, generator: np.random.Generator | None = None
) -> float:
    """One-sided sign-flip p-value for ``mean > 0`` of per-run values ``[n_runs]``.

    Valid when, under the null, each value is symmetric about 0 (e.g. an
    alignment cosine against an isotropic direction). Exact (all ``2^n`` sign
    patterns, identity included) when ``n_runs <= 16``; otherwise ``n_perm``
    random patterns from ``generator`` with p = (1 + #(flipped >= observed)) / (1 + n_perm).
    """
    vals = _array(per_run_values, "per_run_values", ndim=1)
    n = vals.size
    # Ties (e.g. a zero value, whose flip changes nothing) must count as >=,
    # despite rounding differences between summation orders.
    tol = 1e-12 * float(np.abs(vals).sum())
    observed = float(vals.sum())
    if n <= EXACT_SIGN_FLIP_MAX:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        signs = 1.0 - 2.0 * bits  # [2^n, n], every sign pattern once
        sums = signs @ vals
        return float(np.count_nonzero(sums >= observed - tol) / sums.size)
    n_perm = check_int("n_perm", n_perm, 1)
    if generator is None:
        raise ValueError(f"generator is required for the Monte-Carlo sign-flip test (n_runs={n} > 16)")
    gen = _check_generator(generator)
    signs = gen.choice(np.array([1.0, -1.0]), size=(n_perm, n))
    sums = signs @ vals
    return float((1 + np.count_nonzero(sums >= observed - tol)) / (1 + n_perm))


# --------------------------------------------------------------------------- trajectories


def auc_above(values: Any, steps: Any, baseline_level: float) -> float:
    """Trapezoid area of ``values - baseline_level`` over ``steps`` ``[n_steps]``; negative below the baseline.

    The "cumulative reversion" of an alignment trajectory above a null level.
    """
    v = _array(values, "values", ndim=1)
    s = _array(steps, "steps", ndim=1)
    _same_length("values", v, "steps", s)
    if v.size < 2:
        raise ValueError(f"auc_above needs at least 2 steps, got {v.size}")
    if np.any(np.diff(s) <= 0):
        raise ValueError("steps must be strictly increasing")
    base = float(_array(baseline_level, "baseline_level"))
    return float(np.trapezoid(v - base, s))


# --------------------------------------------------------------------------- over seeds


def over_seeds(series: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (ddof=1; 0 for one seed) along seeds of ``[n_seeds, n_steps]``."""
    a = np.asarray(series, dtype=float)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"expected [n_seeds, n_steps], got shape {a.shape}")
    std = a.std(0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1])
    return a.mean(0), std


def at_step(series: Sequence[Sequence[float]], steps: Sequence[int], step: int) -> dict:
    """``{"mean", "std", "n"}`` over seeds of the value at one step of the grid."""
    steps = list(steps)
    if step not in steps:
        raise ValueError(f"step {step} is not on the grid {steps}")
    i = steps.index(step)
    return aggregate([s[i] for s in series])
