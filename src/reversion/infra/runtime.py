"""Runtime settings for the organism's CPU work."""

from __future__ import annotations

import gc
import os
import weakref

import torch


def set_cpu_threads(n: int | None = None) -> int:
    """Use ``n`` torch threads, default ``REVERSION_THREADS`` (else 1), for the organism's CPU work.

    One model's matrices are tiny: a second thread buys little, and on a busy 2-core
    machine two spinning OpenMP threads per worker made a fine-tuning run 10-30x slower
    (measured: 0.7 s with one thread against 8-23 s with two). A group of runs trained as
    one computation (:mod:`reversion.core.grouped`) is large enough to use every core when
    it is the only work (``n``). Larger models on a GPU are unaffected.
    """
    if n is None:
        n = int(os.environ.get("REVERSION_THREADS", "1"))
    if n < 1:
        raise ValueError(f"REVERSION_THREADS must be >= 1, got {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def free_memory(dropped: weakref.ref | None = None) -> None:
    """Return a dropped model's memory (call after ``del model``): one checkpoint at a time.

    ``dropped``: a weak reference to the model. Reference counting frees a model without cycles at
    ``del``; the full collection, which in a notebook holding a book's results took 0.7 s a call
    (half of chapter "Which past?"'s estimates), then runs only if the model is still alive."""
    if dropped is None or dropped() is not None:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
