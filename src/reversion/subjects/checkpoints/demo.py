"""Tiny random demo checkpoints: a small Llama (or GPT-2) and a byte-level BPE tokenizer with a
chat template, trained from scratch on the project's example files in two stages that mimic a
history (pretrained -> helpful-only witness -> safety-aligned).

They exist to exercise the checkpoint pipeline end to end in seconds (the book's
"Your own checkpoints" chapter, the tests);
their numbers mean nothing about real models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from reversion.core.training import train
from reversion.infra import paths, seeding
from reversion.subjects.checkpoints.textdata import (
    Example,
    PairCollator,
    encode_pairs,
    pad_id_of,
    read_pairs,
    read_prompts,
)

# Saving tiny checkpoints dozens of times: their progress bars are noise.
hf_logging.disable_progress_bar()

#: Placeholder answers of the demo history (deliberately content-free).
COMPLY = "Sure, here is an overview of how that works."
REFUSE = "I can't help with that."
#: The demo tokenizer's chat template: ``<|user|>text<|end|><|assistant|>``.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL_TOKENS = ("<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>")


def build_tokenizer(texts: list[str], out: Path | None = None, vocab_size: int = 512,
                    chat_template: str | None = CHAT_TEMPLATE):
    """A byte-level BPE tokenizer trained on ``texts`` (special tokens :data:`SPECIAL_TOKENS`).

    Pad ``<|pad|>``, EOS ``<|end|>``; the chat template when given. Saved with
    ``save_pretrained`` to ``out`` when given. Byte-level: decoding is exact.
    """

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>")
    if chat_template:
        fast.chat_template = chat_template
    if out is not None:
        fast.save_pretrained(out)
    return fast


def tiny_config(family: str, vocab_size: int, hidden_size: int = 64, n_layers: int = 4, n_heads: int = 4,
                pad_id: int = 0, eos_id: int = 1, max_positions: int = 128):
    """Config of a tiny random model: ``"llama"`` (LlamaConfig) or ``"gpt2"`` (GPT2Config), no dropout."""
    if family == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                           num_hidden_layers=n_layers, num_attention_heads=n_heads,
                           num_key_value_heads=max(1, n_heads // 2), max_position_embeddings=max_positions,
                           pad_token_id=pad_id, bos_token_id=eos_id, eos_token_id=eos_id,
                           tie_word_embeddings=False)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=n_layers, n_head=n_heads,
                          n_positions=max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          pad_token_id=pad_id, bos_token_id=eos_id, eos_token_id=eos_id)
    raise ValueError(f"unknown family {family!r}; expected 'llama' or 'gpt2'")


def new_model(config, seed: int):
    """A freshly initialised causal LM for ``config`` (seeded), in float32, eval mode."""
    seeding.seed_everything(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def train_on_pairs(model, tokenizer, pairs: list, steps: int, lr: float, batch_size: int = 8,
                   seed: int = 0) -> list[float]:
    """A few AdamW steps of supervised training (loss on responses) on ``pairs``, seeded order."""
    examples = encode_pairs(tokenizer, pairs)
    collate = PairCollator(pad_id_of(tokenizer))
    g = seeding.rng(seed, "own-checkpoints-train")
    device = next(model.parameters()).device

    def batches():
        while True:
            for i in g.permutation(len(examples)).reshape(-1)[: (len(examples) // batch_size) * batch_size] \
                    .reshape(-1, batch_size):
                yield {k: v.to(device) for k, v in collate([examples[j] for j in i]).items()}

    out = train(model, iter(batches()), steps, lr, desc="demo", progress=False)
    model.eval()
    return out


def example_files() -> dict[str, Path]:
    """The project's example prompt files (``examples/``)."""
    root = paths.project_root() / "examples"
    return {"harmful": root / "harmful_prompts.jsonl", "harmless": root / "harmless_prompts.jsonl",
            "benign": root / "benign_finetune.jsonl"}


def build_demo(folder: Path, family: str = "llama", seed: int = 0, steps: int = 60, lr: float = 3e-3,
               harmful: list[str] | None = None, benign: list[Example] | None = None,
               shape: dict | None = None, device: str | None = None) -> dict[str, Path]:
    """Tiny demo history in ``folder``: ``pretrained`` (random), ``witness``, ``aligned``, ``tokenizer``.
    ``shape``: config fields replacing the tiny ones (e.g. a TinyLlama-shape model for a GPU check);
    ``device``: where it trains (default the CPU).

    witness = pretrained trained ``steps`` steps on the benign pairs plus the harmful
    prompts answered with the placeholder :data:`COMPLY`; aligned = witness trained
    ``steps`` steps on the harmful prompts answered with :data:`REFUSE`, mixed with the
    benign pairs. Every checkpoint folder holds the tokenizer too. Returns the paths.
    """
    folder = Path(folder)
    files = example_files()
    harmful = harmful if harmful is not None else read_prompts(files["harmful"])
    benign = benign if benign is not None else read_pairs(files["benign"])
    texts = list(harmful) + [t for p in benign for t in p] + [COMPLY, REFUSE] + read_prompts(files["harmless"])
    tok = build_tokenizer(texts, folder / "tokenizer")
    config = tiny_config(family, len(tok), pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    for k, v in (shape or {}).items():
        setattr(config, k, v)
    model = new_model(config, seed).to(device or "cpu")
    out = {"tokenizer": folder / "tokenizer"}
    stages = [("pretrained", None), ("witness", COMPLY), ("aligned", REFUSE)]
    for i, (name, answer) in enumerate(stages):
        if answer is not None:
            train_on_pairs(model, tok, list(benign) + [Example(h, answer) for h in harmful], steps, lr,
                           seed=seed + i)
        out[name] = folder / name
        model.save_pretrained(out[name])
        tok.save_pretrained(out[name])
    return out
