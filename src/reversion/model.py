"""Build, save and load the organism's GPT-2 (plain Hugging Face folders)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from .config import ModelConfig
from .language import BOS, EOS, PAD

# Loading and saving tiny checkpoints hundreds of times: their progress bars are noise.
hf_logging.disable_progress_bar()


def default_device() -> torch.device:
    """CUDA when present; nothing needs it."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(cfg: ModelConfig, vocab_size: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2; call :func:`reversion.seeding.seed_everything` first."""
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head,
        # Dropout off: a variant of strength zero must reproduce the baseline exactly.
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )
    return GPT2LMHeadModel(config)


def save_model(model: torch.nn.Module, path: Path) -> None:
    """``save_pretrained`` as safetensors: loadable by ``AutoModelForCausalLM``."""
    model.save_pretrained(path, safe_serialization=True)


def load_model(path: str | Path, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Load any local Hugging Face causal LM folder (never reaches a hub)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face checkpoint at {path} (config.json missing)")
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device or default_device()).eval()
