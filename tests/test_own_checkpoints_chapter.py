"""Chapter 08 ("Your own checkpoints"): the comparison of the tracking stage's readings with the
monitor's log and the sentence it chooses, on planted numbers; the page's one entry point,
:func:`run`, end to end on tiny demo models; and what the page module may import (the notebook
end to end: ``tests/test_notebooks.py -k 08_own``)."""

from __future__ import annotations

import ast
import csv
import json
import math
from types import SimpleNamespace

import pytest

from reversion.book.chapters import ch08_own_checkpoints as oc
from reversion.infra import provenance
from reversion.stages.track import Reading, TrackResult


def _csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _tracked(rows, layer: int = 1) -> TrackResult:
    readings = tuple(Reading(f"checkpoint-{r['step']}", r["step"], layer, r["alignment"], r["projection"],
                             r["drift_norm"], None, 0.5, r["alignment"] > 0.5) for r in rows)
    return TrackResult(readings, layer, (layer,), 0.5, "given", "last", 8, False)


def _run(tmp_path, shift: float = 0.0, steps=(5, 10)):
    log = [{"step": s, "alignment": 0.1 * s, "projection": 0.2 * s, "drift_norm": 1.0 + s} for s in (0, 5, 10)]
    tracked = [{"step": s, "alignment": 0.1 * s + (shift if s == 10 else 0.0), "projection": 0.2 * s,
                "drift_norm": 1.0 + s} for s in steps]
    run = SimpleNamespace(log_path=_csv(tmp_path / "log.csv", log))
    return run, _tracked(tracked)


@pytest.mark.parametrize("shift, says", [
    (0.0, "reproduces the monitor's log exactly"),
    (5e-7, "agree within 1e-06 (largest difference 5.0e-07, in the alignment)"),
    (1e-3, "does NOT reproduce the monitor's log within 1e-06: the alignment differs by 1.0e-03 at step 10"),
])
def test_the_track_sentence_follows_the_largest_difference(tmp_path, shift, says):
    run, tracked = _run(tmp_path, shift)
    compared = oc.compare_track(run, tracked)
    assert list(compared.index) == [5, 10]  # the monitor's step 0 has no checkpoint
    assert oc.track_diff(compared)["alignment"] == pytest.approx(shift, abs=1e-12)
    assert oc.track_diff(compared)["projection"] == 0.0
    assert says in oc.track_sentence(compared)
    assert "2 adapter checkpoints" in oc.track_sentence(compared)


def test_a_tracked_step_the_log_lacks_is_refused(tmp_path):
    run, tracked = _run(tmp_path, steps=(5, 15))
    with pytest.raises(ValueError, match=r"track measured steps \[15\]"):
        oc.compare_track(run, tracked)


def test_the_page_module_touches_no_model_library_directly():
    """Models are loaded, trained and run below the page; ``reversion estimate`` runs as a command."""
    path = provenance.module_file(oc.__name__)
    tree = ast.parse(path.read_text())
    top = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not top & {"torch", "scipy", "peft", "transformers"}, top
    package = provenance._direct_imports(oc.__name__)
    assert not package & {"reversion.cli", "reversion.core.stats"}, package


SMALL = dict(witness="", aligned="", pretrained="", tokenizer="", prompts="examples/harmful_prompts.jsonl",
             harmless="examples/harmless_prompts.jsonl", finetune_data="examples/benign_finetune.jsonl",
             layer="auto", position="last", dtype="auto", family="llama", demo_steps=10, finetune_steps=10,
             learning_rate=0.003, batch_size=8, monitor_every=5, patience=1, block_strength=0.2, lora_rank=2,
             lora_learning_rate=0.03, max_new_tokens=4, seed=0)


def _leaves(x, where=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{where}/{k}")
    else:
        yield where, x


def test_run_is_the_pages_computation(isolated):
    """One call computes what the page shows; the tracking stage reproduces the monitor on the
    runs' checkpoints (full and LoRA); the metrics are numbers (and the threshold's source)."""
    P = oc.Params(**SMALL)
    res = oc.run(P, isolated / "work")
    assert res.checkpoints.demo and [r.name for r in res.runs] == ["finetuned", "finetuned+block"]
    assert "$ reversion estimate" in res.estimate_output and "wrote v_rev.safetensors" in res.estimate_output
    assert [r.step for r in res.tracked.at_layer()] == [5, 10]
    assert res.tracked.threshold == res.runs[0].monitor.threshold and oc.agree(res)
    assert res.track_command.startswith("$ reversion track --directions v_rev.safetensors")
    assert "--base" in res.lora_track_command
    assert max(oc.track_diff(oc.compare_track(res.lora, res.lora_tracked)).values()) <= oc.TRACK_TOL
    assert set(res.evaluation) == set(res.continuations) == {"theta_H", "theta_S", "finetuned", "finetuned+block"}
    metrics = oc.metrics(res, P)
    for where, value in _leaves(metrics):
        if where.endswith("threshold_source"):
            assert value in ("given", "matched null p99", "isotropic p99")
        else:
            assert value is None or isinstance(value, (bool, int, float)), (where, value)
            assert not isinstance(value, float) or math.isfinite(value), where
    assert metrics["lora"]["track_reproduces_monitor"] and metrics["layer"] == res.directions.layer
    saved = json.loads(oc.save(P, metrics).read_text())
    assert saved["metrics"]["monitor"]["finetuned"]["checks"] == 3
    said = oc.sentences(res)
    assert "reproduces the monitor's numbers" in said["track_sentence"] and said["layer"] == metrics["layer"]
