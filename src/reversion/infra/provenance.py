"""Identity of the code that produced a number: version, code hash, library versions."""

from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path

import reversion


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """SHA-256 over every ``.py`` file of the package (path and bytes).

    Part of every cache key, so editing ``src/`` invalidates cached runs.
    """
    root = Path(reversion.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def provenance() -> dict:
    """What produced a result: package version, code hash, torch/transformers versions."""
    import torch
    import transformers

    return {
        "package_version": reversion.__version__,
        "code_hash": code_hash(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
    }
