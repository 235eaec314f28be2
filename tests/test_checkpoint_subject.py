"""Your own checkpoints as a subject (reversion.subjects.checkpoints.subject), through the stages.

Tiny random GPT-2 and Llama models saved to and loaded from temporary folders (never
downloaded) and the tiny demo history of chapter 07
(:func:`reversion.subjects.checkpoints.demo.build_demo`): the ``checkpoints`` mapping's
checks, with errors that name the key (``checkpoints['witness']``); a planted displacement
that stage ``estimate`` must recover; a null (identical checkpoints); stage ``finetune``
with every intervention; the readout; caching. The chapters run through papermill on
these checkpoints in ``test_checkpoint_chapters.py``.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reversion.book.chapters import ch03_alignment as ch03
from reversion.core.activations import mean_activations
from reversion.core.drift import alignment, drift_alignment
from reversion.core.hooks import get_blocks
from reversion.core.interventions import AlignmentMix, Block, Projection, Push, Rehearsal
from reversion.stages.estimate import estimate
from reversion.stages.finetune import finetune
from reversion.stages.readout import readout
from reversion.subjects.checkpoints import demo as demo_models
from reversion.subjects.checkpoints import subject as cs
from reversion.subjects.checkpoints.textdata import read_prompts
from reversion.core.training import FinetuneConfig
from reversion.subjects.organism.subject import OrganismSubject

from helpers import EXAMPLES, make_model, make_tokenizer, save, write_jsonl

FT = FinetuneConfig(steps=3, lr=1e-3, batch_size=4, eval_steps=(0, 1, 3))


def checkpoints_of(demo, **changes) -> dict:
    base = dict(witness=str(demo["witness"]), aligned=str(demo["aligned"]), prompts=str(EXAMPLES["harmful"]),
                finetune_data=str(EXAMPLES["benign"]), max_new_tokens=8)
    return {**base, **changes}


def subject_of(demo, need_finetune: bool = False, **changes) -> cs.CheckpointSubject:
    return cs.from_parameters(checkpoints_of(demo, **changes), need_finetune)


def tiny_checkpoints(tiny, family: str = "llama", **changes) -> dict:
    pair = getattr(tiny, family)
    return {"witness": str(pair.witness), "aligned": str(pair.aligned), "prompts": str(tiny.harmful), **changes}


# --------------------------------------------------------------------------- the checkpoints mapping


def test_empty_checkpoints_are_the_organism():
    """``checkpoints={}`` runs the organism: a chapter's subject is the world's history."""
    P = ch03.Params(world="smoke", world_overrides={}, n_seeds=2, n_histories=1, n_probe=16, position="last")
    world = P.make_world()
    s = P.subject(world, need_finetune=True)
    assert isinstance(s, OrganismSubject) and s.history == world.history
    assert s.record() == {"kind": "organism"}
    # from_parameters itself never falls back to the organism: an empty mapping misses both keys.
    with pytest.raises(ValueError, match=r"checkpoints\['witness'\] and checkpoints\['aligned'\] missing"):
        cs.from_parameters({})


@pytest.mark.parametrize("change, message", [
    ({"aligned": ""}, r"checkpoints\['aligned'\] missing: give both the witness"),
    ({"witness": ""}, r"checkpoints\['witness'\] missing: give both the witness"),
    ({"witness": "/nonexistent/ckpt"}, r"checkpoints\['witness'\]: path not found"),
    ({"prompts": ""}, r"checkpoints\['prompts'\] is empty"),
    ({"prompts": "/nonexistent/prompts.jsonl"}, r"checkpoints\['prompts'\]: prompt file not found"),
    ({"finetune_data": "/nonexistent/pairs.jsonl"},
     r"checkpoints\['finetune_data'\]: fine-tuning file not found"),
    ({"finetune_data": ""}, r"checkpoints\['finetune_data'\] is empty"),
    ({"dtype": "float8"}, r"checkpoints\['dtype'\] must be one of"),
    ({"tokenizer": "/nonexistent/tok"}, r"checkpoints\['tokenizer'\]: .*nonexistent/tok"),
    ({"refusal_response": " "}, r"checkpoints\['refusal_response'\] must be a non-empty string"),
    ({"max_new_tokens": 0}, r"checkpoints\['max_new_tokens'\] must be an int >= 1"),
    ({"max_new_tokens": True}, r"checkpoints\['max_new_tokens'\] must be an int >= 1"),
    ({"witness": 3}, r"checkpoints\['witness'\] must be a path string, got 3"),
    ({"foo": "x", "n_probe": 3}, r"checkpoints: unknown key\(s\) 'foo', 'n_probe' \(known: witness, aligned"),
])
def test_bad_checkpoints_name_the_key(demo, change, message):
    with pytest.raises(ValueError, match=message):
        subject_of(demo, need_finetune=True, **change)


def test_checkpoints_must_be_a_mapping():
    with pytest.raises(ValueError, match="parameter 'checkpoints' must be a mapping of witness, aligned"):
        cs.from_parameters("path/to/witness")


def test_finetune_data_only_where_a_chapter_fine_tunes(demo, tmp_path):
    s = subject_of(demo, need_finetune=False, finetune_data="")
    assert s.finetune_data is None
    with pytest.raises(ValueError, match=r"checkpoints\['finetune_data'\] is empty: this chapter fine-tunes"):
        s.check(FT)  # what stage finetune asks first
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "a", "response": "b"}])
    with pytest.raises(ValueError, match=r"checkpoints\['finetune_data'\]: 1 pair .* at least 2"):
        subject_of(demo, finetune_data=str(one))


def test_stray_key_without_checkpoints():
    with pytest.raises(ValueError, match=r"checkpoints\['witness'\] and checkpoints\['aligned'\] missing"):
        cs.from_parameters({"prompts": str(EXAMPLES["harmful"])})


def test_command_line_naming(demo):
    """The same checks name command-line flags when the CLI builds the subject."""
    with pytest.raises(ValueError, match=r"^--witness: path not found"):
        cs.from_parameters(checkpoints_of(demo, witness="/nonexistent/ckpt"), naming="flag")
    with pytest.raises(ValueError, match=r"^--finetune-data is empty"):
        cs.from_parameters(checkpoints_of(demo, finetune_data=""), True, naming="flag")
    assert cs.where("finetune_data", "flag") == "--finetune-data"
    assert cs.where("finetune_data") == "checkpoints['finetune_data']"


def test_empty_and_short_prompt_files(demo, tiny, tmp_path):
    with pytest.raises(ValueError, match=r"checkpoints\['prompts'\]: .*empty"):
        subject_of(demo, prompts=str(tiny.empty))
    short = write_jsonl(tmp_path / "short.jsonl", [{"prompt": f"p {i}"} for i in range(5)])
    with pytest.raises(ValueError, match=r"checkpoints\['prompts'\]: 5 prompts .* at least 8"):
        subject_of(demo, prompts=str(short))
    with pytest.raises(ValueError, match=r"checkpoints\['harmless'\]: .*empty"):
        subject_of(demo, harmless=str(tiny.empty))
    # Without the split (the command line), half as many suffice.
    assert len(cs.from_parameters(checkpoints_of(demo, prompts=str(short)), split_prompts=False).texts["vrev"]) == 5


def test_mismatched_checkpoints(tiny):
    with pytest.raises(ValueError, match=r"checkpoints\['witness'\]: width"):
        cs.from_parameters(tiny_checkpoints(tiny, witness=str(tiny.llama_wide)))
    with pytest.raises(ValueError, match=r"checkpoints\['witness'\]: model family 'gpt2'"):
        cs.from_parameters(tiny_checkpoints(tiny, witness=str(tiny.gpt2.witness)))
    with pytest.raises(ValueError, match=r"checkpoints\['pretrained'\]: width"):
        cs.from_parameters(tiny_checkpoints(tiny, pretrained=str(tiny.llama_wide)))


def test_not_a_checkpoint_folder(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"checkpoints\['aligned'\]: .* \(no config.json\)"):
        cs.from_parameters(tiny_checkpoints(tiny, aligned=str(tmp_path)))


def test_wrong_tokenizer_is_caught(tiny, tmp_path):
    big = demo_models.build_tokenizer(["a b c"] * 3 + [f"word{i} " * 3 for i in range(2000)], tmp_path / "big",
                                      vocab_size=4000)
    assert len(big) > 400
    with pytest.raises(ValueError, match=r"checkpoints\['tokenizer'\]: .* beyond the aligned model's vocabulary"):
        cs.from_parameters(tiny_checkpoints(tiny, tokenizer=str(tmp_path / "big")))


def test_relative_paths_are_relative_to_the_project_root(demo):
    from reversion.infra.paths import project_root

    s = subject_of(demo, prompts="examples/harmful_prompts.jsonl")
    assert s.prompt_file == project_root() / "examples" / "harmful_prompts.jsonl"


def test_record_and_identity(demo, tmp_path):
    s = subject_of(demo)
    rec = s.record()
    assert rec["kind"] == "checkpoints" and rec["model_type"] == "llama"
    assert rec["aligned"] == Path(demo["aligned"]).as_posix()
    assert len(rec["prompts_sha256"]) == 64 and rec["finetune_data_sha256"]
    json.dumps(s.key())  # JSON-able cache key
    assert s.roles() == ("theta_H", "theta_S")
    assert subject_of(demo, pretrained=str(demo["pretrained"])).roles() == ("theta_H", "theta_S", "theta_P")
    # Rewriting the weights changes the folder identity.
    folder = tmp_path / "copy"
    shutil.copytree(demo["aligned"], folder)
    before = cs.checkpoint_identity(folder)
    time.sleep(0.01)
    w = next(folder.glob("*.safetensors"))
    w.write_bytes(w.read_bytes())
    assert cs.checkpoint_identity(folder) != before


def test_checkpoint_identity_covers_tokenizer_and_template_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w" * 10)
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    (tmp_path / "merges.txt").write_text("a b")
    before = cs.checkpoint_identity(tmp_path)
    assert [w[0] for w in before["weights"]] == ["model.safetensors"]  # weights by name/size/mtime only
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}!")
    assert cs.checkpoint_identity(tmp_path) != before  # an edited chat template is a new checkpoint
    after_template = cs.checkpoint_identity(tmp_path)
    (tmp_path / "merges.txt").write_text("a c")
    assert cs.checkpoint_identity(tmp_path) != after_template


def test_chapter_parameters_record_checkpoints_only_when_set(demo):
    P = ch03.Params(world="smoke", world_overrides={}, n_seeds=2, n_histories=1, n_probe=16, position="last")
    assert set(P.recorded()) == {"world", "world_overrides", "n_seeds", "n_histories", "n_probe", "position"}
    ckpt = checkpoints_of(demo)
    Q = ch03.Params(world="smoke", world_overrides={}, n_seeds=2, n_histories=1, n_probe=16, position="last", checkpoints=ckpt)
    assert Q.recorded()["checkpoints"] == ckpt
    s = Q.subject(Q.make_world(), need_finetune=True)
    assert isinstance(s, cs.CheckpointSubject) and s.aligned == demo["aligned"]
    R = ch03.Params(world="smoke", world_overrides={}, n_seeds=2, n_histories=1, n_probe=16, position="last",
                    checkpoints=checkpoints_of(demo, finetune_data=""))
    with pytest.raises(ValueError, match=r"checkpoints\['finetune_data'\] is empty"):
        R.subject(R.make_world(), need_finetune=True)


# --------------------------------------------------------------------------- prompts


def test_prompt_halves_are_disjoint_and_encoded_with_the_template(demo):
    s = subject_of(demo)
    texts = read_prompts(EXAMPLES["harmful"])
    assert s.texts == {"vrev": texts[0::2], "drift": texts[1::2]}
    p = s.prompts()
    assert p.vrev == [tuple(i) for i in s.encode(texts[0::2])]
    assert p.drift == [tuple(i) for i in s.encode(texts[1::2])]
    assert not set(p.vrev) & set(p.drift)  # drift and v_rev share no noise
    assert p.block == p.vrev and p.harmless is None
    assert p.pad_id == s.tok.pad_token_id
    assert all(ids[-1] == s.tok.convert_tokens_to_ids("<|assistant|>") for ids in p.vrev)  # chat template
    assert s.prompts(n_probe=2) == p  # the file decides, not the organism's n_probe
    whole = cs.from_parameters(checkpoints_of(demo), split_prompts=False)
    assert whole.texts == {"vrev": texts, "drift": texts}
    with_harmless = subject_of(demo, harmless=str(EXAMPLES["harmless"]))
    assert len(with_harmless.prompts().harmless) == len(read_prompts(EXAMPLES["harmless"]))


# --------------------------------------------------------------------------- estimate


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_planted_displacement_is_recovered(family, tmp_path, isolated):
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
    s = cs.from_parameters({"witness": str(tmp_path / "witness"), "aligned": str(tmp_path / "aligned"),
                            "prompts": str(EXAMPLES["harmful"])})
    est = estimate(s, n_boot=10, progress=False)
    v = est.directions.v_rev[layer]
    assert float(v @ u.double()) > 0.999
    assert float(est.directions.displacement_norm[layer]) == pytest.approx(0.5, rel=1e-3)
    # A random direction is nowhere near it (the null's scale is ~1/sqrt(d)).
    r = torch.randn(d, generator=torch.Generator().manual_seed(11)).double()
    assert abs(float(v @ r / r.norm())) < 0.5
    L = s.arch()["num_hidden_layers"]
    assert est.acts["H"].shape == (6, L + 1, d)  # rows 0, 2, ... of 12
    assert est.stability.shape == (10, L + 1)
    assert est.directions.v_P is None and est.directions.r_S is None
    assert len(est.openers) == 6


def test_identical_checkpoints_have_no_direction(tiny, isolated):
    s = cs.from_parameters(tiny_checkpoints(tiny, witness=str(tiny.llama.aligned)))
    with pytest.raises(ValueError, match=r"checkpoints\['witness'\]/checkpoints\['aligned'\]: "
                                         r".*zero-norm displacement"):
        estimate(s, n_boot=4, progress=False)


def test_estimate_with_controls_readout_and_cache(demo, isolated):
    s = subject_of(demo, pretrained=str(demo["pretrained"]), harmless=str(EXAMPLES["harmless"]))
    est = estimate(s, n_boot=10, progress=False)
    assert est.directions.v_P is not None and est.directions.r_S is not None
    assert set(est.acts) == {"H", "S", "P", "S_harmless"}
    L = s.arch()["num_hidden_layers"]
    assert 1 <= est.layer < L and "layer" in est.directions.meta["layer_reason"]
    t0 = time.perf_counter()
    again = estimate(s, n_boot=10, progress=False)
    assert again.path == est.path and time.perf_counter() - t0 < 2.0
    assert torch.equal(again.directions.v_rev, est.directions.v_rev) and again.openers == est.openers
    # n_probe is the organism's: the prompt file decides, so it does not change the directions.
    other = estimate(s, n_probe=16, n_boot=10, progress=False)
    assert torch.equal(other.directions.v_rev, est.directions.v_rev)
    r = readout(s, est, 3)
    assert set(r) == {"v_rev", "-r_S", "v_P", "random"} and len(r["v_rev"]["top"]) == 3
    assert r["v_rev"]["refusal_token"] == repr("I")  # "I can't help with that."
    assert r["v_rev"]["answer_openers"]  # the witness opens with "Sure, ..."
    assert r["v_rev"]["harmful_minus_refusal"] is None  # no harmful tokens in text
    assert r["v_rev"]["compliance_minus_refusal"] is not None


# --------------------------------------------------------------------------- fine-tuning


def test_finetune_run_shapes_and_evals(demo, isolated):
    s = subject_of(demo)
    est = estimate(s, n_boot=10, progress=False)
    run = finetune(s, FT, progress=False)
    L, d = s.arch()["num_hidden_layers"], s.arch()["hidden_size"]
    assert run.probe_means.shape == (FT.steps + 1, L + 1, d)
    assert run.steps == [0, 1, 3] and len(run.losses) == FT.steps
    e = run.evals[3]
    assert 0 <= e["harmfulness"] <= e["non_refusal"] <= 1
    assert e["task_loss"][cs.TEXT_TASK] > 0
    # Step 0 is theta_S: the drift half's mean activations of the aligned model.
    p = s.prompts()
    mu = mean_activations(s.load("theta_S"), p.drift, "all", pad_id=p.pad_id)
    assert torch.allclose(run.probe_means[0], mu, atol=1e-5)
    # The demo's theta_S refuses; its witness complies.
    assert run.evals[0]["harmfulness"] == 0.0
    assert s.evaluate(s.load("theta_H"))["harmfulness"] > 0.5
    cos = drift_alignment(run.probe_means, est.directions.v_rev)
    assert cos.shape == (FT.steps + 1, L + 1) and float(np.abs(cos[0]).max()) == 0.0
    t0 = time.perf_counter()
    assert finetune(s, FT, progress=False).path == run.path and time.perf_counter() - t0 < 2.0


def test_block_and_push_move_along_v_rev_in_opposite_directions(demo, isolated):
    s = subject_of(demo)
    est = estimate(s, n_boot=10, progress=False)
    d, L = est.directions, s.arch()["num_hidden_layers"]
    layers = list(range(1, L + 1))
    runs = {name: finetune(s, FT, iv, progress=False) for name, iv in [
        ("block", Block(d.v_rev, d.displacement_norm, 1.0, layers)),
        ("push", Push(d.v_rev, d.displacement_norm, 1.0, layers))]}
    final = {k: float(alignment(r.probe_means[-1] - r.probe_means[0], d.v_rev)[est.layer]) for k, r in runs.items()}
    assert final["block"] < 0 < final["push"]


def test_projection_rehearsal_and_alignment_mix_run(demo, isolated):
    s = subject_of(demo)
    est = estimate(s, n_boot=10, progress=False)
    d = est.directions
    base = finetune(s, FT, progress=False)
    for iv in (Projection(d.v_rev, [1, 2]), Rehearsal(0.5), AlignmentMix(0.5)):
        run = finetune(s, FT, iv, progress=False)
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
    batches = Rehearsal(0.5).batches(cs.text_batches(data, ft), data, ft)
    batch = next(batches)
    assert len(batch) == 4 and [a for _, a in batch[2:]] == [(10, 11), (10, 11)]


def test_training_data_and_safety_examples_of_a_subject(demo):
    s = subject_of(demo)
    data = s.training_data()
    train, held = s.pairs
    assert len(data.benign) == len(train) and held
    refusal = s.tok(s.refusal_response, add_special_tokens=False)["input_ids"] + [s.tok.eos_token_id]
    assert data.refusal_answer == tuple(refusal)
    assert {q.prompt for q in data.harmful} == set(s.prompts().vrev)  # the estimation half only
    first = next(s.benign_batches(FT))
    assert first == next(s.benign_batches(FT)) and len(first) == FT.batch_size  # the seed decides the order


def test_step_zero_is_judged_like_every_later_step_in_float32(demo, isolated):
    """A subject that reads its models in bfloat16 still evaluates theta_S (step 0) on the
    float32 model the fine-tuning steps are judged on: no precision artefact in any rise."""
    import torch

    from reversion.stages.finetune import aligned_evaluation

    s = subject_of(demo, dtype="bfloat16")
    assert s.load("theta_S").dtype == torch.bfloat16  # read-only loads keep the dtype asked for
    got = aligned_evaluation(s, FT)
    want = s.evaluate(s.load("theta_S", dtype=torch.float32))
    assert got == want


def test_the_cache_identity_covers_seed_and_device(demo):
    s = subject_of(demo)
    assert cs.from_parameters(checkpoints_of(demo), seed=1).key() != s.key()
    assert cs.from_parameters(checkpoints_of(demo), device="cpu").key() != s.key()
