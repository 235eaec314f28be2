"""The git state of the checkout: shown on every page and recorded in ``build.json`` beside each
chapter's results, never hashed into a result or a cache key (the same code gives the same numbers
whatever commit it is on). A module of its own so that no stage's code identity includes it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from reversion.infra import paths

#: Seconds each git command may take before the state is reported unknown.
GIT_TIMEOUT_S = 5.0
# Variables that would point git at another repository than the folder asked about.
_GIT_REDIRECTS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR")


def _git(folder: Path, *args: str) -> str | None:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_REDIRECTS}
    env["GIT_OPTIONAL_LOCKS"] = "0"  # a status check must not take the index lock from a user's git
    try:
        proc = subprocess.run(["git", *args], cwd=str(folder), env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):  # no git, unreadable folder, timeout
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(root: Path | str | None = None) -> dict:
    """The commit the checkout at ``root`` (default: the project root) is on, and whether its
    tracked files differ from it: ``{"commit": full sha or None, "dirty": bool or None}``.

    Both are None when ``root`` is not in a git checkout, has no commit yet, or git is missing
    or too slow; this never raises. Untracked files do not count as changes. Not part of
    ``metrics.json`` or any cache key (the same numbers come from any commit with the same
    code); :func:`reversion.infra.results.write_metrics` records it in ``build.json``.
    """
    unknown = {"commit": None, "dirty": None}
    try:
        folder = Path(root) if root is not None else paths.project_root()
        if not folder.is_dir():
            return unknown
    except (OSError, TypeError):
        return unknown
    head = _git(folder, "rev-parse", "--verify", "HEAD")
    if head is None or not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", head.strip()):
        return unknown
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return {"commit": head.strip(), "dirty": None if status is None else bool(status.strip())}
