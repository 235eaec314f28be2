"""Where the project keeps its cache and results.

Both default to folders inside the project (so a clean clone starts cold) and
can be moved with environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout that holds ``pyproject.toml`` (editable install), else the cwd."""
    here = Path(__file__).resolve().parents[3]  # src/reversion/infra/paths.py
    if (here / "pyproject.toml").is_file() and (here / "src" / "reversion").is_dir():
        return here
    return Path.cwd()


def cache_dir() -> Path:
    """Checkpoint and run cache; ``REVERSION_CACHE`` moves it."""
    env = os.environ.get("REVERSION_CACHE")
    return Path(env) if env else project_root() / ".cache" / "reversion"


def results_dir() -> Path:
    """Per-notebook metrics (``results/<stem>/metrics.json``); ``REVERSION_RESULTS`` moves it."""
    env = os.environ.get("REVERSION_RESULTS")
    return Path(env) if env else project_root() / "results"


def resolve(path: str | Path) -> Path:
    """A path a user passes as a parameter: absolute as given, else relative to the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p
