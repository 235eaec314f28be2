"""Helpers for the papermill-parameterized notebooks.

Papermill injects parameters after the cell tagged ``parameters`` and only *warns*
about names the notebook does not declare. Every notebook therefore starts with
:func:`begin` and, after its parameters, calls :func:`parameters` with the chapter's
schema, which refuses unknown names, missing names and wrong types before any work.

The book hides papermill's injected cell; :func:`show_run` renders in its place what
the run used -- every parameter, marked where it differs from the notebook's default,
the world's effective settings -- and a provenance line (code identity, git commit,
versions, date).

Downloads: when the book's executor runs a page it sets ``REVERSION_BOOK_PAGE`` to the
executed notebook's path without suffix (``<out_dir>/<stem>``). :func:`begin` then saves
every figure the page draws, as SVG and PNG, into ``<out_dir>/<stem>_downloads/`` beside
the executed notebook, and :func:`downloads` copies the chapter's ``metrics.json`` there
and shows ``{download}`` links to them, which Sphinx copies into the HTML build (the book
renders the downloads cell's ``text/markdown`` output as MyST: the cell's metadata sets
``mystnb.markdown_format: myst``). Outside
the book (no variable) neither writes or shows anything.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import inspect
import os
import re
import shutil
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
from IPython import get_ipython
from IPython.display import HTML, Markdown, display

from reversion.infra import paths
from reversion.infra.provenance import provenance
from reversion.infra.vcs import git_state

T = TypeVar("T")
_SNAPSHOT_KEY = "__reversion_names_before_parameters__"
_HISTORY_KEY = "__reversion_cells_before_parameters__"
_DEFAULTS_KEY = "__reversion_parameter_defaults__"
_FIGURES_KEY = "__reversion_figure_saver__"

#: Set by the book's executor for each page it runs: ``<out_dir>/<stem>``, the executed
#: notebook's path without its suffix. Unset elsewhere (plain Jupyter, papermill by hand, tests).
PAGE_ENV = "REVERSION_BOOK_PAGE"
#: The folder beside the executed notebook that holds its downloads: ``<stem>_downloads``.
DOWNLOADS_SUFFIX = "_downloads"
_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _user_ns() -> dict:

    ip = get_ipython()
    if ip is None:
        raise RuntimeError("reversion.book.nb works inside a notebook (IPython) only")
    return ip.user_ns


def begin() -> None:
    """Remember which names exist before the parameters cell (call in the first cell); in the
    book, also save every figure of the page for download (:class:`FigureSaver`)."""
    ns = _user_ns()
    ns[_SNAPSHOT_KEY] = set(ns) | {_HISTORY_KEY, _DEFAULTS_KEY, _FIGURES_KEY}
    ns[_HISTORY_KEY] = len(ns.get("In", []))

    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight"})
    _install_figure_saver(get_ipython(), page_path())


# --------------------------------------------------------------------------- downloads


def page_path() -> Path | None:
    """The executed page this kernel runs for (``$REVERSION_BOOK_PAGE``, suffix dropped), or
    None outside the book."""
    raw = os.environ.get(PAGE_ENV, "").strip()
    if not raw:
        return None
    page = Path(raw).expanduser()
    return page.with_suffix("") if page.suffix == ".ipynb" else page


def downloads_dir(page: Path) -> Path:
    """Where a page's downloads go: ``<out_dir>/<stem>_downloads``, beside the executed notebook
    (so a link relative to the page finds it wherever ``out_dir`` is)."""
    return page.with_name(page.name + DOWNLOADS_SUFFIX)


def _check_stem(stem: Any) -> str:
    if not isinstance(stem, str) or not _STEM.fullmatch(stem) or stem in (".", ".."):
        raise ValueError(f"parameter 'stem' must be a chapter notebook's stem such as "
                         f"'01_training_history', got {stem!r}")
    return stem


class FigureSaver:
    """A ``post_execute`` callback that saves each matplotlib figure open at the end of a cell
    to ``folder`` as ``<stem>-fig<N>.svg`` and ``.png``, once per figure, numbered 1, 2, ... in
    the order the page draws them (within a cell: figure-number order).

    It must run before the inline backend's own ``post_execute`` callback, which displays the
    figures and closes them (``post_run_cell`` comes after that: too late), so it is put first;
    saving draws the figure again without changing it, so the page shows what it would have.
    """

    def __init__(self, folder: Path, stem: str):
        self.folder = Path(folder)
        self.stem = stem
        self.saved: list[str] = []  # "<stem>-fig<N>", in order

    def clear(self) -> None:
        """Remove what an earlier run of this page left (a figure it no longer draws)."""
        if self.folder.is_dir():
            for f in self.folder.iterdir():
                if f.is_file() and (f.name == "metrics.json" or re.fullmatch(
                        re.escape(self.stem) + r"-fig\d+\.(svg|png)", f.name)):
                    f.unlink()

    def save_open(self) -> list[str]:
        """Save the figures open now that were not saved yet; return their names."""
        if "matplotlib.pyplot" not in sys.modules:  # the page has drawn nothing
            return []
        from matplotlib._pylab_helpers import Gcf

        new = []
        for manager in sorted(Gcf.get_all_fig_managers(), key=lambda m: m.num):
            fig = manager.canvas.figure
            if getattr(fig, "_reversion_download", None):
                continue
            name = f"{self.stem}-fig{len(self.saved) + 1}"
            self.folder.mkdir(parents=True, exist_ok=True)
            # Fixed SVG ids and no date: the same figure gives the same bytes.
            with matplotlib.rc_context({"svg.hashsalt": name}):
                fig.savefig(self.folder / f"{name}.svg", format="svg", metadata={"Date": None})
            fig.savefig(self.folder / f"{name}.png", format="png", dpi=200)
            fig._reversion_download = name
            self.saved.append(name)
            new.append(name)
        return new

    def __call__(self) -> None:
        try:
            self.save_open()
        except Exception as exc:  # a download must never break the page; the log keeps why
            print(f"[reversion] a figure was not saved for download: {exc!r}", file=sys.stderr)


def _install_figure_saver(ip: Any, page: Path | None) -> FigureSaver | None:
    """Register a :class:`FigureSaver` for ``page`` first among ``ip``'s ``post_execute``
    callbacks (replacing one an earlier :func:`begin` registered); None outside the book."""
    if ip is None:
        return None
    callbacks = ip.events.callbacks["post_execute"]
    for old in [c for c in callbacks if isinstance(c, FigureSaver)]:
        ip.events.unregister("post_execute", old)
    ip.user_ns.pop(_FIGURES_KEY, None)
    if page is None:
        return None
    saver = FigureSaver(downloads_dir(page), page.name)
    saver.clear()
    ip.events.register("post_execute", saver)
    callbacks.remove(saver)
    callbacks.insert(0, saver)  # before the inline backend's display-and-close
    ip.user_ns[_FIGURES_KEY] = saver
    return saver


def downloads(stem: str) -> None:
    """Offer this page's results for download: copy ``results/<stem>/metrics.json`` (from
    :func:`reversion.infra.paths.results_dir`) beside the executed page, with the figures saved
    so far (those open now included), and show a ``{download}`` link to each; Sphinx copies them
    into the HTML build's ``_downloads``. Outside the book it does nothing (no file, no output)
    and it never raises, except a ``ValueError`` for a malformed ``stem``."""
    _check_stem(stem)
    page = page_path()
    if page is None:
        return
    try:
        folder = downloads_dir(page)
        ip = get_ipython()
        saver = ip.user_ns.get(_FIGURES_KEY) if ip is not None else None
        figures: list[str] = []
        if isinstance(saver, FigureSaver):
            saver()  # figures drawn in this very cell
            figures = [n for n in saver.saved if (saver.folder / f"{n}.svg").is_file()]
        source = paths.results_dir() / stem / "metrics.json"
        has_metrics = source.is_file()
        if has_metrics:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folder / "metrics.json")
        else:
            print(f"[reversion] no {source} to offer for download", file=sys.stderr)
        if not (has_metrics or figures):
            return
        display({"text/markdown": _links_markdown(folder.name, has_metrics, figures),
                 "text/plain": _links_text(folder, has_metrics, figures)}, raw=True)
    except Exception as exc:  # never fail the page for its downloads
        print(f"[reversion] downloads not offered: {exc!r}", file=sys.stderr)


def _links_markdown(rel: str, has_metrics: bool, figures: list[str]) -> str:
    """MyST with ``{download}`` roles, paths relative to the page (the folder beside it)."""
    def link(text: str, name: str) -> str:
        return f"{{download}}`{text} <{rel}/{name}>`"

    parts = []
    if has_metrics:
        parts.append(f"the numbers of this page, {link('metrics.json', 'metrics.json')}")
    if figures:
        items = ", ".join(f"figure {i} ({link('SVG', n + '.svg')}, {link('PNG', n + '.png')})"
                          for i, n in enumerate(figures, 1))
        parts.append(f"its figures: {items}")
    return "**Downloads:** " + "; ".join(parts) + "."


def _links_text(folder: Path, has_metrics: bool, figures: list[str]) -> str:
    names = (["metrics.json"] if has_metrics else []) + [f"{n}.{e}" for n in figures for e in ("svg", "png")]
    return f"Downloads in {folder}: " + ", ".join(names)


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(
            inner is Any or inner is Ellipsis or _type_ok(v, inner) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(hint, type):  # bare list, dict, ...
        return isinstance(value, hint)
    return True


def collect(schema: type[T], values: dict[str, Any]) -> T:
    """Build ``schema`` from ``values``: unknown, missing or mistyped names are errors."""
    hints = typing.get_type_hints(schema)
    fields = [f.name for f in dataclasses.fields(schema)]
    moved = getattr(schema, "MOVED", {})
    for name in values:
        if name in moved and name not in fields:
            raise ValueError(moved[name])
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))}; "
                         f"this notebook accepts: {', '.join(fields)}")
    missing = [f.name for f in dataclasses.fields(schema) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"missing parameter(s) {', '.join(map(repr, missing))}")
    for name in fields:
        if not _type_ok(values[name], hints[name]):
            raise ValueError(f"parameter {name!r} must be {hints[name]}, got "
                             f"{values[name]!r} ({type(values[name]).__name__})")
    return schema(**{k: values[k] for k in fields if k in values})


def parameters(schema: type[T]) -> T:
    """The chapter's parameters: every name defined since :func:`begin`."""
    ns = _user_ns()
    if _SNAPSHOT_KEY not in ns:
        raise RuntimeError("call reversion.book.nb.begin() in the notebook's first cell")
    before = ns[_SNAPSHOT_KEY]
    values = {k: v for k, v in ns.items()
              if k not in before and not k.startswith("_") and k not in ("In", "Out")}
    ns[_DEFAULTS_KEY] = _defaults(ns)
    return collect(schema, values)


def _defaults(ns: dict) -> dict | None:
    """The values of the notebook's own parameters cell: the first cell run after :func:`begin`
    (papermill's injected cell, which follows it, starts with ``# Parameters``). None when the
    history does not show it (e.g. the cells were run out of order)."""
    cells = list(ns.get("In", []))[ns.get(_HISTORY_KEY, 0):]
    own = [c for c in cells if c.strip() and not c.lstrip().startswith("# Parameters")]
    if not own:
        return None
    scratch: dict = {}
    try:
        exec(compile(own[0], "<parameters>", "exec"), scratch)  # plain assignments
    except Exception:
        return None
    return {k: v for k, v in scratch.items() if not k.startswith("_")}


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def show_run(P: Any, world: Any = None, subject: Any = None, code: tuple[str, ...] = ()) -> None:
    """Render what produced this page: every parameter of ``P`` (marked *set for this run* where
    it differs from the notebook's default), the subject it ran on, the effective settings of
    ``world`` (when given), and a provenance line -- the code identity of ``code`` (the modules
    this chapter imports, :func:`reversion.infra.provenance.code_hash`), the git commit of the
    checkout (:func:`reversion.infra.vcs.git_state`, marked *uncommitted changes* when
    tracked files differ from it), library versions and the date."""



    defaults = _user_ns().get(_DEFAULTS_KEY)
    rows = []
    for f in dataclasses.fields(P) if P is not None else ():
        value = getattr(P, f.name)
        if defaults is None or f.name not in defaults:
            how = ""
        else:
            how = "default" if defaults[f.name] == value else "<b>set for this run</b>"
        rows.append(f"<tr><td><code>{f.name}</code></td><td><code>{html.escape(repr(value))}</code></td>"
                    f"<td>{how}</td></tr>")
    table = ("<table><thead><tr><th>parameter</th><th>value</th><th></th></tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>") if rows else "<p>This page has no parameters of its own.</p>"
    if subject:
        table += f"<p>Subject: {html.escape(subject.title())}.</p>"
    world_html = ""
    if world is not None:
        items = "".join(f"<tr><td><code>{k}</code></td><td><code>{html.escape(repr(v))}</code></td></tr>"
                        for k, v in _flat(world).items())
        world_html = (f"<details><summary>Effective world settings ({len(_flat(world))} fields)</summary>"
                      f"<table><tbody>{items}</tbody></table></details>")
    prov = provenance(code or None)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    line = (f"<p><small>Produced by reversion {prov['package_version']}, code {prov['code_hash'][:12]} "
            f"({'this chapter' if code else 'the package'}){_commit_note(git_state())}, "
            f"torch {prov['torch_version']}, transformers "
            f"{prov['transformers_version']}, Python {prov['python_version']}, on {when} UTC.</small></p>")
    display(HTML(table + world_html + line))


def _commit_note(git: dict) -> str:
    """``, commit <12 hex>`` with ``(uncommitted changes)`` when dirty; empty outside git."""
    if not git.get("commit"):
        return ""
    return f", commit {git['commit'][:12]}" + (" (uncommitted changes)" if git.get("dirty") else "")


def glue(name: str, value: Any) -> None:
    """``myst_nb.glue`` without displaying: the prose pastes it with ``{glue:text}``."""
    from myst_nb import glue as _glue

    if hasattr(value, "item"):
        value = value.item()
    _glue(name, value, display=False)


def show_source(fn: Any) -> None:
    """Show the source of ``fn`` as a code block: a chapter's ``run``, the calls that define its
    result, on the page that called it (so the page shows the code the tests run, not a copy)."""
    display(Markdown(f"```python\n{inspect.getsource(fn).rstrip()}\n```"))


def notes(lines: list[str]) -> None:
    """Print a chapter's notes on its subject (nothing for the organism)."""
    for line in lines:
        print(line)
