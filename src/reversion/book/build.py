"""Execute the chapter notebooks with papermill, then build the Jupyter Book.

``python -m reversion.book`` (what ``make book`` runs) does two things:

1. :func:`execute_notebooks` runs every ``notebooks/NN_name.ipynb`` with papermill,
   in chapter order (a chapter may read what an earlier one wrote), and writes the
   executed copy the book renders to ``book/executed/NN_name.ipynb``.  A notebook
   is re-executed only when its inputs changed; see :func:`notebook_stamp`.
2. :func:`build_book` runs ``jupyter-book build`` strictly: every Sphinx warning is
   an error, so a broken reference, a missing glue key or a bad figure fails it.

The book itself never executes anything (``execute_notebooks: "off"`` in
``_config.yml``): papermill is the single place where code runs, with the same
parameters mechanism users have for re-running a chapter with other settings.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from reversion.book.nb import DOWNLOADS_SUFFIX, PAGE_ENV
from reversion.infra import paths
from reversion.infra.paths import project_root
from reversion.infra.provenance import (
    PACKAGE,
    code_hash,
    device_kind,
    module_file,
    versions,
)
from reversion.infra.results import READS_ENV

#: Tag papermill puts on the cell it injects with the run's parameters.
INJECTED_TAG = "injected-parameters"
#: Tag that hides a cell (input and output) from the rendered book.
REMOVE_TAG = "remove-cell"

STAMP_DIR_NAME = ".stamps"
LOG_DIR_NAME = ".logs"

#: Chapters renumbered (when "Which past?", then "Early warning" got a number of its own): old stem -> new stem.
RENAMED = {"04b_which_past": "05_which_past", "05_interventions": "06_interventions",
           "06_claims": "07_claims", "07_own_checkpoints": "08_own_checkpoints",
           "08_performance": "10_performance", "09_performance": "10_performance"}


def check_renamed(stems: Iterable[str], what: str) -> None:
    """A ``ValueError`` naming the new stem for every old one in ``stems``."""
    old = [s for s in stems if s in RENAMED]
    if old:
        raise ValueError(f"{what} {', '.join(old)}: the chapters were renumbered; use "
                         + ", ".join(f"{RENAMED[s]} (was {s})" for s in old))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class NotebookExecutionError(RuntimeError):
    """A notebook failed under papermill; carries the notebook's stem."""
    def __init__(self, stem: str, message: str):
        super().__init__(f"notebook {stem!r} failed: {message}")
        self.stem = stem


class BookBuildError(RuntimeError):
    """``jupyter-book build`` failed or emitted a warning."""

@dataclass
class NotebookRun:
    """What :func:`execute_notebooks` did with one notebook."""
    stem: str
    executed: bool  # False: the executed copy was up to date
    seconds: float
    output: Path
    stderr_outputs_removed: int = 0


# --------------------------------------------------------------------------- paths


def notebooks_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "notebooks"


def default_out_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "book" / "executed"


def list_notebooks(notebook_dir: Path | None = None) -> list[Path]:
    """The chapter notebooks, ``notebooks/*.ipynb``, sorted (chapter order)."""
    notebook_dir = notebook_dir or notebooks_dir()
    return sorted(
        p for p in notebook_dir.glob("*.ipynb") if p.is_file() and not p.name.startswith(".")
    )


def load_parameters_dir(directory: Path) -> dict[str, dict[str, Any]]:
    """``{stem: parameters}`` from ``DIR/<stem>.yaml`` (or ``.yml``) files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"parameters directory not found: {directory}")
    params: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of parameter names to values")
        params[path.stem] = data
    return params


# --------------------------------------------------------------------------- stamps


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal parameters give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def notebook_modules(notebook: Path) -> list[str]:
    """The package modules a notebook's code cells import (``from reversion.x import y``)."""

    found: set[str] = set()
    for cell in json.loads(Path(notebook).read_text()).get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", []))
        try:
            tree = ast.parse(source)
        except SyntaxError:  # IPython magics: no import of ours to find there
            continue
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                if n == PACKAGE or n.startswith(PACKAGE + "."):
                    try:
                        module_file(n)
                        found.add(n)
                    except ValueError:
                        pass  # a name imported from a module, not a module
    return sorted(found)


def notebook_stamp(notebook: Path, parameters: Mapping[str, Any] | None, reads: Iterable[str] = ()) -> str:
    """SHA-256 over what decides a notebook's executed copy.

    * the notebook source bytes and the canonical JSON of its papermill parameters;
    * the code it runs: :func:`reversion.infra.provenance.code_hash` of the package modules
      its cells import, with everything they import (so a plotting edit re-executes the
      pages that plot with it, and nothing else);
    * the *outputs* it read from earlier chapters when it last ran (``reads``: the stems
      :func:`reversion.infra.results.read_metrics` was called with, recorded by
      :func:`execute_notebooks`; nothing is listed by hand): the bytes of each one's
      ``results/<stem>/metrics.json`` now -- an earlier chapter that re-ran to the same numbers
      does not re-execute this one, and a chapter whose code starts reading another re-runs
      anyway (its code changed) and records the new read;
    * the bytes of the files its metadata lists under ``reversion.inputs`` (paths from the
      project root), e.g. the Performance page's benchmark file;
    * the torch / transformers / Python versions and the device, as in the cache keys.
    """

    h = hashlib.sha256()
    h.update(b"notebook\0")
    raw = Path(notebook).read_bytes()
    h.update(raw)
    meta = json.loads(raw).get("metadata", {}).get("reversion", {})
    for rel in meta.get("inputs", []):
        f = project_root() / rel
        h.update(b"\0input\0" + rel.encode() + b"\0")
        h.update(f.read_bytes() if f.is_file() else b"<missing>")
    for stem in sorted(set(reads)):
        f = paths.results_dir() / stem / "metrics.json"
        h.update(b"\0reads\0" + stem.encode() + b"\0")
        h.update(f.read_bytes() if f.is_file() else b"<missing>")
    h.update(b"\0parameters\0")
    h.update(canonical_json(dict(parameters or {})).encode())
    h.update(b"\0code\0")
    h.update(code_hash(notebook_modules(notebook)).encode())
    # As in the cache keys: another torch / transformers or another device computes other numbers.
    h.update(b"\0runtime\0")
    h.update(canonical_json({**versions(), "device": device_kind()}).encode())
    return h.hexdigest()


def _stamp_path(out_dir: Path, stem: str) -> Path:
    return out_dir / STAMP_DIR_NAME / f"{stem}.sha256"


def _reads_path(out_dir: Path, stem: str) -> Path:
    """The chapters a notebook read when it last ran, one stem a line (beside its stamp)."""
    return out_dir / STAMP_DIR_NAME / f"{stem}.reads"


def _recorded_reads(path: Path) -> list[str]:
    try:
        return sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    except FileNotFoundError:
        return []


def _read_stamp(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- post-processing


def postprocess_executed(nb: Any) -> tuple[Any, list[str]]:
    """Make an executed notebook fit for the book; returns (notebook, removed stderr).

    * The cell papermill injects (tag ``injected-parameters``) also gets
      ``remove-cell``: the book shows the chapter as written, with its defaults in
      the ``parameters`` cell, not a second copy of them.
    * ``stderr`` stream outputs are dropped.  On these notebooks stderr carries
      progress bars (tqdm redraws, wall-clock rates) and library warnings: they
      change from run to run, are unreadable once frozen into HTML, and are not
      results.  Nothing that matters is lost: an exception still fails the run
      (papermill raises, the book is not built), and the removed text is returned
      so that :func:`execute_notebooks` keeps it in ``book/executed/.logs/``.
    """
    removed: list[str] = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if INJECTED_TAG in tags and REMOVE_TAG not in tags:
            tags.append(REMOVE_TAG)  # the list lives in the cell's metadata
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                removed.append("".join(text) if isinstance(text, list) else text)
            else:
                kept.append(out)
        cell["outputs"] = kept
    return nb, removed


# --------------------------------------------------------------------------- execution


def _execute_one(
    source: Path,
    target: Path,
    parameters: Mapping[str, Any],
    cwd: Path,
    log_dir: Path,
) -> int:
    """papermill ``source`` into ``target`` atomically; returns #stderr outputs removed."""
    import nbformat
    import papermill as pm

    stem = source.stem
    # Hidden temp names in the same folder: os.replace is atomic there, and Sphinx
    # never picks a dot-file up as a page.
    tmp = target.with_name(f".{stem}.{os.getpid()}.tmp.ipynb")
    try:
        try:
            pm.execute_notebook(
                str(source),
                str(tmp),
                parameters=dict(parameters),
                kernel_name="python3",
                cwd=str(cwd),
                progress_bar=False,
                log_output=False,
            )
        except pm.PapermillExecutionError as exc:
            raise NotebookExecutionError(
                stem,
                f"cell index {exc.cell_index} (In [{exc.exec_count}]) raised "
                f"{exc.ename}: {exc.evalue}\n" + _ANSI.sub("", "\n".join(exc.traceback)),
            ) from exc
        except Exception as exc:  # kernel died, bad parameters, unreadable notebook ...
            raise NotebookExecutionError(stem, f"{type(exc).__name__}: {exc}") from exc

        nb = nbformat.read(str(tmp), as_version=4)
        nb, removed = postprocess_executed(nb)
        nbformat.write(nb, str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)

    log = log_dir / f"{stem}.stderr.txt"
    if removed:
        log_dir.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join(removed))
    else:
        log.unlink(missing_ok=True)
    return len(removed)


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables while a notebook runs (its kernel inherits them), then restore."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _recording_reads(path: Path, page: Path):
    """While a notebook runs: :data:`reversion.infra.results.READS_ENV` at ``path`` (emptied),
    so its kernel records the chapters it reads, and :data:`reversion.book.nb.PAGE_ENV` at the
    executed page (without suffix), beside which it saves its downloads."""
    path.write_text("")
    return _environment(**{READS_ENV: str(path), PAGE_ENV: str(page.with_suffix("").resolve())})


def _downloads_missing(target: Path) -> bool:
    """An executed page links downloads that are no longer beside it (the folder was deleted)."""
    folder = target.with_name(target.stem + DOWNLOADS_SUFFIX)
    return not folder.is_dir() and folder.name in target.read_text()


def execute_notebooks(
    stems: Iterable[str] | None = None,
    out_dir: Path | str | None = None,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
    force: bool = False,
    *,
    notebook_dir: Path | str | None = None,
    cwd: Path | str | None = None,
    echo: Callable[[str], None] | None = print,
) -> list[NotebookRun]:
    """Execute the chapter notebooks that are out of date; return what was done.

    stems: only these notebooks (``"01_training_history"``); default all.
    out_dir: where executed copies go; default ``book/executed``.
    parameters: ``{stem: {name: value}}`` passed to papermill; a stem absent from
        it runs at the notebook's defaults.
    force: execute even when the stamp says the executed copy is up to date.
    notebook_dir: folder of the sources; default ``notebooks/``.
    cwd: the kernel's working directory; default the project root.

    Notebooks run in sorted (chapter) order.  The executed copy is written to a
    temporary name and moved into place with :func:`os.replace`; the chapters it read
    (``out_dir/.stamps/<stem>.reads``, what :func:`reversion.infra.results.read_metrics` was
    called with while it ran) and its stamp (``out_dir/.stamps/<stem>.sha256``) are written last.  On failure a
    :class:`NotebookExecutionError` names the notebook and carries papermill's
    error, and neither a stamp nor an executed copy is left for that notebook.
    """
    root = project_root()
    notebook_dir = Path(notebook_dir) if notebook_dir is not None else notebooks_dir(root)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(root)
    cwd = Path(cwd) if cwd is not None else root
    parameters = parameters or {}
    say = echo or (lambda _msg: None)

    notebooks = list_notebooks(notebook_dir)
    known = {nb.stem for nb in notebooks}
    wanted = None if stems is None else list(stems)
    check_renamed(wanted or [], "notebook")
    check_renamed(parameters, "parameters given for")
    if wanted is not None:
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise FileNotFoundError(
                f"no notebook {', '.join(unknown)} in {notebook_dir} (have: {', '.join(sorted(known)) or 'none'})"
            )
    unused = sorted(set(parameters) - known)
    if unused:
        raise ValueError(f"parameters given for unknown notebooks: {', '.join(unused)}")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP_DIR_NAME).mkdir(exist_ok=True)
    log_dir = out_dir / LOG_DIR_NAME

    runs: list[NotebookRun] = []
    for source in notebooks:
        stem = source.stem
        if wanted is not None and stem not in wanted:
            continue
        params = dict(parameters.get(stem, {}))
        target = out_dir / source.name
        stamp_file, reads_file = _stamp_path(out_dir, stem), _reads_path(out_dir, stem)
        # after the chapters it reads have run: their results are the ones it would read now
        stamp = notebook_stamp(source, params, _recorded_reads(reads_file))
        if not force and target.is_file() and _read_stamp(stamp_file) == stamp and not _downloads_missing(target):
            runs.append(NotebookRun(stem, False, 0.0, target))
            say(f"[book] {stem}: up to date")
            continue

        say(f"[book] {stem}: executing" + (f" with {canonical_json(params)}" if params else ""))
        # The old stamp and copy describe other inputs: drop them before running,
        # so that a failure leaves nothing that looks current.
        stamp_file.unlink(missing_ok=True)
        reads_file.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            with _recording_reads(reads_file, target):
                n_removed = _execute_one(source, target, params, cwd, log_dir)
        except BaseException:
            target.unlink(missing_ok=True)
            reads_file.unlink(missing_ok=True)
            raise
        seconds = time.perf_counter() - t0
        stamp_file.write_text(notebook_stamp(source, params, _recorded_reads(reads_file)) + "\n")
        runs.append(NotebookRun(stem, True, seconds, target, n_removed))
        note = f", {n_removed} stderr output(s) moved to {LOG_DIR_NAME}/{stem}.stderr.txt" if n_removed else ""
        say(f"[book] {stem}: executed in {seconds:.1f} s{note}")
    return runs


# --------------------------------------------------------------------------- build


def jupyter_book_executable() -> str:
    """The ``jupyter-book`` next to this interpreter (the venv's), else on PATH."""
    candidate = Path(sys.executable).parent / "jupyter-book"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("jupyter-book")
    if found:
        return found
    raise BookBuildError(f"jupyter-book not found next to {sys.executable} nor on PATH")


#: How Sphinx (and docutils through it) reports a problem: "path:line: WARNING: ...".
_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL|SEVERE):")


def build_book(root: Path | str | None = None, echo: Callable[[str], None] | None = print) -> Path:
    """``jupyter-book build ROOT --all -W -n --keep-going``; returns the HTML index.

    ``-W`` turns warnings into errors, ``-n`` (nitpicky) warns on every unresolved
    reference, ``--keep-going`` reports all of them before failing, and ``--all``
    re-reads every page so a warning from an unchanged page is not skipped by an
    incremental build.  Any line with ``WARNING`` also fails it, whatever the
    exit status (belt and braces: ``-W`` already makes them fail).
    """
    root = Path(root) if root is not None else project_root()
    say = echo or (lambda _msg: None)
    cmd = [jupyter_book_executable(), "build", str(root), "--all", "-W", "-n", "--keep-going"]
    say("[book] " + " ".join(cmd))
    env = dict(os.environ)
    # The venv's bin first: Sphinx extensions that shell out find the same tools.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    proc = subprocess.Popen(
        cmd, cwd=str(root), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    warnings: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        if _PROBLEM.search(_ANSI.sub("", line)):
            warnings.append(_ANSI.sub("", line).rstrip())
    rc = proc.wait()
    sys.stdout.flush()
    if rc != 0 or warnings:
        detail = "\n".join(warnings[:50])
        raise BookBuildError(
            f"jupyter-book build failed (exit status {rc}, {len(warnings)} warning/error line(s))"
            + (f":\n{detail}" if detail else "")
        )
    index = root / "_build" / "html" / "index.html"
    if not index.is_file():
        raise BookBuildError(f"build succeeded but {index} is missing")
    return index


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reversion.book",
        description="Execute the chapter notebooks with papermill, then build the book (HTML).",
    )
    parser.add_argument("--force", action="store_true", help="re-execute even if up to date")
    parser.add_argument(
        "--only",
        action="append",
        metavar="STEM",
        help="execute only this notebook, e.g. 01_training_history (repeatable)",
    )
    parser.add_argument("--no-build", action="store_true", help="execute only; skip jupyter-book")
    parser.add_argument(
        "--parameters-dir",
        type=Path,
        metavar="DIR",
        help="papermill parameters per notebook from DIR/<stem>.yaml (default: notebook defaults)",
    )
    args = parser.parse_args(argv)

    parameters = load_parameters_dir(args.parameters_dir) if args.parameters_dir else None
    t0 = time.perf_counter()
    try:
        runs = execute_notebooks(stems=args.only, parameters=parameters, force=args.force)
    except (NotebookExecutionError, FileNotFoundError, ValueError) as exc:
        print(f"[book] ERROR: {exc}", file=sys.stderr)
        return 1
    if not runs:
        print("[book] no notebooks found in notebooks/", file=sys.stderr)

    print("[book] notebooks:")
    for run in runs:
        state = f"executed in {run.seconds:8.1f} s" if run.executed else "up to date"
        print(f"[book]   {run.stem:<32} {state}")
    print(f"[book] execution total {time.perf_counter() - t0:.1f} s")

    if args.no_build:
        return 0
    if parameters:
        print(
            "[book] note: the book now shows notebooks run with --parameters-dir values",
            file=sys.stderr,
        )
    t1 = time.perf_counter()
    try:
        index = build_book()
    except BookBuildError as exc:
        print(f"[book] ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"[book] built in {time.perf_counter() - t1:.1f} s: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
