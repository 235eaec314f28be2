"""Chapter 06's verdicts on planted chapter metrics whose right verdict is known.

The metric dicts have exactly the keys the chapters write: chapter 05's come out of
``chapters.interventions.metrics`` itself, run on hand-built runs with planted per-seed
values (so its paired intervals are the real ones); chapters 02-04 are built by hand and
checked key for key against the real ``save``/``metrics`` on hand-built results.

* everything planted in the paper's direction -> every row ``reproduced``;
* everything planted the wrong way -> every row ``not reproduced``;
* one effect wrong -> exactly the rows that depend on it change;
* borderline cases (right sign, interval crossing zero; some runs; half the pairs) ->
  ``partly`` for the rule concerned;
* text checkpoints (no task accuracy): the task cost row reads the held-out loss;
* results that do not come from the same stages (world, subject, v_rev estimate, layer)
  are refused before any verdict.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from reversion.book.chapters import alignment as ch03
from reversion.book.chapters import claims
from reversion.book.chapters import interventions as ch05
from reversion.book.chapters import null_test as ch04
from reversion.book.chapters import vrev_estimation as ch02
from reversion.book.chapters.claims import NOT, PARTLY, REPRODUCED
from reversion.core import stats
from reversion.core.directions import Directions
from reversion.infra.results import _clean, write_metrics
from reversion.stages.estimate import VRevEstimate, summary
from reversion.stages.finetune import FinetuneRun
from reversion.subjects.checkpoints.subject import TEXT_TASK
from reversion.subjects.organism.subject import OrganismSubject
from reversion.subjects.organism.worlds import make_world

T, LAYER, N_SEEDS, WIDTH, H_S = 20, 1, 3, 64, 0.10
ROW_IDS = ["V1-a", "V1-b", "V1-c", "V1-d", "V1-e", "V1-f", "V2-a", "V2-b", "V2-c", "V2-d", "V2-e",
           "V2-f", "V2-g"]


@pytest.fixture(autouse=True)
def _isolated(isolated):
    """Cache and results in ``tmp_path`` (``cache/``, ``results/``) for every test."""


@pytest.fixture(scope="module")
def world():
    return make_world("smoke", {"finetune": {"steps": T}, "n_seeds": N_SEEDS})


# --------------------------------------------------------------------------- planted worlds

BASE05 = {"align": [0.60, 0.66, 0.70], "harm": [0.30, 0.34, 0.32], "acc": [0.80, 0.82, 0.78]}

GOOD = {
    # chapter 03: alignment at steps 1 and 20 (per seed), rank correlations
    "a1": [0.55, 0.60, 0.65], "a20": [0.70, 0.75, 0.80], "spearman": 0.9, "partial": 0.4,
    # chapter 04: nulls, pairs, per-run test
    "iso": 0.29, "matched": 0.40, "pairs_n": 9, "above_iso": 9, "above_matched": 8,
    "runs_n": 3, "runs_sig": 3,
    # chapter 02: readout
    "readout": 0.8,
    # chapter 05: per-seed final alignment, harmfulness and task accuracy of each variant
    "v05": {
        "baseline": BASE05,
        "block": {"align": [-0.20, -0.12, -0.25], "harm": [0.12, 0.15, 0.11], "acc": [0.79, 0.82, 0.77]},
        "push": {"align": [0.80, 0.86, 0.88], "harm": [0.50, 0.56, 0.52], "acc": [0.78, 0.80, 0.77]},
        "projection": {"align": [0.30, 0.35, 0.32], "harm": [0.20, 0.22, 0.21], "acc": [0.79, 0.81, 0.78]},
        "rehearsal": {"align": [0.50, 0.55, 0.60], "harm": [0.20, 0.23, 0.21], "acc": [0.80, 0.81, 0.79]},
    },
}


def _plus(xs, ds):
    return [round(x + d, 10) for x, d in zip(xs, ds)]


BAD = copy.deepcopy(GOOD)
BAD.update({"a1": [0.05, 0.10, 0.00], "a20": [0.10, 0.00, 0.05], "spearman": -0.3, "partial": -0.2,
            "above_iso": 0, "above_matched": 0, "runs_sig": 0, "readout": -0.4})
BAD["v05"]["block"] = {"align": _plus(BASE05["align"], [0.20, 0.25, 0.22]),
                       "harm": _plus(BASE05["harm"], [0.10, 0.12, 0.11]),
                       "acc": _plus(BASE05["acc"], [-0.30, -0.28, -0.31])}
BAD["v05"]["push"] = {"align": _plus(BASE05["align"], [-0.20, -0.25, -0.22]),
                      "harm": _plus(BASE05["harm"], [-0.10, -0.12, -0.11]), "acc": BASE05["acc"]}
BAD["v05"]["rehearsal"] = {"align": BASE05["align"], "harm": _plus(BASE05["harm"], [0.10, 0.12, 0.11]),
                           "acc": BASE05["acc"]}


def _ev(h: float, acc: float, task: str, loss: float | None = None) -> dict:
    return {"harmfulness": h, "non_refusal": h, "harmful_content": h, "exact_match": h,
            "task_accuracy": {task: acc}, "task_loss": {task: 1.0 - acc if loss is None else loss},
            "over_refusal": {task: 0.0}}


# Text checkpoints as chapter 05 sees them: the task is the held-out pairs' loss, no accuracy.
TEXT_SUBJECT = SimpleNamespace(task_key=lambda ft: TEXT_TASK, has_task_accuracy=False)


def _run(evals: dict) -> FinetuneRun:
    return FinetuneRun(path=Path("."), probe_means=torch.zeros(1), losses=[], evals=evals, seconds=0.0)


def chapter05(world, v05: dict, subject=None) -> dict:
    """Chapter 05's metrics from runs whose step-T values are planted per seed.

    Every run starts at theta_S's harmfulness H_S, so its cumulative reversion is
    (harmfulness_T - H_S) / 2 (trapezoid over 0..T, divided by T). ``subject``: the
    organism of ``world`` by default; a variant's ``loss`` (else 1 - accuracy) is its task loss."""
    subject = OrganismSubject(world.history) if subject is None else subject
    task, L1 = subject.task_key(world.finetune), world.history.model.n_layer + 1
    runs, cos = {}, {}
    for v in ch05.VARIANTS:
        p = v05[v]
        losses = p.get("loss", [None] * N_SEEDS)
        runs[v] = [_run({0: _ev(H_S, 0.5, task), T: _ev(h, a, task, x)})
                   for h, a, x in zip(p["harm"], p["acc"], losses)]
        c = np.zeros((N_SEEDS, T + 1, L1))
        c[:, T, LAYER] = p["align"]
        cos[v] = c
    res = ch05.Result(world, SimpleNamespace(layer=LAYER), runs, cos, {1.0: runs["block"]},
                      {1.0: cos["block"]}, H_S, subject)
    P = ch05.Params(world="smoke", world_overrides={}, n_seeds=N_SEEDS, block_strength=1.0,
                    push_strength=1.0, rehearsal_fraction=0.25, intervention_layers=[],
                    sweep_strengths=[1.0], n_sweep_seeds=N_SEEDS)
    return ch05.metrics(P, res)


def chapter03(s: dict, world) -> dict:
    """Planted per-run values, one history per value (history-level summaries, as the chapter's)."""
    def agg(xs):
        return stats.nested([[x] for x in xs])
    L1 = world.history.model.n_layer + 1
    mid = lambda f: agg(np.array(s["a1"]) * (1 - f) + np.array(s["a20"]) * f)  # noqa: E731
    return {
        "layer": LAYER, "layers": [LAYER] * len(s["a1"]), "T": T, "judge_split": None,
        "n_histories": len(s["a1"]), "n_seeds": 1,
        "alignment": {"1": agg(s["a1"]), "5": mid(0.2), "10": mid(0.5), "20": agg(s["a20"])},
        "alignment_min_over_seeds": {"1": float(min(s["a1"])), "5": 0.0, "10": 0.0,
                                     "20": float(min(s["a20"]))},
        "final_alignment": agg(s["a20"]),
        "final_alignment_by_layer": {str(l): agg(s["a20"]) for l in range(L1)},
        "control_alignment": {name: {"1": agg([0.01, -0.02, 0.0]), str(T): agg([0.02, 0.0, -0.01])}
                              for name in ("v_P", "r_S")},
        "spearman_alignment_harmfulness": s["spearman"],
        "partial_spearman_given_step": s["partial"],
        "within_step_spearman": 0.3,
        "paper": {"alignment": {k: {"mean": m, "std": sd} for k, (m, sd) in ch03.PAPER.items()},
                  "spearman_alignment_harmfulness": 0.958},
    }


def chapter04(s: dict) -> dict:
    return {
        "layer": LAYER, "width": WIDTH,
        "null": {"isotropic_p99": s["iso"], "isotropic_mc_p99": s["iso"] + 0.001, "matched_p99": s["matched"],
                 "threshold_p99": max(s["iso"], s["matched"]),
                 "threshold_null": "matched" if s["matched"] >= s["iso"] else "isotropic",
                 "control_runs_alignment": stats.aggregate([0.05, 0.02, 0.0, 0.03]),
                 "control_runs_max": 0.05},
        "pairs": {"n": s["pairs_n"], "above_isotropic": s["above_iso"], "above_matched": s["above_matched"],
                  "above_threshold": min(s["above_iso"], s["above_matched"]),
                  "above_control_max": s["above_iso"], "steps": [1, 5, 20]},
        "per_run": {"n": s["runs_n"], "significant": s["runs_sig"], "alpha": 0.01, "threshold": 0.45},
        "sign_consistency_p": 0.125,
        "runs_above_every_control": s["runs_sig"],
        "paper": {"pairs_above_isotropic": "24 of 24"},
        "by_history": [{"history": 0, "layer": LAYER, "threshold": max(s["iso"], s["matched"]),
                        "pairs above": min(s["above_iso"], s["above_matched"]), "pairs": s["pairs_n"],
                        "runs significant": s["runs_sig"], "runs": s["runs_n"]}],
        "n_histories": 1, "n_seeds": s["runs_n"],
        "histories_all_pairs_above": int(min(s["above_iso"], s["above_matched"]) == s["pairs_n"]),
        "histories_all_runs_significant": int(s["runs_sig"] == s["runs_n"]),
    }


def _readout_entry(x: float) -> dict:
    return {"top": [["c1", 1.5], ["c2", 1.2], ["X0", 1.0]], "bottom": [["sorry", -1.1], ["help", -0.9], ["c3", -0.5]],
            "compliance_minus_refusal": x, "harmful_minus_refusal": x + 0.1}


def chapter02(s: dict) -> dict:
    row = {"layer": 0, "displacement": 0.1, "relative displacement": 0.2, "stability mean": 0.9,
           "stability std": 0.01, "cos(v_rev, v_P)": 0.5, "cos(v_rev, r_S)": 0.4}
    return {
        "layer": LAYER, "layer_reason": "layer 1: largest relative displacement", "width": WIDTH,
        "stability": stats.aggregate([0.95, 0.96, 0.97]),
        "stability_by_n_probes": {"4": stats.aggregate([0.6, 0.7]), "8": stats.aggregate([0.8, 0.9])},
        "displacement_norm": 0.3, "relative_displacement": 0.5, "cos_v_rev_v_P": 0.6, "cos_v_rev_r_S": 0.2,
        "readout": {"v_rev": _readout_entry(s["readout"]), "-r_S": _readout_entry(0.1)},
        "by_layer": [{**row, "layer": l} for l in range(3)],
        "across_histories": {"n": 2, "layers": [LAYER, LAYER], "cos_v_rev_v_P": stats.nested([[0.6], [0.6]]),
                             "cos_v_rev_r_S": stats.nested([[0.2], [0.2]]), "stability": stats.nested([[0.95], [0.95]])},
    }


def chapter01() -> dict:
    a = stats.aggregate([0.2, 0.3])
    return {"width": WIDTH, "isotropic_p99": 0.29, "finetune_task": "sort", "T": T,
            "harmfulness": {"theta_P": 0.0, "theta_H": 0.9, "theta_S": H_S, "finetuned": a}}


def planted(s: dict, world) -> dict[str, dict]:
    return {"02": chapter02(s), "03": chapter03(s, world), "04": chapter04(s), "05": chapter05(world, s["v05"])}


def verdicts(m: dict) -> dict[str, str]:
    return {r.id: r.verdict for r in claims.build_rows(m)}


# --------------------------------------------------------------------------- the key sets are the chapters'


def _keys(x):
    if isinstance(x, dict):
        return {k: _keys(v) for k, v in x.items()}
    if isinstance(x, list) and x and isinstance(x[0], dict):
        return [_keys(x[0])]
    return None


def test_hand_built_chapter03_has_the_keys_of_its_metrics(world):
    g = np.random.default_rng(0)
    grid = [0, 1, 2, 3, 6, T]
    L1 = world.history.model.n_layer + 1
    runs = [[_run({s: {"harmfulness": float(g.uniform())} for s in grid}) for _ in range(N_SEEDS)] for _ in range(2)]
    cos = {k: g.uniform(-1, 1, size=(2, N_SEEDS, T + 1, L1)) for k in ("v_rev", "v_P", "r_S")}
    res = ch03.Result(world, [SimpleNamespace(layer=LAYER)] * 2, runs, cos, [OrganismSubject(world.history)] * 2)
    P = ch03.Params(world="smoke", world_overrides={}, n_seeds=N_SEEDS, n_histories=2, n_probe=16, position="last")
    assert _keys(chapter03(GOOD, world)) == _keys(ch03.metrics(P, res))


def test_hand_built_chapter04_has_the_keys_of_its_metrics(world):
    g = np.random.default_rng(1)
    steps = [1, 5, 20]
    rows = [{"seed": s, "step": t, "alignment": float(g.uniform(0.2, 0.8))} for s in range(N_SEEDS) for t in steps]
    pairs = pd.DataFrame(rows)
    pairs["above isotropic p99"] = pairs["alignment"] > 0.29
    pairs["above matched p99"] = pairs["alignment"] > 0.4
    nulls = {"isotropic": g.normal(0, 0.12, 2000), "matched": g.normal(0, 0.15, 2000)}
    est = SimpleNamespace(layer=LAYER, directions=SimpleNamespace(v_rev=torch.zeros(3, WIDTH)))
    res = ch04.Result(world, est, [None] * N_SEEDS, [None] * 2, pairs, nulls,
                      {"isotropic": 0.29, "isotropic_mc": 0.3, "matched": 0.4},
                      g.uniform(-0.1, 0.1, size=(2, len(steps))), steps, OrganismSubject(world.history))
    P = ch04.Params(world="smoke", world_overrides={}, n_seeds=N_SEEDS, n_control_seeds=2, pair_steps=steps,
                    n_null=20000, alpha=0.01, n_histories=1)
    assert _keys(chapter04(GOOD)) == _keys(ch04.metrics(P, res))


def test_hand_built_chapter02_has_the_keys_it_saves(world, tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = lambda: torch.nn.functional.normalize(torch.randn(3, WIDTH, generator=g, dtype=torch.float64), dim=-1)  # noqa: E731
    d = Directions(rows(), rows(), rows(), torch.rand(3, dtype=torch.float64) + 0.1,
                   torch.rand(3, dtype=torch.float64) + 1.0,
                   {"layer": LAYER, "layer_reason": "layer 1: because", "position": "last"})
    est = VRevEstimate(d, {}, np.full((10, 3), 0.95), tmp_path, [])
    res = SimpleNamespace(world=world, est=est, layers=pd.DataFrame(summary(est)["rows"]).set_index("layer"),
                          by_size={4: stats.aggregate([0.6, 0.7]), 8: stats.aggregate([0.8, 0.9])},
                          readout={"v_rev": _readout_entry(0.8), "-r_S": _readout_entry(0.1)},
                          subject=OrganismSubject(world.history), ests=[est, est])
    P = ch02.Params(world="smoke", world_overrides={}, n_probe=16, position="last", n_boot=10,
                    min_stability=0.9, probe_sizes=[4, 8], top_k=3, n_histories=2)
    assert _keys(chapter02(GOOD)) == _keys(ch02.save(P, res))


# --------------------------------------------------------------------------- whole tables


def test_everything_planted_right_is_reproduced(world):
    rows = claims.build_rows(planted(GOOD, world))
    assert [r.id for r in rows] == ROW_IDS
    assert {r.id: r.verdict for r in rows} == {i: REPRODUCED for i in ROW_IDS}
    assert claims.counts(rows) == {REPRODUCED: 13, PARTLY: 0, NOT: 0}
    assert set(claims.RULES) == set(ROW_IDS)  # every verdict has its rule stated


def test_everything_planted_wrong_is_not_reproduced(world):
    m = planted(BAD, world)
    # the planted effects really are the wrong way round in the chapter's own numbers
    pv = m["05"]["paired_vs_baseline"]
    assert pv["block"]["harmfulness"]["ci_low"] > 0 and pv["push"]["final_alignment"]["ci_high"] < 0
    assert m["05"]["ordering"] == {"alignment": False, "harmfulness": False}
    rows = claims.build_rows(m)
    assert {r.id: r.verdict for r in rows} == {i: NOT for i in ROW_IDS}
    assert claims.counts(rows) == {REPRODUCED: 0, PARTLY: 0, NOT: 13}


def _mutate(s: dict, **changes) -> dict:
    s = copy.deepcopy(s)
    for key, value in changes.items():
        if "__" in key:
            variant, field = key.split("__")
            s["v05"][variant][field] = value
        else:
            s[key] = value
    return s


def test_block_raising_harmfulness_fails_exactly_the_rows_that_need_it(world):
    s = _mutate(GOOD, block__harm=_plus(BASE05["harm"], [0.10, 0.12, 0.11]))
    v = verdicts(planted(s, world))
    changed = {k: x for k, x in v.items() if x != REPRODUCED}
    # alignment still drops significantly: V2-d is half there; ordering holds for alignment only
    assert changed == {"V1-e": NOT, "V2-d": PARTLY, "V2-f": PARTLY}


def test_no_pair_above_the_null_fails_only_the_pairs_row(world):
    v = verdicts(planted(_mutate(GOOD, above_iso=0, above_matched=0), world))
    assert {k: x for k, x in v.items() if x != REPRODUCED} == {"V1-c": NOT}


# The right sign without the significance (or the strength) the "reproduced" rule asks for.
PARTLY_CASES = {
    "V1-a: above the isotropic p99 only": (dict(a1=[0.32, 0.33, 0.34]), {"V1-a": PARTLY}),
    "V1-b: above the matched p99 but not above step 1": (dict(a20=[0.45, 0.50, 0.55]), {"V1-b": PARTLY}),
    "V1-c: exactly half the pairs": (dict(pairs_n=8, above_iso=4), {"V1-c": PARTLY}),
    "V1-d: block alignment mean below zero, CI crossing": (
        dict(block__align=_plus(BASE05["align"], [-0.5, 0.3, -0.1])), {"V1-d": PARTLY, "V2-d": PARTLY}),
    "V1-e: block harmfulness mean below zero, CI crossing": (
        dict(block__harm=_plus(BASE05["harm"], [-0.2, 0.1, -0.05])), {"V1-e": PARTLY, "V2-d": PARTLY}),
    "V1-f: task cost of 0.07": (dict(block__acc=_plus(BASE05["acc"], [-0.07, -0.06, -0.08])), {"V1-f": PARTLY}),
    "V1-f: small mean, wide CI": (dict(block__acc=_plus(BASE05["acc"], [0.10, -0.10, 0.02])), {"V1-f": PARTLY}),
    "V2-a: some runs significant": (dict(runs_sig=1), {"V2-a": PARTLY}),
    "V2-c: no rise beyond the common trend": (dict(spearman=0.8, partial=-0.1), {"V2-c": PARTLY}),
    "V2-c: partial undefined": (dict(spearman=0.8, partial=None), {"V2-c": PARTLY}),
    "V2-e: push harmfulness mean above zero, CI crossing": (
        dict(push__harm=_plus(BASE05["harm"], [0.3, -0.1, 0.1])), {"V2-e": PARTLY}),
    "V2-f: harmfulness ordering broken by push": (
        dict(push__harm=_plus(BASE05["harm"], [0.25, -0.2, -0.08])), {"V2-e": PARTLY, "V2-f": PARTLY}),
    "V2-g: rehearsal mean below zero, CI crossing": (
        dict(rehearsal__harm=_plus(BASE05["harm"], [-0.1, 0.06, -0.02])), {"V2-g": PARTLY}),
}


@pytest.mark.parametrize("case", sorted(PARTLY_CASES))
def test_borderline_cases_are_partly(case, world):
    changes, expected = PARTLY_CASES[case]
    m = planted(_mutate(GOOD, **changes), world)
    v = verdicts(m)
    assert {k: x for k, x in v.items() if x != REPRODUCED} == expected
    rows = claims.build_rows(m)
    c = claims.counts(rows)
    assert sum(c.values()) == len(rows) == 13
    assert c[PARTLY] == len(expected)


def test_the_partly_intervals_really_cross_zero(world):
    """The planted borderline cases are borderline in the chapter's own numbers."""
    m = planted(_mutate(GOOD, block__align=_plus(BASE05["align"], [-0.5, 0.3, -0.1])), world)
    d = m["05"]["paired_vs_baseline"]["block"]["final_alignment"]
    assert d["mean"] < 0 < d["ci_high"] and d["ci_low"] < 0


@pytest.mark.parametrize("changes,row,verdict", [
    (dict(spearman=0.5, partial=0.01), "V2-c", REPRODUCED),   # r >= 0.5 is inclusive
    (dict(spearman=0.49, partial=0.4), "V2-c", NOT),
    (dict(spearman=None, partial=None), "V2-c", NOT),
    (dict(pairs_n=8, above_iso=3), "V1-c", NOT),               # below half
    (dict(a1=[0.20, 0.25, 0.30]), "V1-a", NOT),                # mean 0.25 < isotropic p99 0.29
    (dict(a20=[0.30, 0.35, 0.38]), "V1-b", NOT),               # below the matched p99
    (dict(readout=0.0), "V2-b", NOT),                          # no preference is not a preference
    (dict(block__acc=_plus(BASE05["acc"], [-0.2, -0.1, -0.15])), "V1-f", NOT),
])
def test_rule_boundaries(changes, row, verdict, world):
    assert verdicts(planted(_mutate(GOOD, **changes), world))[row] == verdict


def test_a_run_shorter_than_20_steps_cannot_reproduce_V1_b(world):
    m = planted(GOOD, world)
    del m["03"]["alignment"]["20"], m["03"]["alignment"]["10"]
    rows = {r.id: r for r in claims.build_rows(m)}
    assert rows["V1-b"].verdict == NOT and rows["V1-b"].ours == "T < 20"
    assert rows["V1-a"].verdict == REPRODUCED


def test_V1_a_needs_every_seed_above_the_isotropic_null(world):
    # The mean clears both nulls, but one seed sits below the isotropic p99 (0.29).
    s = _mutate(GOOD, a1=[0.95, 0.90, 0.25])
    assert min(s["a1"]) < s["iso"] and stats.aggregate(s["a1"])["mean"] > s["matched"]
    assert verdicts(planted(s, world))["V1-a"] == PARTLY


def test_table_lists_every_row_with_its_chapter(world):
    df = claims.table(claims.build_rows(planted(GOOD, world)))
    assert list(df.index) == ROW_IDS
    assert set(df.columns) == {"claim", "paper", "ours", "verdict", "magnitude", "chapter"}
    assert df.loc["V1-c", "chapter"] == "04 · null test"
    assert df.loc["V2-b", "chapter"] == "02 · vrev estimation"
    linked = claims.table(claims.build_rows(planted(GOOD, world)), links=True)
    assert linked.loc["V1-c", "chapter"] == '<a href="04_null_test.html">04 · null test</a>'


def test_magnitude_words():
    assert claims.magnitude(0.80, 0.429, 0.052).startswith("higher")
    assert claims.magnitude(0.40, 0.429, 0.052) == "within the paper's ±"
    assert claims.magnitude(0.10, 0.30).startswith("lower")
    assert claims.magnitude(None, 0.3) == ""


def test_counts_of_a_mixed_table():
    rows = [claims.Row(str(i), "", "", "", v, "03") for i, v in enumerate([REPRODUCED, PARTLY, PARTLY, NOT])]
    assert claims.counts(rows) == {REPRODUCED: 1, PARTLY: 2, NOT: 1}
    assert claims.counts([]) == {REPRODUCED: 0, PARTLY: 0, NOT: 0}


# --------------------------------------------------------------------------- load_all


def _write_all(m: dict) -> None:
    """As the chapters write them: one subject throughout, one estimate in chapters 02-05."""
    for k, stem in claims.CHAPTERS.items():
        stages = {"subject": "organism-0", **({"estimate": "est-0"} if k != "01" else {})}
        write_metrics(stem, m[k], {"world": "smoke"}, seeds=list(range(N_SEEDS)), subject={"kind": "organism"},
                      stages=stages)


def test_load_all_reads_every_chapter_back(world, tmp_path):
    m = {"01": chapter01(), **planted(GOOD, world)}
    _write_all(m)
    assert (tmp_path / "results" / "05_interventions" / "metrics.json").is_file()
    back = claims.load_all()
    assert set(back) == set(claims.CHAPTERS)
    for k in claims.CHAPTERS:  # what was written, as written (12 significant digits)
        assert back[k] == json.loads(json.dumps(_clean(m[k]))), k
    assert verdicts(back) == verdicts(m) == {i: REPRODUCED for i in ROW_IDS}


@pytest.mark.parametrize("missing", sorted(claims.CHAPTERS))
def test_load_all_names_the_chapter_that_has_not_run(missing, world, tmp_path):
    m = {"01": chapter01(), **planted(GOOD, world)}
    _write_all(m)
    stem = claims.CHAPTERS[missing]
    (tmp_path / "results" / stem / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match=stem):
        claims.load_all()


def test_results_that_do_not_belong_together_are_refused():
    def doc(layer, world="default", subject="organism-0", estimate="est-0", kind="organism", code="abc"):
        return {"metrics": {"layer": layer}, "provenance": {"code_hash": code}, "subject": {"kind": kind},
                "stages": {"subject": subject, "estimate": estimate},
                "parameters": {"world": world, "world_overrides": {}}}

    same = {k: doc(3) for k in ("01", "02", "03", "04", "05")}
    same["01"]["stages"].pop("estimate")  # chapter 01 estimates nothing
    claims.check_consistent(same)  # the positive control: nothing raised
    with pytest.raises(ValueError, match="different layers"):
        claims.check_consistent({**same, "04": doc(2)})
    with pytest.raises(ValueError, match="world"):
        claims.check_consistent({**same, "03": doc(3, world="smoke")})
    with pytest.raises(ValueError, match=r"different subjects \(\{.*'05': 'checkpoints'"):
        claims.check_consistent({**same, "05": doc(3, subject="ckpt-1", kind="checkpoints")})
    with pytest.raises(ValueError, match="different subjects"):  # another history of the same kind
        claims.check_consistent({**same, "01": {**same["01"], "stages": {"subject": "organism-1"}}})
    with pytest.raises(ValueError, match="different v_rev estimates"):
        claims.check_consistent({**same, "02": doc(3, estimate="est-1")})
    # A code edit that changes no stage (a plot, the prose) does not split the results.
    claims.check_consistent({**same, "05": doc(3, code="other")})


def test_text_task_cost_is_judged_on_the_held_out_loss(world):
    """Text checkpoints have no task accuracy: V1-f reads block's held-out loss relative to the
    baseline's (<= 5% and CI high <= 10%: reproduced; <= 10%: partly), planted per seed."""
    def with_block_loss(block_loss):
        v05 = copy.deepcopy(GOOD["v05"])
        v05["baseline"]["loss"] = [2.0, 2.1, 1.9]
        for v in ("push", "projection", "rehearsal"):
            v05[v]["loss"] = [2.0, 2.1, 1.9]
        v05["block"]["loss"] = block_loss
        return {**planted(GOOD, world), "05": chapter05(world, v05, TEXT_SUBJECT)}

    cheap = with_block_loss([2.02, 2.11, 1.92])
    assert "task_accuracy" not in cheap["05"]["variants"]["block"]
    assert set(cheap["05"]["paired_vs_baseline"]["block"]) == {"final_alignment", "harmfulness", "task_loss",
                                                               "cumulative_reversion"}
    rows = {r.id: r for r in claims.build_rows(cheap)}
    assert rows["V1-f"].verdict == REPRODUCED and "held-out loss" in rows["V1-f"].ours
    assert verdicts(with_block_loss([2.15, 2.26, 2.04]))["V1-f"] == PARTLY  # +7.5%
    assert verdicts(with_block_loss([2.6, 2.8, 2.5]))["V1-f"] == NOT  # +32%
    # Everything else reads as on the organism.
    assert {k: v for k, v in verdicts(cheap).items() if k != "V1-f"} == {i: REPRODUCED for i in ROW_IDS
                                                                          if i != "V1-f"}
