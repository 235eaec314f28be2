"""Chapters 02-05 on your own checkpoints (reversion.checkpoint_subject).

Unit tests of the text-model stages with tiny random GPT-2 and Llama models saved to and
loaded from temporary folders (never downloaded): parameter checks with errors that name
the parameter, a planted displacement that the estimate must recover, a null (identical
checkpoints), fine-tuning runs with every intervention, and caching. The ``notebooks``
tests execute chapters 02-05 through papermill on the tiny demo checkpoints of chapter 07
(:func:`reversion.own_checkpoints.build_demo`), passing their paths as parameters.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reversion.subjects.checkpoints import demo as demo_models
from reversion.subjects.checkpoints import subject as cs
from reversion.subjects.organism.config import FinetuneConfig
from reversion.core.directions import alignment
from reversion.core.hooks import get_blocks
from reversion.core.interventions import AlignmentMix, Block, Projection, Push, Rehearsal

from helpers import EXAMPLES, make_model, make_tokenizer, save, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
FT = FinetuneConfig(steps=3, lr=1e-3, batch_size=4, eval_steps=(0, 1, 3))


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Cache and results in temporary folders (shared by the tests of this module)."""
    base = tmp_path_factory.getbasetemp() / "checkpoint-chapters"
    monkeypatch.setenv("REVERSION_CACHE", str(base / "cache"))
    monkeypatch.setenv("REVERSION_RESULTS", str(base / "results"))


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict[str, Path]:
    """The tiny demo history of chapter 07 (Llama): pretrained, witness, aligned, tokenizer."""
    return demo_models.build_demo(tmp_path_factory.mktemp("demo"), "llama", seed=0, steps=30)


def subject_of(demo, **kw):
    args = dict(witness=str(demo["witness"]), aligned=str(demo["aligned"]), prompts=str(EXAMPLES["harmful"]),
                finetune_data=str(EXAMPLES["benign"]), max_new_tokens=8)
    return cs.resolve_subject(**{**args, **kw})


# --------------------------------------------------------------------------- parameter checks


def test_all_empty_is_the_organism():
    assert cs.resolve_subject(witness="", aligned="") is None


@pytest.mark.parametrize("change, message", [
    ({"aligned": ""}, "parameter 'aligned' is empty but 'witness' is set"),
    ({"witness": ""}, "parameter 'witness' is empty but 'aligned' is set"),
    ({"witness": "/nonexistent/ckpt"}, "parameter 'witness': path not found"),
    ({"prompts": ""}, "parameter 'prompts' is empty"),
    ({"prompts": "/nonexistent/prompts.jsonl"}, "parameter 'prompts': prompt file not found"),
    ({"finetune_data": "/nonexistent/pairs.jsonl"}, "parameter 'finetune_data': fine-tuning file not found"),
    ({"finetune_data": ""}, "parameter 'finetune_data' is empty"),
    ({"dtype": "float8"}, "parameter 'dtype'"),
    ({"tokenizer": "/nonexistent/tok"}, "parameter 'tokenizer'"),
    ({"refusal_response": " "}, "parameter 'refusal_response'"),
])
def test_bad_parameters_name_the_parameter(demo, change, message):
    with pytest.raises(ValueError, match=message):
        subject_of(demo, need_finetune=True, **change)


def test_stray_parameter_without_checkpoints():
    with pytest.raises(ValueError, match="'prompts' set but 'witness' and 'aligned' are empty"):
        cs.resolve_subject(witness="", aligned="", prompts=str(EXAMPLES["harmful"]))


def test_empty_and_short_prompt_files(demo, tiny, tmp_path):
    with pytest.raises(ValueError, match="parameter 'prompts': .*empty"):
        subject_of(demo, prompts=str(tiny.empty))
    short = write_jsonl(tmp_path / "short.jsonl", [{"prompt": f"p {i}"} for i in range(5)])
    with pytest.raises(ValueError, match="parameter 'prompts': 5 prompts .* at least 8"):
        subject_of(demo, prompts=str(short))


def test_mismatched_checkpoints(tiny):
    with pytest.raises(ValueError, match="parameter 'witness': width"):
        cs.resolve_subject(witness=str(tiny.llama_wide), aligned=str(tiny.llama.aligned),
                           prompts=str(tiny.harmful))
    with pytest.raises(ValueError, match="parameter 'witness': model family 'gpt2'"):
        cs.resolve_subject(witness=str(tiny.gpt2.witness), aligned=str(tiny.llama.aligned),
                           prompts=str(tiny.harmful))
    with pytest.raises(ValueError, match="parameter 'pretrained': width"):
        cs.resolve_subject(witness=str(tiny.llama.witness), aligned=str(tiny.llama.aligned),
                           pretrained=str(tiny.llama_wide), prompts=str(tiny.harmful))


def test_not_a_checkpoint_folder(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"parameter .aligned.: .* \(no config.json\)"):
        cs.resolve_subject(witness=str(tiny.llama.witness), aligned=str(tmp_path), prompts=str(tiny.harmful))


def test_wrong_tokenizer_is_caught(tiny, tmp_path):
    big = demo_models.build_tokenizer(["a b c"] * 3 + [f"word{i} " * 3 for i in range(2000)], tmp_path / "big",
                             vocab_size=4000)
    assert len(big) > 400
    with pytest.raises(ValueError, match="parameter 'tokenizer': .* beyond the aligned model's vocabulary"):
        cs.resolve_subject(witness=str(tiny.llama.witness), aligned=str(tiny.llama.aligned),
                           tokenizer=str(tmp_path / "big"), prompts=str(tiny.harmful))


def test_record_and_identity(demo, tmp_path):
    s = subject_of(demo)
    rec = s.record()
    assert rec["kind"] == "checkpoints" and rec["model_type"] == "llama"
    assert len(rec["prompts_sha256"]) == 64 and rec["finetune_data_sha256"]
    json.dumps(s.key())  # JSON-able cache key
    # Rewriting the weights changes the folder identity.
    folder = tmp_path / "copy"
    import shutil

    shutil.copytree(demo["aligned"], folder)
    before = cs.checkpoint_identity(folder)
    time.sleep(0.01)
    w = next(folder.glob("*.safetensors"))
    w.write_bytes(w.read_bytes())
    assert cs.checkpoint_identity(folder) != before


def test_organism_parameters_record_no_checkpoint_fields(demo):
    from reversion.book.chapters import alignment as ch03
    from reversion.book.chapters.common import SUBJECT_FIELDS

    P = ch03.Params(world="smoke", world_overrides={}, n_seeds=2, n_probe=16, position="last")
    assert P.subject() is None
    assert set(P.recorded()) == {"world", "world_overrides", "n_seeds", "n_probe", "position"}
    Q = ch03.Params(world="smoke", world_overrides={}, n_seeds=2, n_probe=16, position="last",
                    witness=str(demo["witness"]), aligned=str(demo["aligned"]), prompts=str(EXAMPLES["harmful"]),
                    finetune_data=str(EXAMPLES["benign"]))
    assert set(SUBJECT_FIELDS) <= set(Q.recorded())
    assert Q.subject(need_finetune=True).aligned == demo["aligned"]


# --------------------------------------------------------------------------- estimate


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_planted_displacement_is_recovered(family, tmp_path):
    """witness = aligned plus a known constant shift u of the residual stream (GPT-2: the
    bias of block 0's MLP output, seen at layer 1; Llama: every embedding row, layer 0)."""
    tok = make_tokenizer(tmp_path / "tok")
    aligned = make_model(family, tok, seed=3)
    witness = copy.deepcopy(aligned)
    d = aligned.config.hidden_size
    u = torch.randn(d, generator=torch.Generator().manual_seed(7))
    u = u / u.norm()
    with torch.no_grad():
        if family == "gpt2":
            get_blocks(witness)[0].mlp.c_proj.bias.add_(0.5 * u)
            layer = 1
        else:
            witness.get_input_embeddings().weight.add_(0.5 * u)
            layer = 0
    save(aligned, tok, tmp_path / "aligned")
    save(witness, tok, tmp_path / "witness")
    s = cs.resolve_subject(witness=str(tmp_path / "witness"), aligned=str(tmp_path / "aligned"),
                           prompts=str(EXAMPLES["harmful"]))
    est = cs.estimate(s, n_boot=10)
    v = est.directions.v_rev[layer]
    assert float(v @ u.double()) > 0.999
    assert float(est.directions.displacement_norm[layer]) == pytest.approx(0.5, rel=1e-3)
    # A random direction is nowhere near it (the null's scale is ~1/sqrt(d)).
    r = torch.randn(d, generator=torch.Generator().manual_seed(11)).double()
    assert abs(float(v @ r / r.norm())) < 0.5
    assert est.acts["H"].shape == (6, s.arch["num_hidden_layers"] + 1, d)
    assert est.stability.shape == (10, s.arch["num_hidden_layers"] + 1)
    assert est.directions.v_P is None and est.directions.r_S is None


def test_identical_checkpoints_have_no_direction(tiny):
    s = cs.resolve_subject(witness=str(tiny.llama.aligned), aligned=str(tiny.llama.aligned),
                           prompts=str(tiny.harmful))
    with pytest.raises(ValueError, match="'witness'/'aligned': .*zero-norm displacement"):
        cs.estimate(s, n_boot=4)


def test_estimate_with_controls_and_cache(demo):
    s = subject_of(demo, pretrained=str(demo["pretrained"]), harmless=str(EXAMPLES["harmless"]))
    est = cs.estimate(s, n_boot=10)
    assert est.directions.v_P is not None and est.directions.r_S is not None
    assert set(est.acts) == {"H", "S", "P", "S_harmless"}
    L = s.arch["num_hidden_layers"]
    assert 1 <= est.layer < L and "layer" in est.directions.meta["layer_reason"]
    t0 = time.perf_counter()
    again = cs.estimate(s, n_boot=10)
    assert again.path == est.path and time.perf_counter() - t0 < 2.0
    r = cs.readout(s, est, 3)
    assert set(r) == {"v_rev", "-r_S"} and len(r["v_rev"]["top"]) == 3
    assert r["v_rev"]["refusal_token"] == repr("I")  # "I can't help with that."
    assert r["v_rev"]["answer_openers"]  # the witness opens with "Sure, ..."


# --------------------------------------------------------------------------- fine-tuning


def test_finetune_run_shapes_and_evals(demo):
    s = subject_of(demo)
    est = cs.estimate(s, n_boot=10)
    run = cs.finetune(s, FT, progress=False)
    L, d = s.arch["num_hidden_layers"], s.arch["hidden_size"]
    assert run.probe_means.shape == (FT.steps + 1, L + 1, d)
    assert run.steps == [0, 1, 3] and len(run.losses) == FT.steps
    e = run.evals[3]
    assert 0 <= e["harmfulness"] <= e["non_refusal"] <= 1
    assert e["task_loss"][cs.TEXT_TASK] > 0
    # Step 0 is theta_S: the drift half's mean activations of the aligned model.
    from reversion.core.activations import mean_activations

    tok = s.load_tokenizer()
    mu = mean_activations(s.load("aligned"), cs._encode(tok, s.prompt_texts()["drift"]), "all",
                          pad_id=cs._pad(tok))
    assert torch.allclose(run.probe_means[0], mu, atol=1e-5)
    # The demo's theta_S refuses; its witness complies.
    assert run.evals[0]["harmfulness"] == 0.0
    cos = alignment(run.probe_means - run.probe_means[0], est.directions.v_rev)
    assert cos.shape == (FT.steps + 1, L + 1) and float(cos[0].abs().max()) == 0.0
    t0 = time.perf_counter()
    assert cs.finetune(s, FT, progress=False).path == run.path and time.perf_counter() - t0 < 2.0


def test_block_and_push_move_along_v_rev_in_opposite_directions(demo):
    s = subject_of(demo)
    est = cs.estimate(s, n_boot=10)
    d, L = est.directions, s.arch["num_hidden_layers"]
    layers = list(range(1, L + 1))
    runs = {name: cs.finetune(s, FT, iv, progress=False) for name, iv in [
        ("block", Block(d.v_rev, d.displacement_norm, 1.0, layers)),
        ("push", Push(d.v_rev, d.displacement_norm, 1.0, layers))]}
    final = {k: float(alignment(r.probe_means[-1] - r.probe_means[0], d.v_rev)[est.layer]) for k, r in runs.items()}
    assert final["block"] < 0 < final["push"]


def test_projection_rehearsal_and_alignment_mix_run(demo):
    s = subject_of(demo)
    est = cs.estimate(s, n_boot=10)
    d = est.directions
    base = cs.finetune(s, FT, progress=False)
    for iv in (Projection(d.v_rev, [1, 2]), Rehearsal(0.5), AlignmentMix(0.5)):
        run = cs.finetune(s, FT, iv, progress=False)
        assert run.probe_means.shape == base.probe_means.shape
        assert run.path != base.path
        assert not torch.equal(run.probe_means, base.probe_means)


def test_text_data_draws_safety_examples():
    data = cs.TextData([((1, 2), (3, 4)), ((5,), (6,))], [(7, 8), (9,)], [10, 11])
    g = np.random.default_rng(0)
    harm = data.sample(g, 3, harmful=True)
    assert all(q.answer == (10, 11) and q.prompt in [(7, 8), (9,)] for q in harm)
    ben = data.sample(g, 2, harmful=False)
    assert sorted(q.prompt for q in ben) == [(1, 2), (5,)]  # without replacement when it can
    # The organism's Rehearsal runs on it unchanged: the tail of each batch becomes refusals.
    ft = FinetuneConfig(batch_size=4)
    batches = Rehearsal(0.5).batches(cs._text_batches(data, ft), data, ft)
    batch = next(batches)
    assert len(batch) == 4 and [a for _, a in batch[2:]] == [(10, 11), (10, 11)]


# --------------------------------------------------------------------------- chapters 02-05


CHAPTERS = ["02_vrev_estimation", "03_alignment", "04_null_test", "05_interventions"]


def smoke_params(stem: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "notebooks" / "params" / "smoke" / f"{stem}.yaml").read_text()) or {}


def checkpoint_params(demo) -> dict:
    return {"witness": str(demo["witness"]), "aligned": str(demo["aligned"]),
            "tokenizer": str(demo["tokenizer"]), "prompts": str(EXAMPLES["harmful"]),
            "harmless": str(EXAMPLES["harmless"]), "pretrained": str(demo["pretrained"]),
            "finetune_data": str(EXAMPLES["benign"]), "max_new_tokens": 8,
            "world_overrides": {"finetune": {"steps": 4, "batch_size": 4, "lr": 1e-3,
                                             "eval_steps": [0, 1, 2, 4]}}}


def execute(stem: str, params: dict, tmp: Path) -> dict:
    import papermill as pm

    out = tmp / f"{stem}.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"), str(out), parameters=params,
                        kernel_name="python3", cwd=str(tmp), progress_bar=False, log_output=False)
    from reversion.infra.results import read_metrics

    return read_metrics(stem)


@pytest.fixture(scope="module")
def chapter_runs(demo, tmp_path_factory):
    """Chapters 02-05 executed by papermill on the demo checkpoints (cache/results of their own)."""
    import os

    base = tmp_path_factory.mktemp("checkpoint-notebooks")
    old = {k: os.environ.get(k) for k in ("REVERSION_CACHE", "REVERSION_RESULTS")}
    os.environ["REVERSION_CACHE"], os.environ["REVERSION_RESULTS"] = str(base / "cache"), str(base / "results")
    docs, seconds = {}, {}
    try:
        for stem in CHAPTERS:
            t0 = time.perf_counter()
            docs[stem] = execute(stem, {**smoke_params(stem), **checkpoint_params(demo)}, base)
            seconds[stem] = time.perf_counter() - t0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"docs": docs, "seconds": seconds, "base": base}


@pytest.mark.notebooks
@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_runs_on_checkpoints(chapter_runs, demo, stem):
    doc = chapter_runs["docs"][stem]
    m = doc["metrics"]
    sub = m["subject"]
    assert sub["kind"] == "checkpoints" and sub["aligned"] == str(demo["aligned"])
    assert sub["model_type"] == "llama" and len(sub["prompts_sha256"]) == 64
    assert doc["parameters"]["witness"] == str(demo["witness"])
    assert chapter_runs["seconds"][stem] < 60, chapter_runs["seconds"]
    assert m["layer"] == chapter_runs["docs"]["02_vrev_estimation"]["metrics"]["layer"]
    if stem == "02_vrev_estimation":
        assert m["readout"]["v_rev"]["harmful_minus_refusal"] is None
        assert m["cos_v_rev_v_P"] is not None and m["cos_v_rev_r_S"] is not None
        assert (chapter_runs["base"] / "results" / stem / "v_rev.safetensors").is_file()
    if stem == "03_alignment":
        assert m["T"] == 4 and set(m["alignment"]) == {"1"}
    if stem == "04_null_test":
        assert m["pairs"]["n"] == 3 * 3  # 3 seeds x pair steps 1, 2, 3 (<= T = 4)
    if stem == "05_interventions":
        assert set(m["variants"]) == {"baseline", "block", "push", "projection", "rehearsal"}
        assert "task_loss" in m["variants"]["block"] and "task_accuracy" not in m["variants"]["block"]


@pytest.mark.notebooks
def test_claims_refuse_to_mix_subjects(chapter_runs):
    from reversion.book.chapters.claims import check_consistent

    docs = {k: chapter_runs["docs"][s] for k, s in zip(("02", "03", "04", "05"), CHAPTERS)}
    check_consistent(docs)  # one subject throughout: fine
    mixed = copy.deepcopy(docs)
    del mixed["03"]["metrics"]["subject"]  # as an organism run writes it
    with pytest.raises(ValueError, match="subject"):
        check_consistent(mixed)


@pytest.mark.notebooks
def test_bad_checkpoint_parameter_fails_before_any_work(demo, tmp_path, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REVERSION_RESULTS", str(tmp_path / "results"))
    params = {**smoke_params("03_alignment"), **checkpoint_params(demo), "aligned": ""}
    with pytest.raises(pm.PapermillExecutionError, match="parameter 'aligned' is empty"):
        execute("03_alignment", params, tmp_path)
    assert not (tmp_path / "results").exists()


def test_checkpoint_identity_covers_tokenizer_and_template_files(tmp_path):
    from reversion.subjects.checkpoints.subject import checkpoint_identity

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w" * 10)
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    (tmp_path / "merges.txt").write_text("a b")
    before = checkpoint_identity(tmp_path)
    assert [w[0] for w in before["weights"]] == ["model.safetensors"]  # weights by name/size/mtime only
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}!")
    assert checkpoint_identity(tmp_path) != before  # an edited chat template is a new checkpoint
    after_template = checkpoint_identity(tmp_path)
    (tmp_path / "merges.txt").write_text("a c")
    assert checkpoint_identity(tmp_path) != after_template
