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
