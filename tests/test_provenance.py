"""Code identity (reversion.infra.provenance): what a cache key or a page stamp hashes.

The import closure of package modules is followed statically (imports inside functions
count); a class defined outside the package is identified by its source file, so editing it
changes the key; one defined without a source file is refused."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from reversion.infra import provenance


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


def test_a_class_without_source_is_refused():
    Cls = type("Interactive", (), {"__module__": "no_module_with_a_file_xyz"})  # as typed at a prompt
    with pytest.raises(ValueError, match="without a source file"):
        provenance.code_of((), Cls())
