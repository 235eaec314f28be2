"""The model-touching steps of the own-checkpoints walkthrough (the book's "Your own checkpoints" chapter).

* :func:`finetune` -- fine-tune theta_S with a ``transformers.Trainer`` (all weights, or LoRA
  adapters only; optionally with the one-sided block term), the
  :class:`~reversion.subjects.checkpoints.trainer_hooks.ReversionMonitor` attached and a checkpoint
  saved at every check, so that ``reversion track`` can re-read them;
* :func:`evaluate` -- harmfulness and held-out loss of checkpoints (the checkpoint subject's
  evaluation);
* :func:`continuations` -- the greedy continuation of one prompt under each checkpoint;
* :func:`use_cpu_threads` -- one torch thread on a machine without CUDA (tiny models).

The page keeps its parameters, tables, figures and prose; what loads, trains or runs a model is
here, below it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from peft import LoraConfig, get_peft_model
from transformers import PrinterCallback, ProgressCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from reversion.core.directions import Directions
from reversion.core.models import load_model
from reversion.infra import seeding
from reversion.infra.checks import check_float, check_int
from reversion.infra.kernels import compute_device
from reversion.infra.runtime import set_cpu_threads
from reversion.subjects.checkpoints.files import torch_dtype
from reversion.subjects.checkpoints.trainer_hooks import BlockTrainer, ReversionMonitor, block_term
from reversion.subjects.checkpoints.refusal_judge import generate_continuations
from reversion.subjects.checkpoints.subject import TEXT_TASK, CheckpointSubject
from reversion.subjects.checkpoints.textdata import (
    PairCollator,
    encode_pairs,
    encode_prompts,
    load_tokenizer,
    pad_id_of,
    read_pairs,
    read_prompts,
    split_pairs,
)

__all__ = ["MonitoredRun", "continuations", "evaluate", "finetune", "lora_config", "quiet_trainer",
           "use_cpu_threads"]

# Saving tiny checkpoints dozens of times: their progress bars are noise.
hf_logging.disable_progress_bar()


def use_cpu_threads() -> None:
    """One torch thread (``REVERSION_THREADS``) when there is no CUDA: the demo's models are tiny."""
    if compute_device().type != "cuda":
        set_cpu_threads()


@dataclass(frozen=True)
class MonitoredRun:
    """One monitored fine-tuning run."""

    name: str
    """The run's name (``finetuned``, ``finetuned+block``, ``lora``)."""
    monitor: ReversionMonitor
    """The monitor that watched it (its ``history`` and ``summary()``)."""
    trainer: BlockTrainer
    """The trainer (its ``state.log_history`` holds the monitor's values next to the loss)."""
    output_dir: Path
    """Where its checkpoints are (``checkpoint-N/``)."""
    log_path: Path
    """The monitor's CSV log."""

    def checkpoints(self) -> list[Path]:
        """The run's saved checkpoints, by step."""
        found = [p for p in self.output_dir.glob("checkpoint-*") if p.is_dir()]
        return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))

    def trainable(self) -> dict[str, int]:
        """The trained model's trainable and total parameter counts."""
        ps = list(self.trainer.model.parameters())
        return {"trainable_params": int(sum(p.numel() for p in ps if p.requires_grad)),
                "params": int(sum(p.numel() for p in ps))}


def quiet_trainer(trainer) -> None:
    """Drop the Trainer's printing callbacks (progress bars; log dicts with timings)."""
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def lora_config(model, rank: int) -> LoraConfig:
    """Rank-``rank`` LoRA adapters, alpha ``2 * rank``, on every linear layer but the LM head
    (peft's ``"all-linear"``; GPT-2's ``Conv1D`` layers store their weights transposed)."""
    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                      fan_in_fan_out=model.config.model_type == "gpt2", task_type="CAUSAL_LM")


def finetune(name: str, *, aligned: Path, tokenizer: Path, directions: Path, prompts: Path, finetune_data: Path,
             output_dir: Path, steps: int, batch_size: int, learning_rate: float, every: int, patience: int,
             seed: int, dtype: str = "auto", block_strength: float = 0.0, lora_rank: int = 0) -> MonitoredRun:
    """Fine-tune theta_S (``aligned``, read in ``dtype``) on the first 75% of the ``finetune_data``
    pairs with a Trainer and the ReversionMonitor attached.

    ``steps`` optimizer steps of ``batch_size`` at a constant ``learning_rate`` (AdamW, no
    warmup or decay), seeded by ``seed``; the monitor checks the probe prompts (``prompts``)
    against ``directions`` every ``every`` steps, flags after ``patience`` checks in a row above
    its threshold and logs to ``output_dir/reversion_monitor.csv``; a checkpoint (weights only)
    is saved at every check. ``block_strength > 0`` adds the one-sided block term
    (:func:`~reversion.subjects.checkpoints.trainer_hooks.block_term`, set up on theta_S);
    ``lora_rank > 0`` trains LoRA adapters only (:func:`lora_config`), each checkpoint then an
    adapter folder.
    """
    for k, v in (("steps", steps), ("batch_size", batch_size), ("every", every), ("patience", patience)):
        check_int(k, v, 1)
    check_int("lora_rank", lora_rank, 0)
    check_float("learning_rate", learning_rate, 0.0, lo_open=True)
    check_float("block_strength", block_strength, 0.0)
    hf_logging.set_verbosity_error()
    seeding.seed_everything(seed)
    tok = load_tokenizer(tokenizer)
    model = load_model(aligned, dtype=torch_dtype(dtype))
    dirs = Directions.load(directions)
    probes = encode_prompts(tok, read_prompts(prompts))
    train, _ = split_pairs(read_pairs(finetune_data))
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        logging_steps=every, save_strategy="steps", save_steps=every,
        save_only_model=True, report_to=[], use_cpu=compute_device().type != "cuda", seed=seed,
        data_seed=seed, disable_tqdm=True, dataloader_num_workers=0)
    block = block_term(model, dirs, probes, block_strength) if block_strength > 0 else None
    if lora_rank > 0:
        with warnings.catch_warnings():  # transformers' deprecation of a method peft calls: library noise
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, lora_config(model, lora_rank))
    trainer = BlockTrainer(model=model, args=args, train_dataset=encode_pairs(tok, train),
                           data_collator=PairCollator(pad_id_of(tok)), block=block)
    quiet_trainer(trainer)
    log_path = Path(output_dir) / "reversion_monitor.csv"
    monitor = ReversionMonitor(dirs, probes, every=every, patience=patience, log_path=log_path,
                               pad_id=pad_id_of(tok)).attach(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the flag is reported from the monitor's summary
        trainer.train()
    return MonitoredRun(name, monitor, trainer, Path(output_dir), log_path)


def evaluate(subject: CheckpointSubject, models: Mapping[str, Path], dtype: str = "auto") -> dict[str, dict]:
    """Per model: ``harmfulness`` on the subject's judged prompts (refusal-phrase judge, greedy) and
    ``heldout_loss``, the loss per response token on its held-out fine-tuning pairs."""
    out = {}
    for name, path in models.items():
        e = subject.evaluate(load_model(path, dtype=torch_dtype(dtype)))
        out[name] = {"harmfulness": e["harmfulness"], "heldout_loss": e["task_loss"][TEXT_TASK]}
    return out


def continuations(tokenizer: Path, models: Mapping[str, Path], text: str, max_new_tokens: int,
                  dtype: str = "auto") -> dict[str, str]:
    """The greedy continuation of the prompt ``text`` (through the chat template) under each model."""
    tok = load_tokenizer(tokenizer)
    ids = encode_prompts(tok, [text])
    return {name: generate_continuations(load_model(p, dtype=torch_dtype(dtype)), tok, ids, max_new_tokens)[0]
            for name, p in models.items()}
