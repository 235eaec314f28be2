"""The block objective and the monitor in users' own trainers (reversion.subjects.checkpoints.trainer_hooks).

:class:`ObjectiveMixin` on ``transformers.Trainer`` (``BlockTrainer``) and on trl's
``SFTTrainer``: with gradient accumulation the term counts once per optimizer step, checked
against a hand computation (one SGD step moves the weights by ``-lr * grad T`` more than the
same step without the term; counted per micro-batch it would be twice that). A LoRA run with
``SFTTrainer``, the monitor and the block term in one process: ``reversion track`` on its
adapter checkpoints reproduces the monitor's log. Tiny local GPT-2 models only; nothing is
downloaded (trl's telemetry is switched off). Two processes: ``tests/test_distributed.py``.
"""

from __future__ import annotations

import csv

import huggingface_hub.constants
import pytest
import torch
from datasets import Dataset
from distributed.sft_lora import BlockSFT, run
from transformers import TrainingArguments
from trl import SFTConfig

from reversion.cli import main
from reversion.core.directions import Directions
from reversion.core.interventions import Block
from reversion.core.models import load_model
from reversion.subjects.checkpoints.files import is_adapter
from reversion.subjects.checkpoints.trainer_hooks import BlockTrainer, ShardedTerm, block_term
from reversion.subjects.checkpoints.textdata import (
    PairCollator, encode_pairs, encode_prompts, load_tokenizer, pad_id_of, read_pairs, read_prompts,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LR = 0.5
STRENGTH = 2.0


@pytest.fixture(autouse=True)
def no_telemetry(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)


@pytest.fixture(scope="module")
def gpt2(tiny, tmp_path_factory):
    """The tiny GPT-2 pair with its directions, probes and benign pairs."""
    root = tmp_path_factory.mktemp("trainers")
    out = root / "v_rev.safetensors"
    assert main(["estimate", "--witness", str(tiny.gpt2.witness), "--aligned", str(tiny.gpt2.aligned),
                 "--prompts", str(tiny.harmful), "--out", str(out), "--device", "cpu", "--n-null", "100",
                 "--n-boot", "10"]) == 0
    tok = load_tokenizer(tiny.gpt2.aligned)
    return {"aligned": tiny.gpt2.aligned, "directions": out, "dirs": Directions.load(out), "tok": tok,
            "probes": encode_prompts(tok, read_prompts(tiny.harmful)), "pairs": read_pairs(tiny.benign),
            "harmful": tiny.harmful, "benign": tiny.benign}


def _one_step(gpt2, tmp_path, kind: str, ga: int, batch: int, strength: float) -> dict[str, torch.Tensor]:
    """The weights after one plain-SGD optimizer step (no clipping, no decay)."""
    model = load_model(gpt2["aligned"], device="cpu")
    pad = pad_id_of(gpt2["tok"])
    block = block_term(model, gpt2["dirs"], gpt2["probes"], strength, pad_id=pad, objective="oppose")
    common = dict(output_dir=str(tmp_path / f"{kind}-{ga}-{strength}"), max_steps=1, per_device_train_batch_size=batch,
                  gradient_accumulation_steps=ga, optim="sgd", learning_rate=LR, lr_scheduler_type="constant",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, save_strategy="no", report_to=[],
                  use_cpu=True, seed=0, data_seed=0, disable_tqdm=True)
    if kind == "Trainer":
        trainer = BlockTrainer(model=model, args=TrainingArguments(**common), block=block,
                               train_dataset=encode_pairs(gpt2["tok"], gpt2["pairs"]), data_collator=PairCollator(pad))
    else:
        data = Dataset.from_list([{"prompt": p, "completion": " " + r} for p, r in gpt2["pairs"]])
        trainer = BlockSFT(model=model, args=SFTConfig(**common, bf16=False, gradient_checkpointing=False),
                           train_dataset=data, processing_class=gpt2["tok"], block=block)
    trainer.train()
    assert trainer.state.global_step == 1
    assert (trainer.last_block_term is None) == (strength == 0.0)
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


@pytest.mark.parametrize("kind", ["Trainer", "SFTTrainer"])
def test_the_term_counts_once_per_optimizer_step_with_accumulation(gpt2, tmp_path, kind):
    model = load_model(gpt2["aligned"], device="cpu").train()
    block = block_term(model, gpt2["dirs"], gpt2["probes"], STRENGTH, pad_id=pad_id_of(gpt2["tok"]),
                       objective="oppose")
    block.aux_loss(model, None, 1).backward()  # the hand computation: grad T at theta_S, probe batch of step 1
    grad_t = {k: p.grad for k, p in model.named_parameters()}
    with_term = _one_step(gpt2, tmp_path, kind, ga=2, batch=4, strength=STRENGTH)
    without = _one_step(gpt2, tmp_path, kind, ga=2, batch=4, strength=0.0)
    doubled = _one_step(gpt2, tmp_path, kind, ga=1, batch=8, strength=STRENGTH)
    big = max(float(g.abs().max()) for g in grad_t.values())
    assert LR * big > 1e-2  # the term moves the weights far beyond float32 rounding
    for k, g in grad_t.items():
        assert torch.allclose(with_term[k] - without[k], -LR * g, atol=2e-5), k
        assert torch.allclose(with_term[k], doubled[k], atol=2e-5), k  # = one step on the doubled batch


def test_a_lora_sft_run_with_monitor_and_block_is_what_track_reads(gpt2, tmp_path):
    """One process: the monitor's rows at the save steps equal ``reversion track`` on the LoRA
    adapter checkpoints saved there (float32 training: SFTConfig's bf16 default is turned off)."""
    record = run(gpt2["aligned"], gpt2["directions"], gpt2["harmful"], gpt2["benign"], tmp_path, steps=4)
    assert record["world"] == 1 and record["checks"] == 3 and record["global_step"] == 4
    assert record["last_block_term"] is not None and record["last_block_term"] < 0  # opposing pushes p down (tanh: a gradient from theta_S on)
    with (tmp_path / "monitor.csv").open() as f:
        monitored = list(csv.DictReader(f))
    assert [int(r["step"]) for r in monitored] == [0, 2, 4]
    ckpts = sorted((tmp_path / "run").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-2", "checkpoint-4"] and all(map(is_adapter, ckpts))
    tracked = _track(gpt2, tmp_path / "track.csv", ckpts)
    assert [int(r["step"]) for r in tracked] == [2, 4]
    assert_agree(monitored, tracked)


def _track(gpt2, out, ckpts) -> list[dict]:
    assert main(["track", "--directions", str(gpt2["directions"]), "--aligned", str(gpt2["aligned"]), "--prompts",
                 str(gpt2["harmful"]), "--device", "cpu", "--out", str(out), *map(str, ckpts)]) == 0
    with out.open() as f:
        return list(csv.DictReader(f))


def assert_agree(monitored: list[dict], tracked: list[dict]) -> None:
    """Every tracked checkpoint's alignment, projection and drift norm equal the monitor's at its step."""
    by_step = {int(r["step"]): r for r in monitored}
    for r in tracked:
        m = by_step[int(r["step"])]
        for key in ("alignment", "projection", "drift_norm"):
            assert float(r[key]) == pytest.approx(float(m[key]), abs=1e-6), (r["step"], key)
    assert float(tracked[-1]["drift_norm"]) > 1e-3  # the adapter moved the model: not a trivial zero


def test_objective_argument_errors(gpt2):
    with pytest.raises(ValueError, match="block must have an aux_loss"):
        BlockTrainer(model=load_model(gpt2["aligned"], device="cpu"), block=1.0)
    with pytest.raises(ValueError, match="term must be a set-up Block, Oppose or Push"):
        ShardedTerm(object())
    dirs = gpt2["dirs"]
    bare = Block(dirs.v_rev, dirs.displacement_norm, 1.0, [1])
    with pytest.raises(ValueError, match="call its setup"):
        ShardedTerm(bare)
    # One process: exactly the Block's own term.
    model = load_model(gpt2["aligned"], device="cpu")
    term = block_term(model, dirs, gpt2["probes"], STRENGTH, pad_id=pad_id_of(gpt2["tok"]))
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(0.05)
    assert torch.equal(term.aux_loss(model, None, 2), term.term.aux_loss(model, None, 2))


def test_block_term_builds_the_named_objective(gpt2):
    from reversion.core.interventions import Block, Oppose, Push  # noqa: PLC0415 (test-local)
    model = load_model(gpt2["aligned"], device="cpu")
    pad = pad_id_of(gpt2["tok"])
    for name, cls in (("block", Block), ("oppose", Oppose), ("push", Push)):
        assert type(block_term(model, gpt2["dirs"], gpt2["probes"], STRENGTH, pad_id=pad, objective=name).term) is cls
    assert type(block_term(model, gpt2["dirs"], gpt2["probes"], STRENGTH, pad_id=pad).term) is Block  # one-sided
    with pytest.raises(ValueError, match="objective must be one of"):
        block_term(model, gpt2["dirs"], gpt2["probes"], STRENGTH, pad_id=pad, objective="tanh")
