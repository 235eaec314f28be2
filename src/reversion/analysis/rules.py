"""The rules every verdict follows, fixed before the first build with ten histories.

Everything a verdict depends on besides the data is here: the equivalence margin of each
measure, the error rate of each row, how seeds and histories are pooled, the split the claims
page recomputes every verdict on, and how a bounded quantity's interval respects its bounds.
They were committed before any book was built with at least ten histories and are not tuned
to its numbers; ``metrics.json`` records them beside every result that reads them.

Each margin is the smallest effect the book calls an effect: an interval lying within
``[-margin, +margin]`` says "no effect worth the name" (not reproduced), and an effect or a
contrast counts as present only when its whole interval lies beyond the margin on the predicted
side (:func:`reversion.analysis.verdicts.side`).
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA = 0.05
"""Per row of the claims table, two-sided: every interval is a 95% interval. Not corrected across
rows: each row answers its own question and is read on its own; with 16 rows, about one row in
twenty of a world where every effect were zero could read "consistent" by chance, which the power
simulation (``tests/test_power.py``) bounds per row at 5%. The counting rows (V1-c, V2-a) apply
the null test's own level per pair and per run (its ``alpha``, family-wise over a run's steps)."""

LEVEL = 1 - ALPHA


@dataclass(frozen=True)
class Margin:
    """An equivalence margin: effects within +-``value`` count as no effect."""

    value: float
    unit: str
    """What the value is measured in."""
    why: str
    """Its justification from the paper's effect sizes."""


MARGINS: dict[str, Margin] = {
    # The paper's smallest harmfulness effect is blocking's, 19.0% -> 8.5% (10.5 points); a fifth
    # of it is 2 points -- one request in fifty -- and below it no claim of the paper would change.
    "harmfulness": Margin(0.02, "rate points", "a fifth of the paper's smallest harmfulness effect "
                          "(blocking: 19.0% -> 8.5%, 10.5 points)"),
    # The paper's alignment is 0.429 +- 0.052 after one update: its own +- is 0.05 of cosine, and
    # any effect on alignment the paper reports (0.43, 0.65, the 0.86 drop under block) is > 8x it.
    "cosine": Margin(0.05, "cosine", "the paper's own spread of alignment at step 1 (+-0.052); every "
                     "alignment effect it reports is more than eight times larger"),
    # The paper's Spearman is 0.958; a rank correlation of 0.1 explains 1% of the ranks' variance.
    "correlation": Margin(0.10, "Spearman r", "a rank correlation explaining 1% of the variance; the "
                          "paper's is 0.958"),
    # "Little task cost": the paper reports blocking's task cost as negligible; 5 accuracy points
    # is a quarter of the organism's task gain from theta_S to theta_T and the bound we test.
    "task_accuracy": Margin(0.05, "accuracy points", "the largest change still called 'little' "
                            "(text models: 5% of the baseline's held-out loss)"),
    # The paper's readout is qualitative (v_rev "favours task-engaging openings"); a tenth of a
    # nat moves the odds of an answer opening over the refusal by 10%, the least we call favouring.
    "logit": Margin(0.10, "logit (nats)", "a 10% change in the odds of an answer opening over the refusal; "
                    "the paper's readout is qualitative"),
    # Cumulative reversion is harmfulness above theta_S's level averaged over the run: the same
    # unit as harmfulness, so the same margin.
    "cumulative_reversion": Margin(0.02, "rate, mean over run",
                                   "the harmfulness margin: it is a mean of harmfulness over steps"),
    # A dose slope is the rise per full helpful phase; a slope of 2 points per phase moves the rise
    # by less than the harmfulness margin across the doses tested.
    "dose_slope": Margin(0.02, "rate per full phase",
                         "the harmfulness margin over the whole range of doses"),
}

SHARE_MAX = 0.5
"""H-2: the no-witness lineage's rise as a share of the main lineage's must lie below one half
(its whole interval) for the witness to explain most of the reversion; a share whose interval
lies above one half says most of it happens without any witness (not specific)."""

SPLIT = "even and odd histories"
"""The robustness split, fixed in advance: histories 0, 2, 4, .. against 1, 3, 5, .."""

POOLING = {
    "seeds": "averaged within a history (the history is the unit of replication)",
    "histories": "t-interval over the histories' means (H - 1 degrees of freedom)",
    "bounded": "the t-interval truncated to the quantity's range (a cosine to [-1, 1], a rate to [0, 1], "
               "a difference of either to twice that): truncation leaves the coverage unchanged, since the "
               "true value always lies in the range",
    "correlation": "Spearman within each history, Fisher z per history, a t-interval over histories, "
                   "transformed back",
    "one history": "your checkpoints: a t-interval over fine-tuning seeds",
    "ratio": "Fieller's interval of a ratio of two means paired by history",
}

BOUNDS = {"cosine": (-1.0, 1.0), "rate": (0.0, 1.0), "cosine difference": (-2.0, 2.0),
          "rate difference": (-1.0, 1.0)}
"""The range of each bounded kind of quantity (the ``bounds`` of its interval:
:func:`reversion.core.stats.truncate`)."""


def margin(measure: str) -> float:
    """The margin of ``measure`` (a key of :data:`MARGINS`)."""
    if measure not in MARGINS:
        raise ValueError(f"measure must be one of {sorted(MARGINS)}, got {measure!r}")
    return MARGINS[measure].value


POOLED = {"seeds": "mean", "histories": "t", "bounded": "truncated t", "correlation": "Fisher z",
          "ratio": "Fieller", "one history": "t over seeds"}
""":data:`POOLING` as the labels ``metrics.json`` records (the reasons are here and on the claims page)."""


def record() -> dict:
    """The rules as ``metrics.json`` records them: numbers and labels (the reasons stay in this
    module and on the claims page)."""
    return {"alpha": ALPHA, "level": LEVEL, "split": SPLIT, "pooling": dict(POOLED), "share_max": SHARE_MAX,
            "margins": {k: {"value": m.value, "unit": m.unit} for k, m in MARGINS.items()}}
