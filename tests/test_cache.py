"""The content-addressed cache: hits, misses, invalidation, interrupted builds, sweeping."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from reversion.infra import cache
from reversion.infra.provenance import code_hash, device_kind, versions


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """An empty cache; the project's own cache is never touched."""
    r = tmp_path / "cache"
    monkeypatch.setenv("REVERSION_CACHE", str(r))
    return r


class Builder:
    """A build function that counts its calls and writes a marker file."""

    def __init__(self, text: str = "payload"):
        self.calls = 0
        self.text = text

    def __call__(self, out: Path) -> None:
        self.calls += 1
        assert out.is_dir() and not any(out.iterdir())  # starts from an empty folder
        assert out.name.startswith(".tmp-")
        (out / "data.txt").write_text(self.text)
        (out / "sub").mkdir()
        (out / "sub" / "more.txt").write_text("x")


def entries(stage_dir: Path) -> list[str]:
    return sorted(p.name for p in stage_dir.iterdir()) if stage_dir.exists() else []


def test_miss_builds_then_hit_returns_without_building(root):
    b = Builder()
    cfg = {"a": 1, "b": [1, 2]}
    p1 = cache.cached("stage", cfg, b)
    assert b.calls == 1
    assert p1.parent == root / "stage"           # REVERSION_CACHE is honoured
    assert p1 == cache.entry_path("stage", cfg)
    assert cache.is_complete(p1)
    assert (p1 / "data.txt").read_text() == "payload"
    assert (p1 / "sub" / "more.txt").is_file()
    meta = json.loads((p1 / "config.json").read_text())
    assert meta == {"stage": "stage", "config": cfg, "code": code_hash(), **versions(),
                    "device": device_kind(), "modules": []}
    assert entries(root / "stage") == [p1.name]   # no temporary folder left
    p2 = cache.cached("stage", cfg, b)
    assert p2 == p1 and b.calls == 1


def test_key_is_independent_of_dict_order(root):
    b = Builder()
    p1 = cache.cached("stage", {"a": 1, "b": {"x": 1, "y": 2}}, b)
    p2 = cache.cached("stage", {"b": {"y": 2, "x": 1}, "a": 1}, b)
    assert p1 == p2 and b.calls == 1


def test_different_config_or_stage_is_a_different_entry(root):
    b = Builder()
    p1 = cache.cached("stage", {"a": 1}, b)
    p2 = cache.cached("stage", {"a": 2}, b)
    p3 = cache.cached("other", {"a": 1}, b)
    assert b.calls == 3
    assert len({p1, p2, p3}) == 3
    assert len({p1.name, p2.name, p3.name}) == 3  # the key itself depends on the stage
    assert cache.cached("stage", {"a": 1}, b) == p1 and b.calls == 3


def test_explicit_root_argument(tmp_path, root):
    b = Builder()
    other = tmp_path / "elsewhere"
    p = cache.cached("stage", {"a": 1}, b, root=other)
    assert p.parent == other / "stage" and not root.exists()


def test_code_hash_change_invalidates(root, monkeypatch):
    b = Builder()
    p1 = cache.cached("stage", {"a": 1}, b)
    monkeypatch.setattr(cache, "code_hash", lambda *a, **k: "0" * 64)
    p2 = cache.cached("stage", {"a": 1}, b)
    assert b.calls == 2 and p2 != p1
    assert json.loads((p2 / "config.json").read_text())["code"] == "0" * 64
    monkeypatch.undo()
    monkeypatch.setenv("REVERSION_CACHE", str(root))
    assert cache.cached("stage", {"a": 1}, b) == p1 and b.calls == 2  # old code: old entry


def test_key_hashes_the_code_of_the_named_modules_only(root):
    """``code`` names the modules a stage depends on: their import closure is hashed (and
    recorded), so a different module set is a different entry, and the key is the same
    whichever order the modules are named in."""
    b = Builder()
    p_all = cache.cached("stage", {"a": 1}, b)
    p_stats = cache.cached("stage", {"a": 1}, b, code=("reversion.core.stats",))
    p_drift = cache.cached("stage", {"a": 1}, b, code=("reversion.core.drift",))
    assert b.calls == 3 and len({p_all, p_stats, p_drift}) == 3
    meta = json.loads((p_stats / "config.json").read_text())
    assert meta["code"] == code_hash(["reversion.core.stats"]) != code_hash()
    assert meta["modules"] == ["reversion.core.stats"]
    # core.drift imports core.stats: naming both hashes the same closure as naming drift.
    assert cache.cached("stage", {"a": 1}, b, code=("reversion.core.stats", "reversion.core.drift")) == p_drift
    both = ("reversion.core.stats", "reversion.core.batches")
    p1 = cache.cached("stage", {"a": 1}, b, code=both)
    assert cache.cached("stage", {"a": 1}, b, code=both[::-1]) == p1 and b.calls == 4
    assert p1 == cache.entry_path("stage", {"a": 1}, code=both)


def test_key_depends_on_the_library_versions_and_the_device(root, monkeypatch):
    """CPU and CUDA runs (or two torch versions) give different numbers: never one entry."""
    b = Builder()
    p1 = cache.cached("stage", {"a": 1}, b)
    monkeypatch.setattr(cache, "device_kind", lambda: "cuda:Imaginary GPU")
    p2 = cache.cached("stage", {"a": 1}, b)
    assert p2 != p1 and json.loads((p2 / "config.json").read_text())["device"] == "cuda:Imaginary GPU"
    monkeypatch.setattr(cache, "versions", lambda: {"torch_version": "0.0", "transformers_version": "0.0",
                                                    "python_version": "0.0"})
    p3 = cache.cached("stage", {"a": 1}, b)
    assert b.calls == 3 and len({p1, p2, p3}) == 3


def test_exception_in_build_leaves_nothing(root):
    def broken(out: Path) -> None:
        (out / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.cached("stage", {"a": 1}, broken)
    assert entries(root / "stage") == []
    b = Builder()
    p = cache.cached("stage", {"a": 1}, b)
    assert b.calls == 1 and cache.is_complete(p) and not (p / "half.txt").exists()


def test_interrupted_build_is_never_complete_and_is_rebuilt(root):
    def interrupted(out: Path) -> None:
        (out / "data.txt").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.cached("stage", {"a": 1}, interrupted)
    final = cache.entry_path("stage", {"a": 1})
    assert not final.exists() and not cache.is_complete(final)
    assert entries(root / "stage") == []
    b = Builder()
    p = cache.cached("stage", {"a": 1}, b)
    assert b.calls == 1 and (p / "data.txt").read_text() == "payload"


def test_leftover_without_complete_at_final_path_is_rebuilt(root):
    final = cache.entry_path("stage", {"a": 1})
    final.mkdir(parents=True)
    (final / "data.txt").write_text("stale, incomplete")
    (final / "junk.bin").write_bytes(b"\0" * 10)
    assert not cache.is_complete(final)
    b = Builder()
    p = cache.cached("stage", {"a": 1}, b)
    assert p == final and b.calls == 1
    assert (p / "data.txt").read_text() == "payload"
    assert not (p / "junk.bin").exists()


def test_hard_killed_build_leaves_only_a_tmp_folder_that_is_not_an_entry(root):
    """A SIGKILL skips every ``except``: simulate its leftover ``.tmp-*`` folder."""
    final = cache.entry_path("stage", {"a": 1})
    final.parent.mkdir(parents=True)
    dead = final.parent / f".tmp-{final.name}-deadbeef"
    dead.mkdir()
    (dead / "data.txt").write_text("partial")
    (dead / cache.COMPLETE).write_text("")  # even marked complete, a tmp name is no entry
    b = Builder()
    p = cache.cached("stage", {"a": 1}, b)
    assert b.calls == 1 and p == final and (p / "data.txt").read_text() == "payload"
    assert dead.exists()  # recent: could be a live build of another process, so kept


def test_stale_tmp_folders_are_swept(root):
    stage = root / "stage"
    stage.mkdir(parents=True)
    now = time.time()
    stale = stage / ".tmp-aaaa-11111111"
    fresh = stage / ".tmp-bbbb-22222222"
    for d, age in ((stale, cache.STALE_TMP_SECONDS + 60), (fresh, cache.STALE_TMP_SECONDS - 60)):
        d.mkdir()
        (d / "f").write_text("x")
        os.utime(d, (now - age, now - age))
    unrelated = stage / "not-a-tmp"
    unrelated.mkdir()
    os.utime(unrelated, (now - 10 * cache.STALE_TMP_SECONDS,) * 2)
    cache.cached("stage", {"a": 1}, Builder())
    assert not stale.exists()
    assert fresh.exists()
    assert unrelated.exists()


def test_concurrent_finisher_wins_the_rename(root):
    """Another process completes the same entry while we build: keep theirs, drop ours."""
    final = cache.entry_path("stage", {"a": 1})

    def racing(out: Path) -> None:
        (out / "data.txt").write_text("ours")
        final.mkdir()
        (final / "data.txt").write_text("theirs")
        (final / cache.COMPLETE).write_text("")

    p = cache.cached("stage", {"a": 1}, racing)
    assert p == final and (p / "data.txt").read_text() == "theirs"
    assert entries(root / "stage") == [final.name]  # our tmp folder removed


def test_rename_onto_incomplete_folder_is_an_error(root):
    final = cache.entry_path("stage", {"a": 1})

    def racing(out: Path) -> None:
        (out / "data.txt").write_text("ours")
        final.mkdir()
        (final / "partial.txt").write_text("someone else, unfinished")

    with pytest.raises(OSError):
        cache.cached("stage", {"a": 1}, racing)
    assert not any(n.startswith(".tmp-") for n in entries(root / "stage"))
    assert not cache.is_complete(final)
