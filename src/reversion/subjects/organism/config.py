"""Frozen configurations of the model organism and its training history.

Every field has a docstring. Bad values raise ``ValueError`` naming the field
in ``__post_init__``, i.e. before any work starts and before anything is cached.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from reversion.core.training import FinetuneConfig  # noqa: F401 -- a world's fine-tuning, with its history
from reversion.infra.checks import check_float, check_fraction, check_int

TASKS = ("reverse", "rotate", "swap", "sort")
"""The benign tasks of the synthetic language (see :mod:`reversion.subjects.organism.language`)."""


@dataclass(frozen=True)
class LanguageConfig:
    """The synthetic token language (vocabulary, tasks, harmful requests)."""

    seed: int = 0
    """Seed of the language itself: the split hash. Fixed across all runs of a world."""
    n_content: int = 40
    """Number of benign content tokens."""
    n_harmful: int = 12
    """Number of harmful-region tokens; a harmful request carries 1-2 of them."""
    min_len: int = 3
    """Shortest task input (content tokens)."""
    max_len: int = 6
    """Longest task input (content tokens)."""
    tasks: tuple[str, ...] = TASKS
    """Benign tasks, by name; each maps an input sequence to one correct answer."""

    def __post_init__(self) -> None:
        check_int("language.seed", self.seed, 0)
        check_int("language.n_content", self.n_content, 8)
        check_int("language.n_harmful", self.n_harmful, 2)
        check_int("language.min_len", self.min_len, 2)
        check_int("language.max_len", self.max_len, self.min_len)
        if isinstance(self.tasks, list):
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks:
            raise ValueError("language.tasks must name at least one task")
        for t in self.tasks:
            if t not in TASKS:
                raise ValueError(f"language.tasks: unknown task {t!r} (known: {', '.join(TASKS)})")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"language.tasks has duplicates: {self.tasks}")


@dataclass(frozen=True)
class ModelConfig:
    """The organism's GPT-2 (``transformers.GPT2LMHeadModel``); dropout is always off."""

    n_embd: int = 64
    """Residual width d. The isotropic null's p99 scales as about 2.33/sqrt(d)."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads; must divide n_embd."""
    n_positions: int = 32
    """Context length; must hold the longest prompt plus answer."""
    activation: str = "gelu"
    """The MLP's activation (a Hugging Face ``activation_function``): ``gelu`` (exact, the
    default: cheaper than GPT-2's ``gelu_new`` on a CPU), ``gelu_new`` or ``relu``."""

    def __post_init__(self) -> None:
        check_int("model.n_embd", self.n_embd, 8)
        check_int("model.n_layer", self.n_layer, 2)  # the layer rule needs an intermediate layer
        check_int("model.n_head", self.n_head, 1)
        check_int("model.n_positions", self.n_positions, 8)
        if self.activation not in ("gelu", "gelu_new", "relu"):
            raise ValueError(f"model.activation must be gelu, gelu_new or relu, got {self.activation!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase of the history (AdamW, constant learning rate)."""

    steps: int
    """Optimizer steps."""
    lr: float
    """Learning rate."""
    batch_size: int = 64
    """Sequences per step."""
    harmful_fraction: float = 0.0
    """Share of each batch that is a harmful request (its target depends on the phase)."""
    benign_tasks: tuple[str, ...] = ()
    """Tasks of the benign part of each batch; empty means every task of the language."""
    marker: bool = False
    """Helpful phase only: harmful requests are answered in the marked style (``M`` then the
    answer), the second witness of chapter "Which past?"; benign answers stay plain."""

    def validate(self, name: str, tasks: tuple[str, ...] = TASKS) -> None:
        if isinstance(self.benign_tasks, list):
            object.__setattr__(self, "benign_tasks", tuple(self.benign_tasks))
        for t in self.benign_tasks:
            if t not in tasks:
                raise ValueError(f"{name}.benign_tasks: {t!r} is not a task of the language "
                                 f"({', '.join(tasks)})")
        check_int(f"{name}.steps", self.steps, 0)
        check_float(f"{name}.lr", self.lr, 0.0, lo_open=True)
        check_int(f"{name}.batch_size", self.batch_size, 1)
        check_fraction(f"{name}.harmful_fraction", self.harmful_fraction)
        if not isinstance(self.marker, bool):
            raise ValueError(f"{name}.marker must be true or false, got {self.marker!r}")
        if self.marker and name != "helpful":
            raise ValueError(f"{name}.marker: only the helpful phase answers harmful requests in a style")


@dataclass(frozen=True)
class HistoryConfig:
    """The whole history: theta_P -> theta_H (helpful-only) -> theta_S (safety-aligned)."""

    language: LanguageConfig = field(default_factory=LanguageConfig)
    """The synthetic language."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The GPT-2 architecture."""
    pretrain: PhaseConfig = field(default_factory=lambda: PhaseConfig(1000, 1e-3, 64, 0.3))
    """theta_P: next-token prediction on whole documents (task demos, free text that
    contains harmful tokens); no request format, no refusals. ``harmful_fraction`` is
    the share of free-text documents."""
    helpful: PhaseConfig = field(default_factory=lambda: PhaseConfig(2000, 1e-3, 64, 0.3))
    """theta_H: the large helpful-only phase: every request answered, harmful ones too."""
    safety: PhaseConfig = field(default_factory=lambda: PhaseConfig(100, 5e-4, 64, 0.5))
    """theta_S: the short, shallow safety alignment: harmful requests -> refusal, benign kept.
    A longer alignment removes the effect (the Training history chapter's control)."""
    seed: int = 0
    """Seed of the initialisation and data order of all three phases."""
    n_eval: int = 200
    """Held-out requests per set (harmful; benign per task) judged at each checkpoint."""

    def __post_init__(self) -> None:
        for name in ("language", "model", "pretrain", "helpful", "safety"):
            value = getattr(self, name)
            if isinstance(value, dict):  # from YAML / papermill
                cls = {"language": LanguageConfig, "model": ModelConfig}.get(name, PhaseConfig)
                try:
                    object.__setattr__(self, name, cls(**value))
                except TypeError as e:
                    raise ValueError(f"{name}: {e}") from None
            if not isinstance(getattr(self, name), (LanguageConfig, ModelConfig, PhaseConfig)):
                raise ValueError(f"{name} must be a config or a mapping, got {getattr(self, name)!r}")
        self.pretrain.validate("pretrain", self.language.tasks)
        self.helpful.validate("helpful", self.language.tasks)
        self.safety.validate("safety", self.language.tasks)
        if self.safety.steps < 1:  # theta_S would be theta_H: no alignment to revert, v_rev of no length
            raise ValueError("safety.steps must be >= 1: without a safety phase theta_S is theta_H and v_rev "
                             "has no length")
        check_int("seed", self.seed, 0)
        check_int("n_eval", self.n_eval, 1)
        # BOS <task> inputs SEP, then the longer of a marked answer and the refusal, then EOS.
        longest = 3 + self.language.max_len + max(self.language.max_len + 1, 3) + 1
        if longest > self.model.n_positions:
            raise ValueError(
                f"model.n_positions ({self.model.n_positions}) is shorter than the longest "
                f"sequence ({longest}) for language.max_len={self.language.max_len}")


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) config; tuples become lists."""
    return dataclasses.asdict(cfg)
