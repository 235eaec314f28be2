"""Chapter "Which past?" on your own checkpoints (tiny random GPT-2 models built locally).

With a second lineage (``second_witness``, ``second_aligned``) the witness crossover runs on the
checkpoints, with ``pretrained`` and ``harmless`` the residual alignment; every other measurement
is a summary row marked not testable that says what it needs. Without the second lineage the
page still renders and says which keys are missing. A bad second-lineage key fails naming it,
before anything is written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import in_cache, perturbed, save

from reversion.analysis import pasts
from reversion.analysis.verdicts import NOT_TESTABLE
from reversion.book.chapters import ch05_which_past as ch
from reversion.core.drift import crossover
from reversion.infra.results import read_metrics
from reversion.subjects.organism.lineages import MAIN, SECOND

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = {"finetune": {"steps": 3, "batch_size": 4, "lr": 1e-3, "eval_steps": [0, 3]}}


def params(checkpoints: dict, n_seeds: int = 2) -> ch.Params:
    return ch.Params(world="smoke", world_overrides=FINETUNE, n_seeds=n_seeds, doses=[0.5], n_histories=1,
                     checkpoints=checkpoints)


def base_checkpoints(tiny, **more) -> dict:
    return {"witness": str(tiny.gpt2.witness), "aligned": str(tiny.gpt2.aligned), "prompts": str(tiny.harmful),
            "finetune_data": str(tiny.benign), "max_new_tokens": 4, **more}


@pytest.fixture(scope="module")
def second(tiny, tmp_path_factory) -> dict[str, str]:
    """A second lineage beside ``tiny``'s GPT-2 pair: an aligned model near the first and a witness
    perturbed from it, and a pretrained model (for v_P)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("second-lineage")
    tok = AutoTokenizer.from_pretrained(tiny.gpt2.aligned)
    aligned = AutoModelForCausalLM.from_pretrained(tiny.gpt2.aligned)
    aligned2 = perturbed(aligned, 0.05, seed=3)
    return {"second_aligned": str(save(aligned2, tok, root / "aligned2")),
            "second_witness": str(save(perturbed(aligned2, 0.2, seed=4), tok, root / "witness2")),
            "pretrained": str(save(perturbed(aligned, 0.3, seed=5), tok, root / "pretrained"))}


# --------------------------------------------------------------------------- checks, before any work


@pytest.mark.parametrize("key, value, match", [
    ("second_witness", "no/such/folder", r"checkpoints\['second_witness'\]: path not found"),
    ("second_aligned", "EMPTY_DIR", r"checkpoints\['second_aligned'\]: .* \(no config\.json\)"),
    ("second_witness", "LLAMA", r"checkpoints\['second_witness'\]: model family 'llama' differs"),
    ("second_aligned", 3, r"checkpoints\['second_aligned'\] must be a path string"),
])
def test_a_bad_second_lineage_key_fails_naming_it_before_anything_is_written(tiny, isolated, key, value, match):
    value = {"EMPTY_DIR": str(isolated), "LLAMA": str(tiny.llama.witness)}.get(value, value)
    P = params(base_checkpoints(tiny, **{key: value}))
    with pytest.raises(ValueError, match=match):
        ch.run(P, progress=False)
    assert not (isolated / "results").exists() and not (isolated / "cache").exists()


def test_missing_names_the_keys_each_measurement_needs():
    assert pasts.missing({}) == {}  # the organism: everything measured
    none = pasts.missing({"witness": "w", "aligned": "a"})
    assert list(none) == ["witness", "style", "weights", "no_witness", "residual", "dose"]
    assert "checkpoints['second_witness'] and checkpoints['second_aligned']" in none["witness"]
    assert "checkpoints['pretrained']" in none["residual"] and "checkpoints['harmless']" in none["residual"]
    half = pasts.missing({"second_witness": "w2", "pretrained": "p"})
    assert "second_aligned" in half["witness"] and "second_witness" not in half["witness"]
    assert "harmless" in half["residual"] and "pretrained" not in half["residual"]
    full = pasts.missing({"second_witness": "w2", "second_aligned": "a2", "pretrained": "p", "harmless": "h"})
    assert list(full) == ["style", "weights", "no_witness", "dose"]  # needs the organism's lineages


def _planted_page(needs: dict) -> dict:
    """A checkpoint page's metrics with a planted own-witness crossover (the verdict is known)."""
    mu_h = torch.zeros(8, dtype=torch.float64)
    mu_h[0] = 1.0
    mu_h2 = -mu_h
    u = (mu_h - mu_h2).numpy()
    g = np.random.default_rng(0)
    x = crossover([torch.tensor(0.3 * u + 0.05 * g.standard_normal(8)) for _ in range(5)],
                  [torch.tensor(-0.3 * u + 0.05 * g.standard_normal(8)) for _ in range(5)], mu_h, mu_h2)
    own, common = pasts.interval(x["own"]), pasts.interval(x["common"])
    witness = {"a": pasts.interval(x["a"]), "b": pasts.interval(x["b"]), "own": own, "common": common,
               "cos_u_vrev": 0.5, "verdict": pasts.witness_verdict(own, common)}
    m = {kind: pasts.not_testable(v) for kind, v in needs.items()}
    m["weight_space"] = m.pop("weights")
    return {"n": {"seeds": 5}, "layer": 1, "witness": witness, **m, "missing": needs}


def test_summary_and_prose_of_a_page_with_the_crossover_only():
    needs = pasts.missing({"second_witness": "w2", "second_aligned": "a2"})
    m = _planted_page(needs)
    table = ch.summary_table(m)
    assert len(table) == 6 and list(table["verdict"]) == ["own"] + [NOT_TESTABLE] * 5
    assert table["observed"][0].startswith("+") and "not measurable with these checkpoints: needs" in table["observed"][1]
    assert table["hypothesis predicts"][4] == "> null p99, reliable"
    p = ch.prose(m)
    assert p["witness_sentence"] == ch.sentence("witness", "own") and p["own"] > 0
    assert math.isnan(p["slope"]) and math.isnan(p["w_own"]) and p["res_rel"] == ""
    assert "needs checkpoints['pretrained']" in p["residual_sentence"]
    assert "no-witness lineage" in p["nw_sentence"]
    assert ch.task_split_table(m).shape == (1, 1) and ch.weight_table(m).shape == (1, 1)
    assert not pasts.testable(m, "dose") and pasts.testable(m, "witness")


def test_the_checkpoints_parameter_is_taken():
    from reversion.book import nb

    P = nb.collect(ch.Params, {"world": "smoke", "world_overrides": {}, "n_seeds": 3, "doses": [0.5],
                               "n_histories": 2, "checkpoints": {"witness": "w", "aligned": "a"}})
    assert P.recorded()["checkpoints"] == {"witness": "w", "aligned": "a"}
    assert "checkpoints" not in params({}).recorded()  # organism metrics: parameters as before


# --------------------------------------------------------------------------- the chapter on checkpoints


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the chapter runs share the main lineage's estimate and runs
    (tiny models: each run takes a few seconds)."""
    mp = in_cache(tmp_path_factory.mktemp("which-past-checkpoints") / "cache")
    yield
    mp.undo()


def test_chapter_with_a_second_lineage_runs_the_crossover(tiny, second, cache, one_thread):
    P = params(base_checkpoints(tiny, harmless=str(tiny.harmless), **second))
    res = ch.run(P, progress=False)
    assert isinstance(res, pasts.CheckpointResult) and list(res.runs) == [MAIN, SECOND]
    assert res.subjects[SECOND].witness == Path(second["second_witness"]) and res.subjects[SECOND].pretrained is None
    m = ch.save(P, res)
    assert m["witness"]["verdict"] in ch.SENTENCES["witness"]
    assert m["residual"]["verdict"] in ch.SENTENCES["residual"] and m["n"]["residual_histories"] == 1
    # the crossover is core.drift.crossover of the two lineages' final drifts at the main layer
    T, L = res.final, res.layer
    x = crossover([r.probe_means[T, L] - r.probe_means[0, L] for r in res.runs[MAIN]],
                  [r.probe_means[T, L] - r.probe_means[0, L] for r in res.runs[SECOND]],
                  res.ests[MAIN].acts["H"][:, L].double().mean(0), res.ests[SECOND].acts["H"][:, L].double().mean(0),
                  res.runs[MAIN][0].probe_means[0, L], res.runs[SECOND][0].probe_means[0, L])  # theta_S on the probes
    assert m["witness"]["own"]["mean"] == pytest.approx(float(x["own"].mean()))
    assert m["witness"]["verdict"] == pasts.witness_verdict(pasts.interval(x["own"]), pasts.interval(x["common"]))
    summary = ch.summary_table(m).to_dict(orient="records")  # rendered from the numbers, not stored
    assert "summary" not in m
    verdicts = [r["verdict"] for r in summary]
    assert verdicts[0] == m["witness"]["verdict"] and verdicts[4] == m["residual"]["verdict"]
    assert [verdicts[i] for i in (1, 2, 3, 5)] == [NOT_TESTABLE] * 4
    assert set(m["missing"]) == {"style", "weights", "no_witness", "dose"}
    assert ch.lineage_table(res).shape[0] == 2 and not math.isnan(ch.prose(m)["own"])
    doc = read_metrics(ch.STEM)
    assert doc["subject"]["kind"] == "checkpoints" and doc["parameters"]["checkpoints"]["second_witness"]
    assert doc["metrics"]["second_lineage"]["aligned"] == Path(second["second_aligned"]).as_posix()
    assert any("Second lineage" in line for line in res.notes)


def test_chapter_without_a_second_lineage_says_what_is_missing(tiny, cache, one_thread):
    P = params(base_checkpoints(tiny))
    res = ch.run(P, progress=False)
    assert list(res.runs) == [MAIN]
    m = ch.save(P, res)
    summary = ch.summary_table(m).to_dict(orient="records")
    assert [r["verdict"] for r in summary] == [NOT_TESTABLE] * 6
    assert "second_witness" in summary[0]["observed"] and "second_aligned" in summary[0]["observed"]
    assert "pretrained" in m["missing"]["residual"] and m["n"]["residual_histories"] == 0
    assert read_metrics(ch.STEM)["metrics"]["missing"] == m["missing"]
    assert any("checkpoints['second_witness']" in line for line in res.notes)


@pytest.mark.notebooks  # papermill end to end (a few seconds: the module's cache holds the runs)
@pytest.mark.parametrize("with_second", [False, True], ids=["no-second-lineage", "second-lineage"])
def test_page_renders_on_checkpoints(tiny, second, cache, tmp_path, with_second):
    import papermill as pm

    checkpoints = base_checkpoints(tiny, **(second if with_second else {}))
    out = tmp_path / "04b.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "05_which_past.ipynb"), str(out),
                        parameters={"world": "smoke", "world_overrides": FINETUNE, "n_seeds": 2, "doses": [0.5],
                                    "n_histories": 1, "checkpoints": checkpoints},
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False, log_output=False)
    text = json.dumps(json.loads(out.read_text())["cells"])
    assert NOT_TESTABLE in text and "needs a lineage whose helpful phase held no harmful request" in text
    assert ("checkpoints['second_aligned']" in text) is not with_second
    m = read_metrics(ch.STEM)["metrics"]
    assert (m["witness"]["verdict"] == NOT_TESTABLE) is not with_second
    assert pasts.testable(m, "residual") is False  # no harmless prompts given: r_S is missing
