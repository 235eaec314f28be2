"""Load and save Hugging Face causal LMs from local folders (never a hub)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from reversion.infra.kernels import compute_device

# Loading and saving tiny checkpoints hundreds of times: their progress bars are noise.
hf_logging.disable_progress_bar()


def default_device() -> torch.device:
    """``REVERSION_DEVICE`` (:func:`reversion.infra.kernels.compute_device`): CUDA when present
    unless it says ``cpu``; nothing needs a GPU."""
    return compute_device()


def save_model(model: torch.nn.Module, path: Path) -> None:
    """``save_pretrained`` as safetensors: loadable by ``AutoModelForCausalLM``."""
    model.save_pretrained(path, safe_serialization=True)


def load_model(path: str | Path, device: torch.device | str | None = None,
               dtype: torch.dtype | str | None = None) -> torch.nn.Module:
    """Load any local Hugging Face causal LM folder (never reaches a hub), in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face checkpoint at {path} (config.json missing)")
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device or default_device()).eval()


def merged_adapter(base: str | Path, adapter: str | Path, device: torch.device | str | None = None,
                   dtype: torch.dtype | str | None = None) -> torch.nn.Module:
    """The local ``base`` model with the PEFT (LoRA) adapter folder ``adapter`` merged in: a plain
    model, which every stage reads and trains like any checkpoint (in eval mode)."""
    from peft import PeftModel  # only where adapters are used: a second of import time

    model = PeftModel.from_pretrained(load_model(base, device, dtype), str(adapter), is_trainable=False)
    return model.merge_and_unload().eval()
