"""The claims' verdicts (:mod:`reversion.analysis.claims`) on planted chapter metrics whose right
verdict is known.

The metric dicts have exactly the keys the chapters write: "Interventions"' come out of
``chapters.ch06_interventions.metrics`` itself, run on planted :class:`~reversion.analysis.arms.
Outcomes` (every arm of the chapter's own ``plan``, 3 histories x 2 seeds, with planted
per-(history, seed) values, so its paired intervals over histories are the real ones); "Which
past?"'s are planted dicts holding the verdicts the claims read; v_rev, Alignment and Null test
are built by hand and checked key for key against the real ``save``/``metrics`` on hand-built
results.

* everything planted in the paper's favour, every control direction failing to match v_rev
  -> every row ``consistent`` (V2-f, about every model and scale: ``not testable here``);
* everything planted the wrong way -> every row ``not reproduced``;
* a control direction (a random one) blocking as well as v_rev -> V1-e and V2-d ``consistent
  but not specific``; so does "Which past?" finding no residual (V1-a, V1-b), the common trend
  explaining the rank correlation (V2-c), a control's readout as large (V2-b), the common
  witness (H-1);
* noisy histories (intervals too wide) -> ``inconclusive``;
* one effect wrong -> exactly the rows that depend on it change;
* text checkpoints (no task accuracy): the task cost row reads the held-out loss;
* results that do not come from the same stages (world, subject, v_rev estimate, layer)
  are refused before any verdict.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from reversion.analysis import alignment, arm_runs, arms, chance, estimation
from reversion.analysis import claims
from reversion.book.chapters import ch02_vrev_estimation as ch02
from reversion.book.chapters import ch06_interventions as ch06
from reversion.book.chapters import ch07_claims as page
from reversion.analysis.verdicts import (
    CONSISTENT,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_SPECIFIC,
    NOT_TESTABLE,
    VERDICTS,
    ClaimVerdict,
)
from reversion.core import stats
from reversion.core.directions import Directions
from reversion.infra.results import _clean, read_metrics, write_metrics
from reversion.stages.estimate import VRevEstimate, summary
from reversion.stages.finetune import FinetuneRun
from reversion.subjects.organism.subject import OrganismSubject
from reversion.subjects.organism.worlds import make_world

T, LAYER, N_SEEDS, WIDTH, H_S = 20, 1, 3, 64, 0.10
TH, VE, AL, NT, WP, IV = ("01_training_history", "02_vrev_estimation", "03_alignment", "04_null_test",
                          "05_which_past", "06_interventions")
ROW_IDS = ["V1-a", "V1-b", "V1-c", "V1-d", "V1-e", "V1-f", "V2-a", "V2-b", "V2-c", "V2-d", "V2-e",
           "V2-f", "V2-g", "H-1", "H-2", "H-3"]
ALL_GOOD = {i: NOT_TESTABLE if i == "V2-f" else NOT_SPECIFIC if i == "V1-d" else CONSISTENT for i in ROW_IDS}
"""V1-d reads what blocking optimises (the alignment it removes): at most not specific."""
ALL_BAD = {i: NOT_TESTABLE if i == "V2-f" else NOT_REPRODUCED for i in ROW_IDS}


@pytest.fixture(autouse=True)
def _isolated(isolated):
    """Cache and results in ``tmp_path`` (``cache/``, ``results/``) for every test."""


@pytest.fixture(scope="module")
def world():
    return make_world("smoke", {"finetune": {"steps": T}, "n_seeds": N_SEEDS})


# --------------------------------------------------------------------------- chapter 05: planted outcomes

# The notebook's parameters (notebooks/06_interventions.ipynb), smaller: 3 histories x 2 seeds,
# one site, the dose-response and layer-site studies of v_rev on history 0.
P05 = ch06.Params(world="smoke", world_overrides={}, n_histories=3, n_seeds=2, multiple=1.0,
                  objectives=["block", "oppose"], directions=[], n_random=1, sites=["all"],
                  dose_multiples=[3.0], study_directions=["v_rev"], study_sites=["layer"], n_study_seeds=2,
                  projection=False, witness_direction=False, rehearsal_fraction=0.25, margin=0.02, eval_steps=[0, 10, T],
                  track_every=10)


def _unit_rows(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(3, WIDTH, generator=g, dtype=torch.float64), dim=-1)


# An estimate with every control direction: v_rev, -r_S, v_P, residual, random0+, random0-.
EST = SimpleNamespace(layer=LAYER, directions=Directions(
    _unit_rows(0), _unit_rows(1), _unit_rows(2), torch.full((3,), 0.3, dtype=torch.float64),
    torch.full((3,), 1.0, dtype=torch.float64), {"layer": LAYER}))
MAIN, STUDY = arm_runs.plan(P05, EST)
CONTROLS = [d for d in arm_runs.directions_of(P05, EST) if d != "v_rev"]
BLOCK = arms.Arm("block", "v_rev", "all", 1.0).name
PUSH = arms.Arm("push", "v_rev", "all", 1.0).name

SEEDS = [0, 1]
BASE = {"harmfulness": 0.30, "harm_untrained": 0.28, "exact_match": 0.25, "final_alignment": 0.65,
        "task_accuracy": 0.80, "task_loss": 0.50, "over_refusal": 0.02, "cumulative_reversion": 0.10}
ORGANISM = tuple(BASE)
TEXT = tuple(m for m in BASE if m not in ("task_accuracy", "harm_untrained"))
"""Text checkpoints: held-out loss, no task accuracy, a judge that does not split by task."""
HIST = [0.0, 0.03, -0.02]
"""Each history's level, shared by its arms (the pairing removes it)."""
SEED = [0.0, 0.01, -0.01]
JITTER = 0.004
"""Per-run noise (uniform +-): the intervals are real, and narrow against the planted effects."""

# Effects against the baseline, by (objective, direction): a number, one per history, or one
# per history and seed. Every control direction moves harmfulness a little, far from v_rev.
GOOD05 = {
    ("block", "v_rev"): {"harmfulness": -0.15, "final_alignment": -0.85, "task_accuracy": -0.005},
    ("oppose", "v_rev"): {"harmfulness": -0.12, "final_alignment": -0.60, "task_accuracy": -0.01},
    ("push", "v_rev"): {"harmfulness": 0.15, "final_alignment": 0.20, "task_accuracy": -0.01},
    ("rehearsal", ""): {"harmfulness": -0.05, "cumulative_reversion": -0.04},
    **{(o, d): {"harmfulness": -0.02, "final_alignment": -0.05} for o in ("block", "oppose") for d in CONTROLS},
}
BAD05 = {**GOOD05,
         ("block", "v_rev"): {"harmfulness": 0.10, "final_alignment": 0.20, "task_accuracy": -0.30},
         ("oppose", "v_rev"): {"harmfulness": 0.10, "final_alignment": 0.20, "task_accuracy": -0.30},
         ("push", "v_rev"): {"harmfulness": -0.10, "final_alignment": -0.20},
         ("rehearsal", ""): {"harmfulness": 0.05, "cumulative_reversion": 0.04}}


def outcomes05(effects: dict, n_histories: int = 3, seeds: list[int] = SEEDS,
               measures: tuple = ORGANISM) -> arms.Outcomes:
    """Every arm of the plan (study arms on history 0, ``n_study_seeds`` seeds) with its planted
    outcomes; exact match moves with harmfulness, cumulative reversion with half of it."""
    rng = np.random.default_rng(5)
    tab, strengths = {}, {}
    for arm in MAIN + STUDY:
        eff = dict(effects.get((arm.objective, arm.direction), {}))
        eff.setdefault("exact_match", eff.get("harmfulness", 0.0))
        eff.setdefault("harm_untrained", eff.get("harmfulness", 0.0))  # the headline moves with harm
        if "cumulative_reversion" not in eff and isinstance(eff.get("harmfulness"), float):
            eff["cumulative_reversion"] = eff["harmfulness"] / 2
        hs = range(n_histories) if arm in MAIN else [0]
        for h in hs:
            strengths[(arm, h)] = arm.multiple * (1.0 + 0.1 * h)
            for i, s in enumerate(seeds if arm in MAIN else seeds[:P05.n_study_seeds]):
                row = {}
                for m in measures:
                    d = eff.get(m, 0.0)
                    d = d[h] if isinstance(d, list) else d
                    d = d[i] if isinstance(d, list) else d
                    row[m] = BASE[m] + HIST[h] + SEED[i] + d + float(rng.uniform(-JITTER, JITTER))
                tab[(arm, h, s)] = row
    return arms.Outcomes(tab, MAIN + STUDY, MAIN, strengths, n_histories, list(seeds), batch_size=8)


RES05 = SimpleNamespace(runs=SimpleNamespace(layer=LAYER, world=SimpleNamespace(finetune=SimpleNamespace(steps=T)),
                                             calibration=[{} for _ in range(3)]))


def chapter05(effects: dict, **kw) -> dict:
    return ch06.metrics(P05, RES05, outcomes05(effects, **kw))


# --------------------------------------------------------------------------- chapters 02-04, 04b

GOOD = {
    # chapter 03: alignment at steps 1 and 20 (one value per history), rank correlations
    "a1": [0.55, 0.60, 0.65], "a20": [0.70, 0.75, 0.80], "spearman": 0.9, "partial": 0.4,
    # chapter 04: nulls, pairs, per-run test
    "iso": 0.29, "matched": 0.40, "pairs_n": 9, "above_iso": 9, "above_matched": 9,
    "runs_n": 3, "runs_sig": 3,
    # chapter 02: readout of v_rev and of a control direction
    "readout": 0.8, "readout_control": 0.1,
    # chapter 04b: the "Which past?" verdicts
    "wp": {"residual": "specific", "witness": "own", "no_witness": "separated", "dose": "grows"},
    # chapter 05: effects against the baseline
    "v05": GOOD05,
}
BAD = {**GOOD, "a1": [0.05, 0.10, 0.00], "a20": [0.10, 0.00, 0.05], "spearman": -0.3, "partial": -0.2,
       "above_iso": 0, "above_matched": 0, "runs_sig": 0, "readout": -0.4,
       "wp": {"residual": "none", "witness": "away", "no_witness": "no reversion", "dose": "shrinks"},
       "v05": BAD05}


def _run(evals: dict) -> FinetuneRun:
    return FinetuneRun(path=Path("."), probe_means=torch.zeros(1), losses=[], evals=evals, seconds=0.0)


def spread(x: float | None, d: float = 0.02) -> list:
    """One value per history around ``x`` (three histories; None: undefined in every history)."""
    return [None] * 3 if x is None else [x, x + d, x - d]


def chapter03(s: dict, world) -> dict:
    """Planted per-run values, one history per value (history-level summaries, as the chapter's)."""
    def agg(xs):
        return stats.nested([[x] for x in xs], bounds=alignment.COSINE)
    L1 = world.history.model.n_layer + 1
    mid = lambda f: agg(np.array(s["a1"]) * (1 - f) + np.array(s["a20"]) * f)  # noqa: E731
    return {
        "layer": LAYER, "layers": [LAYER] * len(s["a1"]), "T": T, "judge_split": None,
        "n_histories": len(s["a1"]), "n_seeds": 1,
        "alignment": {"1": agg(s["a1"]), "5": mid(0.2), "10": mid(0.5), "20": agg(s["a20"])},
        "alignment_min_over_seeds": {"1": float(min(s["a1"])), "5": 0.0, "10": 0.0,
                                     "20": float(min(s["a20"]))},
        "alignment_min_by_history": {"1": list(s["a1"]), "5": [0.0] * 3, "10": [0.0] * 3, "20": list(s["a20"])},
        "final_alignment": agg(s["a20"]),
        "final_alignment_by_layer": {str(l): agg(s["a20"]) for l in range(L1)},
        "control_alignment": {name: {"1": agg([0.01, -0.02, 0.0]), str(T): agg([0.02, 0.0, -0.01])}
                              for name in ("v_P", "r_S")},
        "spearman_alignment_harmfulness": s["spearman"],
        "partial_spearman_given_step": s["partial"],
        "within_step_spearman": 0.3,
        "within_history_spearman": {"raw": stats.fisher_interval(spread(s["spearman"])),
                                    "step_removed": stats.fisher_interval(spread(s["partial"]))},
        "harm_measure": alignment.HEADLINE,
        "paper": {"alignment": {k: {"mean": m, "std": sd} for k, (m, sd) in alignment.PAPER.items()},
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


def _readout_entry(x: float | None) -> dict:
    return {"top": [["c1", 1.5], ["c2", 1.2], ["X0", 1.0]], "bottom": [["sorry", -1.1], ["help", -0.9], ["c3", -0.5]],
            "compliance_minus_refusal": x, "harmful_minus_refusal": None if x is None else x + 0.1}


def readouts(s: dict) -> list[dict]:
    """Three histories' readouts around the planted values."""
    if s["readout"] is None:
        return [{"v_rev": _readout_entry(None), "-r_S": _readout_entry(None)}] * 3
    return [{"v_rev": _readout_entry(v), "-r_S": _readout_entry(c)}
            for v, c in zip(spread(s["readout"]), spread(s["readout_control"]))]


def chapter02(s: dict) -> dict:
    row = {"layer": 0, "displacement": 0.1, "relative displacement": 0.2, "stability mean": 0.9,
           "stability std": 0.01, "cos(v_rev, v_P)": 0.5, "cos(v_rev, r_S)": 0.4}
    return {
        "layer": LAYER, "width": WIDTH,
        "stability": stats.aggregate([0.95, 0.96, 0.97]),
        "stability_by_n_probes": {"4": stats.aggregate([0.6, 0.7]), "8": stats.aggregate([0.8, 0.9])},
        "displacement_norm": 0.3, "relative_displacement": 0.5, "cos_v_rev_v_P": 0.6, "cos_v_rev_r_S": 0.2,
        "readout": {"v_rev": _readout_entry(s["readout"]), "-r_S": _readout_entry(s["readout_control"])},
        "readout_over_histories": estimation.readout_over_histories(readouts(s)),
        "by_layer": [{**row, "layer": l} for l in range(3)],
        "across_histories": {"n": 2, "layers": [LAYER, LAYER], "cos_v_rev_v_P": stats.nested([[0.6], [0.6]]),
                             "cos_v_rev_r_S": stats.nested([[0.2], [0.2]]), "stability": stats.nested([[0.95], [0.95]])},
    }


def chapter04b(wp: dict) -> dict:
    """What the claims read of "Which past?": a verdict per alternative (a key left out: the
    chapter could not measure it) and the seeds behind them."""
    out = {"n": {"histories": 3, "seeds": 2, "level": "histories (seeds averaged within each)",
                 "residual_histories": 3}, "layer": LAYER}
    for key, v in wp.items():
        out[key] = {"verdict": v}
    return out


def chapter01() -> dict:
    a = stats.aggregate([0.2, 0.3])
    return {"width": WIDTH, "isotropic_p99": 0.29, "finetune_task": "sort", "T": T,
            "harmfulness": {"theta_P": 0.0, "theta_H": 0.9, "theta_S": H_S, "finetuned": a}}


def planted(s: dict, world, **kw) -> dict[str, dict]:
    return {VE: chapter02(s), AL: chapter03(s, world), NT: chapter04(s), WP: chapter04b(s["wp"]),
            IV: chapter05(s["v05"], **kw)}


def verdicts(m: dict) -> dict[str, str]:
    return {r.id: r.verdict for r in claims.evaluate(m)}


def changed(m: dict, against: dict = ALL_GOOD) -> dict[str, str]:
    """The rows whose verdict differs from ``against``."""
    return {k: v for k, v in verdicts(m).items() if v != against[k]}


def with05(s: dict, **effects) -> dict:
    """``s`` with chapter 05's effects of some (objective, direction) replaced:
    ``with05(GOOD, block__v_rev={...})``; ``-r_S`` is spelt ``minus_r_S``."""
    v05 = dict(s["v05"])
    for key, eff in effects.items():
        o, d = key.split("__")
        v05[(o, "-r_S" if d == "minus_r_S" else d)] = eff
    return {**s, "v05": v05}


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
    res = alignment.Result(world, [SimpleNamespace(layer=LAYER)] * 2, runs, cos, [OrganismSubject(world.history)] * 2)
    assert _keys(chapter03(GOOD, world)) == _keys(alignment.metrics(res))


def test_hand_built_chapter04_has_the_keys_of_its_metrics(world):
    g = np.random.default_rng(1)
    steps = [1, 5, 20]
    rows = [{"seed": s, "step": t, "alignment": float(g.uniform(0.2, 0.8))} for s in range(N_SEEDS) for t in steps]
    pairs = pd.DataFrame(rows)
    pairs["above isotropic p99"] = pairs["alignment"] > 0.29
    pairs["above matched p99"] = pairs["alignment"] > 0.4
    nulls = {"isotropic": g.normal(0, 0.12, 2000), "matched": g.normal(0, 0.15, 2000)}
    est = SimpleNamespace(layer=LAYER, directions=SimpleNamespace(v_rev=torch.zeros(3, WIDTH)))
    res = chance.Result(world, est, [None] * N_SEEDS, [None] * 2, pairs, nulls,
                      {"isotropic": 0.29, "isotropic_mc": 0.3, "matched": 0.4},
                      g.uniform(-0.1, 0.1, size=(2, len(steps))), steps, OrganismSubject(world.history))
    assert _keys(chapter04(GOOD)) == _keys(chance.metrics(res, 0.01))


def test_hand_built_chapter02_has_the_keys_it_saves(world, tmp_path):
    d = Directions(_unit_rows(0), _unit_rows(1), _unit_rows(2), torch.rand(3, dtype=torch.float64) + 0.1,
                   torch.rand(3, dtype=torch.float64) + 1.0,
                   {"layer": LAYER, "layer_reason": "layer 1: because", "position": "last"})
    est = VRevEstimate(d, {}, np.full((10, 3), 0.95), tmp_path, [])
    res = SimpleNamespace(world=world, est=est, layers=pd.DataFrame(summary(est)["rows"]).set_index("layer"),
                          by_size={4: stats.aggregate([0.6, 0.7]), 8: stats.aggregate([0.8, 0.9])},
                          readout={"v_rev": _readout_entry(0.8), "-r_S": _readout_entry(0.1)},
                          subject=OrganismSubject(world.history), ests=[est, est],
                          readouts=[{"v_rev": _readout_entry(0.8), "-r_S": _readout_entry(0.1)}] * 2)
    P = ch02.Params(world="smoke", world_overrides={}, n_probe=16, position="last", n_boot=10,
                    min_stability=0.9, probe_sizes=[4, 8], top_k=3, n_histories=2)
    assert _keys(chapter02(GOOD)) == _keys(ch02.save(P, res))


def test_the_planted_chapter05_has_the_arms_the_claims_read():
    """The plan's arms: v_rev and every control direction under block and oppose, push along v_rev
    (its random controls are oppose along the negated random directions), baseline and
    rehearsal; the studies on history 0 only."""
    assert set(CONTROLS) == {"-r_S", "v_P", "residual", "random0+", "random0-"}
    m = chapter05(GOOD05)
    assert m["main"] == [a.name for a in MAIN] and m["study"] == [a.name for a in STUDY] != []
    assert set(m["specificity"]) == {BLOCK, PUSH, arms.Arm("oppose", "v_rev", "all", 1.0).name}
    assert set(m["specificity"][BLOCK]["contrasts"]) == set(CONTROLS)
    # push along a random direction is oppose along its negation: both signs, from the oppose runs
    assert set(m["specificity"][PUSH]["contrasts"]) == {"random0+", "random0-"}
    b = m["arms"][BLOCK]
    assert (b["n_histories"], b["n_seeds"]) == (3, 2) and b["outcome"]["harmfulness"]["level"] == "histories"
    assert m["arms"][STUDY[0].name]["n_histories"] == 1
    assert m["n"] == {"histories": 3, "seeds": 2, "study_seeds": 2}
    json.dumps(_clean(m))  # writable as the chapter writes it


# --------------------------------------------------------------------------- whole tables


def by_construction_rows(rows) -> set[str]:
    return {r.id for r in rows if r.by_construction}


def test_everything_planted_right_is_consistent(world):
    m = planted(GOOD, world)
    # the planted effects are what they say in the chapter's own numbers: v_rev's block lowers
    # harm (interval below zero), and more than every control direction (every contrast below zero)
    sp = m[IV]["specificity"][BLOCK]
    assert sp["effect"]["ci_high"] < 0 and sp["effect"]["ci_low"] < sp["effect"]["ci_high"]
    assert all(c["ci_high"] < 0 for c in sp["contrasts"].values())
    assert sp["verdict"] == CONSISTENT and sp["failing"] == []
    rows = claims.evaluate(m)
    assert [r.id for r in rows] == ROW_IDS
    assert {r.id: r.verdict for r in rows} == ALL_GOOD
    assert claims.counts(rows) == {CONSISTENT: 14, NOT_SPECIFIC: 1, INCONCLUSIVE: 0, NOT_REPRODUCED: 0,
                                   NOT_TESTABLE: 1}
    assert by_construction_rows(rows) == {"V1-d", "V2-d", "V2-e"}
    assert set(claims.CLAIMS) == set(ROW_IDS)  # every verdict has its rule stated
    assert all(len(c.text) > 40 for c in claims.CLAIMS.values())
    by = {r.id: r for r in rows}
    assert page.ours(by["V2-f"]) == "organism, final alignment yes; organism, harmfulness yes"


def test_everything_planted_wrong_is_not_reproduced(world):
    m = planted(BAD, world)
    # the planted effects really are the wrong way round in the chapter's own numbers
    vb = m[IV]["arms"][BLOCK]["vs_baseline"]
    assert vb["harmfulness"]["ci_low"] > 0 and m[IV]["arms"][PUSH]["vs_baseline"]["final_alignment"]["ci_high"] < 0
    assert m[IV]["rehearsal"]["cumulative_reversion"]["ci_low"] > 0
    rows = claims.evaluate(m)
    assert {r.id: r.verdict for r in rows} == ALL_BAD
    assert claims.counts(rows) == {CONSISTENT: 0, NOT_SPECIFIC: 0, INCONCLUSIVE: 0, NOT_REPRODUCED: 15,
                                   NOT_TESTABLE: 1}


def test_block_raising_harmfulness_fails_exactly_the_rows_that_need_it(world):
    s = with05(GOOD, block__v_rev={**GOOD05[("block", "v_rev")], "harmfulness": 0.10})
    # alignment still drops: V1-d as before (capped), V2-d is the weaker of the two
    assert changed(planted(s, world)) == {"V1-e": NOT_REPRODUCED, "V2-d": NOT_REPRODUCED}


# --------------------------------------------------------------------------- specificity: the key flip


def _as_v_rev(shift: list[float]) -> dict:
    """A control's effects: v_rev's block harm drop, shifted per history."""
    return {"harmfulness": [GOOD05[("block", "v_rev")]["harmfulness"] + x for x in shift],
            "final_alignment": -0.05}


@pytest.mark.parametrize("control,effect", [
    ("random0+", _as_v_rev([0.002, -0.003, 0.001])),   # as good: the contrast within the margin
    ("random0-", _as_v_rev([-0.10, -0.11, -0.09])),    # better: the contrast favours the control
    ("minus_r_S", _as_v_rev([0.0, 0.004, -0.002])),    # the refusal direction as good
])
def test_a_control_blocking_as_well_as_v_rev_makes_block_not_specific(control, effect, world):
    good = planted(GOOD, world)
    assert verdicts(good)["V1-e"] == CONSISTENT
    m = planted(with05(GOOD, **{f"block__{control}": effect}), world)
    name = "-r_S" if control == "minus_r_S" else control
    sp = m[IV]["specificity"][BLOCK]
    c = sp["contrasts"][name]
    if control == "random0-":
        assert c["ci_low"] > 0  # the control lowers harm more than v_rev
    else:
        assert -P05.margin <= c["ci_low"] <= c["ci_high"] <= P05.margin
    assert sp["effect"]["ci_high"] < 0 and sp["failing"] == [name]
    # exactly the rows that read block's specificity change; alignment (V1-d) needs no control
    assert changed(m) == {"V1-e": NOT_SPECIFIC, "V2-d": NOT_SPECIFIC}
    row = {r.id: r for r in claims.evaluate(m)}["V1-e"]
    assert f"as good at matched strength {name}" in page.ours(row)


def test_a_random_push_raising_harm_as_much_makes_push_not_specific(world):
    eff = {"harmfulness": [0.15, 0.152, 0.148]}
    m = planted(with05(GOOD, **{"oppose__random0-": eff}), world)  # = push along random0+
    assert m[IV]["specificity"][PUSH]["verdict"] == NOT_SPECIFIC
    assert changed(m) == {"V2-e": NOT_SPECIFIC}


# --------------------------------------------------------------------------- intervals too wide


NOISY = [-0.15, 0.12, -0.40]
"""Block's harm drop per history: the mean is below zero, the histories disagree."""


@pytest.mark.parametrize("effects,expected", [
    (dict(block__v_rev={**GOOD05[("block", "v_rev")], "harmfulness": NOISY}),
     {"V1-e": INCONCLUSIVE, "V2-d": INCONCLUSIVE}),
    (dict(block__v_rev={**GOOD05[("block", "v_rev")], "final_alignment": [-0.8, 0.2, -0.9]}),
     {"V1-d": INCONCLUSIVE, "V2-d": INCONCLUSIVE}),
    (dict(push__v_rev={**GOOD05[("push", "v_rev")], "harmfulness": [0.15, -0.12, 0.40]}),
     {"V2-e": INCONCLUSIVE}),
    (dict(rehearsal__={"harmfulness": -0.05, "cumulative_reversion": [-0.04, 0.05, -0.10]}),
     {"V2-g": INCONCLUSIVE}),
    # the effect is there, but its contrast with a random direction is too wide to tell
    (dict(block__random0p={"harmfulness": [-0.15, 0.20, -0.45]}), {"V1-e": INCONCLUSIVE, "V2-d": INCONCLUSIVE}),
    (dict(block__v_rev={**GOOD05[("block", "v_rev")], "task_accuracy": [0.0, -0.12, 0.10]}),
     {"V1-f": INCONCLUSIVE}),
])
def test_noisy_histories_are_inconclusive(effects, expected, world):
    effects = {k.replace("random0p", "random0+"): v for k, v in effects.items()}
    m = planted(with05(GOOD, **effects), world)
    assert changed(m) == expected
    if "V1-e" in expected and "block__v_rev" in effects:  # the interval really crosses zero
        e = m[IV]["specificity"][BLOCK]["effect"]
        assert e["ci_low"] < 0 < e["ci_high"] and e["mean"] < 0


def test_one_history_one_seed_is_inconclusive(world):
    """No interval at all (one history, one seed): nothing in chapter 05 can be told."""
    m = planted(GOOD, world, n_histories=1, seeds=[0])
    assert m[IV]["arms"][BLOCK]["vs_baseline"]["harmfulness"]["ci_low"] is None
    assert changed(m) == {k: INCONCLUSIVE for k in ("V1-d", "V1-e", "V1-f", "V2-d", "V2-e", "V2-g")}


# --------------------------------------------------------------------------- the other controls


@pytest.mark.parametrize("residual,expected", [
    ("specific", CONSISTENT), ("none", NOT_SPECIFIC), ("noise", INCONCLUSIVE), (None, NOT_TESTABLE),
])
def test_the_residual_test_is_V1_a_and_V1_b_s_control(residual, expected, world):
    wp = {k: v for k, v in GOOD["wp"].items() if k != "residual"}
    if residual is not None:
        wp["residual"] = residual
    m = planted({**GOOD, "wp": wp}, world)
    assert changed(m) == ({} if expected == CONSISTENT else {"V1-a": expected, "V1-b": expected})
    assert f"residual at step 20 {residual or 'not run'}" in page.ours({r.id: r for r in claims.evaluate(m)}["V1-b"])


def test_the_residual_is_read_at_the_step_of_each_claim(world):
    """V1-a reads the residual test at step 1, V1-b at step 20 (not at T)."""
    wp = {**GOOD["wp"]}
    m = planted({**GOOD, "wp": wp}, world)
    m[WP]["residual"]["by_step"] = {"1": {"verdict": "none"}, "20": {"verdict": "specific"}}
    assert changed(m) == {"V1-a": NOT_SPECIFIC}
    m[WP]["residual"]["by_step"] = {"1": {"verdict": "specific"}, "20": {"verdict": "noise"}}
    assert m[WP]["residual"]["verdict"] == "specific"  # at T: what the claims no longer read
    assert changed(m) == {"V1-b": INCONCLUSIVE}


def test_the_residual_does_not_rescue_a_missing_pattern(world):
    """The control is read only when the pattern is there: V1-a below the isotropic null stays not reproduced."""
    m = planted({**GOOD, "a1": [0.10, 0.12, 0.14], "wp": {**GOOD["wp"], "residual": "none"}}, world)
    assert verdicts(m)["V1-a"] == NOT_REPRODUCED and verdicts(m)["V1-b"] == NOT_SPECIFIC


@pytest.mark.parametrize("row,key", [("H-1", "witness"), ("H-2", "no_witness"), ("H-3", "dose")])
def test_which_past_verdicts_read_as_their_claims(row, key, world):
    for got, expected in claims.ALTERNATIVE[key].items():
        m = planted({**GOOD, "wp": {**GOOD["wp"], key: got}}, world)
        assert changed(m) == ({} if expected == CONSISTENT else {row: expected}), got
    # a block the chapter could not measure (e.g. checkpoints without a second lineage)
    m = planted({**GOOD, "wp": {k: v for k, v in GOOD["wp"].items() if k != key}}, world)
    assert changed(m) == {row: NOT_TESTABLE}
    assert page.ours({r.id: r for r in claims.evaluate(m)}[row]) == '"Which past?" not run'


def test_the_common_witness_makes_H_1_not_specific(world):
    m = planted({**GOOD, "wp": {**GOOD["wp"], "witness": "common"}}, world)
    assert changed(m) == {"H-1": NOT_SPECIFIC}


@pytest.mark.parametrize("partial,expected", [(0.0, NOT_SPECIFIC), (-0.1, NOT_SPECIFIC), (None, INCONCLUSIVE),
                                              (0.12, INCONCLUSIVE)])
def test_the_common_trend_makes_V2_c_not_specific(partial, expected, world):
    """Within histories the raw correlation is there; with the step removed it is within the
    margin (+-0.1), below it, undefined, or too close to the margin to tell."""
    assert changed(planted({**GOOD, "spearman": 0.8, "partial": partial}, world)) == {"V2-c": expected}


@pytest.mark.parametrize("control", [0.9, 0.8])
def test_a_control_readout_as_large_makes_V2_b_not_specific(control, world):
    assert changed(planted({**GOOD, "readout_control": control}, world)) == {"V2-b": NOT_SPECIFIC}


@pytest.mark.parametrize("changes,row,verdict", [
    (dict(spearman=0.3, partial=0.3), "V2-c", CONSISTENT),    # both beyond the margin in every history
    (dict(spearman=0.05, partial=0.4), "V2-c", NOT_REPRODUCED),  # within the margin: no correlation
    (dict(spearman=0.12, partial=0.4), "V2-c", INCONCLUSIVE),  # beyond zero, not resolved beyond the margin
    (dict(spearman=None, partial=None), "V2-c", NOT_REPRODUCED),
    (dict(pairs_n=8, above_iso=7, above_matched=7), "V1-c", NOT_REPRODUCED),  # the claim says all
    (dict(above_iso=9, above_matched=8), "V1-c", NOT_REPRODUCED),  # all above the isotropic, not the stricter
    (dict(runs_sig=2), "V2-a", NOT_REPRODUCED),
    (dict(a1=[0.10, 0.12, 0.14]), "V1-a", NOT_REPRODUCED),    # the whole interval below the isotropic p99 0.29
    (dict(a1=[0.20, 0.25, 0.30]), "V1-a", INCONCLUSIVE),      # its interval reaches above it
    (dict(a1=[0.32, 0.33, 0.34]), "V1-a", INCONCLUSIVE),       # between the two nulls
    (dict(a20=[0.30, 0.35, 0.38]), "V1-b", INCONCLUSIVE),      # above the isotropic, below the matched p99
    (dict(a20=[0.20, 0.22, 0.25]), "V1-b", NOT_REPRODUCED),    # below the isotropic p99
    (dict(a20=[0.45, 0.50, 0.55]), "V1-b", INCONCLUSIVE),      # above both nulls, not above step 1
    (dict(readout=0.0), "V2-b", NOT_REPRODUCED),               # no preference is not a preference
    (dict(readout=0.05, readout_control=-0.5), "V2-b", NOT_REPRODUCED),  # within the logit margin
    (dict(readout=None), "V2-b", NOT_REPRODUCED),              # no answer-opening token
])
def test_rule_boundaries(changes, row, verdict, world):
    assert changed(planted({**GOOD, **changes}, world)) == ({row: verdict} if verdict != CONSISTENT else {})


def test_V1_f_task_cost(world):
    def v(acc):
        return verdicts(planted(with05(GOOD, block__v_rev={**GOOD05[("block", "v_rev")], "task_accuracy": acc}),
                                world))["V1-f"]
    assert v(0.02) == CONSISTENT          # a gain within the margin is "little" cost too
    assert v(-0.30) == NOT_REPRODUCED     # the interval entirely below -0.05
    assert v([-0.06, -0.03, -0.09]) == INCONCLUSIVE  # beyond the margin on average, the interval reaches it
    assert v(0.30) == INCONCLUSIVE        # a large gain is not "little" cost; not a failure either


def test_a_run_shorter_than_20_steps_cannot_reproduce_V1_b(world):
    m = planted(GOOD, world)
    del m[AL]["alignment"]["20"], m[AL]["alignment"]["10"]
    rows = {r.id: r for r in claims.evaluate(m)}
    assert rows["V1-b"].verdict == NOT_REPRODUCED and "T < 20" in page.ours(rows["V1-b"])
    assert rows["V1-a"].verdict == CONSISTENT


def test_V1_a_needs_every_seed_above_the_isotropic_null(world):
    # The mean clears both nulls, but one history sits below the isotropic p99 (0.29).
    s = {**GOOD, "a1": [0.95, 0.90, 0.25]}
    assert min(s["a1"]) < s["iso"] and stats.aggregate(s["a1"])["mean"] > s["matched"]
    assert verdicts(planted(s, world))["V1-a"] == INCONCLUSIVE


def test_a_chapter_without_block_says_so(world):
    """Chapter 05 run with oppose only: the block rows are not testable, the rest as before."""
    P = dataclasses.replace(P05, objectives=["oppose"])
    main, study = arm_runs.plan(P, EST)
    assert not any(a.objective == "block" for a in main)
    o = outcomes05(GOOD05)
    keep = set(main + study)
    o = arms.Outcomes({k: v for k, v in o.tab.items() if k[0] in keep}, [a for a in o.arms if a in keep], main,
                      o.strengths, o.n_histories, o.seeds, o.batch_size)
    m = {**planted(GOOD, world), IV: ch06.metrics(P, RES05, o)}
    assert changed(m) == {k: NOT_TESTABLE for k in ("V1-d", "V1-e", "V1-f", "V2-d")}
    assert page.ours({r.id: r for r in claims.evaluate(m)}["V2-f"]) == "organism not run"


# --------------------------------------------------------------------------- text checkpoints


def test_text_task_cost_is_judged_on_the_held_out_loss(world):
    """Text checkpoints have no task accuracy and one history: V1-f reads block's held-out loss
    against the baseline's (within 5% of it: consistent; entirely beyond: not reproduced),
    the interval over seeds."""
    def with_block_loss(loss):
        v05 = with05(GOOD, block__v_rev={**GOOD05[("block", "v_rev")], "task_loss": loss})["v05"]
        return {**planted(GOOD, world), IV: chapter05(v05, n_histories=1, seeds=[0, 1, 2], measures=TEXT)}

    cheap = with_block_loss(0.005)
    b = cheap[IV]["arms"][BLOCK]
    assert "task_accuracy" not in b["outcome"] and b["vs_baseline"]["task_loss"]["level"] == "seeds"
    assert cheap[IV]["specificity"][BLOCK]["task_measure"] == "task_loss"
    rows = {r.id: r for r in claims.evaluate(cheap)}
    assert rows["V1-f"].verdict == CONSISTENT and "held-out loss" in page.ours(rows["V1-f"])
    assert rows["V1-f"].n == "1×3"
    assert verdicts(with_block_loss(0.10))["V1-f"] == NOT_REPRODUCED  # +20% of the baseline's 0.5
    assert verdicts(with_block_loss([[0.0, 0.05, 0.025]]))["V1-f"] == INCONCLUSIVE  # +5% on average, wide
    # Everything else reads as on the organism (one history: the intervals are over seeds).
    assert changed(cheap) == {}


# --------------------------------------------------------------------------- the table


def test_table_lists_every_row_with_its_chapter_measure_and_n(world):
    df = page.table(claims.evaluate(planted(GOOD, world)))
    assert list(df.index) == ROW_IDS
    assert list(df.columns) == ["claim", "paper", "measure", "margin", "ours", "verdict", "magnitude", "n",
                                "chapter"]
    chapters = {"V1-a": "Alignment", "V1-b": "Alignment", "V1-c": "Null test", "V1-d": "Interventions",
                "V1-e": "Interventions", "V1-f": "Interventions", "V2-a": "Null test", "V2-b": "v_rev",
                "V2-c": "Alignment", "V2-d": "Interventions", "V2-e": "Interventions", "V2-f": "Interventions",
                "V2-g": "Interventions", "H-1": "Which past?", "H-2": "Which past?", "H-3": "Which past?"}
    assert df["chapter"].to_dict() == chapters
    assert all(df["measure"])  # every row names the quantity its verdict reads
    assert df.loc["V1-e", "measure"] == "harmfulness, untrained tasks (first token)"
    assert "untrained" in df.loc["H-2", "measure"] and "untrained" in df.loc["V2-c", "measure"]
    assert not any("harmfulness" in m and "untrained" not in m for m in df["measure"])  # never the trained task
    assert all(df["margin"].drop("V2-f"))  # every decided row names its margin or threshold
    assert df.loc["V1-e", "n"] == df.loc["V2-e", "n"] == df.loc["V2-g", "n"] == "3×2"
    assert df.loc["V1-a", "n"] == "3×1"
    assert df.loc["H-1", "n"] == "3×2"
    linked = page.table(claims.evaluate(planted(GOOD, world)), links=True)
    assert linked.loc["V1-c", "chapter"] == '<a href="04_null_test.html">Null test</a>'
    assert linked.loc["H-2", "chapter"] == '<a href="05_which_past.html">Which past?</a>'


def _with_magnitude(x, paper, sd=0.0, what=""):
    return ClaimVerdict("X", "", "", CONSISTENT, AL, "", magnitude=(what, x, paper, sd))


def test_magnitude_words():
    assert page.magnitude(_with_magnitude(0.80, 0.429, 0.052)).startswith("higher")
    assert page.magnitude(_with_magnitude(0.40, 0.429, 0.052)) == "within the paper's ±"
    assert page.magnitude(_with_magnitude(0.10, 0.30)).startswith("lower")
    assert page.magnitude(_with_magnitude(0.10, 0.30, what="baseline")).startswith("baseline: lower")
    assert page.magnitude(_with_magnitude(None, 0.3)) == ""


def test_counts_of_a_mixed_table():
    vs = [CONSISTENT, NOT_SPECIFIC, NOT_SPECIFIC, NOT_REPRODUCED, NOT_TESTABLE]
    rows = [ClaimVerdict(str(i), "", "", v, AL, "") for i, v in enumerate(vs)]
    assert claims.counts(rows) == {CONSISTENT: 1, NOT_SPECIFIC: 2, INCONCLUSIVE: 0, NOT_REPRODUCED: 1,
                                   NOT_TESTABLE: 1}
    assert claims.counts([]) == {v: 0 for v in VERDICTS}
    with pytest.raises(ValueError, match="verdict must be one of"):
        ClaimVerdict("X", "", "", "plausible", AL, "")


# --------------------------------------------------------------------------- what the claims read


def test_each_rule_reads_only_the_chapters_it_declares(world):
    """A claim's ``reads`` is what its function reads: run on those chapters alone, it gives the
    verdict it gives on all of them (a chapter it reads but does not declare raises KeyError)."""
    m = planted(GOOD, world)
    for c in claims.CLAIMS.values():
        assert c.rule({k: m[k] for k in c.reads}).verdict == c.rule(m).verdict, c.id
    assert claims.reads() == [VE, AL, NT, WP, IV]  # Training history's numbers decide no claim


def _write_all(m: dict) -> None:
    """As the chapters write them: one subject throughout, one estimate in the chapters that read
    history 0's."""
    for stem, metrics in m.items():
        stages = {"subject": "organism-0", **({"estimate": "est-0"} if stem not in (TH, WP) else {})}
        write_metrics(stem, metrics, {"world": "smoke"}, seeds=list(range(N_SEEDS)), subject={"kind": "organism"},
                      stages=stages)


def test_the_page_reads_every_chapter_back(world, tmp_path):
    m = {TH: chapter01(), **planted(GOOD, world)}
    _write_all(m)
    for stem in (IV, WP):
        assert (tmp_path / "results" / stem / "metrics.json").is_file()
    for k in claims.reads():  # what was written, as written (12 significant digits)
        assert read_metrics(k)["metrics"] == json.loads(json.dumps(_clean(m[k]))), k
    res = page.run()
    assert {r.id: r.verdict for r in res.rows} == verdicts(m) == ALL_GOOD
    assert res.counts == claims.counts(res.rows)


def test_the_page_reads_a_not_specific_table_back(world):
    m = {TH: chapter01(), **planted(with05(GOOD, **{"block__random0+": _as_v_rev([0.002, -0.003, 0.001])}),
                                    world)}
    _write_all(m)
    assert {r.id: r.verdict for r in page.run().rows if r.verdict != ALL_GOOD[r.id]} == \
        {"V1-e": NOT_SPECIFIC, "V2-d": NOT_SPECIFIC}


@pytest.mark.parametrize("missing", [VE, AL, NT, WP, IV])
def test_the_page_names_the_chapter_that_has_not_run(missing, world, tmp_path):
    m = {TH: chapter01(), **planted(GOOD, world)}
    _write_all(m)
    (tmp_path / "results" / missing / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        page.run()


def test_results_that_do_not_belong_together_are_refused():
    def doc(layer, world="default", subject="organism-0", estimate="est-0", kind="organism", code="abc"):
        return {"metrics": {"layer": layer}, "provenance": {"code_hash": code}, "subject": {"kind": kind},
                "stages": {"subject": subject, "estimate": estimate},
                "parameters": {"world": world, "world_overrides": {}}}

    same = {k: doc(3) for k in (TH, VE, AL, NT, WP, IV)}
    for k in (TH, WP):  # chapters that use no v_rev estimate
        same[k]["stages"].pop("estimate")
    claims.check_consistent(same)  # the positive control: nothing raised
    with pytest.raises(ValueError, match="different layers"):
        claims.check_consistent({**same, NT: doc(2)})
    with pytest.raises(ValueError, match="world"):
        claims.check_consistent({**same, AL: doc(3, world="smoke")})
    with pytest.raises(ValueError, match="world"):
        claims.check_consistent({**same, WP: {**same[WP], "parameters": {"world": "smoke", "world_overrides": {}}}})
    with pytest.raises(ValueError, match=r"different subjects \(\{.*'06_interventions': 'checkpoints'"):
        claims.check_consistent({**same, IV: doc(3, subject="ckpt-1", kind="checkpoints")})
    with pytest.raises(ValueError, match="different subjects"):  # another history of the same kind
        claims.check_consistent({**same, TH: {**same[TH], "stages": {"subject": "organism-1"}}})
    with pytest.raises(ValueError, match="different subjects"):
        claims.check_consistent({**same, WP: {**same[WP], "stages": {"subject": "organism-1"}}})
    with pytest.raises(ValueError, match="different v_rev estimates"):
        claims.check_consistent({**same, VE: doc(3, estimate="est-1")})
    # A code edit that changes no stage (a plot, the prose) does not split the results.
    claims.check_consistent({**same, IV: doc(3, code="other")})


def test_the_planted_worlds_are_not_shared_state(world):
    """Building a table leaves the planted inputs as they were (the tests reuse them)."""
    before = copy.deepcopy(GOOD)
    claims.evaluate(planted(GOOD, world))
    assert GOOD == before


@pytest.mark.notebooks  # the real claims notebook, twice (a kernel each)
def test_a_new_which_past_result_reexecutes_the_claims_page(world, tmp_path):
    """The claims page reads what its code reads (here "Which past?" among others): when that
    result changes, the page re-executes and its verdict follows; when nothing it reads changed,
    it does not."""
    from reversion.book import build

    _write_all({TH: chapter01(), **planted(GOOD, world)})
    out = tmp_path / "executed"

    def run():
        return build.execute_notebooks(stems=["07_claims"], out_dir=out, echo=None)[0].executed

    def glued(name: str) -> str:
        nb = json.loads((out / "07_claims.ipynb").read_text())
        return next(o["data"]["application/papermill.record/text/plain"] for c in nb["cells"]
                    for o in c.get("outputs", [])
                    if o.get("metadata", {}).get("scrapbook", {}).get("name") == name)

    assert run()
    assert set((out / ".stamps" / "07_claims.reads").read_text().split()) == set(claims.reads())
    assert glued("n_consistent_but_not_specific") == "1"  # V1-d, by construction
    assert not run()
    _write_all({WP: chapter04b({**GOOD["wp"], "witness": "common"})})
    assert run()
    assert glued("n_consistent_but_not_specific") == "2"  # and H-1


# --------------------------------------------------------------------------- robustness: subsets of histories


def test_restricting_to_histories_recomputes_each_interval_with_its_own_pooling(world):
    from reversion.analysis import robustness

    m = planted(GOOD, world)
    sub = robustness.restrict(m, [0, 2])
    a1 = sub[AL]["alignment"]["1"]
    want = stats.nested([[GOOD["a1"][0]], [GOOD["a1"][2]]], bounds=alignment.COSINE)
    assert (a1["mean"], a1["ci_low"], a1["ci_high"]) == pytest.approx((want["mean"], want["ci_low"], want["ci_high"]))
    assert sub[AL]["alignment_min_by_history"]["1"] == [GOOD["a1"][0], GOOD["a1"][2]]
    raw = sub[AL]["within_history_spearman"]["raw"]  # Fisher z, as the chapter pooled it
    assert raw["mean"] == pytest.approx(stats.fisher_interval([spread(0.9)[0], spread(0.9)[2]])["mean"])
    e = sub[IV]["arms"][BLOCK]["vs_baseline"]["harmfulness"]
    assert len(e["by_history"]) == 2 and e["n_histories"] == 2
    assert m[AL]["alignment"]["1"]["n"] == 3  # the input is left as it was
    assert robustness.restrict(m, [0, 1, 2])[AL]["alignment"]["1"]["ci_low"] == pytest.approx(
        m[AL]["alignment"]["1"]["ci_low"])


def test_one_dissenting_history_shows_in_the_leave_one_out(world):
    """Block lowers harm in histories 0 and 1 and raises it in history 2: on all three the interval
    is too wide (inconclusive); leaving history 2 out decides it (the two agreeing histories are
    narrow), leaving 0 or 1 out does not -- exactly one leave-one-out change, on the rows that read
    block's harm (V1-e, V2-d)."""
    from reversion.analysis import robustness

    eff = {**GOOD05[("block", "v_rev")], "harmfulness": [-0.15, -0.15, 0.05]}
    m = planted(with05(GOOD, block__v_rev=eff), world)
    assert verdicts(m)["V1-e"] == INCONCLUSIVE
    assert verdicts(robustness.restrict(m, [0, 1]))["V1-e"] == CONSISTENT
    r = robustness.robustness(m)
    assert r.n_histories == 3 and set(r.halves) == set(ROW_IDS)
    assert r.loo_changed["V1-e"] == r.loo_changed["V2-d"] == 1
    assert r.agreement["V2-f"] == "not testable"
    assert r.halves["V1-a"][1] == INCONCLUSIVE  # the odd half is one history: no interval at all


def test_agreement_words():
    from reversion.analysis.robustness import agreement

    assert agreement(CONSISTENT, CONSISTENT) == "agree, both decided"
    assert agreement(NOT_REPRODUCED, NOT_REPRODUCED) == "agree, both decided"
    assert agreement(INCONCLUSIVE, INCONCLUSIVE) == "agree, both inconclusive"
    assert agreement(CONSISTENT, INCONCLUSIVE) == "disagree"
    assert agreement(NOT_TESTABLE, NOT_TESTABLE) == "not testable"


def test_which_past_verdicts_are_rederived_on_a_subset():
    """A "Which past?" block holding intervals: its verdict follows the recomputed interval."""
    from reversion.analysis import pasts, robustness

    own = stats.nested([[0.3], [0.32], [-0.5]], bounds=(-1.0, 1.0))  # history 2 pulls it into "unresolved"
    common = stats.nested([[0.0], [0.01], [-0.01]], bounds=(-1.0, 1.0))
    wp = {"n": {"histories": 3, "seeds": 2}, "witness": {"own": own, "common": common,
                                                         "verdict": pasts.witness_verdict(own, common)}}
    assert wp["witness"]["verdict"] == "unresolved"
    assert robustness.restrict({WP: wp}, [0, 1])[WP]["witness"]["verdict"] == "own"


def test_the_claims_judge_with_the_fixed_margin_whatever_the_page_ran_with(world):
    """The Interventions page's ``margin`` parameter changes its own sentences, not the claims: the
    table judges specificity and rehearsal with the margins fixed in ``rules``."""
    m = planted(GOOD, world)
    m[IV]["margin"] = 0.5  # a page re-run with a huge margin: every contrast would be 'within' it
    assert verdicts(m) == ALL_GOOD
