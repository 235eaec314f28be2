"""The chapters executed once at smoke parameters, for the notebook and browser tests.

:func:`execute` copies the working tree into a temporary folder and runs every chapter there
with the book's own executor (:func:`reversion.book.execute_notebooks`, papermill), one chapter
at a time, so that a chapter that fails is reported by its own test while the later ones still
run. ``tests/test_notebooks.py`` re-runs the executed copies with nbval; the browser tests
(``tests/browser_checks.py``, collected in ``test_notebooks.py`` so that they run in the same
pytest-xdist worker) build the book from them. Executing the chapters once for both halves the
notebook tests' cost.

The kernels start in an empty temporary folder (a chapter that depends on its working directory
fails here, not in a reader's checkout) with ``REVERSION_CACHE`` and ``REVERSION_RESULTS`` in
the temporary folder too: the tests never read or write the project's ``.cache/`` or ``results/``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DIR = ROOT / "notebooks" / "params" / "smoke"
MATHJAX_DIR = Path("book") / "_static" / "mathjax"


@dataclass
class SmokeBook:
    """Where the smoke execution put things, and what failed."""

    root: Path
    """The copy of the working tree; executed chapters are in ``root/book/executed``."""
    env: dict[str, Path]
    """``REVERSION_CACHE`` and ``REVERSION_RESULTS`` of the run."""
    errors: dict[str, str] = field(default_factory=dict)
    """Chapter stem -> the executor's error, for the chapters that failed."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Chapter stem -> seconds it took."""

    @property
    def executed(self) -> Path:
        return self.root / "book" / "executed"

    @property
    def results(self) -> Path:
        return self.env["REVERSION_RESULTS"]


def working_tree_files(root: Path) -> list[str]:
    """The checkout's files as git sees them (tracked, and untracked but not ignored)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=str(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        out = b""
    files = [f for f in out.decode().split("\0") if f and (root / f).is_file()]
    if files:
        return files
    # Not a git checkout: what the book is built from.
    wanted = ["_config.yml", "_toc.yml", "book", "notebooks", "examples"]
    skip = {"executed", ".ipynb_checkpoints", "__pycache__"}
    found = []
    for name in wanted:
        path = root / name
        if path.is_file():
            found.append(name)
        elif path.is_dir():
            for sub in path.rglob("*"):
                rel = sub.relative_to(root)
                # MathJax (ignored by git) is copied on its own; the style sheet is the book's.
                if sub.is_file() and not skip.intersection(rel.parts) and not rel.is_relative_to(MATHJAX_DIR):
                    found.append(str(rel))
    return found


def smoke_parameters(stem: str) -> dict:
    """The smoke parameters of a chapter (``{}``: run at its defaults)."""
    for suffix in (".yaml", ".yml"):
        path = SMOKE_DIR / f"{stem}{suffix}"
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            assert isinstance(data, dict), f"{path} must be a mapping of parameter names to values"
            return data
    return {}


def execute(base: Path) -> SmokeBook:
    """Copy the working tree to ``base/tree`` and execute every chapter there at smoke parameters."""
    from reversion.book import build as book

    root = base / "tree"
    for rel in working_tree_files(ROOT):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    # Generated folders a stale checkout could carry are not part of the copy.
    for stale in ("_build", "book/executed"):
        shutil.rmtree(root / stale, ignore_errors=True)
    kernel_cwd = base / "kernel-cwd"
    env = {"REVERSION_CACHE": base / "cache", "REVERSION_RESULTS": base / "results"}
    for path in (kernel_cwd, *env.values()):
        path.mkdir(parents=True)
    run = SmokeBook(root, env)
    with pytest.MonkeyPatch.context() as mp:  # the kernels inherit these; nothing else sees them
        for name, path in env.items():
            mp.setenv(name, str(path))
        mp.setenv("PYTHONHASHSEED", "0")  # as in nbval's re-runs: printed sets agree
        for source in book.list_notebooks(root / "notebooks"):
            t0 = time.perf_counter()
            try:
                book.execute_notebooks([source.stem], out_dir=run.executed,
                                       parameters={source.stem: smoke_parameters(source.stem)},
                                       force=True, notebook_dir=root / "notebooks", cwd=kernel_cwd, echo=None)
            except Exception as exc:  # reported by the chapter's own test
                run.errors[source.stem] = f"{type(exc).__name__}: {exc}"
            run.seconds[source.stem] = time.perf_counter() - t0
    return run


def copy_results(run: SmokeBook, stem: str, results: Path) -> None:
    """Put a chapter's results from the smoke run into another results folder (a chapter that
    reads it then finds it there)."""
    src = run.results / stem
    if src.is_dir():
        shutil.copytree(src, results / stem, dirs_exist_ok=True)


def mathjax_into(root: Path, source: Path) -> None:
    """Copy MathJax into the tree (it is ignored by git, so not part of the copy)."""
    target = root / MATHJAX_DIR
    if not target.exists():
        shutil.copytree(source, target)

