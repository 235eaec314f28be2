"""A content-addressed, interruption-safe cache of checkpoints and runs.

An entry is a folder ``<cache>/<stage>/<key>`` where the key hashes the stage's
configuration, the code of the modules it depends on (``code``: the import closure of
the named modules, :func:`reversion.infra.provenance.code_hash`), the torch /
transformers versions and the device: editing a module invalidates exactly the entries
whose stages import it, and CPU and CUDA runs (whose numbers differ) never share one. An entry is built under a temporary name
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
from typing import Callable, Iterable

from reversion.infra import paths
from reversion.infra.provenance import code_hash, device_kind, versions

COMPLETE = "COMPLETE"
STALE_TMP_SECONDS = 6 * 3600


def identity(config: dict, code: Iterable[str] | None = None) -> dict:
    """What a key hashes besides the stage name: the configuration, the code hash of the
    modules ``code`` names (None: the whole package), the library versions and the device."""
    return {"config": config, "code": code_hash(code), **versions(), "device": device_kind()}


def cache_key(stage: str, config: dict, code: Iterable[str] | None = None) -> str:
    """Hash of the stage name and :func:`identity`."""
    blob = json.dumps({"stage": stage, **identity(config, code)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def entry_path(stage: str, config: dict, root: Path | None = None, code: Iterable[str] | None = None) -> Path:
    return (root or paths.cache_dir()) / stage / cache_key(stage, config, code)


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def cached(stage: str, config: dict, build: Callable[[Path], None],
           root: Path | None = None, code: Iterable[str] | None = None) -> Path:
    """Return the folder of ``stage`` for ``config``, building it with ``build(tmp)`` on a miss.

    ``build`` writes everything into the folder it is given. Only after it returns is
    the folder marked complete and renamed into place (atomic on one file system).
    """
    code = tuple(code) if code is not None else None
    final = entry_path(stage, config, root, code)
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
            {"stage": stage, **identity(config, code), "modules": list(code or ())},
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
