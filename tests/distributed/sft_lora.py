"""A LoRA fine-tuning run with trl's SFTTrainer, the ReversionMonitor and the block objective.

Run in the test process (one process) by ``tests/test_trainers.py``, and by
``torchrun --nproc_per_node 2`` (CPU, gloo: DDP) by ``tests/test_distributed.py``::

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/sft_lora.py \
        --aligned A --directions V --prompts P --pairs B --out OUT

Every rank writes ``OUT/rank-<r>.json`` (world size, checks recorded, block term, probe rows
it forwarded); rank 0 alone writes the monitor's log ``OUT/monitor.csv``; checkpoints land
in ``OUT/run/checkpoint-N`` (LoRA adapters). The caller sets ``HF_HUB_OFFLINE=1`` and
``HF_HUB_DISABLE_TELEMETRY=1`` (trl pings its telemetry when a trainer is built otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from reversion.core.directions import Directions
from reversion.core.models import load_model
from reversion.infra.runtime import set_cpu_threads
from reversion.monitor import ObjectiveMixin, ReversionMonitor, block_term
from reversion.subjects.checkpoints.textdata import (
    encode_prompts, load_tokenizer, pad_id_of, read_pairs, read_prompts,
)


class BlockSFT(ObjectiveMixin, SFTTrainer):
    """SFTTrainer with the block objective."""


def run(aligned: Path, directions: Path, prompts: Path, pairs: Path, out: Path, *, steps: int = 4,
        every: int = 2, strength: float = 2.0, batch: int = 4, ga: int = 2) -> dict:
    """Train, monitor and save; returns this rank's record (also written to ``out/rank-<r>.json``)."""
    tok = load_tokenizer(aligned)
    probes = encode_prompts(tok, read_prompts(prompts))
    dirs = Directions.load(directions)
    model = load_model(aligned, device="cpu")
    # theta_S: the LoRA adapter starts at B = 0, so the base's probe means are the run's reference.
    block = block_term(model, dirs, probes, strength, n_probe_batch=8, pad_id=pad_id_of(tok), objective="oppose")
    data = Dataset.from_list([{"prompt": p, "completion": " " + r} for p, r in read_pairs(pairs)])
    # float32 (SFTConfig defaults to bf16, under which the monitor measures in bf16 too, while
    # `reversion track` reads the checkpoints in float32: equal only to bf16 rounding).
    args = SFTConfig(output_dir=str(out / "run"), bf16=False, max_steps=steps, per_device_train_batch_size=batch,
                     gradient_accumulation_steps=ga, learning_rate=2e-2, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, logging_steps=1, save_strategy="steps",
                     save_steps=every, report_to=[], use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
                     ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    trainer = BlockSFT(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora,
                       block=block)
    monitor = ReversionMonitor(dirs, probes, every=every, threshold=0.99, log_path=out / "monitor.csv",
                               pad_id=pad_id_of(tok)).attach(trainer)
    rows = []
    root = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model

    def count(module, args, kwargs):  # the block term's probe forward: in training, hidden states asked for
        if module.training and kwargs.get("output_hidden_states"):
            rows.append(int(kwargs["input_ids"].shape[0]))

    hook = root.register_forward_pre_hook(count, with_kwargs=True)
    trainer.train()
    hook.remove()
    record = {"rank": int(trainer.args.process_index), "world": int(trainer.accelerator.num_processes),
              "checks": len(monitor.history), "last_block_term": trainer.last_block_term,
              "probe_rows": rows, "global_step": trainer.state.global_step}
    (out / f"rank-{record['rank']}.json").write_text(json.dumps(record))
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("aligned", "directions", "prompts", "pairs", "out"):
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--steps", type=int, default=4)
    a = p.parse_args(argv)
    set_cpu_threads()
    torch.manual_seed(0)
    run(a.aligned, a.directions, a.prompts, a.pairs, a.out, steps=a.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
