"""Load and save Hugging Face causal LMs from local folders (never a hub)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

# Loading and saving tiny checkpoints hundreds of times: their progress bars are noise.
hf_logging.disable_progress_bar()


def default_device() -> torch.device:
    """CUDA when present; nothing needs it."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
