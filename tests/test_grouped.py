"""Runs trained as one batched computation (``reversion.core.grouped``) are the runs trained alone.

Three levels, each with a reference it must match and a case that must fail:

* the model: a group's losses, hidden states, greedy continuations and answer losses equal
  each Hugging Face GPT-2's own (float32 rounding; tokens exactly);
* training: K models trained in a group end where each trained alone with the plain loop
  (``core.training.train``) ends, within a stated tolerance; with fixed pad widths a run's
  weights are the same *bit for bit* whichever runs share its group;
* the stages: histories and fine-tuning runs built in a group, alone, or in worker processes
  give byte-identical cache entries.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from reversion.core.batches import collate
from reversion.core.generation import EvalWork, greedy_generate, run_work
from reversion.core.grouped import GroupedGPT2, NonFiniteLoss, stack_batches, stack_prompts, supports
from reversion.core.training import adamw, train
from reversion.infra.seeding import seed_everything
from reversion.stages import finetune as finetune_mod
from reversion.subjects.organism import history as history_mod
from reversion.subjects.organism.subject import OrganismSubject, histories
from reversion.subjects.organism.worlds import make_world

pytestmark = pytest.mark.usefixtures("one_thread")

V, PAD, EOS = 40, 0, 3


def _gpt2(seed: int, **kw) -> GPT2LMHeadModel:
    seed_everything(seed)
    cfg = GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=3, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=PAD, eos_token_id=EOS, **kw)
    return GPT2LMHeadModel(cfg).eval()


def _pairs(seed: int, n: int) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = torch.randint(4, V, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        a = torch.randint(4, V, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        out.append((p, a))
    return out


@pytest.fixture(scope="module")
def models():
    return [_gpt2(s) for s in (1, 2, 3)]


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("activation", ["gelu_new", "gelu", "relu"])
def test_losses_and_hidden_states_equal_each_models_own(models, activation):
    if activation != "gelu_new":  # the module's models use GPT-2's own; the others as the organism may
        models = [_gpt2(s, activation_function=activation) for s in (1, 2, 3)]
    group = GroupedGPT2(models)
    batches = [collate([p for p, _ in _pairs(k, 8)], [a for _, a in _pairs(k, 8)], pad_id=PAD) for k in range(3)]
    ids, labels = stack_batches(batches, PAD)
    with torch.no_grad():
        got = group.losses(ids, labels)
        _, hs = group.hidden(ids, layers=range(4))
    for k, (m, b) in enumerate(zip(models, batches)):
        with torch.no_grad():
            out = m(**b, output_hidden_states=True)
        assert float(got[k]) == pytest.approx(float(out.loss), rel=1e-5)
        real = b["attention_mask"].bool()
        width = b["input_ids"].shape[1]
        for l in range(4):  # HF convention: 0 embeddings ... 3 after ln_f
            mine = hs[l][k].view(8, ids.shape[2], -1)[:, :width][real]
            torch.testing.assert_close(mine, out.hidden_states[l][real], rtol=0, atol=2e-5)
    # the runs differ: equality above is not one model's numbers thrice
    assert len({round(float(x), 5) for x in got}) == 3


def test_greedy_and_answer_loss_equal_each_models_own(models):
    group = GroupedGPT2(models)
    works = [EvalWork({"a": [p for p, _ in _pairs(10 + k, 12)]}, {"a": _pairs(20 + k, 12)}, 5, None, PAD)
             for k in range(3)]
    got = group.run_work(works)
    for k, m in enumerate(models):
        cont, losses = run_work(m, works[k])
        assert got[k][0]["a"] == cont["a"]  # every token, prompts of every length in one batch
        assert got[k][1]["a"] == pytest.approx(losses["a"], rel=1e-5)
    # with an EOS the continuation is cut exactly where the per-model generator cuts it
    eos = group.greedy(*stack_prompts([[p for p, _ in _pairs(30 + k, 6)] for k in range(3)], PAD), 6, EOS)
    for k, m in enumerate(models):
        ref = greedy_generate(m, [p for p, _ in _pairs(30 + k, 6)], 6, EOS)
        for g, r in zip(eos[k].tolist(), ref):
            assert g[: r.index(EOS) + 1 if EOS in r else 6] == r[: r.index(EOS) + 1 if EOS in r else 6]


def test_export_round_trips_into_a_plain_gpt2(models):
    group = GroupedGPT2(models)
    fresh = group.export(1, _gpt2(99))
    for (n, a), b in zip(models[1].state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n
    assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()  # still tied


def _train_group(models, data, idx, width=None, steps=12):
    group = GroupedGPT2([copy.deepcopy(models[i]) for i in idx])
    opt = adamw(group.parameters(), 1e-3)  # the optimizer every phase and run uses (fused)
    for step in range(steps):
        ids, labels = stack_batches([data[i][step] for i in idx], PAD, width)
        loss = group.losses(ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    return group


@pytest.fixture(scope="module")
def data():
    return [[collate([p for p, _ in _pairs(100 * k + s, 16)], [a for _, a in _pairs(100 * k + s, 16)], pad_id=PAD)
             for s in range(12)] for k in range(3)]


def test_training_in_a_group_ends_where_training_alone_ends(models, data):
    group = _train_group(models, data, [0, 1, 2])
    for k in range(3):
        alone = copy.deepcopy(models[k]).train()
        train(alone, iter(data[k]), 12, 1e-3, progress=False)
        want = alone.state_dict()
        got = group.state_dict_of(k)
        worst = max(float((got[n] - want[n]).abs().max()) for n in got)
        moved = max(float((want[n] - models[k].state_dict()[n]).abs().max()) for n in got)
        # Stated tolerance: 1e-5 after 12 AdamW steps at lr 1e-3 (float32 reduction order),
        # against a motion of about 1e-2 -- the comparison cannot pass by not training.
        assert worst < 1e-5, (k, worst)
        assert moved > 1e-3


@pytest.mark.parametrize("width", [16, 13])  # 13: no multiple of a vector width (kernels' scalar tails)
def test_a_runs_weights_do_not_depend_on_its_group_bit_for_bit(models, data, width):
    for run in (0, 2):  # first in every group, and at positions 1 and 2
        alone = _train_group(models, data, [run], width).state_dict_of(0)
        for idx in ([0, 1, 2], [0, 2], [2, 0]):
            if run in idx:
                other = _train_group(models, data, idx, width).state_dict_of(idx.index(run))
                assert all(torch.equal(alone[n], other[n]) for n in alone), (run, idx)
    # the other runs do train (the group is not one run thrice)
    g = _train_group(models, data, [0, 1, 2], width)
    first = _train_group(models, data, [0], width).state_dict_of(0)
    assert not torch.equal(g.state_dict_of(1)["transformer.wte.weight"], first["transformer.wte.weight"])


GPU_TOLERANCE = 1e-4
"""A run alone and in a group on a GPU, after 12 AdamW steps at lr 1e-3: cuBLAS chooses its
kernels (and their reduction order) by the batch of matrices, so bit-equality is not promised
there; the weights move by about 1e-2."""


def _on(device: str, models):
    return [copy.deepcopy(m).to(device) for m in models]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU agreement is checked where one is")
def test_on_a_gpu_a_run_alone_and_in_a_group_agree_within_the_stated_tolerance(models, data):
    gpu_models = _on("cuda", models)
    gpu_data = [[{k: v.to("cuda") for k, v in b.items()} for b in run] for run in data]
    alone = _train_group(gpu_models, gpu_data, [0], 16).state_dict_of(0)
    group = _train_group(gpu_models, gpu_data, [0, 1, 2], 16).state_dict_of(0)
    worst = max(float((alone[n] - group[n]).abs().max()) for n in alone)
    moved = max(float((alone[n] - gpu_models[0].state_dict()[n]).abs().max()) for n in alone)
    assert worst < GPU_TOLERANCE and moved > 1e-3, (worst, moved)


def test_the_gradient_of_a_run_is_its_own_loss_only(models, data):
    """A planted leak: scaling run 1's loss must not move run 0's gradient."""
    group = GroupedGPT2([copy.deepcopy(m) for m in models])
    ids, labels = stack_batches([data[k][0] for k in range(3)], PAD)
    grads = []
    for w1 in (1.0, 7.0):
        group.zero_grad(set_to_none=True)
        loss = group.losses(ids, labels)
        (loss[0] + w1 * loss[1] + loss[2]).backward()
        grads.append(group.blocks[0]["attn_c_attn_weight"].grad.clone())
    assert torch.equal(grads[0][0], grads[1][0])
    assert not torch.equal(grads[0][1], grads[1][1])


# --------------------------------------------------------------------------- bad input


def test_bad_groups_are_refused(models):
    with pytest.raises(ValueError, match="at least one model"):
        GroupedGPT2([])
    with pytest.raises(ValueError, match="one configuration"):
        GroupedGPT2([models[0], _gpt2(5, n_inner=64)])
    dropout = _gpt2(5)
    dropout.config.resid_pdrop = 0.1
    assert not supports(dropout)
    with pytest.raises(ValueError, match="cannot join a group"):
        GroupedGPT2([models[0], dropout])
    assert not supports(_gpt2(5, activation_function="silu"))
    with pytest.raises(ValueError, match="one configuration"):
        GroupedGPT2([models[0], _gpt2(5, activation_function="gelu")])
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4))
    with pytest.raises(ValueError, match="cannot join a group"):
        GroupedGPT2([llama])
    group = GroupedGPT2(models)
    with pytest.raises(ValueError, match="same number of prompts"):
        stack_prompts([[[4, 5]], [[4, 5], [6]]], PAD)
    with pytest.raises(ValueError, match="does not fit the group's width 2"):
        stack_prompts([[[4, 5, 6]]], PAD, width=2)
    with pytest.raises(ValueError, match="has 1 runs; the group has 3"):
        group.losses(torch.zeros((1, 2, 4), dtype=torch.long), torch.zeros((1, 2, 4), dtype=torch.long))


# --------------------------------------------------------------------------- the stages


def _read(path) -> tuple[bytes, bytes]:
    return (path / "run.json").read_bytes(), (path / "trajectory.safetensors").read_bytes()


def test_histories_trained_together_equal_histories_trained_alone(tmp_path, monkeypatch):
    world = make_world("smoke")
    cfgs = [s.history for s in histories(world.history, 3)]
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "together"))
    built = []
    real = history_mod._build_phase
    monkeypatch.setattr(history_mod, "_build_phase", lambda c, p, *a: (built.append((len(c), p)), real(c, p, *a)))
    together = history_mod.train_histories(cfgs, progress=False)
    assert built == [(3, "pretrain"), (3, "helpful"), (3, "safety")]  # one group per phase
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "alone"))
    alone = [history_mod.phase_checkpoint(c, "safety", progress=False) for c in reversed(cfgs)][::-1]
    for a, b in zip(together, alone):
        assert a.name == b.name
        assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()
        assert json.loads((a / "stage.json").read_text()) == json.loads((b / "stage.json").read_text())
    # independent histories: the bytes differ between them
    sd = [(p / "model" / "model.safetensors").read_bytes() for p in together]
    assert len(set(sd)) == 3


def test_runs_built_in_a_group_equal_runs_built_alone_and_in_workers(tmp_path, monkeypatch):
    world = make_world("smoke", {"finetune": {"steps": 4, "eval_steps": [0, 2, 4]}})
    subject = OrganismSubject(world.history)
    jobs = [(subject, world.finetune_config(k), None) for k in range(3)]
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "here"))
    monkeypatch.setenv("REVERSION_WORKERS", "1")
    together = finetune_mod.finetune_many(jobs, progress=False)
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "alone"))
    alone = [finetune_mod.finetune(*j, progress=False) for j in jobs]
    # two groups (another step count is another group) in two worker processes
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "workers"))
    monkeypatch.setenv("REVERSION_WORKERS", "2")
    longer = [(subject, world.finetune_config(k, steps=5), None) for k in range(2)]
    in_workers = finetune_mod.finetune_many(jobs + longer, progress=False)[:3]
    for a, b, c in zip(together, alone, in_workers):
        assert a.path.name == b.path.name == c.path.name
        assert _read(a.path) == _read(b.path) == _read(c.path)
        assert json.loads((a.path / "timings.json").read_text())["group"]["runs"] == 3
    assert _read(together[0].path) != _read(together[1].path)


def test_grouped_runs_agree_with_the_plain_training_loop(tmp_path, monkeypatch):
    """The plain loop (``train_with`` on the Hugging Face model, the path of real checkpoints and
    model-touching interventions) and the grouped loop give the same run to float32 rounding."""
    world = make_world("smoke", {"finetune": {"steps": 4, "eval_steps": [0, 2, 4]}})
    subject = OrganismSubject(world.history)
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "grouped"))
    grouped = finetune_mod.finetune(subject, world.finetune_config(0), progress=False)
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "plain"))
    monkeypatch.setattr(finetune_mod, "_groupable", lambda *a: False)
    plain = finetune_mod.finetune(subject, world.finetune_config(0), progress=False)
    torch.testing.assert_close(grouped.probe_means, plain.probe_means, rtol=0, atol=1e-5)
    assert grouped.losses == pytest.approx(plain.losses, rel=1e-5)
    for s in grouped.evals:
        for k in ("harmfulness", "non_refusal", "exact_match"):
            assert grouped.evals[s][k] == plain.evals[s][k]


def test_a_non_finite_loss_names_its_run_and_moves_no_weight(models, data):
    group = GroupedGPT2([copy.deepcopy(m) for m in models])
    opt = torch.optim.AdamW(group.parameters(), lr=1e-3, weight_decay=0.0)
    ids, labels = stack_batches([data[k][0] for k in range(3)], PAD)
    before = group.state_dict_of(0)
    with torch.no_grad():
        group.blocks[0]["ln_1_weight"][1].fill_(float("nan"))  # run 1 only
    with pytest.raises(NonFiniteLoss, match=r"run\(s\) \[1\]") as err:
        group.train_step(opt, ids, labels)
    assert err.value.runs == [1]
    assert all(torch.equal(before[n], group.state_dict_of(0)[n]) for n in before)
    # and a finite step returns each run's loss, the loss of losses()
    fine = GroupedGPT2([copy.deepcopy(m) for m in models])
    want = fine.losses(ids, labels).tolist()
    got = fine.train_step(torch.optim.AdamW(fine.parameters(), lr=1e-3, weight_decay=0.0), ids, labels)
    assert got == want
