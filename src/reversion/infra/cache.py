"""A content-addressed, interruption-safe cache of checkpoints and runs.

An entry is a folder ``<cache>/<stage>/<key>`` where the key hashes the stage's
configuration *and* the package's code (:func:`reversion.provenance.code_hash`), so
editing ``src/`` invalidates every entry. An entry is built under a temporary name
and renamed into place only once complete; a run killed midway leaves at most a
``.tmp-*`` folder, which never reads as an entry and is swept on the next build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from reversion.infra import paths
from reversion.infra.provenance import code_hash

COMPLETE = "COMPLETE"
STALE_TMP_SECONDS = 6 * 3600


def cache_key(stage: str, config: dict) -> str:
    """Hash of the stage name, its JSON-able configuration and the package code."""
    blob = json.dumps({"stage": stage, "config": config, "code": code_hash()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def entry_path(stage: str, config: dict, root: Path | None = None) -> Path:
    return (root or paths.cache_dir()) / stage / cache_key(stage, config)


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def cached(stage: str, config: dict, build: Callable[[Path], None],
           root: Path | None = None) -> Path:
    """Return the folder of ``stage`` for ``config``, building it with ``build(tmp)`` on a miss.

    ``build`` writes everything into the folder it is given. Only after it returns is
    the folder marked complete and renamed into place (atomic on one file system).
    """
    final = entry_path(stage, config, root)
    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep(final.parent)
    if final.exists():  # an incomplete leftover under the final name: never trust it
        shutil.rmtree(final)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        (tmp / "config.json").write_text(json.dumps(
            {"stage": stage, "config": config, "code_hash": code_hash()},
            indent=2, sort_keys=True, default=str))
        (tmp / COMPLETE).write_text("")
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):  # lost a race to nobody: a real error
                raise
            shutil.rmtree(tmp)  # another process finished the same entry first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _sweep(folder: Path) -> None:
    """Remove temporary folders of builds that died long ago."""
    now = time.time()
    for p in folder.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass
