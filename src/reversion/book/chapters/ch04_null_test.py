"""Chapter 04, "Null test": the page. Its parameters, the entry point (:func:`run`), tables,
prose and saving; what it computes is :mod:`reversion.analysis.chance`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reversion.analysis import chance
from reversion.analysis.chance import Result
from reversion.book.chapters.common import Replication, SubjectParams, write_chapter
from reversion.infra.checks import check_float, check_int

STEM = "04_null_test"


@dataclass(frozen=True)
class Params(SubjectParams, Replication):
    """Parameters of "Null test"."""

    n_control_seeds: int
    """Control runs: continued training on the alignment mix from theta_S."""
    pair_steps: list
    """Logged steps that form the run-step pairs with the seeds."""
    n_null: int
    """Random directions drawn for each Monte-Carlo null."""
    alpha: float
    """Error rate of the per-run test (Bonferroni over runs)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("n_control_seeds", self.n_control_seeds, 1)
        check_int("n_null", self.n_null, 1000)  # for a p99
        check_float("alpha", self.alpha, 0.0, 0.5, lo_open=True, hi_open=True)
        if self.n_null * self.alpha / self.n_seeds < 50:
            raise ValueError(f"n_null={self.n_null} leaves fewer than 50 null draws beyond the "
                             f"Bonferroni threshold alpha/n_seeds={self.alpha / self.n_seeds:.2g}; raise n_null")
        if not self.pair_steps:
            raise ValueError("pair_steps is empty")
        for s in self.pair_steps:
            check_int("pair_steps", s, 1)


def run(P: Params, progress: bool = True) -> Result:
    """The chapter: history 0's runs, controls and nulls, then the other histories
    (:func:`reversion.analysis.chance.train`)."""
    world = P.make_world()
    return chance.train(P, world, P.subject(world, need_finetune=True), progress)


def history_table(res: Result, alpha: float) -> pd.DataFrame:
    """:func:`reversion.analysis.chance.history_rows` of every history, as a table."""
    return pd.DataFrame(chance.history_rows([res, *res.others], alpha)).set_index("history")


def run_table(res: Result, alpha: float) -> pd.DataFrame:
    """Each run of history 0 against both nulls (:func:`reversion.analysis.chance.per_run_test`)."""
    return chance.per_run_test(res, alpha)


def null_sentence(p99: dict) -> str:
    """How the two nulls compare, in words chosen by their values."""
    iso, mat = p99["isotropic"], p99["matched"]
    r = mat / iso
    if r > 1.1:
        return (f"Here the matched p99 is {r:.1f} times the isotropic one: drift that shares the activations' "
                "geometry lines up with a fixed direction more often than a uniform one, so the matched null is the "
                "threshold.")
    if r < 1 / 1.1:
        return (f"Here the matched p99 is only {r:.2f} times the isotropic one: at this layer the activations' "
                "geometry makes chance alignment with this direction rarer, so the isotropic null is the threshold.")
    return f"Here the two nulls nearly agree (matched / isotropic = {r:.2f}); the larger is the threshold."


def save(P: Params, res: Result) -> dict:
    return write_chapter(STEM, __name__, P, res, chance.metrics(res, P.alpha))
