"""Fixtures shared by the test modules (helpers they call live in ``helpers.py``).

* ``isolated`` -- ``REVERSION_CACHE`` and ``REVERSION_RESULTS`` in a fresh temporary folder,
  so a test never reads or writes the project's ``.cache/`` or ``results/``;
* ``tiny`` -- tiny local text models and prompt files (session-scoped: built once).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import Tiny, build_tiny


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
