"""The organism's training history (``reversion.subjects.organism.history``): theta_P ->
theta_H -> theta_S on the tiny ``smoke`` world, one cache entry per phase.

Every test runs against its own temporary cache (``REVERSION_CACHE``); nothing touches the
project's ``.cache`` or ``results``. The smoke world trains in about a second per history
on one CPU thread; its numbers mean nothing, so only structure, caching and determinism are
checked here. Benign fine-tuning of a history is ``test_finetune.py``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from reversion.subjects.organism import history as history_mod
from reversion.subjects.organism.config import HistoryConfig
from reversion.subjects.organism.history import (
    CHECKPOINT,
    PHASES,
    _stage_config,
    phase_checkpoint,
    train_history,
)
from reversion.subjects.organism.language import Language
from reversion.subjects.organism.worlds import make_world

# One torch thread and the determinism flags restored afterwards (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

RATES = ("harmfulness", "non_refusal", "exact_match")


@pytest.fixture
def use_cache(monkeypatch):
    def use(folder: Path) -> None:
        monkeypatch.setenv("REVERSION_CACHE", str(folder))
        monkeypatch.setenv("REVERSION_RESULTS", str(folder.parent / "results"))
    return use


def _no_training(*args, **kwargs):
    raise AssertionError("trained although the entry was cached")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- history


def test_three_loadable_hugging_face_checkpoints(world, hist_a, cache_a):
    cfg = world.history
    lang = Language(cfg.language)
    assert set(hist_a.paths) == {"theta_P", "theta_H", "theta_S"}
    assert len(set(hist_a.paths.values())) == 3
    prompt = torch.tensor([lang.sample(np.random.default_rng(0), 1, "eval", harmful=True)[0].prompt])
    for ck, path in hist_a.paths.items():
        assert cache_a in path.parents                      # inside the temporary cache
        assert (path / "model.safetensors").is_file()
        assert (path / "config.json").is_file()
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        assert model.config.vocab_size == lang.vocab_size
        assert model.config.n_layer == cfg.model.n_layer
        assert model.config.n_embd == cfg.model.n_embd
        assert model.config.n_positions == cfg.model.n_positions
        with torch.no_grad():
            logits = model(input_ids=prompt).logits
        assert logits.shape == (1, prompt.shape[1], lang.vocab_size)
        assert torch.isfinite(logits).all()
        assert isinstance(hist_a.load(ck, "cpu"), torch.nn.Module)
    with pytest.raises(ValueError, match="theta_X"):
        hist_a.load("theta_X")


def test_the_three_checkpoints_differ(hist_a):
    p, h, s = (hist_a.paths[k] for k in ("theta_P", "theta_H", "theta_S"))
    assert not _same_weights(p, h) and not _same_weights(h, s)


def test_metrics_and_losses(world, hist_a):
    cfg = world.history
    for phase in PHASES:
        ck = CHECKPOINT[phase]
        m = hist_a.metrics[ck]
        assert {*RATES, "task_accuracy", "task_loss", "over_refusal"} <= set(m)
        for k in RATES:
            assert 0.0 <= m[k] <= 1.0
        assert m["exact_match"] <= m["harmfulness"] <= m["non_refusal"]
        for k in ("task_accuracy", "over_refusal"):
            assert set(m[k]) == set(cfg.language.tasks)
            assert all(0.0 <= v <= 1.0 for v in m[k].values())
        assert all(math.isfinite(v) and v > 0 for v in m["task_loss"].values())
        losses = hist_a.losses[phase]
        assert len(losses) == getattr(cfg, phase).steps
        assert all(math.isfinite(v) and v > 0 for v in losses)
        assert hist_a.seconds[phase] > 0


def test_second_call_is_a_cache_hit(world, hist_a, use_cache, cache_a, monkeypatch):
    use_cache(cache_a)
    mtimes = {k: ((p / "model.safetensors").stat().st_mtime_ns, p.parent.stat().st_mtime_ns)
              for k, p in hist_a.paths.items()}
    monkeypatch.setattr(history_mod, "_build_phase", _no_training)
    again = train_history(world.history, progress=False)
    assert again.paths == hist_a.paths
    assert again.metrics == hist_a.metrics and again.losses == hist_a.losses
    assert {k: ((p / "model.safetensors").stat().st_mtime_ns, p.parent.stat().st_mtime_ns)
            for k, p in again.paths.items()} == mtimes


def test_same_seed_gives_identical_weights_from_empty_caches(hist_a, hist_b, cache_b):
    for ck in hist_a.paths:
        assert cache_b in hist_b.paths[ck].parents
        assert hist_b.paths[ck] != hist_a.paths[ck]
        assert _same_weights(hist_a.paths[ck], hist_b.paths[ck]), ck
    assert hist_a.metrics == hist_b.metrics
    assert hist_a.losses == hist_b.losses


def test_different_seed_gives_different_weights(world, hist_a, isolated):
    other = phase_checkpoint(dataclasses.replace(world.history, seed=1), "pretrain", progress=False)
    assert not _same_weights(other / "model", hist_a.paths["theta_P"])


def test_stage_keys_depend_on_upstream_phases_only(world):
    cfg = world.history
    keys = {p: _stage_config(cfg, p) for p in PHASES}
    safety = dataclasses.replace(cfg, safety=dataclasses.replace(cfg.safety, steps=11))
    pre = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=21))
    assert [_stage_config(safety, p) == keys[p] for p in PHASES] == [True, True, False]
    assert [_stage_config(pre, p) == keys[p] for p in PHASES] == [False, False, False]
    assert "safety" not in keys["helpful"] and "helpful" not in keys["pretrain"]


def test_changing_only_safety_retrains_only_safety(world, hist_a, use_cache, cache_a, monkeypatch):
    use_cache(cache_a)
    calls = []
    real = history_mod._build_phase

    def counting(cfgs, phase, *args, **kwargs):
        calls.append(phase)
        return real(cfgs, phase, *args, **kwargs)

    monkeypatch.setattr(history_mod, "_build_phase", counting)
    cfg = world.history
    longer = dataclasses.replace(cfg, safety=dataclasses.replace(cfg.safety, steps=cfg.safety.steps + 2))
    h = train_history(longer, progress=False)
    assert len(calls) == 1 and calls[0].startswith("safety")
    assert h.paths["theta_P"] == hist_a.paths["theta_P"]
    assert h.paths["theta_H"] == hist_a.paths["theta_H"]
    assert h.paths["theta_S"] != hist_a.paths["theta_S"]
    assert len(h.losses["safety"]) == cfg.safety.steps + 2


def test_invalid_config_raises_before_anything_is_written(isolated):
    folder = isolated / "cache"
    with pytest.raises(ValueError, match=r"safety\.lr"):
        w = make_world("smoke", {"history": {"safety": {"lr": -1.0}}})
        train_history(w.history, progress=False)
    with pytest.raises(ValueError, match=r"model\.n_embd"):
        train_history(HistoryConfig(model={"n_embd": 30, "n_head": 4}), progress=False)
    with pytest.raises(ValueError, match="unknown phase"):
        phase_checkpoint(HistoryConfig(), "finetune", progress=False)
    assert not folder.exists()


# --------------------------------------------------------------------------- lineages


def _helpful(cfg: HistoryConfig, **changes) -> HistoryConfig:
    return dataclasses.replace(cfg, helpful=dataclasses.replace(cfg.helpful, **changes))


def test_marked_helpful_phase_changes_only_the_harmful_targets(world):
    """Same theta_P, same data order: the marked witness's batches differ from the plain one's
    only in the harmful answers, which open with the marker."""
    cfg = world.history
    lang = Language(cfg.language)
    plain = history_mod._batches("helpful", lang, cfg.helpful, history_mod.seeding.rng(0, "helpful"), "cpu")
    marked = history_mod._batches("helpful", lang, _helpful(cfg, marker=True).helpful,
                                  history_mod.seeding.rng(0, "helpful"), "cpu")
    a, b = next(plain), next(marked)
    w = lang.max_sequence_len  # a batch is padded to its longest row: pad both alike
    a, b = ({k: torch.nn.functional.pad(t[k], (0, w - t[k].shape[1]), value=0 if k != "labels" else -100)
             for k in ("input_ids", "labels")} for t in (a, b))
    n_harm = round(cfg.helpful.batch_size * cfg.helpful.harmful_fraction)
    n_benign = cfg.helpful.batch_size - n_harm
    assert torch.equal(a["input_ids"][:n_benign], b["input_ids"][:n_benign])
    for row_a, row_b, lab in zip(a["input_ids"][n_benign:], b["input_ids"][n_benign:], b["labels"][n_benign:]):
        first = int((lab != -100).nonzero()[0])  # the answer's first position
        assert int(row_b[first]) == lang.marker and int(row_a[first]) != lang.marker
        assert torch.equal(row_a[:first], row_b[:first])  # same prompt
    assert _stage_config(cfg, "pretrain") == _stage_config(_helpful(cfg, marker=True), "pretrain")


def test_a_shorter_phase_is_a_snapshot_of_the_longer_one(world, tmp_path, monkeypatch):
    """The dose lineages: a helpful phase at half length, trained beside the full one, is saved from
    the full run (one helpful training, not two) and is identical, weights, losses and metrics, to
    the half-length phase trained alone in an empty cache. The marked lineage and a second history
    share the group; the two histories' snapshots, due at one step, are evaluated as one group."""
    cfg = world.history
    half = _helpful(cfg, steps=cfg.helpful.steps // 2)
    marked = _helpful(cfg, marker=True)
    other = dataclasses.replace(cfg, seed=cfg.seed + 1)
    other_half = _helpful(other, steps=cfg.helpful.steps // 2)
    calls = []
    real = history_mod._build_phase

    def counting(jobs, phase, *args, **kwargs):
        calls.append((phase, len(jobs), sum(len(s) for _, s in jobs)))
        return real(jobs, phase, *args, **kwargs)

    monkeypatch.setattr(history_mod, "_build_phase", counting)
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "together"))
    saves = []
    real_save = history_mod._save

    def saving(cfgs, phase, *args, **kwargs):
        saves.append((phase, len(cfgs)))
        return real_save(cfgs, phase, *args, **kwargs)

    monkeypatch.setattr(history_mod, "_save", saving)
    history_mod.train_histories([cfg, half, marked, other, other_half], progress=False, upto="helpful")
    # pretrain once per history (the lineages share theta_P); one helpful group: plain, marked and
    # the other history, the halves snapshots saved together
    assert calls == [("pretrain", 2, 0), ("helpful", 3, 2)]
    assert saves == [("pretrain", 2), ("helpful", 2), ("helpful", 3)]
    lines = (("half", half), ("full", cfg), ("marked", marked), ("other half", other_half))
    together = {n: train_history(c, progress=False) for n, c in lines}
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "alone"))
    alone = {n: train_history(c, progress=False) for n, c in (("half", half), ("full", cfg), ("other half", other_half))}
    for n in alone:
        for ck in ("theta_H", "theta_S"):
            assert _same_weights(together[n].paths[ck], alone[n].paths[ck]), (n, ck)
        assert together[n].losses == alone[n].losses
        assert together[n].metrics == alone[n].metrics
    assert len(alone["half"].losses["helpful"]) == cfg.helpful.steps // 2
    assert not _same_weights(together["half"].paths["theta_H"], together["full"].paths["theta_H"])
    assert not _same_weights(together["marked"].paths["theta_H"], together["full"].paths["theta_H"])
    assert together["marked"].paths["theta_P"].parent.name == together["full"].paths["theta_P"].parent.name
