"""Chapter 07, "Claims": the page. It reads the chapters the claims need, has
:mod:`reversion.analysis.claims` judge every claim, and renders the table and the rules (the
rules are the claim functions' docstrings).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.analysis import claims, power, robustness
from reversion.analysis import rules as fixed
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
    robust: robustness.Robustness
    """Every verdict on the half-split and leave-one-history-out."""
    power: list[power.RowPower]
    """Each decisive row's minimum detectable effect and the histories the paper's effect needs."""


def run() -> Result:
    """Read what the claims need (a clear error names a chapter that has not run, and results that
    do not belong together are refused), then judge every claim, on all the histories, on each half
    of the split fixed in advance and leaving out each history in turn."""
    docs = {stem: read_metrics(stem) for stem in claims.reads()}
    claims.check_consistent(docs)
    m = {k: d["metrics"] for k, d in docs.items()}
    rows = claims.evaluate(m)
    return Result(rows, claims.counts(rows), robustness.robustness(m), power.table(m))


def save(res: Result) -> dict:
    """``results/07_claims/metrics.json``: every claim's verdict, the measure it reads, its n and
    the evidence its rule read (numbers and the verdicts of the findings it rests on), and the counts."""
    m = {"claims": {r.id: {"verdict": r.verdict, "measure": r.measure, "margin": r.margin, "n": r.n,
                           "n_levels": levels(r.n),
                           "by_construction": r.by_construction, "chapter": r.chapter, "evidence": r.evidence}
                    for r in res.rows},
         "counts": res.counts, "rules": fixed.record(),
         "robustness": {"split": fixed.SPLIT, "n_histories": res.robust.n_histories,
                        "halves": {k: list(v) for k, v in res.robust.halves.items()},
                        "agreement": res.robust.agreement, "leave_one_out_changed": res.robust.loo_changed,
                        "decided_in_both_halves": robustness_counts(res)["agree_decided"]},
         "power": {p.row: {"n": p.n, "sd": p.sd, "margin": p.margin, "mde": p.mde,
                           "paper_effect": p.effect, "histories_needed": p.needed} for p in res.power}}
    write_metrics(STEM, m, {}, code=(__name__,))
    return m


def levels(n: str) -> dict | None:
    """``"10×2"`` as ``{"histories": 10, "seeds": 2}`` (None where the row has no n: a count or a
    claim the organism cannot test)."""
    if "×" not in n:
        return None
    h, k = n.split("×")
    return {"histories": int(h) if h.isdigit() else None, "seeds": int(k) if k.isdigit() else None}


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
        out.append({"id": r.id, "claim": r.claim, "paper": r.paper, "measure": r.measure, "margin": r.margin,
                    "ours": ours(r), "verdict": r.verdict, "magnitude": magnitude(r), "n": r.n,
                    "chapter": f'<a href="{r.chapter}.html">{title}</a>' if links else title})
    return pd.DataFrame(out).set_index("id")


def rules() -> pd.DataFrame:
    """Each claim's rule: its function's docstring."""
    return pd.DataFrame({"rule": {c.id: c.text for c in claims.CLAIMS.values()}})


def margins() -> pd.DataFrame:
    """The equivalence margins, fixed before the data (:data:`reversion.analysis.rules.MARGINS`)."""
    return pd.DataFrame({k: {"margin": m.value, "unit": m.unit, "why": m.why} for k, m in fixed.MARGINS.items()}).T


def robustness_table(res: Result) -> pd.DataFrame:
    """Each row's verdict on the even and the odd histories, whether the halves agree (decided or
    both inconclusive), and how many leave-one-history-out recomputations change it."""
    r = res.robust
    return pd.DataFrame({"verdict": {x.id: x.verdict for x in res.rows},
                         "even histories": {k: v[0] for k, v in r.halves.items()},
                         "odd histories": {k: v[1] for k, v in r.halves.items()},
                         "halves": r.agreement,
                         f"leave-one-out changes (of {r.n_histories})": r.loo_changed})


def _num(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def power_table(res: Result) -> pd.DataFrame:
    """Each decisive row: its interval's spread over histories, the margin or threshold it must
    clear, the smallest effect it detects now (80% power), the paper's effect on that scale and
    the histories that effect (or, where the paper gives none, twice the margin) would need."""
    return pd.DataFrame([{"row": p.row, "decides on": p.what, "histories": p.n, "sd over histories": _num(p.sd),
                          "margin or threshold": _num(p.margin), "detectable now (80%)": _num(p.mde),
                          "paper's effect": _num(p.effect) if p.effect is not None else "none stated (2 × margin)",
                          "histories needed": p.needed if p.needed is not None else "—"}
                         for p in res.power]).set_index("row")


def robustness_counts(res: Result) -> dict[str, int]:
    """:func:`reversion.analysis.robustness.counts` of the page's result."""
    return robustness.counts(res.rows, res.robust)
