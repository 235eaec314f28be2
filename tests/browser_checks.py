"""The book as a reader sees it: built at smoke parameters, opened in headless Chromium.

These tests are collected in ``tests/test_notebooks.py`` (which imports them), so that they run in
the same process as the notebook tests and share their one smoke execution of the chapters
(pytest-xdist's ``--dist loadfile`` keeps a file's tests in one process). Marker ``notebooks``
(part of the default run).  One session fixture builds the
whole book into a temporary copy of the working tree:

1. the chapter notebooks run with papermill at ``notebooks/params/smoke/`` through
   :func:`reversion.book.execute_notebooks` (``REVERSION_CACHE`` and
   ``REVERSION_RESULTS`` point into the temporary folder): the ``smoke_book`` fixture
   (``smoke_book.py``), whose executed chapters ``test_notebooks.py`` re-runs with nbval, and
2. :func:`reversion.book.build_book` builds the copy strictly (``-W -n
   --keep-going``); MathJax is copied from ``book/_static/mathjax`` (``make
   mathjax`` runs once in the checkout when it is not there yet).

Then every page of ``_toc.yml`` is opened in headless Chromium (``--dump-dom``
after the page's scripts ran), from a copy of the page that carries a small
script reporting what the reader's browser saw: images that did not load
(``naturalWidth`` 0), resources that failed (scripts, style sheets, fonts),
script errors, whether MathJax finished, and what is wider than its container.
Each page must show every image, typeset all its math (no raw TeX, no MathJax
error), show no error output (a traceback, an exception, stderr), link only to
files (and anchors) that exist, and fit its content column at a 1300x900 window
(:data:`LAYOUT_WINDOW`): every table and every cell output (``.cell_output``,
``div.output`` and their ``pre``), with collapsed ``<details>`` opened, must end
within its parent's box, and one that is a horizontal scroll container must not
need to scroll -- a table cut off at the right, or visible only by scrolling, fails.
Planted pages check that this check flags what it should (no book build needed).
Two screenshots are kept beside the build, in ``screenshots/`` (copied into
``$REVERSION_SCREENSHOT_DIR`` when it is set).

Without Chromium the tests skip locally (``apt-get install chromium``) and fail
in CI (``CI=true``): a browser check that silently never runs is worse than none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import smoke_book as smoke
import yaml

ROOT = Path(__file__).resolve().parents[1]
MATHJAX_DIR = Path("book") / "_static" / "mathjax"

pytestmark = pytest.mark.notebooks

__all__ = ["chromium", "built_book", "test_book_builds_strictly", "test_page_in_browser",
           "test_index_leads_to_the_first_page", "test_screenshots", "test_layout_check_flags_what_is_cut_off",
           "test_layout_check_passes_what_fits", "test_stylesheet_fits_pandas_tables"]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
]
#: Window the pages are laid out in (what a laptop reader sees; the content column is
#: then about 700 px wide beside the two sidebars).
LAYOUT_WINDOW = "1300,900"
#: Virtual time a page gets to load and typeset (ms); doubled once on a retry.
VIRTUAL_TIME_BUDGET_MS = 10_000
#: Wall-clock limit for one Chromium run (s).
CHROMIUM_TIMEOUT_S = 180
#: Pages that get a screenshot (``_toc.yml`` paths): the first page and a chapter
#: with figures and a table.
SCREENSHOT_PAGES = ("book/intro", "book/executed/01_training_history")
SCREENSHOT_SIZE = "1300,3000"

#: Script errors of the toolchain, not of this book, that change nothing a reader
#: sees.  Jupyter Book 1.x puts sphinx-thebe's inline
#: ``<script>const THEBE_JS_URL = ...</script>`` into <head> twice (thebe is off
#: here): the second copy throws, the first already defined the same constants.
KNOWN_SCRIPT_ERRORS = (re.compile(r"Identifier 'THEBE_JS_URL' has already been declared"),)

REPORT_ID = "__reversion_browser_report"
# Runs first in <head> of a copy of each page: collects failed loads and script
# errors from the start, and after `load` (which waits for the async MathJax
# script) and MathJax's startup promise (typesetting done) and document.fonts.ready,
# appends a hidden <pre> with a JSON report that --dump-dom then carries out.
PROBE_JS = """
(function () {
  var failedLoads = [], scriptErrors = [];
  window.addEventListener('error', function (e) {
    var t = e.target;
    if (t && t !== window && t.tagName) {
      failedLoads.push(t.tagName.toLowerCase() + ' ' + (t.currentSrc || t.src || t.href || '?'));
    } else {
      scriptErrors.push((e.message || String(e)) + ' at ' + (e.filename || '?') + ':' + (e.lineno || '?'));
    }
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    scriptErrors.push('unhandled rejection: ' + String(e.reason));
  });
  // What is wider than it may be: each table (not of a code cell) and each cell output
  // must end within its parent's box (a cut-off table), and one that is a horizontal
  // scroll container must not need its scroll bar (a table visible only by scrolling).
  // Collapsed <details> are opened for the measurement, then closed again.
  function describe(el) {
    var name = el.tagName.toLowerCase() + Array.prototype.slice.call(el.classList)
      .filter(function (c) { return !/^(docutils|container|notranslate)$/.test(c); })
      .map(function (c) { return '.' + c; }).join('');
    var section = el.closest('section[id]');
    return name + (section ? ' in #' + section.id : '');
  }
  function layoutOverflow() {
    var closed = Array.prototype.slice.call(document.querySelectorAll('details:not([open])'));
    closed.forEach(function (d) { d.open = true; });
    var found = [];
    try {
      var els = document.querySelectorAll('table, .cell_output, div.output, .cell_output pre');
      Array.prototype.forEach.call(els, function (el) {
        var parent = el.parentElement;
        if (!parent || el.closest('.cell_input') || !el.getClientRects().length) { return; }
        var ox = getComputedStyle(el).overflowX;
        var scrolls = ox === 'auto' || ox === 'scroll';
        var r = el.getBoundingClientRect(), p = parent.getBoundingClientRect();
        var limit = p.left + parent.clientLeft + parent.clientWidth;  // parent's padding box
        // A scroll container's own box must fit; anything else: its content too.
        var right = r.left + (scrolls ? r.width : Math.max(r.width, el.scrollWidth));
        var problem = null;
        if (right > limit + 1) {
          problem = 'ends ' + Math.round(right - limit) + ' px past its container (' +
            Math.round(right - r.left) + ' px wide from ' + Math.round(r.left - p.left) +
            ' px in, container ' + Math.round(limit - p.left) + ' px)';
        } else if (scrolls && el.scrollWidth > el.clientWidth + 1) {
          problem = 'needs a horizontal scroll: content ' + el.scrollWidth + ' px in a ' +
            el.clientWidth + ' px box';
        }
        if (problem) {
          found.push({element: describe(el), problem: problem,
                      text: (el.innerText || '').replace(/\\s+/g, ' ').trim().slice(0, 80)});
        }
      });
    } finally {
      closed.forEach(function (d) { d.open = false; });
    }
    return found;
  }
  function report(extra) {
    var images = Array.prototype.slice.call(document.images);
    var fonts = [];
    if (document.fonts) {
      document.fonts.forEach(function (f) {
        if (f.status === 'error') { fonts.push(f.family); }
      });
    }
    var out = {
      done: true,
      images: images.length,
      broken_images: images.filter(function (i) { return !i.complete || !i.naturalWidth; })
                           .map(function (i) { return i.getAttribute('src'); }),
      failed_loads: failedLoads,
      script_errors: scriptErrors,
      failed_fonts: fonts,
      mathjax_version: (window.MathJax && window.MathJax.version) || null,
      window: [window.innerWidth, window.innerHeight]
    };
    try { out.overflow = layoutOverflow(); } catch (err) { out.overflow_error = String(err); }
    // What MathJax made of each formula: a TeX error becomes <merror>, and an
    // undefined macro (noundefined extension) red text; keep their TeX source.
    var mj = window.MathJax;
    if (mj && mj.startup && mj.startup.document && mj.startup.toMML) {
      var items = [], bad = [];
      try {
        var list = mj.startup.document.math;
        items = list.toArray ? list.toArray() : Array.from(list);
        items.forEach(function (item) {
          var mml = mj.startup.toMML(item.root);
          if (/<merror|mathcolor="red"/.test(mml)) { bad.push(item.math); }
        });
      } catch (err) { bad.push('could not inspect the typeset math: ' + err); }
      out.math_items = items.length;
      out.math_errors = bad;
    }
    for (var k in extra) { out[k] = extra[k]; }
    var pre = document.createElement('pre');
    pre.id = '%(id)s';
    pre.style.display = 'none';
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  window.addEventListener('load', function () {
    var mj = window.MathJax;
    var typeset = (mj && mj.startup && mj.startup.promise) ? mj.startup.promise : Promise.resolve();
    var fontsReady = document.fonts ? document.fonts.ready : Promise.resolve();
    typeset.then(function () { return fontsReady; })
      .then(function () { report({}); },
            function (err) { report({mathjax_error: String(err)}); });
  });
})();
""" % {"id": REPORT_ID}


# --------------------------------------------------------------------------- pages


def _toc_files(entries) -> list[str]:
    files: list[str] = []
    for entry in entries or []:
        if not isinstance(entry, dict):
            continue
        if entry.get("file"):
            files.append(str(entry["file"]))
        for key in ("sections", "chapters", "parts"):
            files.extend(_toc_files(entry.get(key)))
    return files


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml`` (paths without suffix), in book order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [str(toc["root"])] + _toc_files([toc])
    seen: list[str] = []
    for page in pages:
        page = re.sub(r"\.(md|ipynb)$", "", page)
        if page not in seen:
            seen.append(page)
    return seen


PAGES = toc_pages()


# --------------------------------------------------------------------------- chromium


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path; skip without it, except in CI, where that is a failure."""
    found = find_chromium()
    if found is None:
        reason = "chromium not installed: apt-get install chromium"
        if in_ci():
            pytest.fail(f"{reason} (CI=true: the browser tests must run in CI; .ci/run installs it)")
        pytest.skip(reason)
    return found


def run_chromium(chromium: str, profile: Path, args: list[str], url: str) -> subprocess.CompletedProcess:
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    return subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- the build


def _ensure_mathjax() -> Path:
    """The checkout's MathJax folder, fetched with ``make mathjax`` when missing."""
    source = ROOT / MATHJAX_DIR
    if not (source / "tex-chtml.js").is_file():
        proc = subprocess.run(
            ["make", "mathjax"],
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0 and (source / "tex-chtml.js").is_file(), (
            f"MathJax is missing and `make mathjax` failed (it needs npm):\n{proc.stdout[-5000:]}"
        )
    return source


@pytest.fixture(scope="session")
def built_book(smoke_book):
    """The book built from the chapters executed at smoke parameters (``smoke_book``).

    Returns ``{"root", "html", "screenshots", "build_error", "seconds"}``; the
    strict build's error (if any) is kept for :func:`test_book_builds_strictly`, as
    ``--keep-going`` still writes every page for the browser checks.
    """
    from reversion.book import build as book

    root = smoke_book.root
    smoke.mathjax_into(root, _ensure_mathjax())
    t0 = time.perf_counter()
    build_error = None
    if smoke_book.errors:
        build_error = "chapters failed to execute: " + "; ".join(
            f"{stem}: {err.splitlines()[0]}" for stem, err in smoke_book.errors.items())
    try:
        book.build_book(root)
    except book.BookBuildError as exc:
        build_error = "\n".join(filter(None, [build_error, str(exc)]))
    html = root / "_build" / "html"
    assert (html / "index.html").is_file(), f"the build wrote no {html / 'index.html'}:\n{build_error}"
    screenshots = root / "_build" / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    return {
        "root": root,
        "html": html,
        "screenshots": screenshots,
        "build_error": build_error,
        "seconds": time.perf_counter() - t0 + sum(smoke_book.seconds.values()),
    }


def test_book_builds_strictly(built_book):
    """The book at smoke parameters builds with warnings as errors, like ``make book``."""
    assert built_book["build_error"] is None, (
        "the book at smoke parameters does not build strictly "
        f"(the browser tests still check the pages it wrote):\n{built_book['build_error']}"
    )


# --------------------------------------------------------------------------- page checks


@lru_cache(maxsize=None)
def _ids_of(path: str) -> frozenset[str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(Path(path).read_text(encoding="utf-8"), "html.parser")
    ids = {el["id"] for el in soup.find_all(id=True)}
    ids |= {el["name"] for el in soup.find_all("a", attrs={"name": True})}
    return frozenset(ids)


def _page_with_probe(page: Path) -> Path:
    """A copy of ``page`` beside it (same relative URLs) with PROBE_JS first in <head>."""
    text = page.read_text(encoding="utf-8")
    match = re.search(r"<head(\s[^>]*)?>", text, flags=re.IGNORECASE)
    assert match, f"{page}: no <head>"
    probed = text[: match.end()] + f"\n<script>{PROBE_JS}</script>\n" + text[match.end() :]
    copy = page.with_name(f"__probe__{page.name}")
    copy.write_text(probed, encoding="utf-8")
    return copy


def render(chromium: str, page: Path, profile: Path) -> tuple[str, dict]:
    """Open ``page`` in Chromium; return (DOM after scripts ran, the probe's report)."""
    probed = _page_with_probe(page)
    try:
        budget = VIRTUAL_TIME_BUDGET_MS
        for attempt in range(2):
            proc = run_chromium(
                chromium,
                profile,
                [f"--virtual-time-budget={budget}", f"--window-size={LAYOUT_WINDOW}", "--dump-dom"],
                probed.as_uri(),
            )
            dom = proc.stdout
            match = re.search(rf'<pre id="{REPORT_ID}"[^>]*>(.*?)</pre>', dom, flags=re.DOTALL)
            if proc.returncode == 0 and match:
                import html as html_lib

                return dom, json.loads(html_lib.unescape(match.group(1)))
            budget *= 2
        raise AssertionError(
            f"{page.name}: Chromium did not finish the page (exit status {proc.returncode}, "
            f"{len(dom)} bytes of DOM; after {budget // 2} ms virtual time):\n{proc.stderr[-3000:]}"
        )
    finally:
        probed.unlink(missing_ok=True)


def _check_image_file(path: Path) -> str | None:
    """None if ``path`` is a readable image file, else what is wrong with it."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    if path.suffix.lower() == ".svg":
        import xml.etree.ElementTree as ET

        try:
            tag = ET.parse(path).getroot().tag
        except ET.ParseError as exc:
            return f"not XML: {exc}"
        return None if tag.endswith("svg") else f"root element {tag}, not svg"
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
            if min(im.size) <= 0:
                return f"size {im.size}"
    except Exception as exc:  # noqa: BLE001 - any decoding problem is the finding
        return f"not a readable image: {exc}"
    return None


# A traceback's last line, e.g. "ValueError: bad value" or "KeyError: 'x'".
_EXCEPTION_LINE = re.compile(
    r"^\s*(?:[A-Za-z_]\w*\.)*[A-Z][A-Za-z]+(?:Error|Exception):(?:\s|$)", flags=re.MULTILINE
)
# TeX left raw: \( or \[ delimiters, or $...$ holding a command, subscript or superscript.
_RAW_TEX = re.compile(r"\\\(|\\\[|\$[^$\s][^$]{0,200}?[\\_^][^$]{0,200}?\$")


def overflow_problems(report: dict) -> list[str]:
    """The probe's layout findings as readable lines (empty: everything fits)."""
    window = f"{report['window'][0]} px wide" if report.get("window") else "?"
    if report.get("overflow_error") or "overflow" not in report:
        return [f"the layout check failed in the page: {report.get('overflow_error', 'no result')}"]
    return [
        f"wider than its container at a {window} window: {f['element']} {f['problem']}; "
        f"it reads {f['text']!r}"
        for f in report["overflow"]
    ]


def check_page(page_rel: str, html_root: Path, dom: str, report: dict) -> list[str]:
    """Everything wrong with one rendered page, as readable lines (empty: fine)."""
    from bs4 import BeautifulSoup

    page = html_root / f"{page_rel}.html"
    problems: list[str] = []
    soup = BeautifulSoup(dom, "html.parser")
    main = soup.find("main") or soup.find(attrs={"role": "main"}) or soup.body
    assert main is not None, f"{page_rel}: no <body> in the rendered DOM"

    # Loading: images, other resources, scripts.
    for src in report["broken_images"]:
        problems.append(f"image not loaded in the browser: {src}")
    for what in report["failed_loads"]:
        problems.append(f"failed to load: {what}")
    for err in report["script_errors"]:
        if not any(known.search(err) for known in KNOWN_SCRIPT_ERRORS):
            problems.append(f"script error: {err}")
    for family in report["failed_fonts"]:
        problems.append(f"font failed to load: {family}")
    for img in soup.find_all("img"):
        src = img.get("src", "")
        scheme = urlsplit(src).scheme
        if scheme in ("http", "https"):
            problems.append(f"image from the network (the book must work offline): {src}")
        if scheme:  # data: URIs are checked by the browser (naturalWidth) alone
            continue
        target = (page.parent / unquote(urlsplit(src).path)).resolve()
        bad = _check_image_file(target)
        if bad:
            problems.append(f"image {src}: {bad}")

    # Math: each math element typeset by MathJax, no TeX error, no raw TeX left.
    math = main.select(".math")
    if math:
        if not report.get("mathjax_version"):
            problems.append(f"{len(math)} math element(s) but MathJax did not load")
        if report.get("mathjax_error"):
            problems.append(f"MathJax failed: {report['mathjax_error']}")
        untypeset = [m for m in math if m.find("mjx-container") is None]
        for m in untypeset[:10]:
            problems.append(f"math not typeset: {m.get_text()[:80]!r}")
        if len(untypeset) > 10:
            problems.append(f"... {len(untypeset) - 10} more untypeset math element(s)")
    for tex in report.get("math_errors", []):
        problems.append(f"MathJax could not typeset: {tex[:120]!r}")
    for err in main.select("mjx-merror, [data-mjx-error]"):
        problems.append(f"MathJax error: {err.get('data-mjx-error') or err.get_text()[:120]!r}")
    text_soup = BeautifulSoup(str(main), "html.parser")
    for el in text_soup.select("pre, code, mjx-container, script, style, .highlight"):
        el.decompose()
    for m in _RAW_TEX.finditer(text_soup.get_text()):
        problems.append(f"raw TeX shown to the reader: {m.group(0)[:120]!r}")

    # Outputs: no traceback, no exception text, no stderr.
    for out in main.select(".output.traceback, .output.error, .output.stderr"):
        kind = next(c for c in ("traceback", "error", "stderr") if c in out.get("class", []))
        problems.append(f"{kind} output shown: {out.get_text()[:300]!r}")
    for out in main.select(".output, .cell_output"):
        text = out.get_text()
        if "Traceback (most recent call last)" in text or _EXCEPTION_LINE.search(text):
            line = (_EXCEPTION_LINE.search(text) or re.search("Traceback.*", text)).group(0)
            problems.append(f"exception text in an output: {line.strip()[:200]!r}")

    # Layout: the book's style sheet is there, and nothing is wider than its container.
    if not soup.find("link", href=re.compile(r"(^|/)_static/reversion\.css(\?|$)")):
        problems.append("the book's style sheet (_static/reversion.css) is not linked")
    problems.extend(overflow_problems(report))

    # Downloads: a chapter page links its metrics.json, and an SVG of its figures when it shows
    # one (each link resolves: checked with the other links below).
    if page_rel.startswith("book/executed/"):
        hrefs = [a["href"] for a in main.select("a.download[href], a[download][href]")]
        if not any(unquote(h).endswith("/metrics.json") for h in hrefs):
            problems.append(f"no download link to its metrics.json (download links: {hrefs})")
        if main.select(".cell_output img") and not any(unquote(h).endswith(".svg") for h in hrefs):
            problems.append(f"shows a figure but links no SVG of it (download links: {hrefs})")

    # Links: every internal link goes to an existing file (and anchor).
    for a in soup.find_all("a", href=True):
        href = a["href"].strip()
        parts = urlsplit(href)
        if parts.scheme in ("http", "https", "mailto", "javascript", "data", "tel"):
            continue
        if href.startswith("#") or not href:
            target = page
        elif parts.scheme in ("", "file"):
            path = unquote(parts.path)
            if parts.scheme == "file":
                target = Path(path)
            else:
                target = (page.parent / path).resolve()
            if href.endswith("/") or target.is_dir():
                target = target / "index.html"
        else:
            problems.append(f"link with an unexpected scheme: {href}")
            continue
        if not target.is_file():
            problems.append(f"broken link: {href} ({target} does not exist)")
            continue
        if parts.fragment and target.suffix == ".html":
            # The page's own anchors: from the rendered DOM (a script may add ids).
            ids = (
                {el["id"] for el in soup.find_all(id=True)}
                if target == page
                else _ids_of(str(target))
            )
            if unquote(parts.fragment) not in ids:
                problems.append(f"broken anchor: {href} (no id {parts.fragment!r} in {target.name})")
    return sorted(set(problems), key=problems.index)


@pytest.mark.parametrize("page", PAGES)
def test_page_in_browser(page, chromium, built_book, tmp_path):
    html_root = built_book["html"]
    path = html_root / f"{page}.html"
    assert path.is_file(), f"the book has no page {path.relative_to(html_root)} (from _toc.yml)"
    dom, report = render(chromium, path, tmp_path / "profile")
    problems = check_page(page, html_root, dom, report)
    assert not problems, f"{page}.html as Chromium shows it:\n  " + "\n  ".join(problems)


def test_index_leads_to_the_first_page(built_book):
    """``_build/html/index.html`` (what the README says to open) leads to the book's root page."""
    from bs4 import BeautifulSoup

    index = built_book["html"] / "index.html"
    soup = BeautifulSoup(index.read_text(encoding="utf-8"), "html.parser")
    refresh = soup.find("meta", attrs={"http-equiv": re.compile("^refresh$", re.I)})
    if refresh is None:  # a real page, not a redirect: the page tests cover it if in the toc
        return
    match = re.search(r"url=(.+)$", refresh.get("content", ""), flags=re.I)
    assert match, f"index.html: unreadable refresh {refresh}"
    target = (index.parent / unquote(urlsplit(match.group(1).strip("'\" ")).path)).resolve()
    assert target.is_file(), f"index.html redirects to {match.group(1)}, which does not exist"
    assert target == (built_book["html"] / f"{PAGES[0]}.html").resolve()


def test_screenshots(chromium, built_book, tmp_path):
    """Screenshots of two pages beside the build (and in $REVERSION_SCREENSHOT_DIR if set)."""
    from PIL import Image

    out_dir = built_book["screenshots"]
    shots = []
    for page in SCREENSHOT_PAGES:
        if page not in PAGES:
            continue
        source = built_book["html"] / f"{page}.html"
        shot = out_dir / f"{Path(page).name}.png"
        shot.unlink(missing_ok=True)
        proc = run_chromium(
            chromium,
            tmp_path / "profile",
            [
                f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
                f"--window-size={SCREENSHOT_SIZE}",
                f"--screenshot={shot}",
            ],
            source.as_uri(),
        )
        assert proc.returncode == 0 and shot.is_file(), (
            f"no screenshot of {page} (exit status {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
        with Image.open(shot) as im:
            assert im.size == tuple(int(v) for v in SCREENSHOT_SIZE.split(",")), im.size
            # Not a blank page: a rendered page has many colours.
            colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 16, f"{shot.name} looks blank"
        shots.append(shot)
    assert shots, f"none of {SCREENSHOT_PAGES} is in _toc.yml"
    dest = os.environ.get("REVERSION_SCREENSHOT_DIR")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy2(shot, Path(dest) / shot.name)


# --------------------------------------------------------------------------- layout check


#: What the theme does to outputs and <pre> (pydata-sphinx-theme, Bootstrap), so that a
#: planted page puts its tables in the same kind of box as the book's pages do.
THEME_LIKE_CSS = """
body { margin: 0; font: 16px/1.5 sans-serif; }
main { width: %dpx; margin-left: 40px; }
div.cell_output { padding-left: 1em; }
div.cell_output .output { max-width: 100%%; overflow-x: auto; }
pre { overflow: auto; font-size: .875em; }
table { margin-left: auto; margin-right: auto; }
th, td { padding: .5em; }
"""
#: About the content column's width at LAYOUT_WINDOW in the built book (a cell output
#: there is 704 px wide); planted pages use it.
COLUMN_PX = 700

INTERVAL = "+0.123 [+0.045, +0.201]"


def _planted_page(folder: Path, name: str, body: str, stylesheet: bool = False) -> Path:
    """A page of ``body`` in a content column like the book's, with the book's style
    sheet when ``stylesheet``."""
    folder.mkdir(parents=True, exist_ok=True)
    link = ""
    if stylesheet:
        link = f'<link rel="stylesheet" href="{(ROOT / "book" / "_static" / "reversion.css").as_uri()}">'
    page = folder / f"{name}.html"
    page.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>planted</title>\n"
        f"<style>{THEME_LIKE_CSS % COLUMN_PX}</style>{link}</head>\n"
        f"<body><main>{body}</main></body></html>\n",
        encoding="utf-8",
    )
    return page


def _output(section: str, html: str, kind: str = "text_html") -> str:
    """``html`` as a notebook cell's output (myst-nb's markup) in ``<section id=section>``."""
    return (
        f'<section id="{section}"><div class="cell docutils container">'
        f'<div class="cell_output docutils container"><div class="output {kind}">{html}</div>'
        f"</div></div></section>"
    )


def _planted_overflow(chromium: str, page: Path, profile: Path) -> list[dict]:
    _, report = render(chromium, page, profile)
    assert "overflow" in report, report.get("overflow_error")
    # The width is what matters (Chromium's viewport is a little shorter than its window).
    assert report["window"][0] == int(LAYOUT_WINDOW.split(",")[0]), report["window"]
    return report["overflow"]


def _arm_frame(n_columns: int = 8, n_rows: int = 6):
    """Like chapter 06's arm table: long row labels and an interval in every cell."""
    import pandas as pd

    rows = {
        f"projection/random_{i}/layer×3": {f"Δ measure number {j}": INTERVAL for j in range(n_columns)}
        for i in range(n_rows)
    }
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "arm"
    return df


def test_layout_check_flags_what_is_cut_off(chromium, tmp_path):
    """A planted page: a table wider than the column (inside a scrolling output, as the
    theme makes it, and in a plain box), a printed line that would need a scroll and a
    <pre> that runs off the page are all flagged; what fits beside them is not."""
    wide_row = "".join(f"<td style='white-space:nowrap'>{INTERVAL}</td>" for _ in range(12))
    wide = f"<table><tr>{wide_row}</tr></table>"
    fitting = "<table><tr><td>a</td><td>b</td></tr></table>"
    long_line = "x" * 400
    body = "".join([
        _output("scrolled-table", wide),
        f'<section id="plain-table"><div>{wide}</div></section>',
        _output("long-line", f"<pre>{long_line}</pre>", kind="stream"),
        (f'<section id="runaway-pre"><div class="cell_output"><pre style="overflow: visible">'
         f"{long_line}</pre></div></section>"),
        _output("hidden", wide.replace("<table>", "<details><summary>more</summary><table>")
                + "</details>"),
        _output("fits", fitting + f"<pre>{'short line '}</pre>", kind="text_html"),
    ])
    page = _planted_page(tmp_path / "site", "cut_off", body)
    found = _planted_overflow(chromium, page, tmp_path / "profile")
    by_where = {}
    for f in found:
        by_where.setdefault(f["element"], []).append(f["problem"])
    assert any(e.startswith("table in #scrolled-table") for e in by_where), by_where
    assert any(e.startswith("table in #plain-table") for e in by_where), by_where
    assert any(e.startswith("pre in #long-line") for e in by_where), by_where
    assert any(e.startswith("pre in #runaway-pre") for e in by_where), by_where
    assert any(e.startswith("table in #hidden") for e in by_where), by_where  # in closed <details>
    assert not any(e.endswith("#fits") for e in by_where), by_where
    table = next(p for e, ps in by_where.items() if e == "table in #scrolled-table" for p in ps)
    assert re.search(r"ends \d+ px past its container \(\d+ px wide", table), table
    assert "needs a horizontal scroll" in " ".join(by_where["pre in #long-line"])
    # The problems read as the page test reports them.
    lines = overflow_problems({"overflow": found, "window": [1300, 900]})
    assert all(line.startswith("wider than its container at a 1300 px wide window: ") for line in lines)


def test_layout_check_passes_what_fits(chromium, tmp_path):
    """A planted page whose tables and outputs fit: nothing is flagged."""
    body = "".join([
        _output("small-table", "<table><tr><th>arm</th><th>Δ</th></tr><tr><td>x</td>"
                               f"<td>{INTERVAL}</td></tr></table>"),
        _output("text", "<pre>a short printed line</pre>", kind="stream"),
        "<table><tr><td>a markdown table</td></tr></table>",
    ])
    page = _planted_page(tmp_path / "site", "fits", body)
    assert _planted_overflow(chromium, page, tmp_path / "profile") == []


def test_stylesheet_fits_pandas_tables(chromium, tmp_path):
    """With ``reversion.css``, what overflowed the column fits: a plain pandas table of nine
    interval columns with long row labels, the same through ``display.table`` (verdict labels,
    ``wide``), and a long printed line."""
    from reversion.book import display

    arms = _arm_frame()
    claims = arms.iloc[:, :3].assign(verdict=list(display.VERDICT_CLASSES) + ["consistent"])
    outcomes = _arm_frame(11).set_axis([f"outcome_measure_{j}" for j in range(11)], axis=1)
    printed = "• " + " ".join(["v_rev lowers harmfulness against the baseline", INTERVAL] * 8)
    body = "".join([
        _output("plain-pandas", arms.to_html()),
        _output("display-table", display.table(claims).to_html()),
        _output("display-wide", display.table(_arm_frame(10), wide=True).to_html()),
        _output("snake-case", outcomes.map(lambda _: "0.123").to_html()),
        _output("printed", f"<pre>{printed}</pre>", kind="stream"),
    ])
    unstyled = _planted_page(tmp_path / "site", "without_css", body)
    styled = _planted_page(tmp_path / "site", "with_css", body, stylesheet=True)
    # Without the style sheet these overflow: the check has something to catch.
    before = {f["element"].split(" in #")[-1] for f in _planted_overflow(chromium, unstyled, tmp_path / "p1")}
    assert {"plain-pandas", "display-wide", "printed"} <= before, before
    found = _planted_overflow(chromium, styled, tmp_path / "p2")
    assert found == [], "\n".join(overflow_problems({"overflow": found, "window": [1300, 900]}))
