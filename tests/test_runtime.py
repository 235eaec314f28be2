"""free_memory: a full collection only when reference counting left the dropped model alive."""

import gc
import weakref

from torch import nn

from reversion.infra import runtime


def _counting(monkeypatch) -> list:
    calls = []
    real = gc.collect
    monkeypatch.setattr(runtime.gc, "collect", lambda *a: calls.append(1) or real(*a))
    return calls


def test_a_model_freed_at_del_needs_no_collection(monkeypatch):
    calls = _counting(monkeypatch)
    model = nn.Linear(4, 4)
    dropped = weakref.ref(model)
    del model
    runtime.free_memory(dropped)
    assert dropped() is None and calls == []


def test_a_model_in_a_reference_cycle_is_collected(monkeypatch):
    calls = _counting(monkeypatch)
    gc.disable()  # so that only free_memory's collection can free the cycle
    try:
        model = nn.Linear(4, 4)
        model.myself = [model]  # a cycle: reference counting alone never frees it
        dropped = weakref.ref(model)
        del model
        assert dropped() is not None
        runtime.free_memory(dropped)
    finally:
        gc.enable()
    assert dropped() is None and calls == [1]


def test_without_a_reference_it_always_collects(monkeypatch):
    calls = _counting(monkeypatch)
    runtime.free_memory()
    assert calls == [1]
