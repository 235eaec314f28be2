"""``results/<notebook stem>/metrics.json``: key numbers with their parameters and provenance.

The metrics file is deterministic (same seed and parameters -> byte-identical file);
wall-clock timings go to ``timings.json`` beside it, and what changes from build to build
without changing a number -- the git commit of the checkout, the time of writing -- to
``build.json``. Every aggregate over seeds is ``{"mean", "std" (sample, ddof=1), "n"}``;
rates are fractions.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from reversion.infra import paths
from reversion.infra.provenance import provenance
from reversion.infra.vcs import git_state


def _clean(x: Any) -> Any:
    """JSON-ready: numpy scalars to Python, tuples to lists, non-finite floats rejected."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):  # the analysis layer's typed results
        return _clean(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"refusing to write a non-finite number ({x}) to metrics")
        return float(f"{x:.12g}")  # 12 significant digits: stable text, small numbers kept
    if isinstance(x, Path):
        return x.as_posix()
    return x


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_record(metrics_text: str) -> dict:
    """What ``build.json`` holds: the git state of the checkout (:func:`git_state`), the UTC time
    of writing and the SHA-256 of the ``metrics.json`` text it accompanies (which ties the two:
    a ``build.json`` whose hash differs from its ``metrics.json`` describes another write)."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    git = git_state()
    return {"commit": git["commit"], "dirty": git["dirty"], "written_utc": when,
            "metrics_sha256": hashlib.sha256(metrics_text.encode()).hexdigest()}


def write_metrics(stem: str, metrics: dict, parameters: dict, seeds: Any = None,
                  timings: dict | None = None, subject: dict | None = None,
                  code: tuple[str, ...] | None = None, stages: dict | None = None) -> Path:
    """Write ``results/<stem>/metrics.json`` (and ``timings.json`` if given) and its
    ``build.json`` (:func:`build_record`); return the path of ``metrics.json``.

    ``subject``: what the subject records (its kind; for checkpoints their paths and hashes);
    ``code``: the modules whose import closure produced the numbers (a chapter passes its own
    module; default: the whole package -- see :func:`reversion.infra.provenance.code_hash`);
    ``stages``: the identities of the cached stages the numbers come from (the subject, the
    estimate), which the claims chapter compares across chapters.
    """
    folder = paths.results_dir() / stem
    doc = {"notebook": stem, "parameters": parameters, "seeds": seeds, "subject": subject,
           "stages": stages, "provenance": provenance(code), "metrics": metrics}
    out = folder / "metrics.json"
    text = json.dumps(_clean(doc), indent=2, sort_keys=True) + "\n"
    # Clean both before writing either: a bad timing must not leave a lone new metrics file.
    timing_text = json.dumps(_clean(timings), indent=2) + "\n" if timings is not None else None
    build_text = json.dumps(build_record(text), indent=2, sort_keys=True) + "\n"
    _atomic_write(out, text)
    if timing_text is not None:
        _atomic_write(folder / "timings.json", timing_text)
    _atomic_write(folder / "build.json", build_text)
    return out


READS_ENV = "REVERSION_READS_LOG"
"""Where :func:`read_metrics` records what it read (one stem a line), when set: the book's
executor sets it while a notebook runs, so a chapter's reads are what its code read."""


def read_metrics(stem: str) -> dict:
    """A notebook's whole results document (``metrics``, ``parameters``, ``seeds``,
    ``provenance``); raises if the notebook has not run."""
    path = paths.results_dir() / stem / "metrics.json"
    log = os.environ.get(READS_ENV)
    if log:  # before the check: a read that fails is a read too
        with open(log, "a") as f:
            f.write(stem + "\n")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: execute notebooks/{stem}.ipynb first")
    return json.loads(path.read_text())
