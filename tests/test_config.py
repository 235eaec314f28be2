"""Configurations refuse bad values (ValueError naming the field) before any work; worlds."""

from __future__ import annotations

import dataclasses

import pytest

from reversion.subjects.organism.config import (
    TASKS, FinetuneConfig, HistoryConfig, LanguageConfig, ModelConfig, PhaseConfig, to_dict,
)
from reversion.subjects.organism.worlds import WORLDS, World, make_world

NAN, INF = float("nan"), float("inf")


def test_defaults_are_valid_and_json_ready():
    h, f = HistoryConfig(), FinetuneConfig()
    d = to_dict(h)
    assert d["language"]["tasks"] == TASKS and d["safety"]["steps"] == 100
    assert to_dict(f)["steps"] == 100
    # rebuilding from its own dict (the YAML/papermill path) gives the same config
    assert HistoryConfig(**{k: v for k, v in d.items()}) == h


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("make, match", [
    (lambda: World(finetune=FinetuneConfig(task="bogus")), r"finetune\.task .bogus. is not a task of this language"),
    (lambda: FinetuneConfig(task=""), r"finetune\.task must be a task name"),
    (lambda: LanguageConfig(tasks=("x",)), r"language\.tasks.*'x'"),
    (lambda: LanguageConfig(tasks=("sort", "sort")), r"language\.tasks.*duplicates"),
    (lambda: LanguageConfig(tasks=()), r"language\.tasks"),
    (lambda: FinetuneConfig(steps=0), r"finetune\.steps"),
    (lambda: FinetuneConfig(steps=-3), r"finetune\.steps"),
    (lambda: ModelConfig(n_embd=65, n_head=4), r"model\.n_embd \(65\).*model\.n_head \(4\)"),
    (lambda: ModelConfig(n_layer=0), r"model\.n_layer"),
    (lambda: FinetuneConfig(lr=0.0), r"finetune\.lr"),
    (lambda: FinetuneConfig(lr=-1e-4), r"finetune\.lr"),
    (lambda: FinetuneConfig(lr=NAN), r"finetune\.lr"),
    (lambda: FinetuneConfig(lr=INF), r"finetune\.lr"),
    (lambda: FinetuneConfig(lr="1e-4"), r"finetune\.lr"),
    (lambda: HistoryConfig(helpful=PhaseConfig(10, 0.0)), r"helpful\.lr"),
    (lambda: HistoryConfig(pretrain=PhaseConfig(10, -1e-3)), r"pretrain\.lr"),
    (lambda: HistoryConfig(safety=PhaseConfig(10, NAN)), r"safety\.lr"),
    (lambda: HistoryConfig(safety=PhaseConfig(10, 1e-3, 16, 1.5)), r"safety\.harmful_fraction"),
    (lambda: HistoryConfig(helpful=PhaseConfig(10, 1e-3, 16, -0.1)), r"helpful\.harmful_fraction"),
    (lambda: HistoryConfig(pretrain=PhaseConfig(10, 1e-3, 16, NAN)), r"pretrain\.harmful_fraction"),
    (lambda: HistoryConfig(safety=PhaseConfig(-1, 1e-3)), r"safety\.steps"),
    (lambda: HistoryConfig(safety=PhaseConfig(10, 1e-3, 0)), r"safety\.batch_size"),
    (lambda: HistoryConfig(language=LanguageConfig(max_len=6), model=ModelConfig(n_positions=16)),
     r"model\.n_positions \(16\).*language\.max_len=6"),
    (lambda: LanguageConfig(min_len=5, max_len=4), r"language\.max_len"),
    (lambda: HistoryConfig(n_eval=0), r"n_eval"),
    (lambda: FinetuneConfig(n_probe=1), r"finetune\.n_probe"),
    (lambda: FinetuneConfig(eval_steps=(0, -1, 5)), r"finetune\.eval_steps"),
    (lambda: World(n_seeds=0), r"n_seeds"),
])
def test_bad_value_raises_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: FinetuneConfig(steps=True), r"finetune\.steps"),
    (lambda: FinetuneConfig(seed=False), r"finetune\.seed"),
    (lambda: FinetuneConfig(lr=True), r"finetune\.lr"),
    (lambda: ModelConfig(n_layer=True), r"model\.n_layer"),
    (lambda: LanguageConfig(seed=True), r"language\.seed"),
    (lambda: HistoryConfig(seed=True), r"seed"),
    (lambda: HistoryConfig(safety=PhaseConfig(True, 1e-3)), r"safety\.steps"),
    (lambda: HistoryConfig(safety=PhaseConfig(10, 1e-3, 16, True)), r"safety\.harmful_fraction"),
    (lambda: World(n_seeds=True), r"n_seeds"),
    (lambda: HistoryConfig(helpful=PhaseConfig(10, 1e-3, 16, 0.3, marker=1)), r"helpful\.marker"),
    (lambda: HistoryConfig(safety=PhaseConfig(10, 1e-3, 16, 0.5, marker=True)), r"safety\.marker"),
    (lambda: HistoryConfig(pretrain=PhaseConfig(10, 1e-3, 16, 0.3, marker=True)), r"pretrain\.marker"),
])
def test_bool_is_not_a_number(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: FinetuneConfig(steps=10.0), r"finetune\.steps"),
    (lambda: ModelConfig(n_embd=64.0), r"model\.n_embd"),
    (lambda: FinetuneConfig(batch_size="32"), r"finetune\.batch_size"),
])
def test_float_or_str_is_not_an_int(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_boundaries_accepted():
    # n_positions exactly the longest sequence: BOS task x SEP M y EOS = 2 * 6 + 5 = 17
    HistoryConfig(language=LanguageConfig(max_len=6), model=ModelConfig(n_positions=17))
    HistoryConfig(safety=PhaseConfig(10, 1e-3, 16, 0.0), helpful=PhaseConfig(10, 1e-3, 16, 1.0))
    HistoryConfig(pretrain=PhaseConfig(0, 1e-3))  # zero steps is a valid (empty) phase
    FinetuneConfig(steps=1, lr=1)  # an int learning rate is a number
    ModelConfig(n_embd=66, n_head=6)
    assert LanguageConfig(tasks=["sort", "swap"]).tasks == ("sort", "swap")  # list -> tuple


def test_history_from_dicts_is_validated():
    h = HistoryConfig(language={"n_content": 16, "max_len": 4},
                      model={"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 16},
                      safety={"steps": 5, "lr": 1e-3})
    assert h.language == LanguageConfig(n_content=16, max_len=4)
    assert h.safety == PhaseConfig(5, 1e-3)
    with pytest.raises(ValueError, match=r"safety\.lr"):
        HistoryConfig(safety={"steps": 5, "lr": -1.0})
    with pytest.raises(ValueError, match=r"model\.n_embd"):
        HistoryConfig(model={"n_embd": 33, "n_head": 2})
    with pytest.raises(ValueError, match=r"model\.n_layer"):
        HistoryConfig(model={"n_layer": 1})
    # the refusal (3 tokens + EOS) must fit after a short prompt too
    with pytest.raises(ValueError, match=r"n_positions"):
        HistoryConfig(language={"min_len": 2, "max_len": 2}, model={"n_positions": 8})


def test_history_dict_with_unknown_key_raises_value_error():
    with pytest.raises(ValueError, match="bogus"):
        HistoryConfig(language={"bogus": 1})


# --------------------------------------------------------------------------- eval grid


@pytest.mark.parametrize("steps, given, grid", [
    (10, (5, 20, 3, 3), (0, 3, 5, 10)),
    (10, (), (0, 10)),
    (6, (0, 1, 2, 3, 6), (0, 1, 2, 3, 6)),
    (1, (0, 1, 2, 3), (0, 1)),
    (100, (0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 50, 75, 100), (0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 50, 75, 100)),
    (40, (0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 50, 75, 100), (0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40)),
    (200, (0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 50, 75, 100), (0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 50, 75, 100, 200)),
    (7, [7, 2], (0, 2, 7)),
    (5, (9, 8), (0, 5)),
])
def test_eval_grid(steps, given, grid):
    f = FinetuneConfig(steps=steps, eval_steps=given)
    assert f.eval_steps == tuple(given)  # kept as given (a list becomes a tuple), not trimmed
    assert isinstance(f.eval_steps, tuple)
    assert f.grid == grid
    assert f.grid[0] == 0 and f.grid[-1] == steps
    assert all(s <= steps for s in f.grid)
    assert list(f.grid) == sorted(set(f.grid))
    # every given step up to T is evaluated, none beyond it
    assert {s for s in given if s <= steps} <= set(f.grid) <= {s for s in given} | {0, steps}
    assert dataclasses.replace(f) == f  # construction is a fixed point
    assert dataclasses.replace(f, steps=steps).grid == grid


def test_default_eval_grid_contains_0_and_T():
    f = FinetuneConfig()
    assert f.grid[0] == 0 and f.grid[-1] == f.steps
    assert list(f.grid) == sorted(set(f.grid))
    assert f.grid == f.eval_steps  # the default steps already hold 0 and T


def test_grid_follows_a_changed_T():
    """eval_steps survive a change of T, so the grid can grow back as well as shrink."""
    f = FinetuneConfig()
    short = dataclasses.replace(f, steps=40)
    assert short.eval_steps == f.eval_steps
    assert short.grid == (0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40)
    assert dataclasses.replace(short, steps=100).grid == f.grid


@pytest.mark.parametrize("bad", [2.7, "3", True, False, 3.0, None, -1])
def test_non_int_or_negative_eval_step_raises(bad):
    with pytest.raises(ValueError, match=r"finetune\.eval_steps"):
        FinetuneConfig(eval_steps=(0, bad, 5))
    with pytest.raises(ValueError, match=r"finetune\.eval_steps"):
        FinetuneConfig(eval_steps=[bad])


# --------------------------------------------------------------------------- worlds


def test_named_worlds():
    assert make_world() == WORLDS["default"]
    smoke = make_world("smoke")
    assert smoke.finetune.steps == 6 and smoke.seeds == [0, 1, 2]
    assert smoke.finetune.grid == smoke.finetune.eval_steps == (0, 1, 2, 3, 6)
    assert smoke.finetune_config(2).seed == 2
    short = smoke.finetune_config(1, steps=3)
    assert short.eval_steps == (0, 1, 2, 3, 6)  # kept as given
    assert short.grid == (0, 1, 2, 3)            # evaluated only up to T
    default = make_world()
    assert default.finetune.grid == (0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 50, 75, 100)


def test_unknown_world():
    with pytest.raises(ValueError, match=r"unknown world 'bogus'.*default.*smoke"):
        make_world("bogus")


@pytest.mark.parametrize("overrides, match", [
    ({"bogus": 1}, r"world_overrides: unknown field 'bogus'"),
    ({"finetune": {"lrr": 1e-3}}, r"world_overrides\.finetune: unknown field 'lrr'"),
    ({"history": {"safety": {"stepz": 7}}}, r"world_overrides\.history\.safety: unknown field 'stepz'"),
    ({"history": {"language": {"bogus": 1}}}, r"world_overrides\.history\.language: unknown field 'bogus'"),
])
def test_unknown_override_key_names_its_path(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_world("smoke", overrides)


def test_valid_overrides_are_applied_and_nothing_else_changes():
    smoke = WORLDS["smoke"]
    before = to_dict(smoke.history), to_dict(smoke.finetune)
    w = make_world("smoke", {"finetune": {"lr": 3e-4}})
    assert w.finetune.lr == 3e-4
    assert w.history == smoke.history
    assert dataclasses.replace(w.finetune, lr=smoke.finetune.lr) == smoke.finetune
    w2 = make_world("smoke", {"history": {"safety": {"steps": 7}}})
    assert w2.history.safety.steps == 7
    assert w2.history.safety.lr == smoke.history.safety.lr
    assert w2.history.helpful == smoke.history.helpful and w2.finetune == smoke.finetune
    w3 = make_world("smoke", {"finetune": {"eval_steps": [0, 2], "steps": 4}, "n_seeds": 1})
    assert w3.finetune.eval_steps == (0, 2) and w3.finetune.grid == (0, 2, 4) and w3.seeds == [0]
    # overriding T alone keeps the world's eval_steps; the grid is recomputed from them
    w5 = make_world("default", {"finetune": {"steps": 200}})
    assert w5.finetune.eval_steps == WORLDS["default"].finetune.eval_steps
    assert w5.finetune.grid == (0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 50, 75, 100, 200)
    assert dataclasses.replace(w5.finetune, steps=100) == WORLDS["default"].finetune
    w6 = make_world("smoke", {"finetune": {"steps": 4}})
    assert w6.finetune.eval_steps == (0, 1, 2, 3, 6) and w6.finetune.grid == (0, 1, 2, 3, 4)
    w4 = make_world("smoke", {"history": {"language": {"tasks": ["sort", "swap"]}}})
    assert w4.history.language.tasks == ("sort", "swap")
    assert (to_dict(smoke.history), to_dict(smoke.finetune)) == before  # the registry is untouched
    assert make_world("smoke", {}) == smoke


@pytest.mark.parametrize("overrides, match", [
    ({"finetune": {"lr": -1.0}}, r"finetune\.lr"),
    ({"finetune": {"lr": 0}}, r"finetune\.lr"),
    ({"finetune": {"steps": 0}}, r"finetune\.steps"),
    ({"finetune": {"task": "bogus"}}, r"finetune\.task"),
    ({"history": {"safety": {"lr": 0.0}}}, r"safety\.lr"),
    ({"history": {"helpful": {"harmful_fraction": 2.0}}}, r"helpful\.harmful_fraction"),
    ({"history": {"model": {"n_head": 3}}}, r"model\.n_embd"),
    ({"history": {"language": {"max_len": 9}}}, r"model\.n_positions"),
    ({"history": {"seed": True}}, r"seed"),
    ({"history": {"safety": {"steps": 0}}}, r"safety\.steps must be >= 1"),  # theta_S would be theta_H
    ({"history": {"language": {"tasks": ["sort"]}}, "finetune": {"task": "sort"}},
     r"language\.tasks needs at least 2 tasks"),  # no untrained task to read harm on
    ({"n_seeds": 0}, r"n_seeds"),
    ({"finetune": {"eval_steps": 5}}, r"finetune"),
    ({"finetune": {"eval_steps": [0, 2.5]}}, r"finetune\.eval_steps"),
    ({"finetune": {"eval_steps": [0, "3"]}}, r"finetune\.eval_steps"),
])
def test_override_with_bad_value_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_world("smoke", overrides)


@pytest.mark.parametrize("overrides", [
    {"history": {"pretrain": 5}},
    {"finetune": 5},
    {"history": "big"},
], ids=["phase-as-number", "finetune-as-number", "history-as-str"])
def test_override_scalar_for_nested_config_raises_value_error(overrides):
    with pytest.raises(ValueError):
        make_world("smoke", overrides)


def test_finetune_task_must_be_in_the_language():
    with pytest.raises(ValueError, match="sort"):
        make_world("smoke", {"history": {"language": {"tasks": ["reverse", "rotate"]}}})
