"""The organism's GPT-2 (a plain ``transformers.GPT2LMHeadModel``, saved as a Hugging Face folder)."""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel

from reversion.subjects.organism.config import ModelConfig
from reversion.subjects.organism.language import BOS, EOS, PAD


def build_model(cfg: ModelConfig, vocab_size: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2; call :func:`reversion.infra.seeding.seed_everything` first."""
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head,
        # Dropout off: a variant of strength zero must reproduce the baseline exactly.
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        # Exact GELU, the function GPT-2's tanh form approximates, at about half the cost of
        # tanh-GELU's forward and backward on a CPU (benchmarks/step_variants.txt, a 10-run
        # grouped step: 145 ms against 171 ms; ReLU 141 ms, without GELU's gradient below zero).
        activation_function=cfg.activation,
    )
    return GPT2LMHeadModel(config)
