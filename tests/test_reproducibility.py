"""A notebook re-run gives byte-identical metrics; a bad parameter writes nothing.

Both run chapter 01 through papermill at its smoke parameters, with the cache and the
results in temporary folders (the kernel inherits the environment).
"""

from __future__ import annotations

from pathlib import Path

import papermill as pm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks" / "01_training_history.ipynb"
SMOKE = yaml.safe_load((ROOT / "notebooks" / "params" / "smoke" / "01_training_history.yaml").read_text())

# Whole-notebook runs (about two minutes in all). Fast counterparts: byte-identical runs and
# histories in test_finetune.py / test_organism_history.py, bad parameters in test_bad_inputs.py
# and test_nb.py. CI runs these too (make test-slow).
pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def _run(tmp: Path, monkeypatch, **params) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("REVERSION_CACHE", str(tmp / "cache"))
    monkeypatch.setenv("REVERSION_RESULTS", str(tmp / "results"))
    pm.execute_notebook(str(NB), str(tmp / "out.ipynb"), parameters=params, kernel_name="python3",
                        cwd=str(ROOT), progress_bar=False, log_output=False)
    return tmp / "results" / "01_training_history" / "metrics.json"


def test_same_seed_gives_byte_identical_metrics(tmp_path, monkeypatch):
    a = _run(tmp_path / "a", monkeypatch, **SMOKE)
    b = _run(tmp_path / "b", monkeypatch, **SMOKE)  # cold cache: everything retrained
    assert a.read_bytes() == b.read_bytes()


def test_a_different_world_changes_the_metrics(tmp_path, monkeypatch):
    # The positive control of the test above: the file does depend on the parameters.
    a = _run(tmp_path / "a", monkeypatch, **SMOKE)
    b = _run(tmp_path / "b", monkeypatch, **{**SMOKE, "world_overrides": {"history": {"seed": 1}}})
    assert a.read_bytes() != b.read_bytes()


@pytest.mark.parametrize("params, message", [
    ({"seed": 1}, "unknown parameter"),
    ({"n_seeds": "five"}, "parameter 'n_seeds' must be"),
    ({"world": "giant"}, "unknown world 'giant'"),
    ({"world_overrides": {"finetune": {"lr": -1e-4}}}, r"finetune\.lr must be a finite number > 0"),
    ({"world_overrides": {"finetune": {"steps": 0}}}, r"finetune\.steps \(T\) must be an int >= 1"),
    ({"world_overrides": {"history": {"model": {"n_embd": 30, "n_head": 4}}}}, "divisible"),
    ({"world_overrides": {"finetune": {"task": "juggle"}}}, "finetune.task 'juggle' is not a task of this language"),
])
def test_bad_parameters_fail_before_any_work(tmp_path, monkeypatch, params, message):
    with pytest.raises(pm.PapermillExecutionError, match=message):
        _run(tmp_path, monkeypatch, **{**SMOKE, **params})
    assert not (tmp_path / "results").exists()  # out.ipynb is papermill's own record
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
