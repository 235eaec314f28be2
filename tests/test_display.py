"""reversion.book.display: verdict labels, the book's tables and result lists.

What the browser shows of them (that they fit the page) is checked in
``tests/browser_checks.py``; here, the HTML and Markdown they produce.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reversion.book import display

ROOT = Path(__file__).resolve().parents[1]
CSS = ROOT / "book" / "_static" / "reversion.css"

try:
    from reversion.analysis.verdicts import VERDICTS
except ImportError:  # before the verdicts moved out of the book's chapters
    from reversion.book.chapters.verdicts import VERDICTS


def test_every_verdict_has_a_class_the_stylesheet_defines():
    assert set(display.VERDICT_CLASSES) == set(VERDICTS)
    css = CSS.read_text()
    assert re.search(r"^\.verdict\s*\{", css, flags=re.MULTILINE)
    classes = list(display.VERDICT_CLASSES.values())
    assert len(set(classes)) == len(classes)
    for cls in classes:
        assert re.fullmatch(r"[a-z][a-z0-9-]*", cls), cls
        assert re.search(rf"^\.{cls}\s*\{{[^}}]*background-color", css, flags=re.MULTILINE), cls


@pytest.mark.parametrize("verdict", sorted(display.VERDICT_CLASSES))
def test_verdict_label_carries_its_text_and_class(verdict):
    label = display.verdict_label(verdict)
    assert label == f'<span class="verdict {display.VERDICT_CLASSES[verdict]}">{verdict}</span>'


@pytest.mark.parametrize("bad", ["Consistent", "consistent ", "passed", "", None, 1.0])
def test_unknown_verdict_raises_naming_it(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        display.verdict_label(bad)


def test_verdict_text_is_escaped(monkeypatch):
    monkeypatch.setitem(display.VERDICT_CLASSES, "<b>odd</b> & more", "verdict-odd")
    label = display.verdict_label("<b>odd</b> & more")
    assert "<b>" not in label and "&lt;b&gt;odd&lt;/b&gt; &amp; more" in label


def _claims() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["C1", "C2", "C3"],
            "claim": ["fine-tuning <reverts> the model", "the drift is along v_rev", "scale & family"],
            "ours": ["+0.123 [+0.045, +0.201]", "+0.010 [-0.020, +0.040]", None],
            "score": [0.123456, np.nan, 2.0],
            "verdict": ["consistent", "consistent but not specific", "not testable here"],
            "chapter": ['<a href="01_training_history.html">01</a>', "02", "03"],
        }
    ).set_index("id")


def test_table_shows_verdicts_as_labels_and_escapes_the_rest():
    html = display.table(_claims(), html_columns=["chapter"]).to_html()
    for v in ("consistent", "consistent but not specific", "not testable here"):
        assert f'<span class="verdict {display.VERDICT_CLASSES[v]}">{v}</span>' in html
    assert "fine-tuning &lt;reverts&gt; the model" in html and "<reverts>" not in html
    assert "scale &amp; family" in html
    assert '<a href="01_training_history.html">01</a>' in html  # trusted HTML column
    assert "0.123<" in html and display.NA_REP in html  # 3 decimals; missing values
    assert re.search(r'<table id="T_\w+" class="reversion-table dataframe">', html)


def test_table_labels_the_index_in_the_header_row():
    html = display.table(_claims()).to_html()
    thead = re.search(r"<thead>(.*?)</thead>", html, flags=re.DOTALL).group(1)
    assert thead.count("<tr>") == 1, thead  # no row of index names under the headers
    assert re.search(r'<th class="index_name level0" >id</th>', thead)
    assert '<th class="row_heading level0 row0" >C1</th>' in html
    # The caller's frame is untouched.
    claims = _claims()
    display.table(claims)
    assert claims.index.name == "id" and claims.columns.name is None


def test_table_labels_break_between_parts_and_axis_names_are_escaped():
    df = pd.DataFrame({"harm_untrained": [1]}, index=pd.Index(["block/v_rev/all"], name="<arm>"))
    html = display.table(df).to_html()
    assert ">harm_<wbr>untrained</th>" in html
    assert ">block/<wbr>v_<wbr>rev/<wbr>all</th>" in html
    assert ">&lt;arm&gt;</th>" in html and "<arm>" not in html
    multi = df.set_axis(pd.MultiIndex.from_tuples([("a", "b&c")], names=["x", "y<"]), axis=1)
    html = display.table(multi).to_html()
    assert ">y&lt;</th>" in html and ">b&amp;c</th>" in html and ">&lt;arm&gt;</th>" in html


def test_table_hides_the_default_index_and_marks_wide_tables():
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    html = display.table(df, wide=True).to_html()
    assert "row_heading" not in html and "blank" not in html
    assert 'class="reversion-table dataframe reversion-wide"' in html
    # A meaningful unnamed index stays.
    assert "row_heading" in display.table(df.set_axis(["p", "q"])).to_html()


def test_table_without_verdicts_and_with_other_verdict_columns():
    df = pd.DataFrame({"a": [0.5], "specific?": ["inconclusive"], "pattern": ["not reproduced"]})
    assert "verdict" not in display.table(df).to_html()  # no verdict column: nothing to label
    html = display.table(df, verdict_columns=["specific?", "pattern"]).to_html()
    assert 'class="verdict verdict-inconclusive"' in html
    assert 'class="verdict verdict-not-reproduced"' in html


def test_table_refuses_unknown_verdicts_and_columns():
    bad = _claims().assign(verdict=["consistent", "probably", "inconclusive"])
    with pytest.raises(ValueError, match="'probably'"):
        display.table(bad).to_html()
    with pytest.raises(KeyError, match="nope"):
        display.table(_claims(), verdict_columns=["nope"])
    with pytest.raises(KeyError, match="nope"):
        display.table(_claims(), html_columns=["nope"])


def test_table_formats_columns_and_missing_verdicts():
    df = pd.DataFrame({"p": [0.000123, 0.5], "verdict": ["inconclusive", None]})
    html = display.table(df, formats={"p": "{:.2g}"}).to_html()
    assert "0.00012<" in html and "0.5<" in html
    assert re.search(r'<td class="data row1 col1" ></td>', html)  # no verdict: empty cell


def test_bullets_is_a_markdown_list_of_plain_text():
    md = display.bullets([
        "v_rev raises harmfulness (+0.1 [+0.0, +0.2]) and *more*",
        "<b>bold</b> & $x$ `code`",
        "- not a nested item",
        "3. not an ordered item",
        "two\nlines",
    ])
    assert md.data.splitlines() == [
        r"- v\_rev raises harmfulness (+0.1 \[+0.0, +0.2\]) and \*more\*",
        r"- \<b\>bold\</b\> \& \$x\$ \`code\`",
        r"- \- not a nested item",
        r"- 3\. not an ordered item",
        "- two lines",
    ]
    assert md._repr_markdown_() == md.data


def test_bullets_render_as_the_text_given():
    """Rendered as CommonMark (what the book does with a Markdown output), each item reads
    exactly as the line given, in a list of as many items."""
    markdown_it = pytest.importorskip("markdown_it")
    lines = ["v_rev *x* [a](b) <i>y</i> & $z$ `w` | ~q~", "# heading?", "> quote?", "1) one", "+ plus"]
    rendered = markdown_it.MarkdownIt("commonmark").render(display.bullets(lines).data)
    from bs4 import BeautifulSoup

    items = BeautifulSoup(rendered, "html.parser").select("ul > li")
    assert [li.get_text() for li in items] == lines
    assert all(not li.find_all(True) for li in items)  # no markup made from the text


def test_display_imports_no_model_code():
    code = (
        "import sys; import reversion.book.display; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'scipy') "
        "or m.startswith('reversion.core')]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_interval_is_written_one_way():
    assert display.interval({"mean": 0.1234, "ci_low": 0.0456, "ci_high": 0.2012}) == "+0.123 [+0.046, +0.201]"
    assert display.interval({"mean": -0.5, "ci_low": None, "ci_high": None}, 2) == "-0.50"
    assert display.interval(None) == display.NA_REP
    assert display.interval({"mean": None, "ci_low": None, "ci_high": None}) == display.NA_REP  # undefined mean
