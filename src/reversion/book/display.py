"""How the pages show their tables, verdicts and result lists (presentation only).

The chapters' page modules return plain DataFrames; a notebook shows one with :func:`table`,
which makes a pandas ``Styler`` that the book's style sheet (``book/_static/reversion.css``)
fits into the page's content column: compact type, cells that wrap (long interval strings
break where they must) and, where a table still cannot fit, a horizontal scroll inside the
output rather than a table cut off at the right. Verdicts are shown as coloured labels
(:func:`verdict_label`) that still carry their text, so colour is never the only cue. A
list of result sentences is shown with :func:`bullets` (a Markdown list, wrapping like prose)
instead of printed lines.

Imports nothing from :mod:`reversion.core` (nor torch, scipy): a page can style its tables
without loading a model. The verdicts are the analysis layer's vocabulary
(:data:`reversion.analysis.verdicts.VERDICTS`), in its order.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd
from IPython.display import Markdown
from pandas.io.formats.style import Styler

from reversion.analysis.verdicts import VERDICTS

VERDICT_CLASSES: dict[str, str] = dict(zip(VERDICTS, (
    "verdict-consistent", "verdict-not-specific", "verdict-inconclusive", "verdict-not-reproduced",
    "verdict-not-testable")))
"""CSS class of each verdict's label (beside the common class ``verdict``)."""

TABLE_CLASS = "reversion-table"
"""Class of every table made by :func:`table` (with pandas' ``dataframe``, which the theme styles)."""
WIDE_CLASS = "reversion-wide"
"""Extra class of a table with many columns: smaller type and tighter cells."""

_DEFAULT_VERDICT_COLUMNS = ("verdict",)
NA_REP = "—"
"""What a missing value shows."""


def interval(i: Mapping | None, digits: int = 3) -> str:
    """An interval as every page writes it: ``+0.123 [+0.045, +0.201]``; the mean alone where the
    interval is undefined (one history and one seed); an em dash for none at all, or for a mean
    that is itself undefined (a correlation where harmfulness never moved, a ratio to zero)."""
    if i is None or i.get("mean") is None:
        return NA_REP
    if i["ci_low"] is None:
        return f"{i['mean']:+.{digits}f}"
    return f"{i['mean']:+.{digits}f} [{i['ci_low']:+.{digits}f}, {i['ci_high']:+.{digits}f}]"


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # list-like cells
        return False


def verdict_label(v: str) -> str:
    """The HTML label of verdict ``v``: ``<span class="verdict verdict-...">v</span>``.

    Raises ``ValueError`` naming ``v`` when it is not one of :data:`VERDICT_CLASSES`.
    """
    if not isinstance(v, str) or v not in VERDICT_CLASSES:
        raise ValueError(f"unknown verdict {v!r}; expected one of {sorted(VERDICT_CLASSES)}")
    return f'<span class="verdict {VERDICT_CLASSES[v]}">{html.escape(v)}</span>'


def _verdict_cell(v: Any) -> str:
    return "" if _missing(v) else verdict_label(v)


# Where a header or row label may wrap: after "/" and "_", and after "." before a letter
# ("block/v_rev/all", "final_alignment", "history.language.seed"), not inside a word.
_LABEL_BREAK = re.compile(r"(?<=[/_])(?=.)|(?<=\.)(?=[A-Za-z])")


def _label(v: Any) -> str:
    """A header or row label (already HTML-escaped by the Styler) with its break points."""
    return _LABEL_BREAK.sub("<wbr>", str(v))


def _tidy_index(df: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """``df`` with escaped axis names, a single index name moved into the header row's
    corner, and whether the index is pandas' default 0..n-1 (which says nothing: hidden)."""
    idx, cols = df.index, df.columns
    default = isinstance(idx, pd.RangeIndex) and idx.name is None and idx.start == 0 and idx.step == 1
    # The Styler writes axis names as they are (format_index does not reach them).
    names = [None if n is None else _label(html.escape(str(n))) for n in idx.names]
    col_names = [None if n is None else _label(html.escape(str(n))) for n in cols.names]
    if idx.nlevels == 1 and names[0] is not None and cols.nlevels == 1 and col_names[0] is None:
        # Styler puts an index name on a row of its own under the headers; as the columns'
        # name it sits in the corner of the header row instead.
        col_names, names = names, [None]
    df = df.copy(deep=False)
    df.index = idx.set_names(names)
    df.columns = cols.set_names(col_names)
    return df, default


def table(df: pd.DataFrame, verdict_columns: Iterable[str] = _DEFAULT_VERDICT_COLUMNS,
          wide: bool = False, *, html_columns: Iterable[str] = (), precision: int = 3,
          formats: Mapping[str, str | Callable[[Any], str]] | None = None) -> Styler:
    """``df`` as the book shows a table: a ``Styler`` whose HTML fits the page.

    Cells in ``verdict_columns`` become verdict labels (:func:`verdict_label`; an unknown
    verdict raises ``ValueError``, a missing one shows empty); by default the column
    ``verdict`` where there is one, and naming a column ``df`` lacks raises ``KeyError``.
    Every other cell, and every header, is HTML-escaped, except the columns in
    ``html_columns``, whose cells are trusted HTML (e.g. links to other chapters). Numbers
    get ``precision`` decimals unless ``formats`` gives their column a
    format string (``"{:+.3f}"``) or function; missing values show as an em dash. A named
    single index is labelled in the header row's corner (no row of index names); the
    default 0..n-1 index is hidden. ``wide`` marks a table with many columns (smaller type,
    tighter cells).

    Chaining another ``.format()`` on the result must name its ``subset``: without one it
    replaces every formatter here, verdict labels and escaping included.
    """
    if verdict_columns is _DEFAULT_VERDICT_COLUMNS:
        verdicts = [c for c in verdict_columns if c in df.columns]
    else:
        verdicts = list(verdict_columns)
    html_cols = list(html_columns)
    formats = dict(formats or {})
    named = verdicts + html_cols + list(formats)
    missing = [c for c in named if c not in df.columns]
    if missing:
        raise KeyError(f"columns not in the table: {missing}; it has {list(df.columns)}")
    both = sorted(set(verdicts) & (set(html_cols) | set(formats)), key=str)
    if both:
        raise ValueError(f"columns both verdicts and otherwise formatted: {both}")

    df, default_index = _tidy_index(df)
    classes = f"{TABLE_CLASS} dataframe" + (f" {WIDE_CLASS}" if wide else "")
    styler = Styler(df, cell_ids=False, table_attributes=f'class="{classes}"')
    plain = [c for c in df.columns if c not in set(named)]
    if plain:
        styler.format(subset=plain, precision=precision, na_rep=NA_REP, escape="html")
    for col, fmt in formats.items():
        styler.format(fmt, subset=[col], precision=precision, na_rep=NA_REP, escape="html")
    if html_cols:
        styler.format(subset=html_cols, na_rep=NA_REP, escape=None)
    if verdicts:
        styler.format(_verdict_cell, subset=verdicts, escape=None)
    styler.format_index(_label, escape="html", axis=0, na_rep=NA_REP)
    styler.format_index(_label, escape="html", axis=1, na_rep=NA_REP)
    if default_index:
        styler.hide(axis="index")
    return styler


# CommonMark renders any backslash-escaped ASCII punctuation literally; these are the
# characters that would otherwise start emphasis, code, links, HTML, math or a table.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>$|~&])")
# At the start of an item: what would make it a heading, quote or nested list.
_MD_LEADING = re.compile(r"^(\s*)([#>+\-=]|\d+[.)])")


def _md_escape(text: str) -> str:
    text = " ".join(str(text).split())  # one item, one paragraph
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _MD_LEADING.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], text)


def bullets(lines: Iterable[str]) -> Markdown:
    """``lines`` as a Markdown bullet list, each line one item shown as plain text (Markdown
    and HTML characters escaped; line breaks inside a line become spaces). Replaces a loop
    of ``print("•", line)``, whose monospace lines do not wrap."""
    items = [f"- {_md_escape(line)}" for line in lines]
    return Markdown("\n".join(items))
