"""The CPU arithmetic the organism's numbers depend on, pinned to one choice on every computer.

A history is thousands of optimizer steps of a chaotic system: a difference in the 8th digit of one
step (a reduction summed in another order) grows into another history. On a CPU that order
depends on three things a machine chooses by itself, and each is pinned here:

* **ATen's kernels** are compiled for several instruction sets and dispatched to the best the
  processor has (AVX-512 on some machines of this kind, AVX2 on others; the vector width
  changes every vectorised reduction). ``ATEN_CPU_CAPABILITY=avx2``, set only on an x86-64
  processor that has AVX2 and FMA (elsewhere torch would run instructions the processor lacks;
  there the pin is off and the cache key says so).
* **MKL's matrix products** pick a code path per processor; its conditional numerical
  reproducibility (``MKL_CBWR``) fixes one. ``AVX2,STRICT`` (default) is honoured on Intel
  processors; on AMD processors MKL reports ``AUTO`` and uses its one non-Intel path whatever
  the processor's vector extensions (checked: ``MKL_ENABLE_INSTRUCTIONS`` and ``MKL_CBWR``
  change nothing there). The mode MKL documents as equal *across* vendors, ``COMPATIBLE``,
  costs 1.96x per grouped step (``benchmarks/step_variants.txt``, 10 runs: 285 ms against 145
  ms); set ``REVERSION_MKL_CBWR=COMPATIBLE`` for it. The cache key holds the mode and, since
  the path MKL takes under ``AVX2`` depends on the vendor, the processor's vendor.
* **Threads**: the organism's arithmetic runs on one thread in each process (a parallel
  reduction splits by the thread count); the cores are used by running groups of runs in
  worker processes (:mod:`reversion.infra.parallel`), whose numbers do not depend on the group.

Both variables are read once, when torch (ATen) and MKL first compute. ``import reversion``
sets them (:func:`pin_environment`) before that in a fresh process; a process that computed
with torch first is not pinned (:func:`pinned`), and the organism's training then runs in
worker processes, which are (:func:`reversion.infra.parallel.run_all`). ``REVERSION_UNPINNED=1``
turns the pin off -- the tests' positive control, which shows the numbers then differ.
"""

from __future__ import annotations

import ctypes
import functools
import os

CAPABILITY = "avx2"
"""ATen's pinned instruction set (``ATEN_CPU_CAPABILITY``)."""

MKL_DEFAULT = "AVX2,STRICT"
"""MKL's pinned code path (``MKL_CBWR``) unless ``REVERSION_MKL_CBWR`` names another."""

UNPIN = "REVERSION_UNPINNED"

THREADS = 1
"""Torch threads of the organism's arithmetic in every process."""


def mkl_mode() -> str:
    return os.environ.get("REVERSION_MKL_CBWR", MKL_DEFAULT)


MKL_MODES = ("AUTO", "COMPATIBLE", "SSE4_2", "AVX", "AVX2", "AVX512", "AVX512_E1")


def mkl_checked() -> str:
    """:func:`mkl_mode`, refused unless MKL knows it (``MODE`` or ``MODE,STRICT``)."""
    mode = mkl_mode()
    base, _, strict = mode.partition(",")
    if base not in MKL_MODES or strict not in ("", "STRICT"):
        raise ValueError(f"REVERSION_MKL_CBWR must be one of {', '.join(MKL_MODES)}, optionally with ',STRICT'; "
                         f"got {mode!r}")
    return mode


@functools.lru_cache(maxsize=1)
def cpu() -> dict:
    """The processor: architecture, vendor, and whether it has AVX2 and FMA (Linux's cpuinfo;
    elsewhere unknown, and the pin stays off)."""
    import platform

    info = {"machine": platform.machine().lower(), "vendor": "unknown", "avx2": False}
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("vendor_id"):
            info["vendor"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["avx2"] = {"avx2", "fma"} <= flags
            break
    return info


def enabled() -> bool:
    """Whether the pin applies: not turned off, and an x86-64 processor with AVX2 and FMA."""
    c = cpu()
    return os.environ.get(UNPIN) != "1" and c["machine"] in ("x86_64", "amd64") and c["avx2"]


def pin_environment() -> None:
    """Set the pinned variables for this process and every process it starts (``import reversion``
    calls this before anything loads torch)."""
    if enabled():
        os.environ["ATEN_CPU_CAPABILITY"] = CAPABILITY
        os.environ["MKL_CBWR"] = mkl_checked()


def signature() -> str:
    """What the organism's CPU numbers depend on, for cache keys: the pinned choice (whichever
    process computes, the pin holds there), or ``unpinned``."""
    return f"aten-{CAPABILITY}/mkl-{mkl_checked()}/{cpu()['vendor']}" if enabled() else "unpinned"


@functools.lru_cache(maxsize=1)
def _mkl_branch_getter():
    import torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        return lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None


def state() -> dict:
    """This process's arithmetic: ATen's dispatched instruction set, MKL's CNR branch code
    (``None`` without MKL; 0 or 1 = not set) and torch's threads."""
    import torch

    get = _mkl_branch_getter()
    return {"capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_branch": int(get(1)) if get is not None else None,
            "threads": torch.get_num_threads()}


def pinned() -> bool:
    """Whether this process computes as the pin says (or the pin is off: then anything goes)."""
    if not enabled():
        return True
    s = state()
    mkl_set = s["mkl_branch"] is None or s["mkl_branch"] > 1
    return s["capability"] == CAPABILITY.upper() and mkl_set and os.environ.get("MKL_CBWR") == mkl_mode()


@functools.lru_cache(maxsize=1)
def warn_unpinned() -> None:
    """Say once that this process computes otherwise than the pin (torch computed before
    ``import reversion``, or the variables were changed)."""
    import warnings

    warnings.warn(f"this process's CPU arithmetic is not the pinned one ({state()}): the organism's "
                  "training runs in pinned worker processes; numbers computed here (activations, "
                  "directions) may differ in their last digits. Import reversion before computing "
                  "with torch.", RuntimeWarning, stacklevel=3)


def pin_threads() -> None:
    """The organism's arithmetic on :data:`THREADS` thread(s), whatever the machine's cores."""
    import torch

    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)


DEVICES = ("auto", "cpu", "cuda")


def device_setting() -> str:
    """``REVERSION_DEVICE``: where the organism (and any checkpoint without its own device)
    computes -- ``auto`` (default: CUDA when present), ``cpu`` or ``cuda``."""
    import torch

    value = os.environ.get("REVERSION_DEVICE", "auto")
    if value not in DEVICES:
        raise ValueError(f"REVERSION_DEVICE must be one of {', '.join(DEVICES)}, got {value!r}")
    if value == "cuda" and not torch.cuda.is_available():
        raise ValueError("REVERSION_DEVICE=cuda, but torch sees no CUDA device")
    return value


def compute_device():
    """The device of :func:`device_setting`; nothing needs a GPU."""
    import torch

    setting = device_setting()
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)
