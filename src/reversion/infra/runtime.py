"""Runtime settings for the organism's CPU work."""

from __future__ import annotations

import gc
import os

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


DEVICES = ("auto", "cpu", "cuda")


def device_setting() -> str:
    """``REVERSION_DEVICE``: where the organism (and any checkpoint without its own device)
    computes -- ``auto`` (default: CUDA when present), ``cpu`` or ``cuda``."""
    value = os.environ.get("REVERSION_DEVICE", "auto")
    if value not in DEVICES:
        raise ValueError(f"REVERSION_DEVICE must be one of {', '.join(DEVICES)}, got {value!r}")
    if value == "cuda" and not torch.cuda.is_available():
        raise ValueError("REVERSION_DEVICE=cuda, but torch sees no CUDA device")
    return value


def compute_device() -> torch.device:
    """The device of :func:`device_setting`; nothing needs a GPU."""
    setting = device_setting()
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)


def free_memory() -> None:
    """Return a dropped model's memory (call after ``del model``): one checkpoint at a time."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
