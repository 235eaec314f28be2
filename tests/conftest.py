"""Fixtures shared by the test modules (helpers they call live in ``helpers.py``).

* ``isolated`` -- ``REVERSION_CACHE`` and ``REVERSION_RESULTS`` in a fresh temporary folder,
  so a test never reads or writes the project's ``.cache/`` or ``results/``;
* ``tiny`` -- tiny local text models and prompt files (session-scoped: built once);
* ``demo`` -- the tiny demo history of chapter 07 (Llama: pretrained, witness, aligned,
  tokenizer; session-scoped), on which the checkpoint subject and chapters 02-05 run;
* ``one_thread`` -- one torch thread for a module's tiny models (a second one only contends),
  and the global determinism flags that ``seed_everything`` sets restored afterwards
  (``pytestmark = pytest.mark.usefixtures("one_thread")``);
* ``world`` -- the smoke world (a module may define its own);
* ``cache_a`` / ``cache_b`` and ``hist_a`` / ``hist_b`` -- per test module, the module's
  ``world`` history trained in two separate empty caches (cache and determinism tests);
* ``smoke_book`` -- every chapter executed once at smoke parameters in a copy of the working
  tree (``smoke_book.py``; session-scoped), for the notebook and browser tests (both collected in
  ``test_notebooks.py``, so one process executes the chapters once).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import smoke_book as smoke
from helpers import Tiny, build_tiny, in_cache

from reversion.infra.runtime import set_cpu_threads
from reversion.subjects.checkpoints import demo as demo_models
from reversion.subjects.organism.history import train_history
from reversion.subjects.organism.worlds import make_world


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> smoke.SmokeBook:
    """Every chapter executed at smoke parameters, once per session (:func:`smoke_book.execute`)."""
    return smoke.execute(tmp_path_factory.mktemp("smoke-book"))


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    set_cpu_threads()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det, warn_only=warn)


@pytest.fixture(scope="module")
def world():
    return make_world("smoke")


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch) -> Path:
    """Cache and results in ``tmp_path`` (``cache/``, ``results/``); returns ``tmp_path``."""
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REVERSION_RESULTS", str(tmp_path / "results"))
    return tmp_path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    """Tokenizers, a GPT-2 and a Llama witness/aligned pair, a wider Llama, prompt files."""
    return build_tiny(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict[str, Path]:
    """The tiny demo history of chapter 07 (Llama): pretrained, witness, aligned, tokenizer
    (:func:`reversion.subjects.checkpoints.demo.build_demo`, 30 steps per phase)."""
    return demo_models.build_demo(tmp_path_factory.mktemp("demo"), "llama", seed=0, steps=30)


@pytest.fixture(scope="module")
def cache_a(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache-a") / "cache"


@pytest.fixture(scope="module")
def cache_b(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache-b") / "cache"


def _history_in(world, folder: Path):
    mp = in_cache(folder)
    try:
        yield train_history(world.history, progress=False)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def hist_a(world, cache_a):
    yield from _history_in(world, cache_a)


@pytest.fixture(scope="module")
def hist_b(world, cache_b):
    """The same history trained again, from nothing, in another empty cache."""
    yield from _history_in(world, cache_b)
