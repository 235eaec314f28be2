"""Runtime settings for the organism's CPU work."""

from __future__ import annotations

import gc
import os

import torch


def set_cpu_threads() -> int:
    """Use ``REVERSION_THREADS`` torch threads (default 1) for the organism's CPU work.

    The organism's matrices are tiny: a second thread buys nothing, and on a busy
    2-core machine two spinning OpenMP threads made a fine-tuning run 10-30x slower
    (measured: 0.7 s with one thread against 8-23 s with two). Larger models on a GPU
    are unaffected.
    """
    n = int(os.environ.get("REVERSION_THREADS", "1"))
    if n < 1:
        raise ValueError(f"REVERSION_THREADS must be >= 1, got {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def free_memory() -> None:
    """Return a dropped model's memory (call after ``del model``): one checkpoint at a time."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
