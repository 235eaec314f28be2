"""Editing presentation code re-executes only the pages that use it and retrains nothing.

A copy of the project (``pyproject.toml``, ``src/``, ``notebooks/``, ``benchmarks/``,
``examples/``) in a temporary folder is built at smoke parameters with
``python -m reversion.book --no-build`` (its kernels import the copy's package), then one
plotting function of the copy is edited and the book rebuilt. The pages that plot with
:mod:`reversion.book.plots` (chapters 01-06) re-execute; the claims page, which reads
their unchanged metrics, the own-checkpoints page and the performance page do not; and no
cache entry of a training or estimation stage is added (nothing retrained).

A book built with non-default parameters shows them: every executed page with smoke
parameters marks each one that differs from the notebook's default *set for this run*
in its parameter table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# End to end (two smoke builds of the whole book, about two minutes): the stamp logic it
# exercises is covered fast by test_book.py (closure, reads) and test_layout.py; CI runs it.
pytestmark = [pytest.mark.slow, pytest.mark.notebooks]


def _copy_project(dst: Path) -> Path:
    for name in ("pyproject.toml",):
        shutil.copy2(ROOT / name, dst / name)
    for name in ("src", "notebooks", "benchmarks", "examples"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


def _build(project: Path, env: dict) -> dict[str, bool]:
    proc = subprocess.run([sys.executable, "-m", "reversion.book", "--no-build", "--parameters-dir",
                           str(project / "notebooks" / "params" / "smoke")],
                          cwd=project, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    done = {}
    for m in re.finditer(r"\[book\]\s+(\d\d_\w+)\s+(executed in|up to date)", proc.stdout):
        done[m.group(1)] = m.group(2) == "executed in"
    return done


def _entries(cache: Path) -> dict[str, set[str]]:
    return {d.name: {e.name for e in d.iterdir() if not e.name.startswith(".")}
            for d in cache.iterdir() if d.is_dir()} if cache.is_dir() else {}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    project = _copy_project(tmp_path_factory.mktemp("project"))
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "REVERSION_CACHE": str(project / ".cache"),
           "REVERSION_RESULTS": str(project / "results")}
    first = _build(project, env)
    return project, env, first


def test_a_plot_edit_reexecutes_only_the_pages_that_plot(built):
    project, env, first = built
    assert first and all(first.values()), first
    before = _entries(project / ".cache")
    plots = project / "src" / "reversion" / "book" / "plots.py"
    text = plots.read_text()
    edited = text.replace("def band(", "def band(  # edited: a presentation change\n        ", 1)
    assert edited != text
    plots.write_text(edited)
    second = _build(project, env)
    reexecuted = sorted(s for s, ran in second.items() if ran)
    assert reexecuted == ["01_training_history", "02_vrev_estimation", "03_alignment", "04_null_test",
                          "05_which_past", "06_interventions", "09_early_warning"], second
    after = _entries(project / ".cache")
    for stage in set(before) | set(after):
        if stage.startswith("08_"):  # the own-checkpoints page's scratch folder, not a stage
            continue
        assert after.get(stage, set()) == before.get(stage, set()), f"stage {stage} gained entries: retrained"
    # Unchanged: a third build executes nothing.
    assert not any(_build(project, env).values())


def test_every_page_shows_the_parameters_it_was_built_with(built):
    import yaml

    project, _, _ = built
    executed = project / "book" / "executed"
    smoke = project / "notebooks" / "params" / "smoke"
    for params_file in sorted(smoke.glob("*.yaml")):
        params = yaml.safe_load(params_file.read_text())
        source = json.loads((project / "notebooks" / f"{params_file.stem}.ipynb").read_text())
        defaults: dict = {}
        exec("".join(next(c for c in source["cells"] if "parameters" in c["metadata"].get("tags", []))["source"]),
             defaults)
        nb = json.loads((executed / f"{params_file.stem}.ipynb").read_text())
        html = "".join("".join(o.get("data", {}).get("text/html", ""))
                       for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
        assert "Produced by reversion" in html, params_file.stem
        for name, value in params.items():
            row = re.search(rf"<tr><td><code>{name}</code></td><td><code>([^<]*)</code></td><td>(.*?)</td></tr>", html)
            assert row, f"{params_file.stem}: parameter {name} not shown"
            expected = "default" if defaults.get(name) == value else "set for this run"
            assert expected in row.group(2), f"{params_file.stem}: {name} should read {expected!r}"
