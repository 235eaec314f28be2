"""The one seed helper. Every random draw in the package goes through here."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) and ask torch for deterministic kernels."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))
    # warn_only: a few CUDA kernels have no deterministic variant; CPU ones all do.
    torch.use_deterministic_algorithms(True, warn_only=True)


def rng(*keys: int | str) -> np.random.Generator:
    """An independent NumPy stream for a tuple of keys (seed, purpose, ...).

    Strings are hashed stably so e.g. ``rng(seed, "finetune-data")`` never
    collides with ``rng(seed, "eval")`` and does not depend on call order.
    """
    words: list[int] = []
    for k in keys:
        if isinstance(k, str):
            words.append(int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little"))
        else:
            words.append(int(k))
    return np.random.default_rng(words)

