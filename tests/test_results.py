"""results/<stem>/metrics.json: content, provenance, deterministic bytes, refusal of non-finite;
the git commit and the time of writing in build.json beside it, never in metrics.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reversion.infra import results
from reversion.infra.provenance import code_hash
from reversion.infra.vcs import git_state


@pytest.fixture
def out(isolated) -> Path:
    """An empty results folder; the project's own results are never touched."""
    return isolated / "results"


METRICS = {"harmfulness": {"mean": 0.25, "std": 0.05, "n": 5}, "steps": [0, 1, 2]}
PARAMS = {"world": "smoke", "n_seeds": 5, "world_overrides": {"finetune": {"lr": 3e-4}}}


def test_writes_metrics_with_parameters_seeds_and_provenance(out):
    path = results.write_metrics("01_demo", METRICS, PARAMS, seeds=[0, 1, 2, 3, 4])
    assert path == out / "01_demo" / "metrics.json"
    doc = json.loads(path.read_text())
    assert doc["notebook"] == "01_demo"
    assert doc["parameters"] == PARAMS
    assert doc["seeds"] == [0, 1, 2, 3, 4]
    assert doc["metrics"] == METRICS
    prov = doc["provenance"]
    assert prov["code_hash"] == code_hash() and len(prov["code_hash"]) == 64
    assert prov["torch_version"] == torch.__version__
    assert {"package_version", "transformers_version", "python_version"} <= set(prov)
    # no tmp, no timings; build.json: the commit and the time
    assert sorted(p.name for p in path.parent.iterdir()) == ["build.json", "metrics.json"]


def test_subject_stages_and_code_are_recorded(out):
    """The subject's record and the stage identities sit at the top of the document; ``code``
    names the modules whose import closure the provenance hashes (default: the package)."""
    subject = {"kind": "checkpoints", "witness": "/m/w", "hash": "abc"}
    stages = {"subject": "0" * 24, "estimate": "1" * 24}
    p = results.write_metrics("02_demo", METRICS, PARAMS, seeds=[0], subject=subject,
                              code=("reversion.core.stats",), stages=stages)
    doc = json.loads(p.read_text())
    assert doc["subject"] == subject and doc["stages"] == stages
    assert set(doc) == {"notebook", "parameters", "seeds", "subject", "stages", "provenance", "metrics"}
    assert doc["provenance"]["code_hash"] == code_hash(["reversion.core.stats"]) != code_hash()
    # absent: recorded as null, the file still deterministic
    plain = json.loads(results.write_metrics("02_plain", METRICS, PARAMS).read_text())
    assert plain["subject"] is None and plain["stages"] is None
    # the module named decides the provenance, hence the bytes
    first = p.read_bytes()
    results.write_metrics("02_demo", METRICS, PARAMS, seeds=[0], subject=subject,
                          code=("reversion.core.batches",), stages=stages)
    assert p.read_bytes() != first


def test_bytes_are_deterministic(out):
    p = results.write_metrics("s", METRICS, PARAMS, seeds=[0, 1])
    first = p.read_bytes()
    results.write_metrics("s", dict(reversed(list(METRICS.items()))),
                          dict(reversed(list(PARAMS.items()))), seeds=[0, 1])
    assert p.read_bytes() == first            # dict order does not matter
    assert first.endswith(b"\n")
    results.write_metrics("s", {**METRICS, "steps": [0, 1, 3]}, PARAMS, seeds=[0, 1])
    assert p.read_bytes() != first            # a different number does


def test_timings_go_to_their_own_file(out):
    p = results.write_metrics("t", METRICS, PARAMS, timings={"seconds": 12.5, "steps": 3})
    assert "seconds" not in p.read_text()
    t = json.loads((out / "t" / "timings.json").read_text())
    assert t == {"seconds": 12.5, "steps": 3}
    first = p.read_bytes()
    results.write_metrics("t", METRICS, PARAMS, timings={"seconds": 99.0})
    assert p.read_bytes() == first            # wall-clock never changes metrics.json


@pytest.mark.parametrize("bad", [
    float("nan"), float("inf"), -float("inf"), np.float32("nan"), np.float64("inf"),
    [1.0, float("nan")], {"deep": {"deeper": (0.5, float("inf"))}}, np.array([0.1, np.nan]),
])
def test_non_finite_is_refused_and_leaves_no_file(out, bad):
    with pytest.raises(ValueError, match="non-finite"):
        results.write_metrics("bad", {"x": bad}, PARAMS)
    assert not (out / "bad").exists() or not any((out / "bad").iterdir())
    with pytest.raises(ValueError, match="non-finite"):
        results.write_metrics("bad", METRICS, {"lr": bad})
    assert not (out / "bad" / "metrics.json").exists()


def test_non_finite_does_not_replace_an_existing_file(out):
    p = results.write_metrics("keep", METRICS, PARAMS)
    before = p.read_bytes()
    with pytest.raises(ValueError):
        results.write_metrics("keep", {"x": float("nan")}, PARAMS)
    assert p.read_bytes() == before
    assert sorted(q.name for q in p.parent.iterdir()) == ["build.json", "metrics.json"]


FAKE_A = {"commit": "a" * 40, "dirty": False}
FAKE_B = {"commit": "b" * 40, "dirty": True}


def test_the_commit_goes_to_build_json_and_never_changes_metrics_json(out, monkeypatch):
    """Same numbers from another commit (or the same one with uncommitted changes) give the
    same metrics.json bytes -- later chapters re-execute only when those bytes change."""
    monkeypatch.setattr(results, "git_state", lambda: dict(FAKE_A))
    p = results.write_metrics("g", METRICS, PARAMS, seeds=[0], timings={"seconds": 1.0})
    first = p.read_bytes()
    build = json.loads((out / "g" / "build.json").read_text())
    assert build["commit"] == FAKE_A["commit"] and build["dirty"] is False
    assert build["metrics_sha256"] == hashlib.sha256(first).hexdigest()
    assert build["written_utc"].endswith("Z")

    monkeypatch.setattr(results, "git_state", lambda: dict(FAKE_B))
    results.write_metrics("g", METRICS, PARAMS, seeds=[0], timings={"seconds": 2.0})
    assert p.read_bytes() == first
    assert "a" * 12 not in first.decode() and "dirty" not in first.decode()
    build = json.loads((out / "g" / "build.json").read_text())
    assert build["commit"] == FAKE_B["commit"] and build["dirty"] is True
    assert sorted(q.name for q in p.parent.iterdir()) == ["build.json", "metrics.json", "timings.json"]


def test_build_json_holds_the_checkout_commit(out):
    p = results.write_metrics("c", METRICS, PARAMS)
    build = json.loads((p.parent / "build.json").read_text())
    assert {k: build[k] for k in ("commit", "dirty")} == git_state()  # None outside a git checkout
    assert set(build) == {"commit", "dirty", "written_utc", "metrics_sha256"}


def test_outside_git_build_json_says_unknown(out, monkeypatch):
    monkeypatch.setattr(results, "git_state", lambda: {"commit": None, "dirty": None})
    p = results.write_metrics("n", METRICS, PARAMS)
    build = json.loads((p.parent / "build.json").read_text())
    assert build["commit"] is None and build["dirty"] is None


def test_non_finite_timings_write_nothing(out):
    with pytest.raises(ValueError, match="non-finite"):
        results.write_metrics("tm", METRICS, PARAMS, timings={"seconds": float("nan")})
    assert not (out / "tm" / "metrics.json").exists() and not (out / "tm" / "build.json").exists()


def test_numpy_values_are_serialised(out):
    metrics = {
        "i64": np.int64(7), "i32": np.int32(-3), "f32": np.float32(0.5), "f64": np.float64(0.125),
        "vec": np.array([1.5, 2.0, -0.25]), "mat": np.arange(6, dtype=np.int64).reshape(2, 3),
        "tuple": (1, 2), "keys": {3: "int key"}, "path": Path("a") / "b.txt",
    }
    p = results.write_metrics("np", metrics, {"seed": np.int64(3)})
    doc = json.loads(p.read_text())
    m = doc["metrics"]
    assert m["i64"] == 7 and isinstance(m["i64"], int)
    assert m["i32"] == -3
    assert m["f32"] == 0.5 and m["f64"] == 0.125
    assert m["vec"] == [1.5, 2.0, -0.25]
    assert m["mat"] == [[0, 1, 2], [3, 4, 5]]
    assert m["tuple"] == [1, 2]
    assert m["keys"] == {"3": "int key"}
    assert m["path"] == "a/b.txt"
    assert doc["parameters"] == {"seed": 3}


def test_float_noise_below_1e_10_is_rounded_away(out):
    """Last-digit noise does not change the file."""
    p = results.write_metrics("r", {"x": 0.1 + 0.2}, PARAMS)
    a = p.read_bytes()
    results.write_metrics("r", {"x": 0.3}, PARAMS)
    assert p.read_bytes() == a


def test_small_numbers_keep_their_magnitude(out):
    p = results.write_metrics("small", {"p_value": 3.2e-12, "lr": 1e-11}, PARAMS)
    m = json.loads(p.read_text())["metrics"]
    assert m["p_value"] == pytest.approx(3.2e-12, rel=1e-6)
    assert m["lr"] == pytest.approx(1e-11, rel=1e-6)


def test_numpy_bool_is_serialised(out):
    p = results.write_metrics("b", {"significant": np.float64(0.01) < 0.05}, PARAMS)
    assert json.loads(p.read_text())["metrics"]["significant"] is True


def test_read_metrics_returns_the_whole_document(out):
    results.write_metrics("01_demo", METRICS, PARAMS, seeds=[0])
    doc = results.read_metrics("01_demo")
    assert doc["metrics"] == METRICS and doc["seeds"] == [0] and "code_hash" in doc["provenance"]


def test_read_metrics_of_a_notebook_that_has_not_run(out):
    with pytest.raises(FileNotFoundError, match="never_ran"):
        results.read_metrics("never_ran")
