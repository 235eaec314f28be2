"""Every chapter notebook runs end to end at smoke parameters and re-runs identically.

For each ``notebooks/NN_name.ipynb`` (marker ``notebooks``; part of the default run):

1. papermill executes it with ``notebooks/params/smoke/NN_name.yaml`` (if present,
   else at its defaults) into a temporary folder -- any exception fails the test;
2. nbval re-runs the executed copy in a fresh kernel, in strict mode (``--nbval``:
   every cell's text outputs must match), with ``tests/nbval_sanitize.cfg`` taking
   out run-to-run noise (times, rates, addresses, absolute paths, hashes).

Isolation: ``REVERSION_CACHE`` and ``REVERSION_RESULTS`` point into temporary
folders (the kernels inherit them), so the tests never read or write the project's
``.cache/`` or ``results/``.  The papermill runs share one cache/results pair for
the whole session and the nbval re-runs another, so each notebook is compared
cold-against-cold (a cache hit cannot change its output), while a chapter still
finds what the earlier chapters of the same run left (they run in chapter order).
Both kernels start in the temporary folder, so a notebook that depends on its
working directory fails here rather than in someone else's checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
SMOKE_DIR = NOTEBOOK_DIR / "params" / "smoke"
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"

NOTEBOOKS = sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb") if not p.name.startswith("."))

pytestmark = pytest.mark.notebooks

# nbval 0.11 sends each cell with ``store_history=False``; IPython then cannot see
# the cell it runs, so a trailing ``;`` no longer hides a cell's value (e.g.
# ``plt.plot(...);`` prints ``[<matplotlib.lines.Line2D ...>]`` under nbval but not
# under Jupyter or papermill) and every such cell "differs".  This plugin, loaded
# into the nbval run with ``-p``, executes cells as Jupyter does.
NBVAL_PLUGIN_NAME = "_nbval_jupyter_semantics"
NBVAL_PLUGIN = '''"""pytest plugin: nbval executes cells with store_history=True, as Jupyter does."""
import nbval.kernel


def _execute_cell_input(self, cell_input, allow_stdin=None):
    return self.kc.execute(
        cell_input, store_history=True, allow_stdin=allow_stdin, stop_on_error=False
    )


nbval.kernel.RunningKernel.execute_cell_input = _execute_cell_input
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


def smoke_parameters(notebook: Path) -> dict:
    """The smoke parameters of a notebook (``{}``: run at its defaults)."""
    import yaml

    for suffix in (".yaml", ".yml"):
        path = SMOKE_DIR / f"{notebook.stem}{suffix}"
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            assert isinstance(data, dict), f"{path} must be a mapping of parameter names to values"
            return data
    return {}


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory):
    """Cache/results folders: one pair for the papermill runs, one for the nbval re-runs."""
    base = tmp_path_factory.mktemp("notebook-runs")
    dirs = {}
    for run in ("papermill", "nbval"):
        dirs[run] = {
            "REVERSION_CACHE": base / run / "cache",
            "REVERSION_RESULTS": base / run / "results",
        }
        for path in dirs[run].values():
            path.mkdir(parents=True)
    return dirs


def _set_run_env(monkeypatch, env: dict) -> None:
    for name, path in env.items():
        monkeypatch.setenv(name, str(path))
    # Same hash seed in both kernels: printed sets and dicts built from sets agree.
    monkeypatch.setenv("PYTHONHASHSEED", "0")


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
executes them here (papermill) and again in the browser test's smoke build."""


@pytest.mark.parametrize("notebook", PARAMS)
def test_notebook_executes_and_revalidates(notebook, tmp_path, monkeypatch, run_dirs):
    _execute_and_revalidate(notebook, tmp_path, monkeypatch, run_dirs,
                            revalidate=notebook is None or notebook.stem not in HEAVY)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", [p for p in PARAMS if p.values[0] is not None and p.values[0].stem in HEAVY])
def test_heavy_notebook_revalidates(notebook, tmp_path, monkeypatch, run_dirs):
    _execute_and_revalidate(notebook, tmp_path, monkeypatch, run_dirs, revalidate=True)


def _execute_and_revalidate(notebook, tmp_path, monkeypatch, run_dirs, revalidate: bool) -> None:
    import papermill as pm

    workdir = tmp_path / "work"
    workdir.mkdir()
    executed = workdir / notebook.name
    params = smoke_parameters(notebook)

    # 1. papermill, at smoke parameters, with the papermill run's cache/results.
    _set_run_env(monkeypatch, run_dirs["papermill"])
    pm.execute_notebook(
        str(notebook),
        str(executed),
        parameters=params,
        kernel_name="python3",
        cwd=str(workdir),
        progress_bar=False,
        log_output=False,
    )
    assert executed.is_file()
    if not revalidate:
        # the chapters after it re-run (nbval) on the nbval pair: they find this chapter's
        # results there, as the papermill run wrote them (the same numbers: runs are deterministic)
        import shutil

        src = run_dirs["papermill"]["REVERSION_RESULTS"] / notebook.stem
        if src.is_dir():
            shutil.copytree(src, run_dirs["nbval"]["REVERSION_RESULTS"] / notebook.stem, dirs_exist_ok=True)
        return

    # 2. nbval, strict, in a fresh kernel of this interpreter, with the other pair.
    _set_run_env(monkeypatch, run_dirs["nbval"])
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


def test_metrics_hold_numbers_not_sentences(run_dirs):
    """Every ``metrics.json`` the notebooks above wrote (run them first: this test reads the
    papermill runs' results) holds numbers and short labels, never a sentence or a rendered
    table: prose and tables are made from the numbers when a page renders."""
    import json

    results = run_dirs["papermill"]["REVERSION_RESULTS"]
    files = sorted(results.glob("*/metrics.json"))
    if not files:
        pytest.skip("no notebook ran in this session (run the notebook tests with this one)")
    prose = [(f.parent.name, p, s) for f in files for p, s in _strings(json.loads(f.read_text())["metrics"])
             if len(s.split()) >= SENTENCE_WORDS]
    assert not prose, prose[:5]
    assert [p for p, s in _strings({"a": ["a rendered sentence with many words in it", "label"]})
            if len(s.split()) >= SENTENCE_WORDS] == [".a[0]"]  # the check can fail
