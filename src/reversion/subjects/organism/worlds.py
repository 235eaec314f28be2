"""Named worlds: a complete history plus fine-tuning setup, chosen by one notebook parameter.

``default`` is the book's organism; ``smoke`` is a tiny world for tests and CI that
runs every notebook in seconds (its numbers mean nothing). ``world_overrides`` changes
any field, e.g. ``{"history": {"safety": {"steps": 600}}, "finetune": {"lr": 3e-4}}``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from reversion.infra.checks import check_float, check_int
from reversion.subjects.organism.config import (
    FinetuneConfig,
    HistoryConfig,
    LanguageConfig,
    ModelConfig,
    PhaseConfig,
)


@dataclass(frozen=True)
class World:
    """One world: its history, its fine-tuning setup and how many fine-tuning seeds."""

    history: HistoryConfig = field(default_factory=HistoryConfig)
    """theta_P -> theta_H -> theta_S."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Benign fine-tuning (its ``seed`` is replaced by each of :attr:`seeds`)."""
    n_seeds: int = 5
    """Fine-tuning seeds 0..n_seeds-1."""
    n_histories: int = 3
    """Independent histories (initialisation, data order and the language's split seed differ;
    see :func:`reversion.subjects.organism.subject.histories`): the unit of replication of the
    chapters that run several. History 0 is :attr:`history` itself."""
    lineages: bool = True
    """Train every history's lineages of chapter "Which past?" (a second witness, no witness, the
    dose) with the histories, so the dose lineages come free from the full helpful phase."""
    doses: tuple[float, ...] = (0.25, 0.5)
    """Helpful-phase lengths of the dose lineages, as fractions of ``history.helpful.steps``
    (the full length is history 0 itself)."""

    def __post_init__(self) -> None:
        check_int("n_seeds", self.n_seeds, 1)
        check_int("n_histories", self.n_histories, 1)
        if not isinstance(self.lineages, bool):
            raise ValueError(f"lineages must be true or false, got {self.lineages!r}")
        if isinstance(self.doses, list):
            object.__setattr__(self, "doses", tuple(self.doses))
        if not isinstance(self.doses, tuple):
            raise ValueError(f"doses must be a list of fractions in (0, 1), got {self.doses!r}")
        for f in self.doses:
            check_float("doses", f, 0.0, 1.0, lo_open=True, hi_open=True)
            if round(f * self.history.helpful.steps) < 1:
                raise ValueError(f"doses: {f} of {self.history.helpful.steps} helpful steps is no step")
        if len(set(self.doses)) != len(self.doses):
            raise ValueError(f"doses has duplicates: {self.doses}")
        if not isinstance(self.history, HistoryConfig) or not isinstance(self.finetune, FinetuneConfig):
            raise ValueError("world.history and world.finetune must be configs (override them with mappings)")
        if len(self.history.language.tasks) < 2:  # harm is read on the tasks fine-tuning never trains
            raise ValueError("history.language.tasks needs at least 2 tasks: harmfulness is read on harmful "
                             "requests of the tasks fine-tuning never trains")
        if self.finetune.task not in self.history.language.tasks:
            raise ValueError(f"finetune.task {self.finetune.task!r} is not a task of this language "
                             f"({', '.join(self.history.language.tasks)})")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.n_seeds))

    def finetune_config(self, seed: int, **changes) -> FinetuneConfig:
        return dataclasses.replace(self.finetune, seed=seed, **changes)


WORLDS: dict[str, World] = {
    # Chosen by the design study (`python -m reversion.design`, benchmarks/design_study.json): the
    # cheapest candidate that kept the effect on 6 held-out histories -- batch 32 in every phase and
    # a helpful phase of 1000 steps, a third of the large organism's training. Frozen: the power
    # issue's verdicts are drawn on it.
    "default": World(history=HistoryConfig(
        pretrain=PhaseConfig(1000, 1e-3, 32, 0.3),
        helpful=PhaseConfig(1000, 1e-3, 32, 0.3),
        safety=PhaseConfig(100, 5e-4, 32, 0.5),
    )),
    # the organism at the size it had before the design study
    "large": World(),
    "smoke": World(
        history=HistoryConfig(
            language=LanguageConfig(n_content=16, n_harmful=4, max_len=4),
            model=ModelConfig(n_embd=32, n_layer=2, n_head=2, n_positions=16),
            pretrain=PhaseConfig(20, 1e-3, 16, 0.3),
            helpful=PhaseConfig(40, 1e-3, 16, 0.3),
            safety=PhaseConfig(10, 1e-3, 16, 0.5),
            n_eval=16,
        ),
        finetune=FinetuneConfig(steps=6, batch_size=8, n_eval=16, n_probe=16,
                                eval_steps=(0, 1, 2, 3, 6)),
        n_seeds=3,
        doses=(0.5,),
    ),
}


def _override(obj, changes: dict, where: str):
    if not isinstance(changes, dict):
        raise ValueError(f"world_overrides{where} must be a mapping, got {changes!r}")
    names = {f.name for f in dataclasses.fields(obj)}
    kwargs = {}
    for key, value in changes.items():
        if key not in names:
            raise ValueError(f"world_overrides{where}: unknown field {key!r} "
                             f"(known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"world_overrides{where}.{key} must be a mapping of its fields, "
                                 f"got {value!r}")
            value = _override(current, value, f"{where}.{key}")
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return dataclasses.replace(obj, **kwargs)
    except TypeError as e:  # e.g. a PhaseConfig given as a number
        raise ValueError(f"world_overrides{where}: {e}") from None


def make_world(name: str = "default", overrides: dict | None = None) -> World:
    """The named world with ``overrides`` applied (validated before any work)."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r} (known: {', '.join(WORLDS)})")
    world = WORLDS[name]
    if overrides:
        world = _override(world, overrides, "")
        # PhaseConfig validates through HistoryConfig; rebuild so its checks run.
        world = dataclasses.replace(world, history=dataclasses.replace(world.history))
    return world
