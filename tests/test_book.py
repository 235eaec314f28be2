"""reversion.book: stamps, atomic writes, post-processing, strict build.

Uses throwaway notebooks built with nbformat in a temporary folder (kernel
python3), never the real chapters.  Each execution starts a kernel (~1 s).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from reversion.book import build as book

ROOT = Path(__file__).resolve().parents[1]


def write_notebook(path: Path, body: str, defaults: str = "x = 1") -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_markdown_cell("# Demo"),
        new_code_cell(defaults, metadata={"tags": ["parameters"]}),
        new_code_cell(body),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


OK_BODY = "import sys\nprint('x is', x)\nprint('progress 100%', file=sys.stderr)"


@pytest.fixture
def project(tmp_path):
    """A scratch notebooks/ folder, an output folder and a working directory."""
    nbs = tmp_path / "notebooks"
    out = tmp_path / "executed"
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def run(**kwargs):
        kwargs.setdefault("notebook_dir", nbs)
        kwargs.setdefault("out_dir", out)
        kwargs.setdefault("cwd", cwd)
        kwargs.setdefault("echo", None)
        return {r.stem: r for r in book.execute_notebooks(**kwargs)}

    return nbs, out, run


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(".*.tmp.ipynb"))


def test_execute_then_up_to_date_then_params_change(project):
    nbs, out, run = project
    write_notebook(nbs / "01_demo.ipynb", OK_BODY)

    first = run(parameters={"01_demo": {"x": 2}})
    assert first["01_demo"].executed
    executed = out / "01_demo.ipynb"
    stamp = out / ".stamps" / "01_demo.sha256"
    assert executed.is_file() and stamp.is_file()
    assert len(stamp.read_text().strip()) == 64
    assert leftovers(out) == []

    nb = nbformat.read(str(executed), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    assert "remove-cell" in injected[0].metadata.tags
    assert "x = 2" in injected[0].source
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any(o.get("name") == "stdout" and "x is 2" in o.text for o in outputs)
    assert not any(o.get("name") == "stderr" for o in outputs), "stderr must be removed"
    assert "progress 100%" in (out / ".logs" / "01_demo.stderr.txt").read_text()

    # Same inputs: nothing runs, nothing is rewritten.
    mtime = executed.stat().st_mtime_ns
    again = run(parameters={"01_demo": {"x": 2}})
    assert not again["01_demo"].executed
    assert executed.stat().st_mtime_ns == mtime

    # Parameters are compared canonically, not by dict order or YAML formatting.
    assert book.notebook_stamp(nbs / "01_demo.ipynb", {"a": 1, "b": 2}) == book.notebook_stamp(
        nbs / "01_demo.ipynb", {"b": 2, "a": 1}
    )

    # Changed parameters: re-executed.
    changed = run(parameters={"01_demo": {"x": 3}})
    assert changed["01_demo"].executed
    nb = nbformat.read(str(executed), as_version=4)
    assert any("x is 3" in o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)

    # force re-executes even when up to date.
    assert run(parameters={"01_demo": {"x": 3}}, force=True)["01_demo"].executed

    # Back to defaults (no parameters): a different stamp again, and no injected cell.
    assert run()["01_demo"].executed
    nb = nbformat.read(str(executed), as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)


WRITES = ("import os, json, pathlib\n"
          "f = pathlib.Path(os.environ['REVERSION_RESULTS']) / '01_a' / 'metrics.json'\n"
          "f.parent.mkdir(parents=True, exist_ok=True)\n"
          "f.write_text(json.dumps({'metrics': {'x': x}}))\n")


READS_01 = "from reversion.infra.results import read_metrics\nprint(read_metrics('01_a')['metrics']['x'] + {k})"


def test_a_chapter_reruns_when_what_it_reads_changes(project, isolated):
    """Stamps follow outputs, not upstream stamps, and what a chapter reads is what its code read
    when it last ran (no list by hand): a chapter that reads chapter 01's results re-executes when
    they change, not when chapter 01 merely re-ran; one that reads nothing of chapter 01 never
    re-executes for it -- until its code starts reading them, after which it does."""
    nbs, out, run = project
    write_notebook(nbs / "01_a.ipynb", WRITES)
    write_notebook(nbs / "02_b.ipynb", READS_01.format(k=1))
    write_notebook(nbs / "03_c.ipynb", "print(x + 2)")

    assert all(r.executed for r in run().values())
    assert (out / ".stamps" / "02_b.reads").read_text().split() == ["01_a"]
    assert (out / ".stamps" / "03_c.reads").read_text().split() == []
    assert not any(r.executed for r in run().values())

    # Editing chapter 02 re-executes only 02.
    write_notebook(nbs / "02_b.ipynb", READS_01.format(k=3))
    runs = run()
    assert [s for s, r in runs.items() if r.executed] == ["02_b"]

    # Chapter 01 re-runs to the same output (an edit that changes no number): 02 stays.
    write_notebook(nbs / "01_a.ipynb", WRITES + "# a comment\n")
    runs = run()
    assert [s for s, r in runs.items() if r.executed] == ["01_a"]

    # Chapter 01 writes other numbers: 02, which reads them, re-executes; 03 does not.
    runs = run(parameters={"01_a": {"x": 5}})
    assert [s for s, r in runs.items() if r.executed] == ["01_a", "02_b"]

    # Chapter 03 starts reading chapter 01 (its code changed: it re-executes and records the read) ...
    write_notebook(nbs / "03_c.ipynb", READS_01.format(k=2))
    runs = run(parameters={"01_a": {"x": 5}})
    assert [s for s, r in runs.items() if r.executed] == ["03_c"]
    assert (out / ".stamps" / "03_c.reads").read_text().split() == ["01_a"]
    # ... and from then on re-executes when chapter 01's numbers change, with no list edited.
    runs = run(parameters={"01_a": {"x": 6}})
    assert [s for s, r in runs.items() if r.executed] == ["01_a", "02_b", "03_c"]

    # stems= restricts what runs; unknown stems are an error.
    runs = run(stems=["02_b"], force=True)
    assert list(runs) == ["02_b"]
    with pytest.raises(FileNotFoundError, match="03_missing"):
        run(stems=["03_missing"])
    with pytest.raises(ValueError, match="03_missing"):
        run(parameters={"03_missing": {"x": 1}})


def test_stamp_follows_the_package_modules_a_notebook_imports(tmp_path):
    """A notebook's code identity is the import closure of the package modules its cells
    import: a plotting module is in the closure of a page that imports it, and in no
    stage's (so editing it retrains nothing)."""
    from reversion.infra.provenance import closure

    plots_page = write_notebook(tmp_path / "a.ipynb", "from reversion.book import plots\nfrom reversion.core.drift import alignment")
    plain_page = write_notebook(tmp_path / "b.ipynb", "from reversion.core.drift import alignment")
    assert "reversion.book.plots" in book.notebook_modules(plots_page)
    assert "reversion.book.plots" not in closure(book.notebook_modules(plain_page))
    for stage in ("reversion.stages.finetune", "reversion.stages.estimate", "reversion.subjects.organism.history"):
        assert not [m for m in closure([stage]) if m.startswith("reversion.book")], stage


def test_failure_leaves_no_stamp_and_no_output(project):
    nbs, out, run = project
    source = write_notebook(nbs / "01_bad.ipynb", "print('fine')")
    assert run()["01_bad"].executed
    assert (out / "01_bad.ipynb").is_file()

    # Now the notebook fails: the old copy and stamp describe other inputs and go.
    write_notebook(source, "raise ValueError('boom from the notebook')")
    with pytest.raises(book.NotebookExecutionError) as info:
        run()
    message = str(info.value)
    assert "01_bad" in message and "ValueError" in message and "boom from the notebook" in message
    assert info.value.stem == "01_bad"
    assert not (out / "01_bad.ipynb").exists()
    assert not (out / ".stamps" / "01_bad.sha256").exists()
    assert leftovers(out) == []

    # A failing first run leaves nothing either.
    write_notebook(nbs / "02_bad.ipynb", "1 / 0")
    write_notebook(source, "print('fixed')")
    with pytest.raises(book.NotebookExecutionError, match="02_bad.*ZeroDivisionError"):
        run()
    assert (out / "01_bad.ipynb").is_file(), "chapters before the failure are kept"
    assert not (out / "02_bad.ipynb").exists()
    assert not (out / ".stamps" / "02_bad.sha256").exists()
    assert leftovers(out) == []


def test_postprocess_is_pure_and_keeps_everything_else():
    nb = new_notebook()
    injected = new_code_cell("x = 2", metadata={"tags": ["injected-parameters"]})
    work = new_code_cell("print(x)")
    work.outputs = [
        new_output("stream", name="stdout", text="2\n"),
        new_output("stream", name="stderr", text="100%|##| 2/2 [00:01<00:00]\n"),
        new_output("execute_result", data={"text/plain": "2"}, execution_count=1),
    ]
    nb.cells = [new_markdown_cell("# t"), injected, work]
    nb, removed = book.postprocess_executed(nb)
    assert nb.cells[1].metadata.tags == ["injected-parameters", "remove-cell"]
    assert [o.output_type for o in nb.cells[2].outputs] == ["stream", "execute_result"]
    assert nb.cells[2].outputs[0].name == "stdout"
    assert removed == ["100%|##| 2/2 [00:01<00:00]\n"]
    # Idempotent.
    nb, removed = book.postprocess_executed(nb)
    assert nb.cells[1].metadata.tags == ["injected-parameters", "remove-cell"] and removed == []


def test_load_parameters_dir(tmp_path):
    (tmp_path / "01_a.yaml").write_text("seed: 3\nsteps: 10\n")
    (tmp_path / "02_b.yml").write_text("")
    (tmp_path / "notes.txt").write_text("ignored")
    assert book.load_parameters_dir(tmp_path) == {"01_a": {"seed": 3, "steps": 10}, "02_b": {}}
    (tmp_path / "03_c.yaml").write_text("- not\n- a mapping\n")
    with pytest.raises(ValueError, match="03_c"):
        book.load_parameters_dir(tmp_path)


def _mini_book(root: Path, intro: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "_config.yml").write_text(
        'title: "mini"\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: "off"\n'
    )
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (root / "intro.md").write_text(intro)
    return root


def test_build_book_clean_and_strict(tmp_path):
    index = book.build_book(_mini_book(tmp_path / "ok", "# Intro\n\nFine.\n"), echo=None)
    assert index.is_file()

    broken = _mini_book(tmp_path / "broken", "# Intro\n\nSee {doc}`no-such-page`.\n")
    with pytest.raises(book.BookBuildError, match="no-such-page"):
        book.build_book(broken, echo=None)


def test_toc_lists_every_notebook():
    """Each notebooks/NN_name.ipynb is a chapter: book/executed/NN_name in _toc.yml, in order."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    files = [entry["file"] for entry in toc.get("chapters", [])]
    for part in toc.get("parts", []):
        files += [entry["file"] for entry in part.get("chapters", [])]
    chapters = [f.removeprefix("book/executed/") for f in files if f.startswith("book/executed/")]
    stems = [p.stem for p in book.list_notebooks(ROOT / "notebooks")]
    missing = [s for s in stems if s not in chapters]
    assert not missing, f"notebooks not in _toc.yml: {missing} (add `- file: book/executed/<stem>`)"
    assert chapters == sorted(chapters), "chapters must be listed in number order"
    # A chapter without its notebook would fail the build; say so here first.
    orphans = [c for c in chapters if c not in stems]
    if orphans and stems:
        pytest.fail(f"_toc.yml lists chapters without a notebook: {orphans}")


def test_stamp_covers_the_input_files_a_notebook_lists(tmp_path, monkeypatch):
    monkeypatch.setattr(book, "project_root", lambda: tmp_path)
    data = tmp_path / "bench" / "results.json"
    data.parent.mkdir()
    data.write_text('{"a": 1}')
    path = write_notebook(tmp_path / "08_demo.ipynb", "print(1)")
    plain = book.notebook_stamp(path, {})
    nb = nbformat.read(str(path), 4)
    nb.metadata["reversion"] = {"inputs": ["bench/results.json"]}
    nbformat.write(nb, str(path))
    first = book.notebook_stamp(path, {})
    assert first != plain and book.notebook_stamp(path, {}) == first  # stable while nothing changes
    data.write_text('{"a": 2}')
    assert book.notebook_stamp(path, {}) != first  # a new benchmark file re-executes the page
    data.unlink()
    assert book.notebook_stamp(path, {}) not in (first, plain)


def test_old_chapter_stems_name_the_new_ones(project):
    """The chapters were renumbered ("Which past?" was 04b): an old stem given to ``--only`` or as
    a parameter file is an error naming the new stem, and nothing runs."""
    nbs, out, run = project
    write_notebook(nbs / "05_which_past.ipynb", OK_BODY)
    with pytest.raises(ValueError, match=r"05_which_past \(was 04b_which_past\)"):
        run(stems=["04b_which_past"])
    with pytest.raises(ValueError, match=r"06_interventions \(was 05_interventions\)"):
        run(parameters={"05_interventions": {"x": 1}})
    assert not (out / "05_which_past.ipynb").exists()
    assert book.main(["--only", "08_performance", "--no-build"]) == 1
