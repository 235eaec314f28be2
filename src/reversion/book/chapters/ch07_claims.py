"""Chapter 07, "Claims": the page. It reads the chapters the claims need, has
:mod:`reversion.analysis.claims` judge every claim, and renders the table and the rules (the
rules are the claim functions' docstrings).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.analysis import claims
from reversion.analysis.verdicts import ClaimVerdict
from reversion.book.display import interval
from reversion.infra.results import read_metrics, write_metrics

STEM = "07_claims"
TITLES = {"01_training_history": "Training history", "02_vrev_estimation": "v_rev", "03_alignment": "Alignment",
          "04_null_test": "Null test", "05_which_past": "Which past?", "06_interventions": "Interventions"}


@dataclass(frozen=True)
class Result:
    rows: list[ClaimVerdict]
    counts: dict[str, int]


def run() -> Result:
    """Read what the claims need (a clear error names a chapter that has not run, and results that
    do not belong together are refused), then judge every claim."""
    docs = {stem: read_metrics(stem) for stem in claims.reads()}
    claims.check_consistent(docs)
    rows = claims.evaluate({k: d["metrics"] for k, d in docs.items()})
    return Result(rows, claims.counts(rows))


def save(res: Result) -> dict:
    """``results/07_claims/metrics.json``: every claim's verdict, the measure it reads, its n and
    the evidence its rule read (numbers and the verdicts of the findings it rests on), and the counts."""
    m = {"claims": {r.id: {"verdict": r.verdict, "measure": r.measure, "n": r.n, "chapter": r.chapter,
                           "evidence": r.evidence} for r in res.rows},
         "counts": res.counts}
    write_metrics(STEM, m, {}, code=(__name__,))
    return m


def fmt(a, digits: int = 3) -> str:
    """An interval, a number, a word or a list of them, as the table shows it."""
    if a is None:
        return "undefined"
    if isinstance(a, dict) and "ci_low" in a:
        return interval(a, digits)
    if isinstance(a, float):
        return f"{a:+.{digits}f}"
    if isinstance(a, list):
        return ", ".join(fmt(x, digits) for x in a)
    return str(a)


def ours(r: ClaimVerdict) -> str:
    """What the rule read, in one line."""
    return "; ".join(f"{k} {fmt(v)}" for k, v in r.evidence.items())


def magnitude(r: ClaimVerdict) -> str:
    """'higher' / 'lower' / 'within the paper's ±' -- information beside the verdict."""
    if r.magnitude is None or r.magnitude[1] is None:
        return ""
    what, x, paper, sd = r.magnitude
    word = ("within the paper's ±" if abs(x - paper) <= sd else
            f"{'higher' if x > paper else 'lower'} than the paper's ({x:.3f} vs {paper:.3f})")
    return f"{what}: {word}" if what else word


def table(rows: list[ClaimVerdict], links: bool = False) -> pd.DataFrame:
    """One row per claim; with ``links`` the chapter column holds HTML links to the chapters
    (the executed notebooks are pages beside this one in the book)."""
    out = []
    for r in rows:
        title = TITLES[r.chapter]
        out.append({"id": r.id, "claim": r.claim, "paper": r.paper, "measure": r.measure, "ours": ours(r),
                    "verdict": r.verdict, "magnitude": magnitude(r), "n": r.n,
                    "chapter": f'<a href="{r.chapter}.html">{title}</a>' if links else title})
    return pd.DataFrame(out).set_index("id")


def rules() -> pd.DataFrame:
    """Each claim's rule: its function's docstring."""
    return pd.DataFrame({"rule": {c.id: c.text for c in claims.CLAIMS.values()}})
