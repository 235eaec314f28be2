"""The ReversionMonitor on a model fine-tuned under FSDP2 (``fully_shard``, CPU, gloo).

Run by ``tests/test_distributed.py`` twice: in the test process (one process, the reference) and
with two processes::

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/fsdp_monitor.py \
        --aligned A --directions V --prompts P --pairs B --out OUT

Full fine-tuning of the tiny GPT-2 with ``transformers.Trainer`` (AdamW, constant learning rate),
the monitor attached (a check every 2 steps, probe batches of 8). Every step is one pass over
all the pairs (global batch = the data set; each of ``W`` ranks takes ``1/W`` of it), so one
process and ``W`` take the same steps up to float rounding. Under ``W > 1`` the model is loaded
sharded with FSDP2 by transformers (``DistributedConfig(fsdp_size=W)``: ``fully_shard`` on each
block, then on the root), which the Trainer trains without a DDP wrapper; before training, the
old probe path (the backbone below the sharded root) is tried and its error kept, so the test
knows that the case it runs is the one that failed. After training, every rank measures once
more, then again with the all-reduce replaced by the rank's own share (a planted error: the
reading must move), and an FSDP1 wrap of the model must be refused. Every rank writes
``OUT/rank-<r>.json`` (whether its model was sharded, the checks it measured, the monitor's
records in its ``log_history``, the rows of each probe forward it ran, the planted readings);
the monitor's log is ``OUT/monitor.csv``. Both runs also read the trained model's mean probe
activation under the other position rule (``"mean"``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from reversion.core.directions import Directions
from reversion.infra.runtime import set_cpu_threads
from reversion.monitor import ReversionMonitor
from reversion.subjects.checkpoints import trainer_hooks as hooks
from reversion.subjects.checkpoints.textdata import (
    PairCollator,
    encode_pairs,
    encode_prompts,
    load_tokenizer,
    pad_id_of,
    read_pairs,
    read_prompts,
)
from reversion.subjects.checkpoints.trainer_hooks import reference_mean

PREFIX = "reversion/"


def load(aligned: Path, world: int):
    """The aligned model: plain in one process, sharded with FSDP2 over ``world`` ranks."""
    if world == 1:
        return AutoModelForCausalLM.from_pretrained(aligned, dtype=torch.float32)
    from transformers.distributed import DistributedConfig  # only under torchrun
    # GPT-2's blocks are transformer.h.*: the default plan names Llama-style modules only.
    config = DistributedConfig(fsdp_size=world, fsdp_plan={"transformer.h.*": "free_full_weight"})
    return AutoModelForCausalLM.from_pretrained(aligned, dtype=torch.float32, distributed_config=config)


def run(aligned: Path, directions: Path, prompts: Path, pairs: Path, out: Path, *, steps: int = 4,
        every: int = 2) -> dict:
    """Train, monitor, and write this rank's record (returned too)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tok = load_tokenizer(aligned)
    pad = pad_id_of(tok)
    probes = encode_prompts(tok, read_prompts(prompts))
    dirs = Directions.load(directions)
    data = encode_pairs(tok, read_pairs(pairs))
    model = load(aligned, world)
    sharded = [name for name, m in model.named_modules() if isinstance(m, FSDPModule)]
    old_path = ""
    if world > 1:  # the probe forward the monitor used to run: the backbone below the sharded root
        try:
            reference_mean(model, probes, 1, pad_id=pad)
        except RuntimeError as e:
            old_path = str(e)
    rows: list[int] = []

    def count(module, args, kwargs):  # the monitor's probe forwards: in eval mode, hidden states asked for
        if not module.training and kwargs.get("output_hidden_states"):
            rows.append(int(kwargs["input_ids"].shape[0]))

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    # Every step one pass over all the pairs, split over the ranks.
    args = TrainingArguments(output_dir=str(out / "run"), max_steps=steps,
                             per_device_train_batch_size=len(data) // world, learning_rate=1e-2,
                             lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, logging_steps=1,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
                             ddp_backend="gloo" if world > 1 else None)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=PairCollator(pad))
    monitor = ReversionMonitor(dirs, probes, every=every, threshold=0.99, batch_size=8, log_path=out / "monitor.csv",
                               pad_id=pad).attach(trainer)
    trainer.train()
    hook.remove()
    rank = int(trainer.args.process_index)
    # The other position rule ("mean" over the prompt's tokens), read once from the trained model.
    mean_rule = ReversionMonitor(dirs, probes, position="mean", batch_size=8, pad_id=pad).probe_mean(model)
    planted = {}
    if world > 1:  # every rank: the forwards are collectives
        planted["again"] = monitor.measure(model)
        funcol = hooks.funcol
        hooks.funcol = type("Cut", (), {"all_reduce": staticmethod(lambda x, op, group: x)})  # own share only
        try:
            planted["cut"] = monitor.measure(model)
        finally:
            hooks.funcol = funcol
        fsdp1 = FullyShardedDataParallel(AutoModelForCausalLM.from_pretrained(aligned, dtype=torch.float32),
                                         device_id=torch.device("cpu"))
        try:
            ReversionMonitor(dirs, probes, pad_id=pad).on_train_begin(args, trainer.state, trainer.control,
                                                                      model=fsdp1)
        except ValueError as e:
            planted["fsdp1_refused"] = str(e)
    record = {"rank": rank, "world": int(trainer.accelerator.num_processes), "sharded": sharded,
              "old_path_error": old_path, "global_step": trainer.state.global_step,
              "checks": [r["step"] for r in monitor.history],
              "alignment": [r["alignment"] for r in monitor.history],
              "logged": [h["step"] for h in trainer.state.log_history if f"{PREFIX}alignment" in h],
              "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h],
              "probe_rows": rows, "mean_rule": mean_rule.tolist(), "planted": planted}
    (out / f"rank-{rank}.json").write_text(json.dumps(record))
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
