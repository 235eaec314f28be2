"""Worker calls for ``tests/test_parallel.py`` that import nothing heavy (a worker starts in a
fraction of a second instead of importing torch)."""

from __future__ import annotations

import os
import time


def note_pid(folder: str, i: int) -> None:
    """Write this process's id to ``folder/i``, after a pause long enough for both workers to take calls."""
    time.sleep(0.5)
    with open(f"{folder}/{i}", "w") as f:
        f.write(str(os.getpid()))


def boom(x: int) -> None:
    raise RuntimeError(f"boom {x}")
