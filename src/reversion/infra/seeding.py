"""The one seed helper. Every random draw in the package goes through here."""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Iterator

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


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """:func:`seed_everything` for the body only: Python's, NumPy's and torch's generators (CPU and
    CUDA) are put back as they were after it, so a cached step and a built one leave the caller's
    draws alike."""
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        seed_everything(seed)
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


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

