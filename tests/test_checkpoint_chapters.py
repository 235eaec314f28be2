"""Chapters 02-06 and 09 on your own checkpoints, through papermill (marker ``notebooks``).

The notebooks run with ``checkpoints`` (one mapping: witness, aligned, prompts, ...) set to
the tiny demo history of chapter 07 (:func:`reversion.subjects.checkpoints.demo.build_demo`):
each writes its metrics with the subject's record and the identities of the stages it used,
the claims chapter accepts them together and refuses a mix, and a bad ``checkpoints`` key
fails in the parameters cell, before any work. The subject itself (its checks, the stages on
it) is tested in ``test_checkpoint_subject.py``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

from helpers import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- chapters 02-05


CHAPTERS = ["02_vrev_estimation", "03_alignment", "04_null_test", "06_interventions", "09_early_warning"]


def smoke_params(stem: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "notebooks" / "params" / "smoke" / f"{stem}.yaml").read_text()) or {}


def checkpoint_params(demo, **changes) -> dict:
    """The chapters' ``checkpoints`` mapping (every key: the demo history, both controls)
    and a short fine-tuning schedule."""
    checkpoints = {"witness": str(demo["witness"]), "aligned": str(demo["aligned"]),
                   "tokenizer": str(demo["tokenizer"]), "prompts": str(EXAMPLES["harmful"]),
                   "harmless": str(EXAMPLES["harmless"]), "pretrained": str(demo["pretrained"]),
                   "finetune_data": str(EXAMPLES["benign"]), "max_new_tokens": 8, **changes}
    return {"checkpoints": checkpoints,
            "world_overrides": {"finetune": {"steps": 4, "batch_size": 4, "lr": 1e-3, "eval_steps": [0, 1, 2, 4]}}}


def execute(stem: str, params: dict, tmp: Path) -> dict:
    import papermill as pm

    from reversion.infra.results import read_metrics

    out = tmp / f"{stem}.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"), str(out), parameters=params,
                        kernel_name="python3", cwd=str(tmp), progress_bar=False, log_output=False)
    return read_metrics(stem)


@pytest.fixture(scope="module")
def chapter_runs(demo, tmp_path_factory):
    """Chapters 02-05 executed by papermill on the demo checkpoints (cache/results of their own)."""
    base = tmp_path_factory.mktemp("checkpoint-notebooks")
    docs, seconds = {}, {}
    with pytest.MonkeyPatch.context() as mp:  # the kernels inherit the environment
        mp.setenv("REVERSION_CACHE", str(base / "cache"))
        mp.setenv("REVERSION_RESULTS", str(base / "results"))
        for stem in CHAPTERS:
            t0 = time.perf_counter()
            lean = {"objectives": ["block"]} if stem == "06_interventions" else {}  # runs alone: fewer
            docs[stem] = execute(stem, {**smoke_params(stem), **checkpoint_params(demo), **lean}, base)
            seconds[stem] = time.perf_counter() - t0
    return {"docs": docs, "seconds": seconds, "base": base}


@pytest.mark.notebooks
@pytest.mark.slow  # papermill end to end; the stages on the subject: test_checkpoint_subject.py
@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_runs_on_checkpoints(chapter_runs, demo, stem):
    doc = chapter_runs["docs"][stem]
    m = doc["metrics"]
    sub = doc["subject"]  # the subject's record, beside the metrics
    assert sub["kind"] == "checkpoints" and sub["aligned"] == Path(demo["aligned"]).as_posix()
    assert sub["model_type"] == "llama" and len(sub["prompts_sha256"]) == 64
    assert sub["pretrained"] == Path(demo["pretrained"]).as_posix() and sub["harmless_sha256"]
    assert doc["parameters"]["checkpoints"]["witness"] == str(demo["witness"])
    assert not set(doc["parameters"]) & {"witness", "aligned", "prompts"}  # one parameter holds them
    assert chapter_runs["seconds"][stem] < 60, chapter_runs["seconds"]
    first = chapter_runs["docs"]["02_vrev_estimation"]
    assert m["layer"] == first["metrics"]["layer"]
    # The same stages throughout: one subject identity, one v_rev estimate.
    assert first["stages"]["subject"] and first["stages"]["estimate"]
    assert doc["stages"]["subject"] == first["stages"]["subject"]
    assert doc["stages"]["estimate"] == first["stages"]["estimate"]
    if stem == "02_vrev_estimation":
        assert m["readout"]["v_rev"]["harmful_minus_refusal"] is None
        assert m["cos_v_rev_v_P"] is not None and m["cos_v_rev_r_S"] is not None
        assert (chapter_runs["base"] / "results" / stem / "v_rev.safetensors").is_file()
    if stem == "03_alignment":
        assert m["T"] == 4 and set(m["alignment"]) == {"1"}
        assert set(m["control_alignment"]) == {"v_P", "r_S"}
    if stem == "04_null_test":
        assert m["pairs"]["n"] == 3 * 3  # 3 seeds x pair steps 1, 2, 3 (<= T = 4)
    if stem == "06_interventions":
        # every control a checkpoint subject has: -r_S (harmless prompts), v_P (pretrained), both signs of random
        assert {n for n in m["arms"] if n.startswith("block/")} >= {
            f"block/{d}/all/1" for d in ("v_rev", "-r_S", "v_P", "residual", "random0+", "random0-")}
        assert {"baseline", "rehearsal", "push/v_rev/all/1", "projection/v_rev/intermediate"} <= set(m["arms"])
        blk = m["arms"]["block/v_rev/all/1"]
        assert "task_loss" in blk["outcome"] and "task_accuracy" not in blk["outcome"]
        assert blk["n_histories"] == 1 and blk["vs_baseline"]["harmfulness"]["level"] == "seeds"
        assert m["specificity"]["block/v_rev/all/1"]["verdict"] in (
            "consistent", "consistent but not specific", "inconclusive", "not reproduced")
    if stem == "09_early_warning":
        # one history, no long alignment (it cannot re-train your safety phase): the curve, no choice
        assert m["n"]["histories"] == 1 and m["n"]["kinds"] == ["fine-tuning", "low learning rate"]
        assert m["grid"] == [0, 1, 2, 3, 4] and len(m["odd"]) == 0
        assert len(m["even"]) == len(m["rules"]["thresholds_null_units"])
        assert m["chosen_null_units"] is None and "1 history" in m["no_choice"]


@pytest.mark.notebooks
@pytest.mark.slow  # papermill end to end; the stages on the subject: test_checkpoint_subject.py
def test_claims_refuse_to_mix_subjects_or_estimates(chapter_runs):
    from reversion.analysis.claims import check_consistent

    docs = {s: chapter_runs["docs"][s] for s in CHAPTERS}
    check_consistent(docs)  # one subject throughout: fine
    mixed = copy.deepcopy(docs)
    mixed["03_alignment"]["subject"] = {"kind": "organism"}  # as an organism run writes it
    mixed["03_alignment"]["stages"]["subject"] = "0" * 24
    with pytest.raises(ValueError, match=r"different subjects \(\{.*'03_alignment': 'organism'"):
        check_consistent(mixed)
    other = copy.deepcopy(docs)
    other["04_null_test"]["stages"]["estimate"] = "0" * 24
    with pytest.raises(ValueError, match="different v_rev estimates"):
        check_consistent(other)


@pytest.mark.notebooks
@pytest.mark.slow  # papermill end to end; the stages on the subject: test_checkpoint_subject.py
@pytest.mark.parametrize("params, message", [
    (lambda demo: checkpoint_params(demo, aligned=""), r"checkpoints\['aligned'\] missing: give both"),
    (lambda demo: {**checkpoint_params(demo), "aligned": str(demo["aligned"])},
     r"parameter 'aligned' is now a key of 'checkpoints': pass checkpoints=\{"),
], ids=["empty-aligned", "old-parameter-name"])
def test_bad_checkpoint_parameter_fails_before_any_work(demo, isolated, params, message):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match=message):
        execute("03_alignment", {**smoke_params("03_alignment"), **params(demo)}, isolated)
    assert not (isolated / "results").exists() and not (isolated / "cache").exists()
