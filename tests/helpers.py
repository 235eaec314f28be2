"""Helpers shared by the tests: tiny text models built locally (fixtures: ``conftest.py``).

Everything is built locally in temporary folders -- never downloaded: a byte-level BPE
tokenizer trained with ``tokenizers`` on the project's example files (wrapped in
``PreTrainedTokenizerFast`` and saved with ``save_pretrained``), and tiny random GPT-2
and Llama models built from their configs. A "witness" is the aligned model with its
blocks' weights perturbed (so v_rev exists at every layer >= 1), or, for the planted
monitor case, the aligned model trained a few steps on a known data set.

The session fixture ``tiny`` (in ``conftest.py``) builds them once; test modules import the
helpers they call (``from helpers import EXAMPLES, make_model``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from reversion.cli import main
from reversion.core.hooks import get_blocks
from reversion.infra.runtime import set_cpu_threads
from reversion.subjects.checkpoints import demo
from reversion.subjects.checkpoints.textdata import read_pairs, read_prompts

EXAMPLES = demo.example_files()
# Tiny models gain nothing from a second thread (see reversion.infra.runtime).
set_cpu_threads()

HIDDEN = 32
LAYERS = 2


def corpus() -> list[str]:
    pairs = read_pairs(EXAMPLES["benign"])
    return (read_prompts(EXAMPLES["harmful"]) + read_prompts(EXAMPLES["harmless"])
            + [t for p in pairs for t in p] + [demo.COMPLY, demo.REFUSE])


def make_tokenizer(folder: Path | None, chat_template: str | None = demo.CHAT_TEMPLATE, vocab_size: int = 400):
    return demo.build_tokenizer(corpus(), folder, vocab_size=vocab_size, chat_template=chat_template)


def make_model(family: str, tok, hidden: int = HIDDEN, layers: int = LAYERS, seed: int = 0):
    cfg = demo.tiny_config(family, len(tok), hidden_size=hidden, n_layers=layers, n_heads=4,
                         pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    return demo.new_model(cfg, seed)


def perturbed(model, scale: float = 0.2, seed: int = 1):
    """A copy of ``model`` with Gaussian noise on every block weight (relative ``scale``)."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in get_blocks(out).parameters():
            p.add_(scale * p.std().clamp_min(1e-3) * torch.randn(p.shape, generator=g))
    return out


def save(model, tok, folder: Path) -> Path:
    model.save_pretrained(folder)
    if tok is not None:
        tok.save_pretrained(folder)
    return folder


@dataclass
class Pair:
    witness: Path
    aligned: Path


@dataclass
class Tiny:
    root: Path
    tokenizer: Path
    """Tokenizer with the chat template."""
    plain_tokenizer: Path
    """The same tokenizer without a chat template."""
    gpt2: Pair
    llama: Pair
    llama_wide: Path
    """A Llama of another width (hidden 48)."""
    harmful: Path
    harmless: Path
    benign: Path
    empty: Path

    @property
    def n_prompts(self) -> int:
        return len(read_prompts(self.harmful))


def build_tiny(root: Path) -> Tiny:
    root.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(root / "tokenizer")
    make_tokenizer(root / "plain_tokenizer", chat_template=None)
    pairs = {}
    for family in ("gpt2", "llama"):
        aligned = make_model(family, tok, seed=0)
        pairs[family] = Pair(save(perturbed(aligned), tok, root / family / "witness"),
                             save(aligned, tok, root / family / "aligned"))
    wide = save(make_model("llama", tok, hidden=48, seed=2), tok, root / "llama_wide")
    empty = root / "empty.jsonl"
    empty.write_text("")
    return Tiny(root, root / "tokenizer", root / "plain_tokenizer", pairs["gpt2"], pairs["llama"], wide,
                EXAMPLES["harmful"], EXAMPLES["harmless"], EXAMPLES["benign"], empty)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def planted_pair(root: Path, family: str = "llama", steps: int = 30, lr: float = 3e-3, seed: int = 0):
    """aligned = a random tiny model; witness = aligned trained ``steps`` steps on the benign pairs.

    Fine-tuning the aligned model on the same pairs retraces the path to the witness: a
    planted reversion that the monitor must flag. Returns ``(witness, aligned, tokenizer)``.
    """
    tok = make_tokenizer(root / "tokenizer")
    aligned = make_model(family, tok, seed=seed)
    save(aligned, tok, root / "aligned")
    witness = copy.deepcopy(aligned)
    demo.train_on_pairs(witness, tok, list(read_pairs(EXAMPLES["benign"])), steps, lr, seed=seed)
    save(witness, tok, root / "witness")
    return root / "witness", root / "aligned", tok


def in_cache(folder: Path):
    """A ``pytest.MonkeyPatch`` pointing the cache at ``folder`` (results beside it); ``undo()`` it.
    For module- or session-scoped fixtures, where the function-scoped ``isolated`` cannot serve."""
    import pytest

    mp = pytest.MonkeyPatch()
    mp.setenv("REVERSION_CACHE", str(folder))
    mp.setenv("REVERSION_RESULTS", str(folder.parent / "results"))
    return mp


__all__ = ["Pair", "Tiny", "build_tiny", "make_model", "make_tokenizer", "perturbed",
           "in_cache", "planted_pair", "save", "write_jsonl"]


def fails(capsys, argv, *needles):
    """``reversion.cli.main(argv)`` exits with status 2 and a stderr message containing every needle."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, f"{needle!r} not in stderr:\n{err}"
    return err
