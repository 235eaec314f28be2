"""The fine-tuning researchers run, for real checkpoints: ``transformers.Trainer`` with LoRA.

A checkpoint subject's runs (:func:`reversion.stages.finetune.finetune`) train through
:func:`trainer_train` rather than the organism's own loop (:func:`reversion.core.training.train`):

* **LoRA by default** (peft; ``method="full"`` for full fine-tuning): a 7B model in bf16 trains on
  one GPU, where full-parameter float32 AdamW needs ~16 bytes a parameter;
* **mixed precision** where the device has it (``precision="auto"``: bf16 autocast on a CUDA card
  that runs it, float32 elsewhere), **gradient checkpointing** and **accumulation** as settings;
* **interventions** through :class:`~reversion.core.objective.ObjectiveMixin`
  (the directional terms block, oppose and push) and through the data (rehearsal, the alignment
  mix) or the forward (projection), exactly as a user's own ``Trainer`` would carry them;
* the settings (:class:`reversion.core.train_settings.TrainSettings`) are ``checkpoints['training']``;
* **tracking and judging** in a ``TrainerCallback`` after every optimizer step: the drift probes'
  means at every layer (:class:`~reversion.core.tracking.ProbeTracker`, the measurement
  :class:`~reversion.subjects.checkpoints.trainer_hooks.ReversionMonitor` makes at one layer) and
  the subject's judge on the evaluation grid, both under the training's autocast.

The batches are the stage's own, in the same order (an optimizer step's batch is split into
``gradient_accumulation_steps`` micro-batches). With
:meth:`~reversion.core.train_settings.TrainSettings.matching_the_loop`
(full fine-tuning, constant learning rate, no clipping, no weight decay, float32) a run equals the
organism's loop on the same batches (``tests/test_trainer_loop.py``: within 1e-4 relative).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from importlib import metadata
from typing import Any, Callable, Iterator, Sequence

import torch

from reversion.core.activations import model_device
from reversion.core.models import default_device
from reversion.core.objective import ObjectiveMixin
from reversion.core.train_settings import TrainSettings, wrap_lora
from reversion.infra.checks import check_int

__all__ = ["model_for_training", "trainer_train", "training_device", "training_key"]


def model_for_training(subject) -> tuple[Any, torch.dtype | None]:
    """theta_S of a subject with ``training`` settings as its runs train it, and the autocast dtype
    on its device: float32 for full fine-tuning; under LoRA the subject's dtype with float32
    adapters (only they train). The fine-tuning stage and the calibration of directional terms
    (:mod:`reversion.stages.calibrate`) both start here, so a strength is calibrated on the
    gradients the run takes."""
    settings = subject.training
    model = subject.load("theta_S", dtype=torch.float32 if settings.method == "full" else None)
    if settings.method == "lora":
        model = wrap_lora(model, settings)
    return model, settings.autocast_dtype(model_device(model))


def training_device(subject) -> torch.device:
    """The device a subject's runs train on, known before any model is read: its ``device``, else
    the default (CUDA when present)."""
    return torch.device(subject.device) if getattr(subject, "device", None) else default_device()


def training_key(subject) -> dict | None:
    """The cache identity of how ``subject``'s runs train: its ``training`` settings and the autocast
    dtype they resolve to on its device (``precision: auto`` is bf16 on a GPU that runs it, float32
    on a CPU: a run cached on one is not the other's), with the peft and accelerate versions. None:
    the organism's own loop."""
    settings = getattr(subject, "training", None)
    if settings is None:
        return None
    device = training_device(subject)
    # peft draws the adapters and accelerate steps the Trainer: their versions decide a run as
    # torch's and transformers' do (those two are in every key)
    return {**settings.key(), "autocast": str(settings.autocast_dtype(device)),
            "peft_version": metadata.version("peft"), "accelerate_version": metadata.version("accelerate")}

# --------------------------------------------------------------------------- the Trainer


def _micro_batches(batches: Iterator[dict], k: int) -> Iterator[dict]:
    """Each step's batch as ``k`` consecutive micro-batches (rows split as evenly as possible)."""
    for batch in batches:
        n = batch["input_ids"].shape[0]
        if n < k:
            raise ValueError(f"checkpoints['training']['gradient_accumulation_steps'] = {k} is more than the "
                             f"{n} sequences of a step's batch (finetune.batch_size)")
        for rows in torch.arange(n).tensor_split(k):
            yield {name: t[rows] for name, t in batch.items()}


class _Batches:
    """The stage's micro-batches as the Trainer's dataloader (no length: the run is ``max_steps`` long)."""

    def __init__(self, it: Iterator[dict]):
        self.it = it

    def __iter__(self):
        return self.it


def _trainer_class():
    from transformers import Trainer, TrainerCallback

    class LossRecorder(Trainer):
        """Keeps each training micro-batch's task loss (before the term ObjectiveMixin adds)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            if model.training:  # (value, already normalised over the step?)
                loss = (out[0] if return_outputs else out).detach()
                self.micro_losses.append((float(loss), self.loss_is_normalised_over_the_step(num_items_in_batch)))
            return out

    class StageTrainer(ObjectiveMixin, LossRecorder):
        """The stage's batches as the dataloader; ObjectiveMixin's term on the recorded loss."""

        def __init__(self, *args, batches: Iterator[dict], micro_losses: list, **kwargs):
            super().__init__(*args, **kwargs)
            self._batches = batches
            self.micro_losses = micro_losses  # shared with the step callback (not the trainer: no cycle)

        def get_train_dataloader(self):
            return _Batches(self._batches)

    class StepCallback(TrainerCallback):
        """After each optimizer step: the step's task loss, then ``on_step(step, model)``."""

        def __init__(self, micro_losses: list, on_step, losses: list[float]):
            self.micro_losses, self.on_step, self.losses = micro_losses, on_step, losses

        def on_step_end(self, args, state, control, model=None, **kwargs):
            micro = list(self.micro_losses)
            self.micro_losses.clear()
            total = sum(v for v, _ in micro)
            loss = total if micro and micro[0][1] else total / max(len(micro), 1)
            if not math.isfinite(loss):
                raise FloatingPointError(f"finetune: non-finite loss at step {state.global_step}")
            self.losses.append(loss)
            if self.on_step is not None:
                self.on_step(state.global_step, model)
            return control

    return StageTrainer, StepCallback


def _checkpointing(args_class, on: bool) -> dict:
    """The gradient-checkpointing arguments under their name in this ``transformers``
    (``activation_checkpointing`` from 5.x; ``gradient_checkpointing`` before)."""
    names = {f.name for f in dataclasses.fields(args_class)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}


def trainer_train(model, batches: Iterator[dict], steps: int, lr: float, seed: int, settings: TrainSettings, *,
                  term=None, on_step: Callable[[int, Any], None] | None = None, callbacks: Sequence = (),
                  progress: bool = False) -> list[float]:
    """Train ``model`` (already wrapped with LoRA if ``settings.method == "lora"``) for ``steps``
    optimizer steps on ``batches`` (one collated batch per step) with ``transformers.Trainer``;
    returns the task loss of each step.

    ``term``: an object with ``aux_loss(model, batch, step)`` added to the loss through
    :class:`~reversion.core.objective.ObjectiveMixin` (a directional
    intervention); ``on_step(step, model)`` runs after each optimizer step (tracking, judging);
    ``callbacks``: further ``TrainerCallback``s (e.g. a
    :class:`~reversion.subjects.checkpoints.trainer_hooks.ReversionMonitor`).
    """
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    check_int("finetune.steps (T)", steps, 1)
    device = model_device(model)
    dtype = settings.autocast_dtype(device)
    StageTrainer, StepCallback = _trainer_class()
    losses: list[float] = []
    with tempfile.TemporaryDirectory(prefix="reversion-trainer-") as out:
        args = TrainingArguments(
            output_dir=out, max_steps=steps, learning_rate=lr, seed=seed,
            per_device_train_batch_size=1,  # unused: the stage's batches are the dataloader
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            lr_scheduler_type=settings.lr_scheduler, warmup_steps=settings.warmup_steps,
            max_grad_norm=settings.max_grad_norm, weight_decay=settings.weight_decay,
            optim="adamw_torch_fused" if device.type in ("cpu", "cuda") else "adamw_torch",
            bf16=dtype is torch.bfloat16, fp16=dtype is torch.float16,
            **_checkpointing(TrainingArguments, settings.gradient_checkpointing),
            use_cpu=device.type == "cpu", report_to="none", save_strategy="no", logging_strategy="no",
            disable_tqdm=not progress, remove_unused_columns=False, dataloader_pin_memory=False)
        # One process trains one placed model: without a launcher the Trainer would wrap the
        # model in DataParallel over every visible GPU (a loss per GPU, batches split).
        args._n_gpu = 1
        micro: list = []
        trainer = StageTrainer(model=model, args=args, block=term, micro_losses=micro,
                               batches=_micro_batches(batches, settings.gradient_accumulation_steps))
        # the stage reports its own progress; the Trainer's printer would put its metrics on stdout
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(StepCallback(micro, on_step, losses))
        for cb in callbacks:
            trainer.add_callback(cb)
        try:
            trainer.train()
        finally:
            trainer.accelerator.free_memory()  # optimizer state, before the next run loads a model
            del trainer
    return losses
