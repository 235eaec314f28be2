"""Every chapter notebook runs end to end at smoke parameters and re-runs identically.

For each ``notebooks/NN_name.ipynb`` (marker ``notebooks``; part of the default run):

1. the book's executor (:func:`reversion.book.execute_notebooks`, papermill) runs it with
   ``notebooks/params/smoke/NN_name.yaml`` (if present, else at its defaults) in a copy of
   the working tree -- the ``smoke_book`` fixture, which the browser test builds its book from;
   any exception fails the chapter's test;
2. nbval re-runs the executed copy in a fresh kernel, in strict mode (``--nbval``:
   every cell's text outputs must match), with ``tests/nbval_sanitize.cfg`` taking
   out run-to-run noise (times, rates, addresses, absolute paths, hashes). The executed
   copy is the book's page, whose stderr (progress bars and library warnings) the executor
   drops; the re-run's stderr is dropped too, so what is compared is what a reader sees.

Isolation: ``REVERSION_CACHE`` and ``REVERSION_RESULTS`` point into temporary
folders (the kernels inherit them), so the tests never read or write the project's
``.cache/`` or ``results/``.  The smoke execution has one cache/results pair and
the nbval re-runs another, so each notebook is compared cold-against-cold (a cache
hit cannot change its output), while a chapter still finds what the earlier chapters
of the same run left (they run in chapter order). Both kernels start in an empty
temporary folder, so a notebook that depends on its working directory fails here
rather than in someone else's checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import smoke_book as smoke

from reversion.book.nb import PAGE_ENV

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"

NOTEBOOKS = sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb") if not p.name.startswith("."))

pytestmark = pytest.mark.notebooks

# nbval 0.11 sends each cell with ``store_history=False``; IPython then cannot see
# the cell it runs, so a trailing ``;`` no longer hides a cell's value (e.g.
# ``plt.plot(...);`` prints ``[<matplotlib.lines.Line2D ...>]`` under nbval but not
# under Jupyter or papermill) and every such cell "differs".  This plugin, loaded
# into the nbval run with ``-p``, executes cells as Jupyter does.
NBVAL_PLUGIN_NAME = "_nbval_jupyter_semantics"
# It also drops the re-run's stderr streams before comparing: the executed copy is the book's
# page, from which the executor removed them (reversion.book.build.postprocess_executed).
NBVAL_PLUGIN = '''"""pytest plugin: nbval executes cells with store_history=True, as Jupyter does,
and compares what the book shows (stderr streams are not on its pages)."""
import nbval.kernel
import nbval.plugin


def _execute_cell_input(self, cell_input, allow_stdin=None):
    return self.kc.execute(
        cell_input, store_history=True, allow_stdin=allow_stdin, stop_on_error=False
    )


nbval.kernel.RunningKernel.execute_cell_input = _execute_cell_input

_compare = nbval.plugin.IPyNbCell.compare_outputs


def _compare_without_stderr(self, test, ref, skip_compare=None):
    test = [o for o in test if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    return _compare(self, test, ref, skip_compare)


nbval.plugin.IPyNbCell.compare_outputs = _compare_without_stderr
'''

if NOTEBOOKS:
    PARAMS = [pytest.param(p, id=p.stem) for p in NOTEBOOKS]
else:
    PARAMS = [
        pytest.param(
            None,
            id="no-notebooks",
            marks=pytest.mark.skip(reason=f"no notebooks in {NOTEBOOK_DIR} yet"),
        )
    ]


@pytest.fixture(scope="session")
def nbval_dirs(tmp_path_factory) -> dict[str, Path]:
    """The nbval re-runs' cache/results pair (the smoke execution has its own)."""
    base = tmp_path_factory.mktemp("nbval-runs")
    dirs = {"REVERSION_CACHE": base / "cache", "REVERSION_RESULTS": base / "results"}
    for path in dirs.values():
        path.mkdir(parents=True)
    return dirs


@pytest.mark.parametrize("notebook", PARAMS)
def test_notebook_is_parameterized(notebook):
    """papermill needs exactly one cell tagged ``parameters``; the kernel must be python3."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name}: expected one cell tagged 'parameters', found {len(tagged)}"
    assert tagged[0].cell_type == "code"
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel in (None, "python3"), f"{notebook.name}: kernelspec {kernel!r}, expected python3"


HEAVY = {"05_which_past", "06_interventions", "08_own_checkpoints", "09_early_warning", "10_performance"}
"""Notebooks whose nbval re-run (their second full execution) is a slow test: the fast tier
executes them once (``smoke_book``), and the browser test checks the pages they make."""


@pytest.mark.parametrize("notebook", PARAMS)
def test_notebook_executes_and_revalidates(notebook, smoke_book, tmp_path, monkeypatch, nbval_dirs):
    _execute_and_revalidate(notebook, smoke_book, tmp_path, monkeypatch, nbval_dirs,
                            revalidate=notebook.stem not in HEAVY)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", [p for p in PARAMS if p.values[0] is not None and p.values[0].stem in HEAVY])
def test_heavy_notebook_revalidates(notebook, smoke_book, tmp_path, monkeypatch, nbval_dirs):
    _execute_and_revalidate(notebook, smoke_book, tmp_path, monkeypatch, nbval_dirs, revalidate=True)


def _execute_and_revalidate(notebook, smoke_book, tmp_path, monkeypatch, nbval_dirs, revalidate: bool) -> None:
    import shutil

    params = smoke.smoke_parameters(notebook.stem)
    # 1. the smoke execution (the book's executor, at smoke parameters)
    assert notebook.stem not in smoke_book.errors, (
        f"{notebook.name} failed at smoke parameters {params}:\n{smoke_book.errors[notebook.stem][-20000:]}")
    executed = smoke_book.executed / notebook.name
    assert executed.is_file(), f"the executor wrote no {executed}"
    if not revalidate:
        # the chapters after it re-run (nbval) on the nbval pair: they find this chapter's
        # results there, as the smoke run wrote them (the same numbers: runs are deterministic)
        smoke.copy_results(smoke_book, notebook.stem, nbval_dirs["REVERSION_RESULTS"])
        return

    # 2. nbval, strict, in a fresh kernel of this interpreter, with the other pair.
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy2(executed, workdir / notebook.name)
    executed = workdir / notebook.name
    for name, path in nbval_dirs.items():
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # as in the smoke execution
    # a page of the book, as it was executed: its downloads cell shows the same links
    monkeypatch.setenv(PAGE_ENV, str(workdir / notebook.stem))
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)  # the outer run's options are not nbval's
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / f"{NBVAL_PLUGIN_NAME}.py").write_text(NBVAL_PLUGIN)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_dir), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval",
        str(executed),
        "--nbval-sanitize-with",
        str(SANITIZE),
        "--nbval-current-env",
        "-p",
        "no:cacheprovider",
        "-p",
        NBVAL_PLUGIN_NAME,
        "--rootdir",
        str(workdir),
        "-o",
        "addopts=",
        "-q",
        "--color=no",
    ]
    proc = subprocess.run(
        cmd, cwd=str(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.returncode == 0, (
        f"nbval failed on {notebook.name} (exit status {proc.returncode}; "
        f"smoke parameters {params}):\n{proc.stdout[-20000:]}"
    )
    assert " passed" in proc.stdout, f"nbval ran no cell of {notebook.name}:\n{proc.stdout}"


def _strings(x, path="") -> list[tuple[str, str]]:
    if isinstance(x, dict):
        return [s for k, v in x.items() for s in _strings(v, f"{path}.{k}")]
    if isinstance(x, list):
        return [s for i, v in enumerate(x) for s in _strings(v, f"{path}[{i}]")]
    return [(path, x)] if isinstance(x, str) else []


SENTENCE_WORDS = 6
"""A string with this many words is prose (a name, a label, a verdict word has fewer)."""


def test_metrics_hold_numbers_not_sentences(smoke_book):
    """Every ``metrics.json`` the smoke execution wrote holds numbers and short labels, never a
    sentence or a rendered table: prose and tables are made from the numbers when a page renders."""
    import json

    files = sorted(smoke_book.results.glob("*/metrics.json"))
    assert files, f"the smoke execution wrote no metrics.json under {smoke_book.results}"
    prose = [(f.parent.name, p, s) for f in files for p, s in _strings(json.loads(f.read_text())["metrics"])
             if len(s.split()) >= SENTENCE_WORDS]
    assert not prose, prose[:5]
    assert [p for p, s in _strings({"a": ["a rendered sentence with many words in it", "label"]})
            if len(s.split()) >= SENTENCE_WORDS] == [".a[0]"]  # the check can fail


# The browser tests (tests/browser_checks.py) are collected here: they build the book from the same
# smoke execution, so they must run in this process (pytest-xdist --dist loadfile).
from browser_checks import *  # noqa: E402,F401,F403
