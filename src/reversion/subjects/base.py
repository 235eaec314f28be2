"""What every stage needs of a subject: a model's history, its prompts, its data and its judge.

A **subject** is one training history seen from outside: the checkpoints theta_P
(pretrained, optional), theta_H (the helpful-only witness) and theta_S (safety-aligned),
the probe prompts the directions and the drift are measured on, the benign data benign
fine-tuning trains on, safety examples (for rehearsal and the null test's control), a
judge of harmfulness and task cost, and an identity for cache keys. The stages
(:mod:`reversion.stages`) take a subject and nothing else about where the models came
from, so every experiment step exists once for both implementations:

* :class:`reversion.subjects.organism.subject.OrganismSubject` -- the book's model
  organism: a GPT-2 trained from scratch on a synthetic language (one history per
  :class:`~reversion.subjects.organism.config.HistoryConfig`; independent histories are
  independent subjects, see :func:`~reversion.subjects.organism.subject.histories`);
* :class:`reversion.subjects.checkpoints.subject.CheckpointSubject` -- your own Hugging Face
  checkpoints, prompt files and fine-tuning pairs.

Checkpoints are addressed by *role* (:data:`ROLES`); :meth:`Subject.roles` lists the ones a
subject has (theta_P is optional). The protocol leaves room for more roles than the three of
the paper's history -- an extra lineage such as a second witness and its aligned model, under
names of its own -- but no subject provides one yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from reversion.infra import cache

ROLES = ("theta_P", "theta_H", "theta_S")
"""The paper's checkpoints: pretrained, helpful-only witness, safety-aligned."""

Ids = tuple[int, ...]
Pair = tuple[Ids, Ids]
"""(prompt, target) token ids of one training example."""


@dataclass(frozen=True)
class Prompts:
    """Token ids of a subject's prompt sets; each comes from its own split, so the estimate
    of v_rev, the drift measurement and the block objective share no prompt."""

    vrev: list[Ids]
    """Harmful prompts that estimate v_rev (and the control directions)."""
    harmless: list[Ids] | None
    """Harmless prompts for the refusal direction r_S (None: no r_S)."""
    drift: list[Ids]
    """Harmful prompts whose mean activation is tracked during fine-tuning (drift)."""
    block: list[Ids]
    """Harmful prompts the block / push objectives look at while training."""
    pad_id: int
    """Padding token id of these prompts' tokenizer."""

    @property
    def harmful_block(self) -> list[Ids]:  # the name the interventions read
        return self.block


class Request(Protocol):
    prompt: Ids
    answer: Ids


@runtime_checkable
class TrainingData(Protocol):
    """Where fine-tuning variants draw examples: benign requests and safety examples
    (a harmful request answered with the refusal, ``refusal_answer``)."""

    refusal_answer: Ids

    def sample(self, rng: np.random.Generator, n: int, split: str, *, harmful: bool,
               tasks: Sequence[str] | None = None) -> list[Request]: ...


@runtime_checkable
class Subject(Protocol):
    """The protocol the stages consume (see the module docstring)."""

    kind: str
    """``"organism"`` or ``"checkpoints"`` (recorded in metrics; chapters never branch on it)."""
    parallel: bool
    """Fine-tuning runs of this subject may build in worker processes (small models only)."""
    keep_weights: bool
    """Fine-tuned weights are saved with each run (the organism's; a real model's would fill a disk)."""
    seed: int
    """Seed of the subject's own random draws (the split-half bootstrap of the estimate)."""
    batch_size: int
    """Prompts per forward pass when extracting activations."""
    tracking_batch_size: int
    """Prompts per forward pass of the per-step drift tracker."""
    has_task_accuracy: bool
    """Whether evaluations carry exact-match ``task_accuracy`` (the organism) or only ``task_loss``."""
    grouped: bool
    """Fine-tuning runs of this subject train together in a :class:`reversion.core.grouped.GroupedGPT2`
    (small GPT-2s); such a subject also provides :meth:`eval_work` and :meth:`score`, whose
    composition is :meth:`evaluate`."""

    def key(self) -> dict[str, Any]:
        """Identity for cache keys: everything that decides the subject's numbers."""

    def record(self) -> dict[str, Any]:
        """What a chapter's metrics record about the subject."""

    def arch(self) -> dict[str, Any]:
        """``model_type``, ``hidden_size``, ``num_hidden_layers``."""

    def roles(self) -> tuple[str, ...]:
        """The checkpoints this subject has (a subset of :data:`ROLES`, plus extra lineages)."""

    def prepare(self, progress: bool = True) -> None:
        """Make the checkpoints exist (train the organism's history; check files)."""

    def name_input(self, role: str) -> str | None:
        """How an error names the input behind ``role`` (``theta_H/theta_S``, ``theta_P``,
        ``harmless``): ``checkpoints['witness']``, ``--witness``; None where the subject has no
        user inputs (the organism)."""

    def title(self) -> str:
        """One line naming the subject for a page's reader."""

    def describe(self, ft=None) -> list[str]:
        """How a chapter's measurements differ from the organism's (printed under the
        parameters; empty for the organism). ``ft``: the chapter fine-tunes with it."""

    def check(self, ft) -> None:
        """Raise ``ValueError`` naming the problem when ``ft`` cannot run on this subject."""

    def task_key(self, ft) -> str:
        """Key of the fine-tuning task in evaluations (``evals[step]["task_loss"][key]``)."""

    def load(self, role: str, *, dtype: torch.dtype | None = None, device: Any = None) -> torch.nn.Module:
        """The checkpoint of ``role`` in eval mode; ``dtype`` overrides the subject's (fine-tuning
        loads theta_S in float32)."""

    def prompts(self, n_probe: int) -> Prompts:
        """The prompt sets (``n_probe`` per set where the subject draws them; a prompt file decides
        for checkpoints)."""

    def training_data(self) -> TrainingData:
        """Benign requests and safety examples for the fine-tuning variants."""

    def benign_batches(self, ft) -> Iterator[list[Pair]]:
        """Benign fine-tuning batches; their order depends on ``ft.seed`` alone, so every variant
        with the same seed sees the same data (optimizer-matched comparisons)."""

    def evaluate(self, model: torch.nn.Module, ft, full: bool) -> dict:
        """Harmfulness (and its other measures) and task cost of ``model``; ``full``: every
        benign task (at steps 0 and T), else the fine-tuning task only."""

    def eval_work(self, ft, full: bool):
        """(Grouped subjects only.) The :class:`reversion.core.generation.EvalWork` of :meth:`evaluate`."""

    def score(self, ft, continuations: dict, losses: dict) -> dict:
        """(Grouped subjects only.) The evaluation from :meth:`eval_work`'s results."""

    def pad_widths(self) -> tuple[int, int]:
        """(Grouped subjects only.) The longest prompt and the longest training sequence: a group
        pads every batch to these fixed widths, so a run's arithmetic -- and its numbers, bit for
        bit -- do not depend on which runs share its group."""

    def eval_key(self, ft) -> dict:
        """The part of ``ft`` an evaluation depends on (for the cached evaluation of theta_S)."""

    def vocabulary(self, openers: Sequence[int]) -> "Vocabulary":
        """Token names and the reference tokens of the vocabulary readout; ``openers`` are the
        witness's greedy first answer tokens on the estimation prompts."""


@dataclass(frozen=True)
class Vocabulary:
    """What the logit-lens readout of a direction compares (see :mod:`reversion.stages.readout`)."""

    names: Sequence[str] | Any
    """Token id -> printable name (a list, or a callable for a tokenizer)."""
    openers: list[int]
    """Tokens that open a compliant answer."""
    refusal_first: int
    """The refusal's first token."""
    harmful: list[int] | None = None
    """Harmful-content tokens, where the subject knows them (the organism's harmful region)."""
    described: dict | None = None
    """Extra entries the readout records (e.g. the decoded openers of a text model)."""

    def name(self, i: int) -> str:
        return self.names(int(i)) if callable(self.names) else self.names[int(i)]


def identity(subject: Subject) -> str:
    """A short, code-independent identity of a subject (its :meth:`Subject.key` hashed): two
    subjects with equal identities compute the same numbers from the same stages."""
    return cache.cache_key("subject", subject.key(), code=())
