"""Fine-tuning your checkpoints through ``transformers.Trainer`` (reversion.stages.trainer_loop).

On the tiny demo history (a Llama witness / aligned pair, built locally):

* the Trainer set to be the book's own loop (full fine-tuning, float32, constant learning rate,
  no clipping, no weight decay) gives the loop's numbers -- drift probes, losses, judged
  harmfulness and task loss -- within 1e-4 relative, with and without a block term;
* gradient accumulation splits a step's batch and leaves the step's gradient (so the run) the same;
* LoRA (the default) trains only its adapters; a model read in bfloat16 trains with LoRA and
  gradient checkpointing through the stage, and a ReversionMonitor attached to the same Trainer logs;
* bad settings (an unknown key, a LoRA target the architecture lacks, fp16 on a CPU) are errors
  that name ``checkpoints['training'][...]``, raised before any work;
* chapters on checkpoints fine-tune with the checkpoint defaults, not the organism's.
"""

from __future__ import annotations

import dataclasses
from itertools import islice

import pytest
import torch
from helpers import EXAMPLES

from reversion.core.interventions import Oppose
from reversion.infra import seeding
from reversion.core.training import FinetuneConfig
from reversion.stages.estimate import estimate
from reversion.stages.finetune import finetune
from reversion.core.train_settings import CHECKPOINT_FINETUNE, TrainSettings, lora_targets_missing, wrap_lora
from reversion.subjects.checkpoints import subject as cs

pytestmark = pytest.mark.usefixtures("one_thread")

FT = FinetuneConfig(steps=4, lr=1e-3, batch_size=4, eval_steps=(0, 2, 4))
LOOP = None
"""``training=None``: the book's own loop (core.training.train), the reference."""


def subject(demo, training=TrainSettings(), **changes) -> cs.CheckpointSubject:
    c = dict(witness=str(demo["witness"]), aligned=str(demo["aligned"]), prompts=str(EXAMPLES["harmful"]),
             finetune_data=str(EXAMPLES["benign"]), max_new_tokens=6, **changes)
    return dataclasses.replace(cs.from_parameters(c, need_finetune=True), training=training)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _same_run(a, b, tol: float = 1e-4) -> None:
    assert _rel(a.probe_means, b.probe_means) < tol
    assert a.losses == pytest.approx(b.losses, rel=tol)
    assert a.steps == b.steps
    for s in a.steps:
        assert a.evals[s]["harmfulness"] == b.evals[s]["harmfulness"]
        assert a.evals[s]["task_loss"][cs.TEXT_TASK] == pytest.approx(b.evals[s]["task_loss"][cs.TEXT_TASK], rel=tol)


def test_the_trainer_set_to_the_loop_gives_the_loops_numbers(demo, isolated):
    loop = finetune(subject(demo, LOOP), FT, progress=False)
    trainer = finetune(subject(demo, TrainSettings.matching_the_loop()), FT, progress=False)
    assert trainer.path != loop.path  # the training settings are in the key
    _same_run(trainer, loop)
    # ... and the runs move: the agreement is not that of two untrained models
    assert _rel(loop.probe_means[-1], loop.probe_means[0]) > 1e-3


def test_a_directional_term_through_the_objective_mixin_equals_the_loops(demo, isolated):
    s_loop = subject(demo, LOOP)
    d = estimate(s_loop, n_boot=10, progress=False).directions
    L = s_loop.arch()["num_hidden_layers"]

    def block():  # oppose: the bounded term, which acts on either side of theta_S
        return Oppose(d.v_rev, d.displacement_norm, 1.0, list(range(1, L + 1)))

    loop = finetune(s_loop, FT, block(), progress=False)
    trainer = finetune(subject(demo, TrainSettings.matching_the_loop()), FT, block(), progress=False)
    _same_run(trainer, loop)
    plain = finetune(s_loop, FT, progress=False)
    assert _rel(loop.probe_means[-1], plain.probe_means[-1]) > 1e-3  # the term acted


def test_accumulation_splits_the_step_and_keeps_its_gradient(demo, isolated):
    one = finetune(subject(demo, TrainSettings.matching_the_loop()), FT, progress=False)
    two = finetune(subject(demo, dataclasses.replace(TrainSettings.matching_the_loop(),
                                                     gradient_accumulation_steps=2)), FT, progress=False)
    assert two.path != one.path
    _same_run(two, one, tol=1e-4)
    entries = sorted(p.name for p in (isolated / "cache").rglob("*") if p.is_dir())
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps'\] = 8 is more than the 4 sequences"):
        finetune(subject(demo, dataclasses.replace(TrainSettings.matching_the_loop(),
                                                   gradient_accumulation_steps=8)), FT, progress=False)
    # refused before anything was read or computed: no new cache entry (step 0 included)
    assert sorted(p.name for p in (isolated / "cache").rglob("*") if p.is_dir()) == entries


def test_lora_trains_only_its_adapters(demo):
    s = subject(demo)
    model = wrap_lora(s.load("theta_S", dtype=torch.float32), s.training)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # every linear layer of every block gets adapters, the output head none
    assert any("q_proj" in n for n in trainable) and any("down_proj" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)


def test_lora_in_bfloat16_with_checkpointing_trains_and_the_monitor_logs(demo, isolated):
    from reversion.stages.finetune import train_with_trainer
    from reversion.subjects.checkpoints.trainer_hooks import ReversionMonitor

    settings = TrainSettings(gradient_checkpointing=True, gradient_accumulation_steps=2)
    s = subject(demo, settings, dtype="bfloat16")
    run = finetune(s, FT, progress=False)
    assert len(run.losses) == FT.steps and all(torch.isfinite(torch.tensor(run.losses)))
    assert run.steps == [0, 2, 4] and 0.0 <= run.evals[4]["harmfulness"] <= 1.0
    assert _rel(run.probe_means[-1], run.probe_means[0]) > 1e-4  # LoRA moved the model
    # The same Trainer with the README's monitor attached: it logs a row per check.
    est = estimate(s, n_boot=10, progress=False)
    p = s.prompts()
    monitor = ReversionMonitor(est.directions, p.drift, every=2, pad_id=p.pad_id)
    model, losses, _, _ = train_with_trainer(s, FT, callbacks=[monitor])
    assert next(model.parameters()).dtype == torch.bfloat16
    assert [r["step"] for r in monitor.history] == [0, 2, 4]
    assert all(-1.0 <= r["alignment"] <= 1.0 for r in monitor.history)
    assert losses == pytest.approx(run.losses, rel=1e-6)  # the stage's run, step for step


@pytest.mark.parametrize("training, message", [
    ({"rank": 8}, r"checkpoints\['training'\]: unknown key\(s\) 'rank'"),
    ({"method": "qlora"}, r"checkpoints\['training'\]\['method'\]"),
    ({"lora_target_modules": []}, r"checkpoints\['training'\]\['lora_target_modules'\]"),
    ({"lora_target_modules": ["c_attn"]}, r"'c_attn' match no module of this LlamaForCausalLM"),
    ({"precision": "fp16"}, r"checkpoints\['training'\]\['precision'\] = 'fp16' needs a CUDA device"),
    ({"gradient_accumulation_steps": 0}, r"checkpoints\['training'\]\['gradient_accumulation_steps'\]"),
])
def test_bad_training_settings_name_the_key_before_any_work(demo, isolated, training, message):
    c = dict(witness=str(demo["witness"]), aligned=str(demo["aligned"]), prompts=str(EXAMPLES["harmful"]),
             finetune_data=str(EXAMPLES["benign"]), training=training)
    with pytest.raises(ValueError, match=message):
        cs.from_parameters(c, need_finetune=True)
    assert not any(isolated.rglob("*.json"))  # nothing written


def test_settings_normalise_what_means_the_same_and_refuse_what_does_nothing():
    assert TrainSettings(lora_target_modules="q_proj").lora_target_modules == ("q_proj",)  # not 'q', '_', ...
    assert TrainSettings(lora_target_modules=["q_proj", "v_proj"]).lora_target_modules == ("q_proj", "v_proj")
    assert TrainSettings(lora_alpha=32).key() == TrainSettings(lora_alpha=32.0).key()
    with pytest.raises(ValueError, match=r"\['warmup_steps'\] = 10 does nothing with lr_scheduler 'constant'"):
        TrainSettings(warmup_steps=10)
    assert TrainSettings(warmup_steps=10, lr_scheduler="constant_with_warmup").warmup_steps == 10


def test_lora_targets_are_checked_against_the_architecture(demo):
    model = subject(demo).load("theta_S")
    assert lora_targets_missing(model, "all-linear") == []
    assert lora_targets_missing(model, ("q_proj", "v_proj")) == []
    assert lora_targets_missing(model, ("q_proj", "c_fc")) == ["c_fc"]


def test_precision_resolves_per_device():
    cpu = torch.device("cpu")
    assert TrainSettings().autocast_dtype(cpu) is None  # auto: float32 on a CPU
    assert TrainSettings(precision="bf16").autocast_dtype(cpu) is torch.bfloat16
    assert TrainSettings(precision="fp32").autocast_dtype(cpu) is None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        TrainSettings(precision="fp16").autocast_dtype(cpu)


def test_chapters_on_checkpoints_fine_tune_with_the_checkpoint_defaults(demo):
    from reversion.book.chapters.ch03_alignment import Params

    organism = Params(world="smoke", world_overrides={}, n_histories=1, n_seeds=2, n_probe=16, position="last")
    mine = dataclasses.replace(organism, checkpoints=dict(witness=str(demo["witness"]),
                                                          aligned=str(demo["aligned"])))
    assert organism.make_world().finetune.lr != CHECKPOINT_FINETUNE["lr"]
    assert mine.make_world().finetune.lr == CHECKPOINT_FINETUNE["lr"]
    assert mine.make_world().finetune.batch_size == CHECKPOINT_FINETUNE["batch_size"]
    over = dataclasses.replace(mine, world_overrides={"finetune": {"lr": 5e-5}})
    assert over.make_world().finetune.lr == 5e-5  # the user's override wins


def test_the_training_settings_are_recorded_and_keyed(demo):
    a, b = subject(demo), subject(demo, TrainSettings(lora_r=4))
    assert a.record()["training"]["lora_r"] == 16 and b.record()["training"]["lora_r"] == 4
    assert any("LoRA (rank 16" in line for line in a.describe(FT))
    from reversion.stages.finetune import _key
    assert _key(a, FT, None) != _key(b, FT, None)
    # what the settings resolve to, and the libraries that run them, are keyed too
    from importlib import metadata
    k = _key(a, FT, None)["training"]
    assert k["autocast"] == "None"  # precision auto on a CPU: float32
    assert k["peft_version"] == metadata.version("peft") and k["accelerate_version"] == metadata.version("accelerate")


# --------------------------------------------------------------------------- calibration


def _terms(s):
    d = estimate(s, n_boot=10, progress=False).directions
    L = s.arch()["num_hidden_layers"]
    return d, {"v_rev": (d.v_rev, list(range(1, L + 1)))}


def test_calibration_takes_the_gradients_the_run_takes(demo, isolated):
    """A strength is calibrated on the model the run trains: the full float32 model for the book's
    loop and full fine-tuning (the same numbers), the LoRA adapters under LoRA -- checked against an
    independent autograd over the adapters -- with the training settings in the key."""
    from reversion.core.batches import collate
    from reversion.stages.calibrate import calibrate
    from reversion.stages.trainer_loop import model_for_training

    d, terms = _terms(subject(demo, LOOP))
    n_loop = calibrate(subject(demo, LOOP), FT, terms, d.displacement_norm)["v_rev"]
    n_full = calibrate(subject(demo, TrainSettings.matching_the_loop()), FT, terms, d.displacement_norm)["v_rev"]
    assert n_full == pytest.approx(n_loop, rel=1e-9)
    s = subject(demo)
    n_lora = calibrate(s, FT, terms, d.displacement_norm)["v_rev"]
    seeding.seed_everything(0)  # the adapters' random start: seed 0's run, as the stage draws it
    model, cast = model_for_training(s)
    assert cast is None  # float32 on a CPU
    model.eval()
    adapters = [p for n, p in model.named_parameters() if p.requires_grad]
    assert adapters and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    pad = s.prompts().pad_id
    batches = [collate([q for q, _ in b], [a for _, a in b], pad_id=pad) for b in
               islice(s.benign_batches(FT), 4)]
    grads = torch.autograd.grad(sum(model(**b).loss for b in batches) / 4, adapters, allow_unused=True)
    task = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    assert n_lora["task"] == pytest.approx(task, rel=1e-5)
    assert abs(n_lora["ratio"] / n_loop["ratio"] - 1) > 0.05  # a different ratio from the full model's
    # the LoRA rank is in the key: another rank is another calibration, not the cached one
    n_r4 = calibrate(subject(demo, TrainSettings(lora_r=4)), FT, terms, d.displacement_norm)["v_rev"]
    assert n_r4["task"] != n_lora["task"]


def test_calibration_in_micro_batches_gives_the_same_norms_and_forwards_a_sequence_at_a_time(demo, isolated):
    """``gradient_norms(micro_batch=k)`` forwards the task loss k sequences at a time (counted) and
    gives the whole batches' norms; the stage calibrates a run with gradient checkpointing (one
    sequence at a time) or accumulation (its micro-batches) to the plain run's numbers."""
    from reversion.core.batches import collate
    from reversion.core.interventions import gradient_norms
    from reversion.stages.calibrate import calibrate
    from reversion.stages.trainer_loop import model_for_training

    s = subject(demo)
    d, terms = _terms(s)
    v, layers = terms["v_rev"]
    pad = s.prompts().pad_id
    batches = [collate([q for q, _ in b], [a for _, a in b], pad_id=pad) for b in islice(s.benign_batches(FT), 2)]
    n_seq = sum(len(b["input_ids"]) for b in batches)
    seeding.seed_everything(0)
    model, _ = model_for_training(s)
    calls = []
    model.base_model.model.model.register_forward_hook(lambda *a: calls.append(1))

    def norms(micro):
        calls.clear()
        n = gradient_norms(model, Oppose(v, d.displacement_norm, 1.0, layers), s.prompts(), batches,
                           micro_batch=micro)
        return n, len(calls)

    whole, k_whole = norms(None)
    for micro in (1, 3):
        part, k_part = norms(micro)
        assert k_part - k_whole == sum(-(-len(b["input_ids"]) // micro) for b in batches) - len(batches)
        assert part["task"] == pytest.approx(whole["task"], rel=1e-6)
        assert part["term"] == pytest.approx(whole["term"], rel=1e-6)
    assert k_whole > len(batches) and n_seq > len(batches)
    with pytest.raises(ValueError, match="micro_batch"):
        gradient_norms(model, Oppose(v, d.displacement_norm, 1.0, layers), s.prompts(), batches, micro_batch=0)
    plain = calibrate(s, FT, terms, d.displacement_norm)["v_rev"]
    for settings in (TrainSettings(gradient_checkpointing=True), TrainSettings(gradient_accumulation_steps=2)):
        got = calibrate(subject(demo, settings), FT, terms, d.displacement_norm)["v_rev"]
        assert got["ratio"] == pytest.approx(plain["ratio"], rel=1e-6)


def test_seeded_seeds_the_body_and_gives_the_caller_its_generators_back(demo, isolated):
    """``seeding.seeded(s)``: the body draws as after ``seed_everything(s)``; afterwards Python's,
    NumPy's and torch's generators continue as if the body had not run -- so a calibration built
    (which seeds the adapters' start) and one read from the cache leave the chapter's draws alike."""
    import random

    import numpy as np

    from reversion.stages.calibrate import calibrate

    seeding.seed_everything(0)
    want = (torch.rand(3), np.random.rand(2), random.random())
    seeding.seed_everything(7)
    with seeding.seeded(0):
        got = (torch.rand(3), np.random.rand(2), random.random())
    after = (torch.rand(3), np.random.rand(2), random.random())
    seeding.seed_everything(7)
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]
    expect = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(after[0], expect[0]) and np.array_equal(after[1], expect[1]) and after[2] == expect[2]
    # the stage: a built calibration leaves torch's generator where it was
    d, terms = _terms(subject(demo, LOOP))
    state = torch.random.get_rng_state()
    calibrate(subject(demo, TrainSettings(lora_r=2)), FT, terms, d.displacement_norm)
    assert torch.equal(torch.random.get_rng_state(), state)
