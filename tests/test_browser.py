"""The book as a reader sees it: built at smoke parameters, opened in headless Chromium.

Marker ``notebooks`` (part of the default run).  One session fixture builds the
whole book into a temporary copy of the working tree:

1. the chapter notebooks run with papermill at ``notebooks/params/smoke/`` through
   :func:`reversion.book.execute_notebooks` (``REVERSION_CACHE`` and
   ``REVERSION_RESULTS`` point into the temporary folder), and
2. :func:`reversion.book.build_book` builds the copy strictly (``-W -n
   --keep-going``); MathJax is copied from ``book/_static/mathjax`` (``make
   mathjax`` runs once in the checkout when it is not there yet).

Then every page of ``_toc.yml`` is opened in headless Chromium (``--dump-dom``
after the page's scripts ran), from a copy of the page that carries a small
script reporting what the reader's browser saw: images that did not load
(``naturalWidth`` 0), resources that failed (scripts, style sheets, fonts),
script errors and whether MathJax finished.  Each page must show every image,
typeset all its math (no raw TeX, no MathJax error), show no error output (a
traceback, an exception, stderr) and link only to files (and anchors) that exist.
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DIR = ROOT / "notebooks" / "params" / "smoke"
MATHJAX_DIR = Path("book") / "_static" / "mathjax"

pytestmark = pytest.mark.notebooks

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
      mathjax_version: (window.MathJax && window.MathJax.version) || null
    };
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


def _working_tree_files(root: Path) -> list[str]:
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
    skip = {"executed", "_static", ".ipynb_checkpoints", "__pycache__"}
    found = []
    for name in wanted:
        path = root / name
        if path.is_file():
            found.append(name)
        elif path.is_dir():
            for sub in path.rglob("*"):
                rel = sub.relative_to(root)
                if sub.is_file() and not skip.intersection(rel.parts):
                    found.append(str(rel))
    return found


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
def built_book(tmp_path_factory):
    """The book built at smoke parameters in a temporary copy of the working tree.

    Returns ``{"root", "html", "screenshots", "build_error", "seconds"}``; the
    strict build's error (if any) is kept for :func:`test_book_builds_strictly`, as
    ``--keep-going`` still writes every page for the browser checks.
    """
    from reversion.book import build as book

    base = tmp_path_factory.mktemp("browser-book")
    root = base / "tree"
    for rel in _working_tree_files(ROOT):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    # Generated folders a stale checkout could carry are not part of the copy.
    for stale in ("_build", "book/executed"):
        shutil.rmtree(root / stale, ignore_errors=True)
    shutil.copytree(_ensure_mathjax(), root / MATHJAX_DIR)

    env = {
        "REVERSION_CACHE": base / "cache",
        "REVERSION_RESULTS": base / "results",
    }
    t0 = time.perf_counter()
    build_error = None
    with pytest.MonkeyPatch.context() as mp:
        for name, path in env.items():
            path.mkdir()
            mp.setenv(name, str(path))
        book.execute_notebooks(
            out_dir=root / "book" / "executed",
            parameters=book.load_parameters_dir(SMOKE_DIR),
            force=True,
            notebook_dir=root / "notebooks",
            cwd=root,
        )
        try:
            book.build_book(root)
        except book.BookBuildError as exc:
            build_error = str(exc)
    html = root / "_build" / "html"
    assert (html / "index.html").is_file(), f"the build wrote no {html / 'index.html'}:\n{build_error}"
    screenshots = root / "_build" / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    return {
        "root": root,
        "html": html,
        "screenshots": screenshots,
        "build_error": build_error,
        "seconds": time.perf_counter() - t0,
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
                [f"--virtual-time-budget={budget}", "--dump-dom"],
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
