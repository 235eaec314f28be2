"""A history's lineages: siblings that tell the paper's hypothesis from its alternatives.

Each lineage shares its history's theta_P (same initialisation, pretraining and seed) and
differs in its helpful phase only; its safety phase and benign fine-tuning are its history's.
Every history of the world has its own (chapter "Which past?" reads them over histories).

* ``main`` -- the history itself.
* ``second witness`` -- the helpful phase answers harmful requests in the marked style
  (``M`` then the answer; :mod:`reversion.subjects.organism.language`), on the same data in
  the same order: a helpful-only past the main lineage never had. "Any helpful past would
  do" predicts that both lineages drift alike; "its own past" that each drifts toward its
  own witness, and that returning compliance carries that witness's style.
* ``no witness`` -- the helpful phase holds no harmful request at all (the benign share is
  the whole batch); its theta_S learns to refuse requests it never answered. Reversion toward
  a dominant past predicts little returning compliance; task generalisation about as much as
  in the main lineage.
* ``dose <f>`` -- the helpful phase cut to a fraction f of its length (a snapshot of the
  main lineage's own helpful phase, :func:`reversion.subjects.organism.history.train_histories`),
  alignment depth fixed: the gravitational reading predicts reversion growing with the dose.
"""

from __future__ import annotations

import dataclasses

from reversion.subjects.organism.config import HistoryConfig
from reversion.subjects.organism.history import History, train_histories, train_history
from reversion.subjects.organism.subject import histories
from reversion.subjects.organism.worlds import World

MAIN, SECOND, NONE = "main", "second witness", "no witness"


def dose_name(fraction: float) -> str:
    return f"dose {fraction:g}"


def _helpful(cfg: HistoryConfig, **changes) -> HistoryConfig:
    return dataclasses.replace(cfg, helpful=dataclasses.replace(cfg.helpful, **changes))


def lineages(world: World, history: HistoryConfig | None = None) -> dict[str, HistoryConfig]:
    """Name -> history configuration of the lineages of ``history`` (default history 0, the
    world's own; ``main`` first, doses last, by dose)."""
    h = history or world.history
    out = {MAIN: h, SECOND: _helpful(h, marker=True), NONE: _helpful(h, harmful_fraction=0.0)}
    for f in sorted(world.doses):
        out[dose_name(f)] = _helpful(h, steps=round(f * h.helpful.steps))
    return out


def witnesses_differ(cfg: HistoryConfig) -> bool:
    """Whether the second witness (and the no-witness lineage) can differ from the main lineage:
    only when the helpful phase has steps and harmful requests to answer (a phase of no steps
    leaves every theta_H at theta_P; one without harmful requests has nothing to mark and is
    already the no-witness lineage)."""
    return cfg.helpful.steps > 0 and cfg.helpful.harmful_fraction > 0


def dose_of(world: World, name: str) -> float:
    """The helpful-phase fraction of a lineage (1 for ``main``)."""
    return 1.0 if name == MAIN else {dose_name(f): f for f in world.doses}[name]


def train_world(world: World, progress: bool = True) -> list[History]:
    """The world's ``n_histories`` histories and, when ``world.lineages``, every history's lineages,
    trained together (grouped phase by phase; the dose lineages are snapshots of their history's
    helpful phase when it is trained in the same call). Returns the histories."""
    cfgs = [s.history for s in histories(world.history, world.n_histories)]
    extra = ([c for h in cfgs for name, c in lineages(world, h).items() if name != MAIN]
             if world.lineages else [])
    train_histories(cfgs + extra, progress)
    return [train_history(c, progress=False) for c in cfgs]
