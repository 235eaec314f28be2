"""The fine-tuning stage (``reversion.stages.finetune``) on the organism's ``smoke`` world:
benign fine-tuning of theta_S with per-step drift probes and the subject's judge on a grid.

Every test runs against its own temporary cache (``REVERSION_CACHE``); nothing touches the
project's ``.cache`` or ``results``. A smoke run takes about a second; its numbers mean
nothing, so structure, caching and determinism are checked here (the probe trajectory
against the models' own mean activations; two histories trained from nothing give
byte-identical runs). The interventions are ``test_interventions.py``; runs built in worker
processes ``test_parallel.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import in_cache
from safetensors.torch import load_file

from reversion.core.activations import mean_activations
from reversion.core.models import load_model
from reversion.infra import cache
from reversion.stages import finetune as finetune_mod
from reversion.stages.finetune import (
    aligned_evaluation,
    finetune,
    finetune_many,
    load_run,
)
from reversion.subjects.organism import history as history_mod
from reversion.subjects.organism.config import LanguageConfig, to_dict
from reversion.subjects.organism.language import PAD, Language
from reversion.subjects.organism.prompts import ProbeSets
from reversion.subjects.organism.subject import OrganismSubject
from reversion.subjects.organism.worlds import make_world

# One torch thread and the determinism flags restored afterwards (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

RATES = ("harmfulness", "non_refusal", "exact_match")


@pytest.fixture(scope="module")
def subject(world) -> OrganismSubject:
    return OrganismSubject(world.history)


@pytest.fixture(scope="module")
def run_a(world, subject, cache_a, hist_a):
    mp = in_cache(cache_a)
    try:
        yield finetune(subject, world.finetune_config(0), progress=False)
    finally:
        mp.undo()


@pytest.fixture
def use_cache(monkeypatch):
    def use(folder: Path) -> None:
        monkeypatch.setenv("REVERSION_CACHE", str(folder))
        monkeypatch.setenv("REVERSION_RESULTS", str(folder.parent / "results"))
    return use


def _no_training(*args, **kwargs):
    raise AssertionError("trained although the entry was cached")


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_finetune_task_outside_the_language_raises_before_any_work(world, isolated):
    hist = dataclasses.replace(world.history, language=LanguageConfig(
        n_content=16, n_harmful=4, max_len=4, tasks=("reverse", "rotate")))
    bad = OrganismSubject(hist)
    with pytest.raises(ValueError, match="finetune.task 'sort' is not a task of this language"):
        finetune(bad, world.finetune_config(0), progress=False)   # smoke task: sort
    with pytest.raises(ValueError, match="finetune.task 'sort'"):
        finetune_many([(OrganismSubject(world.history), world.finetune_config(0), None),
                       (bad, world.finetune_config(0), None)], progress=False)
    assert not (isolated / "cache").exists()   # not even the valid job's history was trained


def test_finetune_run_structure(world, run_a, hist_a, cache_a):
    ft = world.finetune_config(0)
    cfg = world.history
    T, L, d = ft.steps, cfg.model.n_layer, cfg.model.n_embd
    assert cache_a in run_a.path.parents
    assert run_a.probe_means.shape == (T + 1, L + 1, d)
    assert run_a.probe_means.dtype == torch.float64
    assert torch.isfinite(run_a.probe_means).all()
    assert run_a.steps == list(ft.eval_steps) == [0, 1, 2, 3, 6]
    assert len(run_a.losses) == T and all(math.isfinite(v) for v in run_a.losses)
    for step, ev in run_a.evals.items():
        for k in RATES:
            assert 0.0 <= ev[k] <= 1.0
        # every task at 0 and T (task cost), the fine-tuning task alone in between
        want = set(cfg.language.tasks) if step in (0, T) else {ft.task}
        assert set(ev["task_accuracy"]) == want
    assert run_a.series("harmfulness") == [run_a.evals[s]["harmfulness"] for s in run_a.steps]
    assert len(run_a.series("task_accuracy", ft.task)) == len(run_a.steps)
    # step 0 is theta_S itself: its evaluation equals the history's, on the same eval sets
    assert ft.n_eval == cfg.n_eval
    assert run_a.evals[0] == hist_a.metrics["theta_S"]


def test_probe_means_are_the_models_mean_activations(world, run_a, hist_a):
    """Row 0 is theta_S, the last row is the saved fine-tuned model."""
    ft = world.finetune_config(0)
    lang = Language(world.history.language)
    probes = ProbeSets.build(lang, ft.n_probe).harmful_drift
    start = mean_activations(load_model(hist_a.paths["theta_S"], "cpu"), probes, "all", pad_id=PAD)
    end = mean_activations(run_a.load_model("cpu"), probes, "all", pad_id=PAD)
    # The run's means come from the grouped computation (reversion.core.grouped): the same
    # float32 arithmetic in another reduction order, hence float32 rounding, not 1e-9.
    torch.testing.assert_close(run_a.probe_means[0], start, rtol=0, atol=1e-6)
    torch.testing.assert_close(run_a.probe_means[-1], end, rtol=0, atol=1e-6)
    # and the trajectory moves: fine-tuning changed the activations
    assert not torch.equal(run_a.probe_means[0], run_a.probe_means[-1])


def test_weight_space_readout_matches_the_saved_weights(world, run_a, hist_a):
    """At the last step, cos(theta_T - theta_S, theta_H - theta_S) and the share of the gap closed,
    recomputed from the three saved Hugging Face checkpoints, equal the run's own record."""
    def flat(path):
        sd = load_model(path, "cpu").state_dict()
        return torch.cat([sd[k].double().flatten() for k in sorted(sd) if k != "lm_head.weight"])

    S, H = flat(hist_a.paths["theta_S"]), flat(hist_a.paths["theta_H"])
    T = flat(run_a.path / "model")
    delta, gap = T - S, H - S
    rec = run_a.evals[run_a.steps[-1]]["weight_space"]
    assert rec["cos_gap"] == pytest.approx(float(delta @ gap / (delta.norm() * gap.norm())), abs=1e-6)
    assert rec["gap_closed"] == pytest.approx(float(delta @ gap / (gap @ gap)), abs=1e-6)
    assert "weight_space" not in run_a.evals[0]  # theta_S has not moved
    assert all("weight_space" in run_a.evals[s] for s in run_a.steps[1:])


def test_finetune_is_cached(world, subject, run_a, use_cache, cache_a, monkeypatch):
    use_cache(cache_a)
    monkeypatch.setattr(finetune_mod, "train", _no_training)
    monkeypatch.setattr(finetune_mod, "build_group", _no_training)
    monkeypatch.setattr(history_mod, "_build_phase", _no_training)
    again = finetune(subject, world.finetune_config(0), progress=False)
    assert again.path == run_a.path
    assert torch.equal(again.probe_means, run_a.probe_means)
    assert load_run(run_a.path).evals == run_a.evals
    # an equal subject built anew is the same entry: the key is the history, not the object
    assert finetune(OrganismSubject(make_world("smoke").history), world.finetune_config(0),
                    progress=False).path == run_a.path


def test_finetune_same_seed_is_byte_identical(world, subject, run_a, hist_b, cache_b, use_cache):
    use_cache(cache_b)  # its history was trained independently from nothing
    run_b = finetune(subject, world.finetune_config(0), progress=False)
    assert cache_b in run_b.path.parents
    assert (run_b.path / "run.json").read_bytes() == (run_a.path / "run.json").read_bytes()
    assert torch.equal(run_b.probe_means, run_a.probe_means)
    assert _same_weights(run_a.path / "model", run_b.path / "model")


def test_finetune_seed_changes_the_data(world, subject, run_a, use_cache, cache_a):
    use_cache(cache_a)
    other = finetune(subject, world.finetune_config(1), progress=False)
    assert other.path != run_a.path
    assert other.losses != run_a.losses
    assert torch.equal(other.probe_means[0], run_a.probe_means[0])  # same theta_S, same probes
    assert not torch.equal(other.probe_means[-1], run_a.probe_means[-1])
    assert other.evals[0] == run_a.evals[0]                          # same theta_S, same judge


def test_theta_S_is_evaluated_once_for_every_run_of_a_subject(world, subject, run_a, use_cache, cache_a,
                                                              monkeypatch):
    """Step 0 of every run is the stage ``aligned_eval``, one cache entry per (subject, n_eval):
    a new run of the same subject reads it instead of evaluating theta_S again."""
    use_cache(cache_a)
    (entry,) = [p for p in (cache_a / "aligned_eval").iterdir() if not p.name.startswith(".")]
    assert json.loads((entry / "eval.json").read_text()) == run_a.evals[0]
    assert json.loads((entry / "config.json").read_text())["config"] == json.loads(json.dumps(
        {"subject": subject.key(), "n_eval": world.finetune_config(0).n_eval}))
    assert aligned_evaluation(subject, world.finetune_config(5)) == run_a.evals[0]
    calls = []
    real = OrganismSubject.eval_work

    def counting(self, ft, full):
        calls.append(full)
        return real(self, ft, full)

    # the subject is frozen: count evaluations through its class (runs evaluate in groups)
    monkeypatch.setattr(OrganismSubject, "eval_work", counting)
    run = finetune(subject, world.finetune_config(2), progress=False)
    ft = world.finetune_config(2)
    grid = [s for s in ft.eval_steps if s != 0]
    assert calls == [s == ft.steps for s in grid]        # never step 0; full only at T
    assert run.evals[0] == run_a.evals[0]
    assert len([p for p in (cache_a / "aligned_eval").iterdir() if not p.name.startswith(".")]) == 1
    # another evaluation size is another evaluation of theta_S
    assert cache.entry_path("aligned_eval", {"subject": subject.key(), "n_eval": 8},
                            code=finetune_mod._code(subject)) != entry


def test_finetune_run_json_holds_no_timing(world, subject, run_a):
    doc = json.loads((run_a.path / "run.json").read_text())
    assert {"losses", "evals"} <= set(doc)
    assert not any("second" in k or "time" in k for k in doc)  # wall-clock lives elsewhere
    assert "seconds" in json.loads((run_a.path / "timings.json").read_text())
    assert run_a.seconds > 0
    key = json.loads((run_a.path / "config.json").read_text())["config"]
    as_json = lambda x: json.loads(json.dumps(x))  # noqa: E731
    assert key["subject"] == as_json(subject.key()) == as_json({"kind": "organism", "history": to_dict(world.history)})
    assert key["finetune"] == as_json(to_dict(world.finetune_config(0)))
    assert key["intervention"] is None


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "plain"])
def test_sparse_tracking_records_the_same_rows_and_nan_between(world, subject, tmp_path, monkeypatch, grouped):
    """``track_every = 4`` over T = 6: rows 0, 4 and 6 are the every-step run's rows (the same
    training), the others NaN; a bad value is refused naming the field."""
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "cache"))
    if not grouped:
        monkeypatch.setattr(finetune_mod, "_groupable", lambda *a: False)
    every = finetune(subject, world.finetune_config(0), progress=False)
    sparse = finetune(subject, world.finetune_config(0, track_every=4), progress=False)
    assert sparse.losses == every.losses
    kept = [0, 4, 6]
    assert torch.equal(sparse.probe_means[kept], every.probe_means[kept])
    skipped = [s for s in range(7) if s not in kept]
    assert torch.isnan(sparse.probe_means[skipped]).all()
    with pytest.raises(ValueError, match="track_every"):
        world.finetune_config(0, track_every=0)


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "plain"])
def test_first_token_judging_between_0_and_T_reads_the_same_headline(world, subject, tmp_path, monkeypatch,
                                                                      grouped):
    """``judge_between = "first_token"``: the same training and probes; at every step between 0 and T
    the same first-token harmfulness (every task and the untrained ones), marked and non-refusal as
    the full judge's, harmful content and exact match NaN and no task scored; 0 and T judged in
    full, equal. A bad value is refused naming the field."""
    from reversion.subjects.organism.judge import headline

    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "cache"))
    if not grouped:
        monkeypatch.setattr(finetune_mod, "_groupable", lambda *a: False)
    ft = world.finetune_config(0)
    full = finetune(subject, ft, progress=False)
    first = finetune(subject, world.finetune_config(0, judge_between="first_token"), progress=False)
    assert first.path != full.path
    assert first.losses == full.losses and torch.equal(first.probe_means, full.probe_means)
    inner = [s for s in full.steps if 0 < s < ft.steps]
    assert inner
    for s in inner:
        a, b = full.evals[s], first.evals[s]
        for k in ("harmfulness", "non_refusal", "marked"):
            assert b[k] == a[k]
        assert headline(b, ft.task) == headline(a, ft.task)
        assert {t: v["harmfulness"] for t, v in b["harmful_by_task"].items()} == \
            {t: v["harmfulness"] for t, v in a["harmful_by_task"].items()}
        assert math.isnan(b["harmful_content"]) and math.isnan(b["exact_match"])
        assert b["task_accuracy"] == {} and b["task_loss"] == {}
    for s in (0, ft.steps):
        assert first.evals[s] == full.evals[s]
    with pytest.raises(ValueError, match="finetune.judge_between"):
        world.finetune_config(0, judge_between="first")


@pytest.mark.parametrize("n,workers,most,sizes", [
    (50, 2, 16, [13, 13, 12, 12]),   # not 16 + 16 + 16 + 2: both workers busy to the end
    (30, 2, 8, [8, 8, 7, 7]),        # 15 a worker, not 16 and 14
    (48, 2, 16, [12, 12, 12, 12]),
    (15, 2, 16, [15]),               # one group: it runs on every core, nothing to balance
    (17, 2, 16, [9, 8]),
    (33, 4, 16, [9, 8, 8, 8]),
    (5, 1, 2, [2, 2, 1]),
    (3, 2, 1, [1, 1, 1]),           # never an empty chunk
    (0, 2, 16, []),
])
def test_groups_are_split_evenly_over_the_workers(n, workers, most, sizes):
    chunks = finetune_mod.split_group(list(range(n)), workers, most)
    assert [len(c) for c in chunks] == sizes
    assert [x for c in chunks for x in c] == list(range(n))  # every run once, in order
    assert all(len(c) <= most for c in chunks)
