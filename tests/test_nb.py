"""Notebook parameters: unknown, missing and mistyped names are refused before any work; the
parameters that chapters 02-05's ``checkpoints`` mapping replaced are refused with the new form.

Downloads: in the book (``REVERSION_BOOK_PAGE`` set) every figure a page draws is saved once, as
SVG and PNG, beside the executed notebook before the inline backend shows and closes it, without
changing what it shows; ``downloads`` copies the chapter's metrics.json there and links it and the
figures with ``{download}`` roles relative to the page; outside the book nothing is written or
shown, and nothing raises but a malformed stem. ``show_run`` names the git commit."""

from __future__ import annotations

import hashlib
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import yaml
from IPython.core.events import EventManager, available_events
from IPython.core.pylabtools import print_figure

from reversion.book import nb
from reversion.book.chapters import ch02_vrev_estimation, ch03_alignment, ch04_null_test, ch06_interventions
from reversion.book.nb import collect
from reversion.infra import results
from reversion.subjects.checkpoints.subject import CHECKPOINT_KEYS


@dataclass(frozen=True)
class Schema:
    world: str
    n_seeds: int
    lr: float
    verbose: bool
    steps: list[int]
    overrides: dict
    grid: tuple[int, ...]


@dataclass(frozen=True)
class WithOptional:
    cap: typing.Optional[int]


@dataclass(frozen=True)
class WithPep604:
    cap: int | None


GOOD = {"world": "smoke", "n_seeds": 3, "lr": 1e-3, "verbose": False, "steps": [0, 1, 5],
        "overrides": {"finetune": {"lr": 3e-4}}, "grid": (0, 2)}


def good(**changes):
    return {**GOOD, **changes}


def test_valid_values_build_the_schema():
    p = collect(Schema, GOOD)
    assert isinstance(p, Schema)
    assert p == Schema("smoke", 3, 1e-3, False, [0, 1, 5], {"finetune": {"lr": 3e-4}}, (0, 2))


def test_unknown_name_is_listed_with_the_accepted_names():
    with pytest.raises(ValueError) as e:
        collect(Schema, good(n_seed=3, zzz=1))
    msg = str(e.value)
    assert "'n_seed'" in msg and "'zzz'" in msg
    for name in GOOD:
        assert name in msg.split("accepts:")[1]


def test_missing_name():
    values = dict(GOOD)
    del values["lr"]
    with pytest.raises(ValueError, match=r"missing parameter\(s\) 'lr'"):
        collect(Schema, values)


@pytest.mark.parametrize("name, value", [
    ("n_seeds", "3"),        # str for int
    ("n_seeds", True),       # bool for int
    ("n_seeds", 3.0),        # float for int
    ("lr", "1e-3"),          # str for float
    ("lr", False),           # bool for float
    ("lr", None),
    ("world", 1),            # int for str
    ("verbose", 1),          # int for bool
    ("verbose", "yes"),
    ("steps", "0,1,5"),      # str for list
    ("steps", [0, "1"]),     # wrong element type
    ("steps", [0, True]),    # bool element for int
    ("steps", [0, 1.5]),
    ("overrides", []),       # list for dict
    ("overrides", "lr=3e-4"),
    ("grid", [0, "a"]),
])
def test_wrong_type_names_the_parameter(name, value):
    with pytest.raises(ValueError, match=rf"parameter '{name}' must be"):
        collect(Schema, good(**{name: value}))


def test_int_accepted_for_float_and_sequences_for_lists():
    p = collect(Schema, good(lr=1))
    assert p.lr == 1
    assert collect(Schema, good(steps=(0, 1))).steps == (0, 1)
    assert collect(Schema, good(steps=[])).steps == []
    assert collect(Schema, good(grid=[0, 1, 2])).grid == [0, 1, 2]
    assert collect(Schema, good(overrides={})).overrides == {}


def test_optional_typing_union():
    assert collect(WithOptional, {"cap": None}).cap is None
    assert collect(WithOptional, {"cap": 4}).cap == 4
    with pytest.raises(ValueError, match="parameter 'cap'"):
        collect(WithOptional, {"cap": "4"})


def test_optional_pep604_union():
    assert collect(WithPep604, {"cap": None}).cap is None
    assert collect(WithPep604, {"cap": 4}).cap == 4
    with pytest.raises(ValueError, match="parameter 'cap'"):
        collect(WithPep604, {"cap": "4"})


def test_schema_post_init_runs():
    @dataclass(frozen=True)
    class Checked:
        n: int

        def __post_init__(self):
            if self.n < 1:
                raise ValueError(f"n must be >= 1, got {self.n}")

    assert collect(Checked, {"n": 2}).n == 2
    with pytest.raises(ValueError, match="n must be >= 1"):
        collect(Checked, {"n": 0})



# --------------------------------------------------------------------------- chapters 02-05: checkpoints

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = {"02_vrev_estimation": ch02_vrev_estimation, "03_alignment": ch03_alignment, "04_null_test": ch04_null_test,
            "06_interventions": ch06_interventions}


def notebook_defaults(stem: str) -> dict:
    """The values of a chapter notebook's own parameters cell."""
    import nbformat

    nb = nbformat.read(str(ROOT / "notebooks" / f"{stem}.ipynb"), as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    scratch: dict = {}
    exec(cell.source, scratch)
    return {k: v for k, v in scratch.items() if not k.startswith("_")}


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_defaults_build_and_checkpoints_default_to_the_organism(stem):
    values = notebook_defaults(stem)
    assert values["checkpoints"] == {}
    P = collect(CHAPTERS[stem].Params, values)
    assert P.checkpoints == {}
    assert "checkpoints" not in P.recorded()  # organism metrics are unchanged by the parameter
    with_ckpt = collect(CHAPTERS[stem].Params, {**values, "checkpoints": {"witness": "w"}})
    assert with_ckpt.recorded()["checkpoints"] == {"witness": "w"}
    with pytest.raises(ValueError, match=r"parameter 'checkpoints' must be"):
        collect(CHAPTERS[stem].Params, {**values, "checkpoints": "path/to/witness"})


@pytest.mark.parametrize("stem", CHAPTERS)
@pytest.mark.parametrize("old", CHECKPOINT_KEYS)
def test_old_checkpoint_parameter_shows_the_new_form(stem, old):
    """Each of the ten parameters that ``checkpoints`` replaced is refused with the new form,
    alone or among the chapter's own values (not as a bare unknown name)."""
    schema = CHAPTERS[stem].Params
    for values in ({**notebook_defaults(stem), old: "x"}, {old: "x"}):
        with pytest.raises(ValueError) as e:
            collect(schema, values)
        msg = str(e.value)
        assert f"parameter {old!r} is now a key of 'checkpoints'" in msg
        assert "checkpoints={" in msg and repr(old) in msg.split("checkpoints={")[1]  # the new form
        assert "unknown parameter" not in msg


# --------------------------------------------------------------------------- downloads and figures

LINK = re.compile(r"\{download\}`([^<`]*)<([^>`]+)>`")


class FakeShell:
    """What ``reversion.book.nb`` uses of an IPython shell: its namespace and its events."""

    def __init__(self):
        self.user_ns: dict = {"In": [""], "Out": {}, "draw": draw}
        self.events = EventManager(self, available_events, print_on_error=False)
        self.shown: list = []  # what display() was given, in order

    def showtraceback(self):
        raise  # a callback's error fails the test instead of being printed

    def inline_flush(self):
        """What matplotlib's inline backend does after each cell: show every figure, close all."""
        self.shown += [("figure", n) for n in plt.get_fignums()]
        plt.close("all")

    def run_cell(self, code: str):
        exec(code, self.user_ns)
        self.events.trigger("post_execute")


@pytest.fixture
def shell(monkeypatch):
    sh = FakeShell()
    monkeypatch.setattr(nb, "get_ipython", lambda: sh)
    monkeypatch.setattr(nb, "display", lambda obj, raw=False, **kw: sh.shown.append(obj))
    plt.close("all")
    yield sh
    plt.close("all")


@pytest.fixture
def page(isolated, monkeypatch) -> Path:
    """The book's executor running page 01_demo into ``<tmp>/executed``."""
    p = isolated / "executed" / "01_demo"
    p.parent.mkdir()
    monkeypatch.setenv(nb.PAGE_ENV, str(p))
    return p


def draw(label: str = "a"):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1, 0, 2], label=label)
    ax.set_title(label)
    ax.legend()
    return fig


def saved(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_outside_the_book_nothing_is_saved_or_shown(shell, isolated, monkeypatch, capsys):
    monkeypatch.delenv(nb.PAGE_ENV, raising=False)
    results.write_metrics("01_demo", {"x": 1}, {})
    before = sorted(isolated.rglob("*"))
    shell.events.register("post_execute", shell.inline_flush)
    nb.begin()
    assert not [c for c in shell.events.callbacks["post_execute"] if isinstance(c, nb.FigureSaver)]
    shell.run_cell("fig = draw()")
    nb.downloads("01_demo")
    assert shell.shown == [("figure", 1)]        # the figure, as always; no links
    assert sorted(isolated.rglob("*")) == before  # no file written
    assert capsys.readouterr() == ("", "")


def test_downloads_outside_ipython_does_nothing(monkeypatch):
    monkeypatch.delenv(nb.PAGE_ENV, raising=False)
    monkeypatch.setattr(nb, "get_ipython", lambda: None)
    assert nb.downloads("01_demo") is None


def test_every_figure_is_saved_once_before_the_inline_backend_closes_it(shell, page):
    shell.events.register("post_execute", shell.inline_flush)  # pyplot imported before begin()
    nb.begin()
    callbacks = shell.events.callbacks["post_execute"]
    assert isinstance(callbacks[0], nb.FigureSaver) and shell.inline_flush in callbacks
    folder = page.with_name("01_demo_downloads")
    assert nb.downloads_dir(page) == folder

    shell.run_cell("a = draw('a'); b = draw('b')")
    assert saved(folder) == ["01_demo-fig1.png", "01_demo-fig1.svg", "01_demo-fig2.png", "01_demo-fig2.svg"]
    assert plt.get_fignums() == []  # the backend still closed them
    shell.run_cell("c = draw('c')")  # figure number 1 again: the page's count goes on
    shell.run_cell("x = 1")
    assert saved(folder)[-2:] == ["01_demo-fig3.png", "01_demo-fig3.svg"] and len(saved(folder)) == 6
    assert "<svg" in (folder / "01_demo-fig3.svg").read_text()
    assert (folder / "01_demo-fig3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shell.shown == [("figure", 1), ("figure", 2), ("figure", 1)]  # what the page shows


def test_a_figure_left_open_is_saved_once(shell, page):
    nb.begin()
    fig = draw()
    shell.events.trigger("post_execute")
    shell.events.trigger("post_execute")
    folder = nb.downloads_dir(page)
    assert saved(folder) == ["01_demo-fig1.png", "01_demo-fig1.svg"]
    fig.axes[0].set_title("changed later")  # the download is the figure as first shown
    shell.events.trigger("post_execute")
    assert len(saved(folder)) == 2


@pytest.fixture
def no_figures():
    plt.close("all")
    yield
    plt.close("all")


def test_saving_does_not_change_what_the_page_shows(tmp_path, no_figures):
    plain = draw("same")
    shown_plain = print_figure(plain, "png", bbox_inches="tight")
    plt.close(plain)
    fig = draw("same")
    assert nb.FigureSaver(tmp_path, "p").save_open() == ["p-fig1"]
    assert print_figure(fig, "png", bbox_inches="tight") == shown_plain


def test_the_same_figure_gives_the_same_svg_bytes(tmp_path, no_figures):
    digests = []
    for run in ("one", "two"):
        draw("same")
        nb.FigureSaver(tmp_path / run, "p").save_open()
        plt.close("all")
        digests.append(hashlib.sha256((tmp_path / run / "p-fig1.svg").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_begin_again_keeps_one_saver_and_clears_what_an_earlier_run_left(shell, page):
    folder = nb.downloads_dir(page)
    folder.mkdir()
    for name in ("01_demo-fig9.svg", "01_demo-fig9.png", "metrics.json", "notes.txt"):
        (folder / name).write_text("old")
    nb.begin()
    nb.begin()  # the first cell run twice
    assert sum(isinstance(c, nb.FigureSaver) for c in shell.events.callbacks["post_execute"]) == 1
    assert saved(folder) == ["notes.txt"]  # only what a run of this page writes is removed


def test_downloads_copies_the_metrics_and_links_every_figure(shell, page, isolated):
    metrics = results.write_metrics("01_demo", {"harmfulness": 0.25}, {"n_seeds": 2})
    shell.events.register("post_execute", shell.inline_flush)
    nb.begin()
    shell.run_cell("")  # nothing drawn: nothing saved
    draw("first")
    shell.events.trigger("post_execute")
    draw("second")  # drawn in the same cell as downloads(): offered too
    nb.downloads("01_demo")
    shell.events.trigger("post_execute")

    folder = nb.downloads_dir(page)
    assert (folder / "metrics.json").read_bytes() == metrics.read_bytes()
    (bundle,) = [o for o in shell.shown if isinstance(o, dict)]
    md = bundle["text/markdown"]
    assert md.startswith("**Downloads:**")
    links = LINK.findall(md)
    assert [t.strip() for t, _ in links] == ["metrics.json", "SVG", "PNG", "SVG", "PNG"]
    targets = [rel for _, rel in links]
    assert targets == ["01_demo_downloads/metrics.json",
                       "01_demo_downloads/01_demo-fig1.svg", "01_demo_downloads/01_demo-fig1.png",
                       "01_demo_downloads/01_demo-fig2.svg", "01_demo_downloads/01_demo-fig2.png"]
    for rel in targets:  # relative to the page, as Sphinx resolves a {download} role
        assert (page.parent / rel).is_file(), rel
    assert "metrics.json" in bundle["text/plain"]
    assert len(saved(folder)) == 5  # the second figure was not saved a second time


def test_downloads_with_nothing_to_offer_shows_nothing(shell, page, capsys):
    nb.begin()
    nb.downloads("01_demo")
    assert shell.shown == []
    assert "no " in capsys.readouterr().err  # a note in the log, nothing on the page


def test_downloads_never_fails_the_page(shell, page, isolated, capsys):
    results.write_metrics("01_demo", {"x": 1}, {})
    nb.begin()
    nb.downloads_dir(page).write_text("a file where the folder should be")
    draw()
    shell.events.trigger("post_execute")  # the figure cannot be saved: noted, not raised
    nb.downloads("01_demo")
    err = capsys.readouterr().err
    assert "not saved" in err and "not offered" in err
    assert [o for o in shell.shown if isinstance(o, dict)] == []


@pytest.mark.parametrize("bad", ["", "../01_demo", "a/b", "..", ".hidden", None, 1])
def test_a_malformed_stem_is_refused(bad, monkeypatch):
    monkeypatch.delenv(nb.PAGE_ENV, raising=False)
    with pytest.raises(ValueError, match=r"parameter 'stem'"):
        nb.downloads(bad)


def test_the_page_may_be_named_with_its_suffix(monkeypatch, tmp_path):
    monkeypatch.setenv(nb.PAGE_ENV, str(tmp_path / "01_demo.ipynb"))
    assert nb.page_path() == tmp_path / "01_demo"
    monkeypatch.setenv(nb.PAGE_ENV, "  ")
    assert nb.page_path() is None


@pytest.mark.parametrize("git, note", [
    ({"commit": "abcdef0123456789" * 2 + "abcdef01", "dirty": True},
     ", commit abcdef012345 (uncommitted changes), torch"),
    ({"commit": "abcdef0123456789" * 2 + "abcdef01", "dirty": False}, ", commit abcdef012345, torch"),
    ({"commit": None, "dirty": None}, " (this chapter), torch"),
])
def test_show_run_names_the_commit(shell, monkeypatch, git, note):
    monkeypatch.setattr(nb, "git_state", lambda: dict(git))
    nb.show_run(None, code=("reversion.core.stats",))
    (html_out,) = shell.shown
    assert note in html_out.data
    assert ("uncommitted" in html_out.data) == bool(git["dirty"])


def _book_renders_markdown_as_myst() -> bool:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return (config.get("sphinx") or {}).get("config", {}).get("nb_render_markdown_format") == "myst"


CHAPTER_NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))


@pytest.mark.parametrize("notebook", CHAPTER_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_chapter_offers_its_downloads_as_links(notebook):
    """Each chapter ends with ``nb.downloads(<its stem>)`` (after its last figure), and its
    links render: the ``{download}`` roles sit in a ``text/markdown`` output, which myst-nb
    parses as CommonMark -- the roles then show as text, with no warning to fail the build --
    unless the cell's metadata says ``mystnb: {markdown_format: myst}`` (or the book's
    ``nb_render_markdown_format`` does)."""
    import nbformat

    cells = [c for c in nbformat.read(str(notebook), as_version=4).cells if c.cell_type == "code"]
    calls = [c for c in cells if re.search(r"\bnb\.downloads\(", c.source)]
    assert calls, f"{notebook.name}: no cell calls nb.downloads({notebook.stem!r})"
    assert calls[-1] is cells[-1], f"{notebook.name}: nb.downloads(...) is not its last code cell"
    assert repr(notebook.stem) in calls[-1].source or ".STEM" in calls[-1].source
    if not _book_renders_markdown_as_myst():
        assert all(c.metadata.get("mystnb", {}).get("markdown_format") == "myst" for c in calls), (
            f"{notebook.name}: the nb.downloads cell needs metadata "
            '{"mystnb": {"markdown_format": "myst"}} (or nb_render_markdown_format: myst in _config.yml)')


# --------------------------------------------------------------------------- in a real kernel

DEMO_CELLS = [
    "from reversion.book import nb\nimport matplotlib.pyplot as plt\nnb.begin()",
    "fig, ax = plt.subplots()\nax.plot([0, 1, 2], [1, 0, 2])",
    "fig = plt.figure()\nplt.bar([1, 2], [2, 3])\nnb.downloads('01_demo')",
]


def execute_demo(folder: Path) -> tuple[Path, Path]:
    """Run a three-cell page as the book's executor does: papermill into a hidden temporary
    name in ``folder``, then renamed; returns (executed notebook, its downloads folder)."""
    import nbformat
    import papermill as pm

    src = folder / "src.ipynb"
    book_nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Demo")]
                                       + [nbformat.v4.new_code_cell(c) for c in DEMO_CELLS])
    book_nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book_nb, str(src))
    target = folder / "executed" / "01_demo.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(".01_demo.123.tmp.ipynb")
    pm.execute_notebook(str(src), str(tmp), kernel_name="python3", cwd=str(folder),
                        progress_bar=False, log_output=False)
    tmp.rename(target)
    return target, nb.downloads_dir(target.with_suffix(""))


@pytest.fixture
def demo_page(isolated, monkeypatch) -> tuple[Path, Path]:
    results.write_metrics("01_demo", {"harmfulness": 0.25}, {"n_seeds": 2})
    monkeypatch.setenv(nb.PAGE_ENV, str(isolated / "executed" / "01_demo"))  # the kernel inherits it
    return execute_demo(isolated)


def test_in_a_kernel_the_page_shows_its_figures_and_links_to_their_files(demo_page):
    import nbformat

    executed, folder = demo_page
    cells = [c for c in nbformat.read(str(executed), as_version=4).cells if c.cell_type == "code"]
    kinds = [[(o.output_type, sorted(o.get("data", {}))) for o in c.outputs] for c in cells]
    assert ("display_data", ["image/png", "text/plain"]) in kinds[1]  # the inline backend still shows it
    (md,) = [o.data["text/markdown"] for o in cells[2].outputs if "text/markdown" in o.get("data", {})]
    assert ("display_data", ["image/png", "text/plain"]) in kinds[2]
    for _, rel in LINK.findall(md):
        assert (executed.parent / rel).is_file(), rel
    assert saved(folder) == ["01_demo-fig1.png", "01_demo-fig1.svg", "01_demo-fig2.png", "01_demo-fig2.svg",
                             "metrics.json"]
    assert json.loads((folder / "metrics.json").read_text())["metrics"] == {"harmfulness": 0.25}


@pytest.mark.slow
def test_the_links_become_downloads_in_a_strict_build(demo_page, isolated):
    """A throwaway two-page book holding the executed page, built like the real one
    (warnings are errors): each link is a file in the HTML build's ``_downloads``."""
    from reversion.book import build as book

    executed, _ = demo_page
    (isolated / "intro.md").write_text("# Intro\n\nA page.\n")
    (isolated / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: executed/01_demo\n")
    (isolated / "_config.yml").write_text(
        'title: "t"\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: "off"\n'
        "sphinx:\n  config:\n    nb_render_markdown_format: myst\n    suppress_warnings: []\n")
    book.build_book(isolated, echo=None)
    page = (isolated / "_build" / "html" / "executed" / "01_demo.html").read_text()
    hrefs = re.findall(r'<a class="reference download internal" download="" href="([^"]+)"', page)
    assert len(hrefs) == 5 and all("/_downloads/" in h for h in hrefs)
    for h in hrefs:
        assert (isolated / "_build" / "html" / "executed" / h).resolve().is_file(), h
    assert "{download}" not in page
