"""Aggregates over fine-tuning seeds."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .stats import aggregate


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
