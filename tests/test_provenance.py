"""Code identity (reversion.infra.provenance): what a cache key or a page stamp hashes.

The import closure of package modules is followed statically (imports inside functions
count); a class defined outside the package is identified by its source file, so editing it
changes the key; one defined without a source file is refused. ``git_state`` reads the commit
and whether tracked files changed, and answers None (never raises) outside a git checkout."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reversion.infra import provenance, vcs


def test_closure_follows_imports_and_parent_packages():
    c = provenance.closure(["reversion.stages.finetune"])
    assert "reversion.core.training" in c and "reversion.stages" in c and "reversion" in c
    assert not [m for m in c if m.startswith("reversion.book")]


def test_an_unknown_module_is_an_error():
    with pytest.raises(ValueError, match="no module"):
        provenance.code_hash(["reversion.nowhere"])


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_class_outside_the_package_is_keyed_by_its_source_file(tmp_path):
    f = tmp_path / "my_intervention.py"
    f.write_text("class Mine:\n    def key(self):\n        return {'variant': 'mine'}\n")
    obj = _load(f, "my_intervention").Mine()
    names = provenance.code_of(("reversion.stages.finetune",), obj)
    assert names[-1] == f"file:{f.resolve()}"
    before = provenance.code_hash(names)
    assert provenance.code_hash(names) == before
    f.write_text(f.read_text() + "# an edit that changes the intervention's code\n")
    assert provenance.code_hash(names) != before


def test_a_repeated_hash_follows_the_closure_once_until_a_file_or_folder_changes(tmp_path, monkeypatch):
    f = tmp_path / "mine.py"
    f.write_text("x = 1\n")
    names = ("reversion.core.stats", f"file:{f}")
    walks = []
    real = provenance.closure
    monkeypatch.setattr(provenance, "closure", lambda mods: walks.append(1) or real(mods))
    first = provenance.code_hash(names)
    assert provenance.code_hash(names) == first and len(walks) == 1  # the stamps alone were checked
    (tmp_path / "new_module.py").write_text("")  # a file added beside one hashed: followed again
    os.utime(tmp_path, ns=(0, 0))  # a folder's new stamp, however coarse the file system's clock
    assert provenance.code_hash(names) == first and len(walks) == 2
    f.write_text("x = 22\n")
    assert provenance.code_hash(names) != first and len(walks) == 3


def test_a_class_without_source_is_refused():
    Cls = type("Interactive", (), {"__module__": "no_module_with_a_file_xyz"})  # as typed at a prompt
    with pytest.raises(ValueError, match="without a source file"):
        provenance.code_of((), Cls())


# --------------------------------------------------------------------------- git_state

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture
def no_repo_above(tmp_path, monkeypatch):
    """git looks no higher than ``tmp_path`` and reads no user or system configuration."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return tmp_path


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           "-c", "commit.gpgsign=false", *args],
                          cwd=str(cwd), check=True, capture_output=True, text=True).stdout


@needs_git
def test_git_state_of_a_clean_then_dirty_checkout(no_repo_above):
    repo = no_repo_above / "repo"
    (repo / "sub").mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "first")
    sha = git(repo, "rev-parse", "HEAD").strip()
    assert len(sha) == 40
    assert vcs.git_state(repo) == {"commit": sha, "dirty": False}
    assert vcs.git_state(str(repo / "sub")) == {"commit": sha, "dirty": False}  # any folder in it
    (repo / "new.txt").write_text("untracked\n")  # untracked files are not changes
    assert vcs.git_state(repo)["dirty"] is False
    (repo / "a.txt").write_text("two\n")
    assert vcs.git_state(repo) == {"commit": sha, "dirty": True}
    git(repo, "commit", "-q", "-am", "second")
    after = vcs.git_state(repo)
    assert after["commit"] != sha and after["dirty"] is False


@needs_git
def test_git_state_ignores_a_git_dir_pointing_elsewhere(no_repo_above, monkeypatch):
    repo = no_repo_above / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "first")
    monkeypatch.setenv("GIT_DIR", str(no_repo_above / "nowhere" / ".git"))
    assert vcs.git_state(repo)["commit"] == git(repo, "--git-dir", str(repo / ".git"),
                                                       "rev-parse", "HEAD").strip()


def test_git_state_outside_a_checkout_is_unknown(no_repo_above):
    plain = no_repo_above / "plain"
    plain.mkdir()
    assert vcs.git_state(plain) == {"commit": None, "dirty": None}
    assert vcs.git_state(no_repo_above / "missing") == {"commit": None, "dirty": None}


@needs_git
def test_git_state_of_a_repository_without_commits_is_unknown(no_repo_above):
    repo = no_repo_above / "empty"
    repo.mkdir()
    git(repo, "init", "-q")
    assert vcs.git_state(repo) == {"commit": None, "dirty": None}


def test_git_state_without_git_is_unknown(no_repo_above, monkeypatch):
    monkeypatch.setenv("PATH", str(no_repo_above))  # no git executable to be found
    assert vcs.git_state(Path(__file__).parent) == {"commit": None, "dirty": None}


def test_git_state_is_not_part_of_the_provenance():
    """The commit changes with every commit, the numbers do not: it stays out of what is hashed
    and of metrics.json (results.py writes it to build.json), and its module is in no stage's code
    identity (an edit to it retrains nothing)."""
    assert not {"commit", "dirty", "git"} & set(provenance.provenance(["reversion.core.stats"]))
    for stage in ("reversion.stages.finetune", "reversion.stages.estimate", "reversion.stages.calibrate"):
        assert "reversion.infra.vcs" not in provenance.closure([stage]), stage


def test_a_hanging_git_is_given_up_on(no_repo_above, monkeypatch):
    fake = no_repo_above / "bin"
    fake.mkdir()
    (fake / "git").write_text("#!/bin/sh\nexec sleep 30\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setattr(vcs, "GIT_TIMEOUT_S", 0.3)
    assert vcs.git_state(no_repo_above) == {"commit": None, "dirty": None}
