"""How a real checkpoint fine-tunes: LoRA or full, precision, checkpointing, accumulation, schedule.

:class:`TrainSettings` is ``checkpoints['training']`` (the chapters on your checkpoints) and the
cache key of those runs; :func:`wrap_lora` puts peft's LoRA adapters on a model;
:data:`CHECKPOINT_FINETUNE` holds the fine-tuning defaults of runs on checkpoints. The Trainer
that uses them is :func:`reversion.stages.trainer_loop.trainer_train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from reversion.core.models import bf16_supported
from reversion.infra.checks import check_choice, check_float, check_int

__all__ = ["CHECKPOINT_FINETUNE", "TrainSettings", "autocast", "lora_targets_missing", "wrap_lora"]

CHECKPOINT_FINETUNE: dict[str, Any] = {"lr": 1e-4, "steps": 100, "batch_size": 8,
                                       "eval_steps": (0, 1, 2, 5, 10, 20, 50, 100)}
"""Fine-tuning defaults of runs on your checkpoints, in place of the organism's (``world_overrides
['finetune']`` still wins): a LoRA learning rate (LoRA's usual 1e-4; full fine-tuning of a large
model wants about ten times less), 100 steps of 8 sequences, judged on a sparse grid."""

METHODS = ("lora", "full")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


@dataclass(frozen=True)
class TrainSettings:
    """How a checkpoint subject's runs train (``checkpoints['training']``); every field is in the
    runs' cache key and recorded beside a chapter's metrics."""

    method: str = "lora"
    """``"lora"`` (adapters on ``lora_target_modules``; the base weights frozen) or ``"full"``."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32.0
    """LoRA scale numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (0: a run is a deterministic function of its seed)."""
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    """Module names (or suffixes) that get adapters; ``"all-linear"``: every linear layer but the
    output head (peft's shorthand)."""
    precision: str = "auto"
    """``"auto"`` (bf16 autocast on a CUDA device that runs bf16, else float32), ``"bf16"``,
    ``"fp16"`` (CUDA only) or ``"fp32"``."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more time)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; each step's batch (``finetune.batch_size`` sequences) is
    split into this many, so the data of a step do not change with it."""
    lr_scheduler: str = "constant"
    """Learning-rate schedule (``transformers`` names): constant, as the organism's loop."""
    warmup_steps: int = 0
    """Warm-up steps of the schedule."""
    max_grad_norm: float = 0.0
    """Gradient-norm clipping (0: none, as the organism's loop)."""
    weight_decay: float = 0.0
    """AdamW weight decay (0, as the organism's loop)."""

    def __post_init__(self) -> None:
        w = "checkpoints['training']"
        check_choice(f"{w}['method']", self.method, METHODS)
        check_int(f"{w}['lora_r']", self.lora_r, 1)
        check_float(f"{w}['lora_alpha']", self.lora_alpha, 0.0, lo_open=True)
        check_float(f"{w}['lora_dropout']", self.lora_dropout, 0.0, 1.0, hi_open=True)
        t = self.lora_target_modules
        if isinstance(t, str) and t != "all-linear":  # one module name, not a string of letters
            t = (t,)
        if isinstance(t, list | tuple):
            t = tuple(t)
        object.__setattr__(self, "lora_target_modules", t)
        if isinstance(self.lora_alpha, int) and not isinstance(self.lora_alpha, bool):
            object.__setattr__(self, "lora_alpha", float(self.lora_alpha))  # 32 and 32.0: one key
        if not (isinstance(t, str) and t) and not (isinstance(t, tuple) and t and all(
                isinstance(x, str) and x for x in t)):
            raise ValueError(f"{w}['lora_target_modules'] must be 'all-linear' or a list of module names, got {t!r}")
        check_choice(f"{w}['precision']", self.precision, PRECISIONS)
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"{w}['gradient_checkpointing'] must be true or false, got {self.gradient_checkpointing!r}")
        check_int(f"{w}['gradient_accumulation_steps']", self.gradient_accumulation_steps, 1)
        check_choice(f"{w}['lr_scheduler']", self.lr_scheduler, SCHEDULERS)
        check_int(f"{w}['warmup_steps']", self.warmup_steps, 0)
        if self.warmup_steps and self.lr_scheduler == "constant":
            raise ValueError(f"{w}['warmup_steps'] = {self.warmup_steps} does nothing with lr_scheduler 'constant'; "
                             "use 'constant_with_warmup'")
        check_float(f"{w}['max_grad_norm']", self.max_grad_norm, 0.0)
        check_float(f"{w}['weight_decay']", self.weight_decay, 0.0)

    @classmethod
    def from_mapping(cls, value: Any) -> "TrainSettings":
        """From ``checkpoints['training']`` (None or {}: the defaults); an unknown key is an error."""
        if value is None:
            return cls()
        if isinstance(value, TrainSettings):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"checkpoints['training'] must be a mapping of {', '.join(cls.fields())}, got {value!r}")
        unknown = sorted(set(value) - set(cls.fields()))
        if unknown:
            raise ValueError(f"checkpoints['training']: unknown key(s) {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(cls.fields())})")
        return cls(**dict(value))

    @staticmethod
    def fields() -> list[str]:
        return [f.name for f in dataclasses.fields(TrainSettings)]

    @classmethod
    def matching_the_loop(cls) -> "TrainSettings":
        """The Trainer set to be the organism's loop: full fine-tuning, float32, constant learning
        rate, no clipping, no weight decay, no accumulation."""
        return cls(method="full", precision="fp32")

    def key(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        how = (f"LoRA (rank {self.lora_r}, alpha {self.lora_alpha:g}, on {self._targets()})"
               if self.method == "lora" else "full fine-tuning")
        extra = [f"{self.lr_scheduler} learning rate"]
        if self.warmup_steps:
            extra.append(f"{self.warmup_steps} warm-up steps")
        extra.append(f"clipping at {self.max_grad_norm:g}" if self.max_grad_norm else "no clipping")
        extra.append(f"weight decay {self.weight_decay:g}")
        if self.gradient_accumulation_steps > 1:
            extra.append(f"{self.gradient_accumulation_steps} micro-batches a step")
        if self.gradient_checkpointing:
            extra.append("gradient checkpointing")
        return f"transformers.Trainer, {how}, precision {self.precision}; " + ", ".join(extra)

    def _targets(self) -> str:
        t = self.lora_target_modules
        return "every linear layer" if t == "all-linear" else ", ".join(t)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on ``device`` (None: float32). ``"bf16"``/``"fp16"`` on a device that
        cannot run them is a ValueError naming the setting."""
        w = "checkpoints['training']['precision']"
        if self.precision == "fp32":
            return None
        if self.precision == "auto":
            return torch.bfloat16 if device.type == "cuda" and bf16_supported(device.index or 0) else None
        if self.precision == "fp16":
            if device.type != "cuda":
                raise ValueError(f"{w} = 'fp16' needs a CUDA device (the model is on {device}); use 'bf16' or 'fp32'")
            return torch.float16
        if device.type == "cuda" and not bf16_supported(device.index or 0):
            raise ValueError(f"{w} = 'bf16': this GPU does not run bfloat16; use 'fp16' or 'fp32'")
        return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` (a no-op for None)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- LoRA


def _module_names(model) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def lora_targets_missing(model, targets: str | Sequence[str]) -> list[str]:
    """The names of ``targets`` that match no module of ``model`` (peft matches a name when it is
    the module's name or its last dotted parts); ``"all-linear"`` always matches."""
    if targets == "all-linear":
        return []
    names = _module_names(model)
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]


def wrap_lora(model, settings: TrainSettings):
    """``model`` with LoRA adapters (peft), the rest frozen. A target no module of the architecture
    has is a ValueError naming it and the modules that exist."""
    from peft import LoraConfig, get_peft_model  # only where LoRA is used: a second of import time

    missing = lora_targets_missing(model, settings.lora_target_modules)
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"})
        raise ValueError(f"checkpoints['training']['lora_target_modules']: {', '.join(map(repr, missing))} match no "
                         f"module of this {type(model).__name__} (its linear layers: {', '.join(leaves)})")
    targets = settings.lora_target_modules
    cfg = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                     target_modules=targets if isinstance(targets, str) else list(targets),
                     task_type="CAUSAL_LM", bias="none")
    with warnings.catch_warnings():  # peft asks transformers 5 a deprecated name; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, cfg)
