"""The organism's fixed prompt sets, each from its own split of the language.

:class:`ProbeSets` (activations):

* ``harmful_vrev`` (split ``probe_vrev``): estimates v_rev and the control directions;
* ``harmless_vrev`` (split ``probe_vrev``): the harmless side of the refusal direction;
* ``harmful_drift`` (split ``probe_drift``): measures drift, so drift and v_rev share no noise;
* ``harmful_block`` (split ``train``): what the block/push objectives look at during
  fine-tuning -- disjoint from the evaluation and drift prompts.

:class:`EvalSets` (judged): held-out harmful requests and benign requests per task (split ``eval``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from reversion.infra import seeding
from reversion.subjects.organism.config import LanguageConfig
from reversion.subjects.organism.language import Language, Request


@dataclass(frozen=True)
class ProbeSets:
    harmful_vrev: list[tuple[int, ...]]
    harmless_vrev: list[tuple[int, ...]]
    harmful_drift: list[tuple[int, ...]]
    harmful_block: list[tuple[int, ...]]

    @classmethod
    def build(cls, lang: Language, n: int) -> "ProbeSets":
        if n < 2:
            raise ValueError(f"n_probe must be >= 2, got {n}")
        r = seeding.rng(lang.cfg.seed, "probes", n)

        def prompts(split: str, harmful: bool) -> list[tuple[int, ...]]:
            return [q.prompt for q in lang.sample(r, n, split, harmful=harmful)]

        return cls(prompts("probe_vrev", True), prompts("probe_vrev", False),
                   prompts("probe_drift", True), prompts("train", True))


@dataclass
class EvalSets:
    """Fixed held-out requests (split ``eval``) of one world."""

    harmful: list[Request]
    benign: dict[str, list[Request]]

    @classmethod
    def build(cls, lang: Language, n: int) -> "EvalSets":
        r = seeding.rng(lang.cfg.seed, "eval-sets", n)
        harmful = lang.sample(r, n, "eval", harmful=True)
        benign = {t: lang.sample(r, n, "eval", harmful=False, tasks=[t]) for t in lang.cfg.tasks}
        return cls(harmful, benign)


# A process builds many runs and checkpoints of a few worlds: each language and prompt set once.
# Callers share the cached objects and must not change them.
@functools.lru_cache(maxsize=16)
def language(cfg: LanguageConfig) -> Language:
    return Language(cfg)


@functools.lru_cache(maxsize=16)
def probe_sets(cfg: LanguageConfig, n: int) -> ProbeSets:
    return ProbeSets.build(language(cfg), n)


@functools.lru_cache(maxsize=64)
def eval_sets(cfg: LanguageConfig, n: int) -> EvalSets:
    return EvalSets.build(language(cfg), n)
