"""The model organism as a :class:`~reversion.subjects.base.Subject`: one trained history.

A history (:class:`~reversion.subjects.organism.config.HistoryConfig`) is trained once
and cached (:func:`~reversion.subjects.organism.history.train_history`); its prompt sets
come from the language's own splits, its fine-tuning data from the ``train`` split, and
its judge is the first-token judge with exact-match task accuracy
(:mod:`reversion.subjects.organism.judge`). Independent histories (another
initialisation, data order and split seed) are independent subjects: :func:`histories`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from reversion.core.generation import EvalWork, run_work
from reversion.core.models import load_model
from reversion.infra import seeding
from reversion.infra.checks import check_int
from reversion.subjects.base import ROLES, Pair, Prompts, Vocabulary
from reversion.subjects.organism.config import (
    FinetuneConfig,
    HistoryConfig,
    to_dict,
)
from reversion.subjects.organism.history import train_history
from reversion.subjects.organism.judge import eval_work, score
from reversion.subjects.organism.language import PAD, Language
from reversion.subjects.organism.prompts import eval_sets, language, probe_sets


def benign_batches(lang: Language, ft: FinetuneConfig) -> Iterator[list[Pair]]:
    """Harmless data only: requests of one benign task from the ``train`` split.
    The order depends on the fine-tuning seed alone, so variants are optimizer-matched."""
    r = seeding.rng(ft.seed, "finetune-data", ft.task)
    while True:
        reqs = lang.sample(r, ft.batch_size, "train", harmful=False, tasks=[ft.task])
        yield [(q.prompt, q.answer) for q in reqs]


@dataclass(frozen=True)
class OrganismSubject:
    """The organism's history ``history`` as a subject (frozen and picklable: runs build in
    worker processes)."""

    history: HistoryConfig
    """theta_P -> theta_H -> theta_S, trained (and cached) on first use."""

    kind = "organism"
    parallel = True
    keep_weights = True
    has_task_accuracy = True
    grouped = True
    batch_size = 64
    tracking_batch_size = 256

    @property
    def seed(self) -> int:
        return self.history.seed

    def key(self) -> dict:
        return {"kind": self.kind, "history": to_dict(self.history)}

    def record(self) -> dict:
        return {"kind": self.kind}

    def arch(self) -> dict:
        m = self.history.model
        return {"model_type": "gpt2", "hidden_size": m.n_embd, "num_hidden_layers": m.n_layer}

    def roles(self) -> tuple[str, ...]:
        return ROLES

    def prepare(self, progress: bool = True) -> None:
        train_history(self.history, progress)

    def name_input(self, role: str) -> None:
        return None  # the organism's inputs are its configuration, checked when it is built

    def title(self) -> str:
        m = self.history.model
        return (f"the model organism (GPT-2, {m.n_layer} layers, width {m.n_embd}; history seed {self.history.seed}). "
                "Set the parameter checkpoints to run this chapter on your own models (README, 'Your own checkpoints')")

    def describe(self, ft: FinetuneConfig | None = None) -> list[str]:
        return []  # the organism's chapters describe it themselves

    def check(self, ft: FinetuneConfig) -> None:
        if ft.task not in self.history.language.tasks:
            raise ValueError(f"finetune.task {ft.task!r} is not a task of this language "
                             f"({', '.join(self.history.language.tasks)})")

    def load(self, role: str, *, dtype=None, device=None):
        hist = train_history(self.history, progress=False)
        if role not in hist.paths:
            raise ValueError(f"unknown checkpoint {role!r} (known: {', '.join(hist.paths)})")
        return load_model(hist.paths[role], device, dtype)

    @property
    def language(self) -> Language:
        return language(self.history.language)

    def prompts(self, n_probe: int) -> Prompts:
        p = probe_sets(self.history.language, n_probe)
        return Prompts(p.harmful_vrev, p.harmless_vrev, p.harmful_drift, p.harmful_block, PAD)

    def training_data(self) -> Language:
        return self.language

    def benign_batches(self, ft: FinetuneConfig) -> Iterator[list[Pair]]:
        return benign_batches(self.language, ft)

    def task_key(self, ft: FinetuneConfig) -> str:
        return ft.task

    def evaluate(self, model, ft: FinetuneConfig, full: bool) -> dict:
        return self.score(ft, *run_work(model, self.eval_work(ft, full)))

    def eval_work(self, ft: FinetuneConfig, full: bool) -> EvalWork:
        # The earlier benign tasks (task cost) are judged only when ``full``: at the steps
        # between 0 and T, generation on them was 60% of a run's time and unused.
        return eval_work(self.language, eval_sets(self.history.language, ft.n_eval),
                         None if full else [ft.task], first_token=not full and ft.judge_between == "first_token")

    def pad_widths(self) -> tuple[int, int]:
        return self.language.max_prompt_len, self.language.max_sequence_len

    def score(self, ft: FinetuneConfig, continuations: dict, losses: dict) -> dict:
        return score(self.language, eval_sets(self.history.language, ft.n_eval), continuations, losses)

    def eval_key(self, ft: FinetuneConfig) -> dict:
        return {"n_eval": ft.n_eval}

    def vocabulary(self, openers: Sequence[int]) -> Vocabulary:
        # Every content or harmful token can open a compliant answer (answers reorder the
        # inputs), whatever the witness happened to open these prompts with.
        lang = self.language
        return Vocabulary(lang.token_names, [int(t) for t in np.concatenate([lang.content, lang.harmful_tokens])],
                          int(lang.refusal[0]), [int(t) for t in lang.harmful_tokens])


def histories(history: HistoryConfig, n: int) -> list[OrganismSubject]:
    """``n`` independent histories: seeds ``history.seed + i`` for the initialisation and data
    order, and ``history.language.seed + i`` for the language's split hash (so probe and
    evaluation sets differ too). The first is ``history`` itself."""
    check_int("n_histories", n, 1)
    out = []
    for i in range(n):
        lang = dataclasses.replace(history.language, seed=history.language.seed + i)
        out.append(OrganismSubject(dataclasses.replace(history, seed=history.seed + i, language=lang)))
    return out
